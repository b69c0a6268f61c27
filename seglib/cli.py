"""``python -m seglib <command>``: the pipeline's steps, headless.

Each command parses its arguments, calls one library function and prints what it returned.
This is the only module (with the notebooks) that prints.

    synth          write a synthetic COCO 2017 root (offline stand-in)
    subset         build the cake/car/dog/person subset from a COCO root (copy or download)
    train          train Mask R-CNN (torchrun-aware)
    evaluate       COCO box/mask AP, best-match and pixel IoU for a checkpoint, the
                   zero-shot baseline, or a predictions file
    predict        run a checkpoint on images: COCO results JSON + overlay PNGs
    fetch-weights  download torchvision weights into the TORCH_HOME cache, or Mask2Former's
                   into the Hugging Face cache (needs internet)
    run            execute the notebooks headless (--run NAME, --set FIELD=VALUE)
    study          the occlusion study: post-processing variants, AP per occlusion bucket
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seglib.config import (
    ARCHS,
    DEFAULT_CATEGORIES,
    M2F_MODEL_ID,
    M2F_PRESETS,
    POSTPROCESS_METHODS,
    PROFILES,
    TrainConfig,
)
from seglib.io import write_json_atomic
from seglib.paths import get_paths


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic COCO 2017 root")
    p.add_argument(
        "--out", type=Path, required=True, help="folder to write the COCO-shaped root into"
    )
    p.add_argument("--images", type=int, default=40, help="images per split (default 40)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--heavy-share",
        type=float,
        default=0.0,
        help="share of scenes drawn with heavy occlusion, 0-1 (default 0)",
    )
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from seglib.synthetic import make_synthetic_coco

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


def _add_subset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subset", help="build the category subset from a COCO 2017 root")
    p.add_argument(
        "--coco-root",
        type=Path,
        required=True,
        help="folder with annotations/, train2017/, val2017/",
    )
    p.add_argument("--out", type=Path, required=True, help="subset folder to write")
    p.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES), metavar="NAME")
    p.add_argument(
        "--train", type=int, default=300, help="train images, from train2017 (default 300)"
    )
    p.add_argument("--val", type=int, default=300, help="val images, from val2017 (default 300)")
    p.add_argument(
        "--test",
        type=int,
        default=30,
        help="test images, from val2017, disjoint from val (default 30)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--download", action="store_true", help="fetch missing images (and the annotations archive)"
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="replaces http://images.cocodataset.org, keeping its layout",
    )
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    p.set_defaults(func=cmd_subset)


def cmd_subset(args: argparse.Namespace) -> int:
    from seglib.coco import build_subset, format_counts

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
    print(format_counts(manifest["counts"]))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train Mask R-CNN on a subset (works under torchrun)")
    p.add_argument(
        "--data", type=Path, default=None, help="subset folder (default: data/subset/<profile>)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: data/runs/<profile>)"
    )
    p.add_argument("--profile", choices=PROFILES, default="seed")
    p.add_argument(
        "--config", type=Path, default=None, help="TrainConfig JSON; overrides the profile"
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument(
        "--overwrite", action="store_true", help="start afresh even if RUN/last.pt exists"
    )
    p.add_argument("--epochs", type=int, dest="num_epochs")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weights", help="coco | imagenet | none | path/to/file.pth")
    p.add_argument("--arch", choices=ARCHS, help="v1 | v2 (Mask R-CNN) | mask2former (detr extra)")
    p.add_argument("--m2f-config", choices=M2F_PRESETS, help="Mask2Former architecture preset")
    p.add_argument("--m2f-pretrained", help="Mask2Former model id or save_pretrained folder")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument("--max-iters", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-amp", dest="amp", action="store_false", default=None)
    p.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        help="category names in label order (default: the subset's, from DATA/train.json)",
    )
    p.set_defaults(func=cmd_train)


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
    from seglib.dataset import split_categories

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
    from seglib.engine import train
    from seglib.runs import new_run_name

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


def _add_postprocess_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--postprocess",
        choices=POSTPROCESS_METHODS,
        default=None,
        help="suppression rule (default: the checkpoint's config, else nms); see seglib.postprocess",
    )
    p.add_argument(
        "--tta-hflip",
        action="store_true",
        default=None,
        help="add horizontal-flip test-time augmentation",
    )


def _postprocessed(model, args: argparse.Namespace, cfg: TrainConfig | None):
    """``model`` with --postprocess / --tta-hflip applied over ``cfg``'s stored choice."""
    changes = {
        k: getattr(args, k) for k in ("postprocess", "tta_hflip") if getattr(args, k) is not None
    }
    if not changes:
        return model
    from seglib.postprocess import wrap

    return wrap(model, (cfg or TrainConfig()).replace(**changes))


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO AP, best-match IoU and pixel IoU")
    p.add_argument("--data", type=Path, help="subset folder (with --checkpoint or --zero-shot)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate")
    p.add_argument(
        "--zero-shot", action="store_true", help="evaluate the unmodified COCO-trained model"
    )
    p.add_argument("--arch", choices=ARCHS, default="v1", help="architecture for --zero-shot")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument(
        "--gt",
        type=Path,
        help="ground truth (with --predictions): a subset split JSON, or COCO's own annotations",
    )
    p.add_argument(
        "--predictions",
        type=Path,
        help="COCO results JSON with COCO's category ids, as `predict` writes (with --gt)",
    )
    p.add_argument(
        "--score-thresh", type=float, default=0.5, help="for the IoU measures (default 0.5)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="write the metrics JSON here")
    _add_postprocess_flags(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seglib.metrics import evaluate_results, format_table

    if args.gt or args.predictions:
        if not (args.gt and args.predictions):
            raise ValueError("--gt and --predictions go together")
        metrics = evaluate_results(args.gt, args.predictions, score_thresh=args.score_thresh)
    else:
        if not args.data or not (args.checkpoint or args.zero_shot):
            raise ValueError(
                "give --data with --checkpoint FILE or --zero-shot, or give --gt with --predictions"
            )
        from seglib.dataset import open_split
        from seglib.engine import resolve_device
        from seglib.inference import evaluate

        device = resolve_device(args.device)
        dataset = open_split(args.data, args.split)
        run_cfg = None  # zero-shot: TrainConfig()'s post-processing unless flags say otherwise
        if args.zero_shot and args.arch == "mask2former":
            from seglib.mask2former import build_zero_shot_mask2former

            model = build_zero_shot_mask2former(dataset.categories)
        elif args.zero_shot:
            from seglib.model import build_zero_shot_model

            model = build_zero_shot_model(dataset.categories, arch=args.arch)
        else:
            from seglib.model import model_from_checkpoint

            model, run_cfg, _ = model_from_checkpoint(
                args.checkpoint, device=device, categories=dataset.categories
            )
        model = _postprocessed(model, args, run_cfg)
        model.to(device)
        metrics = evaluate(model, dataset, device, score_thresh=args.score_thresh)
    print(format_table(metrics))
    if args.out:
        write_json_atomic(args.out, metrics)
        print(f"metrics written to {args.out}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict on images: COCO results JSON and overlay PNGs")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    _add_postprocess_flags(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from seglib.engine import resolve_device
    from seglib.inference import predict_images
    from seglib.model import model_from_checkpoint

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


def _add_fetch_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch-weights",
        help="download torchvision weights into the TORCH_HOME cache, or Mask2Former's into the "
        "Hugging Face cache",
    )
    p.add_argument("kind", choices=("coco", "imagenet", "mask2former"))
    p.add_argument("--arch", choices=("v1", "v2"), default="v1")
    p.add_argument(
        "--model-id", default=M2F_MODEL_ID, help=f"with mask2former (default {M2F_MODEL_ID})"
    )
    p.set_defaults(func=cmd_fetch_weights)


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    if args.kind == "mask2former":
        from seglib import mask2former

        licence = mask2former.WEIGHTS_LICENCE
        print(f"{args.model_id}: weights licence {licence} (non-commercial use only)")
        print(f"weights ready: {mask2former.fetch_weights(args.model_id)}")
        return 0
    from seglib.weights import fetch_weights

    path = fetch_weights(args.kind, args.arch, progress=True)
    print(f"weights ready: {path}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="execute the notebooks in order, headless",
        description="Execute the numbered notebooks headless with nbclient. The run gets its "
        "own folder, runs/<profile>/<run>/; --set values become the notebooks' config (and "
        "their forms' defaults) and are recorded in the run's run_info.json.",
    )
    p.add_argument("--profile", choices=PROFILES, default="seed")
    p.add_argument("--run", default=None, metavar="NAME", help="run name (default: a timestamp)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help="TrainConfig override, repeatable: --set lr=0.002 --set num_epochs=3",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run of the same name"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for executed notebooks (default: RUN/notebooks)",
    )
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from seglib.config import parse_overrides
    from seglib.runner import check_outputs, notebook_paths, preflight, run_notebooks
    from seglib.runs import check_can_start, headline, new_run_name

    overrides = parse_overrides(args.overrides)
    TrainConfig.from_profile(args.profile, **overrides)  # bad values fail here, not in notebook 03
    name = args.run or new_run_name()
    paths = get_paths(args.profile, run=name)
    check_can_start(paths, name, overwrite=args.overwrite)  # before spending time on 01-02
    for note in preflight(args.profile, paths):
        print(note)
    if args.profile == "seed":
        from seglib.weights import fetch_weights, weights_file

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


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="occlusion study: post-processing variants, AP per occlusion bucket"
    )
    p.add_argument("--profile", choices=PROFILES, default="seed")
    p.add_argument("--data", type=Path, help="subset folder (default: data/subset/<profile>)")
    p.add_argument("--checkpoint", type=Path, help="default: the profile's run's best.pt")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for occlusion_study.json/.txt (default: CHECKPOINT/../eval)",
    )
    p.add_argument(
        "--methods", nargs="+", choices=POSTPROCESS_METHODS, default=list(POSTPROCESS_METHODS)
    )
    p.add_argument("--no-tta", action="store_true", help="leave out the flip-TTA variants")
    p.add_argument(
        "--timing-images", type=int, default=8, help="test images timed per variant (default 8)"
    )
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from seglib.engine import resolve_device
    from seglib.study import format_study, run_study, save_study

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seglib", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_synth,
        _add_subset,
        _add_train,
        _add_evaluate,
        _add_predict,
        _add_fetch_weights,
        _add_run,
        _add_study,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        # Bad input and seglib's own errors already name the file, annotation or choice at
        # fault, so a one-line message serves better than a traceback. Anything else is a bug.
        if not isinstance(e, (ValueError, FileNotFoundError, FileExistsError)) and not type(
            e
        ).__module__.startswith("seglib"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
