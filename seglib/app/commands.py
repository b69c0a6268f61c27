"""The command handlers of ``python -m seglib``; ``seglib.app.cli`` builds the parser.

Each handler takes the parsed arguments, calls one library function, prints what it
returned and gives the exit status. Heavy modules are imported inside the handlers, so
``python -m seglib --help`` stays quick and the optional families stay unimported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.overrides import parse_overrides
from seglib.core.paths import get_paths
from seglib.models import mask2former_weights


def cmd_synth(args: argparse.Namespace) -> int:
    from seglib.data.synthetic import make_synthetic_coco

    summary = make_synthetic_coco(
        args.out,
        images_per_split=args.images,
        size=args.size,
        seed=args.seed,
        heavy_share=args.heavy_share,
    )
    print(f"synthetic COCO written to {args.out}")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_subset(args: argparse.Namespace) -> int:
    from seglib.data.subset import build_subset, format_subset_counts

    manifest = build_subset(
        args.coco_root,
        args.out,
        categories=args.categories,
        num_train=args.train,
        num_val=args.val,
        num_test=args.test,
        seed=args.seed,
        download=args.download,
        base_url=args.base_url,
        workers=args.workers,
        progress=True,
    )
    print(f"subset written to {args.out}")
    print(format_subset_counts(manifest["counts"]))
    return 0


_TRAIN_OVERRIDES = (
    "num_epochs",
    "lr",
    "batch_size",
    "weights",
    "arch",
    "m2f_config",
    "m2f_pretrained",
    "device",
    "min_size",
    "max_size",
    "max_iters",
    "num_workers",
    "seed",
    "amp",
)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The profile (or --config file) with the command-line overrides applied."""
    cfg = TrainConfig.load(args.config) if args.config else TrainConfig.from_profile(args.profile)
    overrides = {
        k: getattr(args, k) for k in _TRAIN_OVERRIDES if getattr(args, k, None) is not None
    }
    return cfg.replace(**overrides)


def train_categories(cfg: TrainConfig, args: argparse.Namespace, data: Path) -> TrainConfig:
    """``cfg`` with the categories to train: ``--categories``, else those of a ``--config``
    file, else the subset's own (``data/train.json``, in label order).

    Raises:
        FileNotFoundError: ``data/train.json`` is missing.
        ValueError: explicit categories differ from the subset's (names both, and the fix).
    """
    from seglib.data.dataset import split_categories

    subset = [c["name"] for c in split_categories(data)]
    if args.categories:
        cfg = cfg.replace(categories=tuple(args.categories))
    elif not args.config:
        return cfg.replace(categories=tuple(subset))
    if list(cfg.categories) != subset:
        given = "--categories" if args.categories else f"the config file {args.config}"
        raise ValueError(
            f"{given} asks for categories {list(cfg.categories)} but {data / 'train.json'} holds "
            f"{subset} (labels 1..{len(subset)}, in that order). Build a subset with those "
            f"categories (`python -m seglib subset --categories ...`), or leave the categories "
            f"out to train on the subset's"
        )
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from seglib.app.runs import new_run_name
    from seglib.engine.trainer import train

    if args.config and not (args.data and args.out):
        raise ValueError(
            "--config needs --data and --out: a config file does not say which profile's folders to use"
        )
    paths = get_paths(args.profile)
    cfg = config_from_args(args)
    data = args.data or paths.require(paths.subset, "`python -m seglib subset` (or notebook 01)")
    cfg = train_categories(cfg, args, Path(data))
    # Without --out, a fresh run gets a new timestamped folder; --resume continues the latest.
    out = args.out or (paths.run if args.resume else paths.run_dir(new_run_name()))
    if (out / "last.pt").exists() and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"{out / 'last.pt'} exists: pass --resume to continue that run, or --overwrite to start afresh"
        )
    summary = train(cfg, data, out, resume=args.resume, progress=True)
    if summary.get("rank", 0) == 0:
        print(f"run folder: {out}")
        best = summary.get("best")
        if best is not None:
            print(f"best val mask AP: {best}")
    return 0


def _postprocess_choice(args: argparse.Namespace, cfg: TrainConfig | None) -> TrainConfig:
    """``cfg`` (TrainConfig() for a zero-shot model) with --postprocess / --tta-hflip applied,
    refused up front for Mask2Former, which has no NMS to replace."""
    from seglib.evaluation.prediction import check_postprocess

    changes = {
        k: getattr(args, k) for k in ("postprocess", "tta_hflip") if getattr(args, k) is not None
    }
    chosen = (cfg or TrainConfig()).replace(**changes)  # a mask2former config refuses here
    arch = cfg.arch if cfg is not None else getattr(args, "arch", "v1")  # None: zero-shot
    check_postprocess(arch, chosen.postprocess, chosen.tta_hflip)
    return chosen


def _postprocessed(model, args: argparse.Namespace, cfg: TrainConfig | None):
    """``model`` with --postprocess / --tta-hflip applied over ``cfg``'s stored choice."""
    if getattr(args, "postprocess", None) is None and getattr(args, "tta_hflip", None) is None:
        return model
    from seglib.models.postprocess import wrap

    return wrap(model, _postprocess_choice(args, cfg))


def _model_to_evaluate(args: argparse.Namespace, dataset, device):
    """The zero-shot model (--zero-shot, --arch) or the checkpoint's, post-processed as asked."""
    run_cfg = None  # zero-shot: TrainConfig()'s post-processing unless flags say otherwise
    if args.zero_shot:
        _postprocess_choice(args, None)  # before any weights are loaded
    if args.zero_shot and args.arch == "mask2former":
        from seglib.models.mask2former import build_zero_shot_mask2former

        model = build_zero_shot_mask2former(dataset.categories)
    elif args.zero_shot:
        from seglib.models.zeroshot import build_zero_shot_model

        model = build_zero_shot_model(dataset.categories, arch=args.arch)
    else:
        from seglib.models.builder import model_from_checkpoint

        model, run_cfg, _ = model_from_checkpoint(
            args.checkpoint, device=device, categories=dataset.categories
        )
    return _postprocessed(model, args, run_cfg)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seglib.evaluation.coco_ap import evaluate_results, format_table

    if args.gt or args.predictions:
        if not (args.gt and args.predictions):
            raise ValueError("--gt and --predictions go together")
        metrics = evaluate_results(args.gt, args.predictions, score_thresh=args.score_thresh)
    else:
        if not args.data or not (args.checkpoint or args.zero_shot):
            raise ValueError(
                "give --data with --checkpoint FILE or --zero-shot, or give --gt with --predictions"
            )
        from seglib.core.runtime import resolve_device
        from seglib.data.dataset import open_split
        from seglib.evaluation.prediction import evaluate

        device = resolve_device(args.device)
        dataset = open_split(args.data, args.split)
        model = _model_to_evaluate(args, dataset, device)
        model.to(device)
        metrics = evaluate(model, dataset, device, score_thresh=args.score_thresh)
    print(format_table(metrics))
    if args.out:
        write_json_atomic(args.out, metrics)
        print(f"metrics written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from seglib.core.runtime import resolve_device
    from seglib.evaluation.prediction import predict_images
    from seglib.models.builder import model_from_checkpoint

    device = resolve_device(args.device)
    model, run_cfg, categories = model_from_checkpoint(args.checkpoint, device=device)
    model = _postprocessed(model, args, run_cfg)
    written = predict_images(
        model, args.images, args.out, device, categories=categories, score_thresh=args.score_thresh
    )
    print(f"{written['num_images']} images, {written['num_predictions']} predictions")
    print(f"results: {written['results']}")
    print(f"overlays: {args.out}")
    return 0


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    if args.kind == "mask2former":
        licence = mask2former_weights.WEIGHTS_LICENCE
        print(f"{args.model_id}: weights licence {licence} (non-commercial use only)")
        print(f"weights ready: {mask2former_weights.fetch_weights(args.model_id)}")
        return 0
    from seglib.models.weights import fetch_weights

    path = fetch_weights(args.kind, args.arch, progress=True)
    print(f"weights ready: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from seglib.app.headless import check_outputs, notebook_paths, preflight, run_notebooks
    from seglib.app.runs import check_can_start, headline, new_run_name

    overrides = parse_overrides(args.overrides)
    TrainConfig.from_profile(args.profile, **overrides)  # bad values fail here, not in notebook 03
    name = args.run or new_run_name()
    paths = get_paths(args.profile, run=name)
    check_can_start(paths, name, overwrite=args.overwrite)  # before spending time on 01-02
    for note in preflight(args.profile, paths):
        print(note)
    if args.profile == "seed":
        from seglib.models.weights import fetch_weights, weights_file

        if not weights_file("coco", "v1").is_file():
            # `make run` is the explicit request for the seed experiment, whose weights these are.
            print(f"fetched {fetch_weights('coco', 'v1')}")
    out = args.out or paths.notebooks_out
    print(
        f"run {name!r} ({args.profile}): {paths.run}"
        + (f", overrides {overrides}" if overrides else "")
    )
    for done in run_notebooks(
        args.profile,
        out,
        run_name=name,
        overrides=overrides,
        overwrite=args.overwrite,
        timeout=args.timeout,
    ):
        print(f"executed {done}", flush=True)
    print(f"executed notebooks in {out}; figures in {paths.figures} and {paths.data_figures}")
    problems = check_outputs(paths, [nb.stem for nb in notebook_paths()])
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"val mask AP50: {headline(paths)['segm_AP50']:.3f}")
    return 1 if problems else 0


def cmd_study(args: argparse.Namespace) -> int:
    from seglib.core.runtime import resolve_device
    from seglib.studies.occlusion_report import format_study, save_study
    from seglib.studies.occlusion_study import run_study

    paths = get_paths(args.profile)
    data = args.data or paths.require(paths.subset, "`python -m seglib subset` (or notebook 01)")
    checkpoint = args.checkpoint or paths.require(
        paths.best_checkpoint, "`python -m seglib train` (or notebook 03)"
    )
    study = run_study(
        checkpoint,
        data,
        resolve_device(args.device),
        methods=args.methods,
        tta=(False,) if args.no_tta else (False, True),
        timing_images=args.timing_images,
    )
    written = save_study(study, args.out or Path(checkpoint).parent / "eval")
    print(format_study(study))
    print(f"written: {written['json']} and {written['table']}")
    return 0
