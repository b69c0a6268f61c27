"""The command handlers of ``python -m seglib``; ``seglib.app.cli`` builds the parser.

Each handler takes the parsed arguments, calls one library function, prints what it
returned and gives the exit status. ``seglib.app.cli`` imports this module only once the
arguments parse, so ``python -m seglib --help`` never loads torch.

Settings: every command that builds a ``TrainConfig`` (train, evaluate, predict, study, run)
takes ``--set FIELD=VALUE`` items, read by ``seglib.core.overrides`` as ``$SEGLIB_SET`` and
the notebook forms are. ``--epochs``, ``--lr``, ``--device`` (and train's ``--categories``)
are spellings of ``--set`` items. ``train`` and ``run`` read every field; the others read the
fields in ``READS`` and refuse the rest, which would change nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from seglib.app import headless, notebook_runner
from seglib.app.predict_files import predict_images
from seglib.app.runs import check_can_start, headline_ap, new_run_name
from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.overrides import apply_overrides, check_names, parse_overrides
from seglib.core.paths import RunFolder, get_paths
from seglib.core.runtime import resolve_device
from seglib.data.dataset import open_split, split_categories
from seglib.data.subset import build_subset, format_subset_counts, prepare_source
from seglib.data.synthetic import make_synthetic_coco
from seglib.engine import trainer
from seglib.evaluation.coco_ap import evaluate_results, format_table
from seglib.evaluation.prediction import check_postprocess, evaluate
from seglib.models import mask2former_weights, weights
from seglib.models.builder import model_from_checkpoint
from seglib.models.mask2former import build_zero_shot_mask2former
from seglib.models.postprocess import wrap
from seglib.models.suppression import Settings
from seglib.models.zeroshot import build_zero_shot_model
from seglib.studies import axes, family_comparison, occlusion_study, study, study_report
from seglib.studies.comparison_report import comparison_tables
from seglib.studies.occlusion_report import format_study, save_study

#: The post-processing fields evaluate and predict apply over a checkpoint's own choice: the
#: rule, flip TTA and the rules' parameters (the box NMS threshold and the detection count
#: are built into the model, so they stay the checkpoint's).
POSTPROCESS_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Settings)
    if f.name not in ("box_nms_thresh", "detections_per_img", "postprocess_pool")
)
#: The TrainConfig fields each command reads from ``--set``; train and run read them all.
READS: dict[str, tuple[str, ...]] = {
    "evaluate": ("device", "cpu_amp_eval", "score_thresh", "arch", *POSTPROCESS_FIELDS),
    "predict": ("device", "cpu_amp_eval", "score_thresh", *POSTPROCESS_FIELDS),
    "study postprocess": ("device",),
}


def settings_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """``TrainConfig()`` with the ``--set`` items applied, and those items as a dict, for the
    commands in ``READS`` (a field they do not read is refused, naming what they read).

    Raises:
        ValueError: an unknown or unread field, or a bad value (names the field).
    """
    overrides = parse_overrides(args.overrides)
    command = " ".join(filter(None, [args.command, getattr(args, "study", None)]))
    check_names(overrides, READS[command], f"`{command}`")
    return apply_overrides(TrainConfig(), overrides), overrides


def cmd_synth(args: argparse.Namespace) -> int:
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The profile (or --config file) with the ``--set`` items (and their aliases) applied."""
    cfg = TrainConfig.load(args.config) if args.config else TrainConfig.from_profile(args.profile)
    return apply_overrides(cfg, parse_overrides(args.overrides))


def train_categories(cfg: TrainConfig, args: argparse.Namespace, data: Path) -> TrainConfig:
    """``cfg`` with the categories to train: ``--categories`` (``--set categories=[...]``),
    else those of a ``--config`` file, else the subset's own (``data/train.json``, in label
    order).

    Raises:
        FileNotFoundError: ``data/train.json`` is missing.
        ValueError: explicit categories differ from the subset's (names both, and the fix).
    """
    subset = [c["name"] for c in split_categories(data)]
    asked = "categories" in parse_overrides(args.overrides)
    if not (asked or args.config):
        return cfg.replace(categories=tuple(subset))
    if list(cfg.categories) != subset:
        given = "--categories (--set categories)" if asked else f"the config file {args.config}"
        raise ValueError(
            f"{given} asks for categories {list(cfg.categories)} but {data / 'train.json'} holds "
            f"{subset} (labels 1..{len(subset)}, in that order). Build a subset with those "
            f"categories (`python -m seglib subset --categories ...`), or leave the categories "
            f"out to train on the subset's"
        )
    return cfg


def _announce(event: str, payload: dict) -> None:
    """Say once, as training starts, where it runs and at which precision."""
    if event == "start":
        print(f"device: {payload['device']} | {payload['precision']}")


def _announce_study(event: str, payload: dict) -> None:
    """``_announce``, and a line per scored (contender, seed)."""
    _announce(event, payload)
    if event == "scored":
        how = (
            "trained" if payload["trained"] else "zero-shot" if payload["run"] is None else "reused"
        )
        print(
            f"{payload['contender']} seed {payload['seed']} ({how}): mask AP "
            f"{payload['metrics']['segm']['AP']:.3f}, AP50 {payload['metrics']['segm']['AP50']:.3f}",
            flush=True,
        )


def cmd_train(args: argparse.Namespace) -> int:
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
    last = RunFolder(Path(out)).last_checkpoint
    if last.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"{last} exists: pass --resume to continue that run, or --overwrite to start afresh"
        )
    summary = trainer.train(cfg, data, out, resume=args.resume, progress=True, callback=_announce)
    if summary.get("rank", 0) == 0:
        print(f"run folder: {out}")
        best = summary.get("best")
        if best is not None:
            print(f"best val mask AP: {best}")
    return 0


def _postprocessed(model, run_cfg: TrainConfig, overrides: dict):
    """``model`` with the ``--set`` post-processing fields applied over ``run_cfg``'s stored
    choice, refused up front for Mask2Former, which has no NMS to replace."""
    changes = {k: v for k, v in overrides.items() if k in POSTPROCESS_FIELDS}
    if not changes:
        return model
    chosen = apply_overrides(run_cfg, changes)  # a mask2former config refuses here
    check_postprocess(run_cfg.arch, chosen.postprocess, chosen.tta_hflip)
    return wrap(model, chosen)


def _model_to_evaluate(args: argparse.Namespace, settings: TrainConfig, overrides: dict, dataset):
    """The zero-shot model (--zero-shot, ``--set arch``) or the checkpoint's, post-processed
    as asked."""
    device = resolve_device(settings.device)
    if not args.zero_shot:
        if "arch" in overrides:
            raise ValueError(
                "--set arch chooses the --zero-shot model; a checkpoint's architecture is its own"
            )
        model, run_cfg, _ = model_from_checkpoint(
            args.checkpoint, device=device, categories=dataset.categories
        )
        return _postprocessed(model, run_cfg, overrides), device
    # Zero-shot: the settings are the model's config (TrainConfig() with the --set items),
    # checked before any weights are loaded.
    check_postprocess(settings.arch, settings.postprocess, settings.tta_hflip)
    if settings.arch == "mask2former":
        model = build_zero_shot_mask2former(dataset.categories)
    else:
        model = build_zero_shot_model(dataset.categories, arch=settings.arch)
    return _postprocessed(model, settings, overrides), device


def cmd_evaluate(args: argparse.Namespace) -> int:
    settings, overrides = settings_from_args(args)
    if args.gt or args.predictions:
        if not (args.gt and args.predictions):
            raise ValueError("--gt and --predictions go together")
        metrics = evaluate_results(args.gt, args.predictions, score_thresh=settings.score_thresh)
    else:
        if not args.data or not (args.checkpoint or args.zero_shot):
            raise ValueError(
                "give --data with --checkpoint FILE or --zero-shot, or give --gt with --predictions"
            )
        dataset = open_split(args.data, args.split)
        model, device = _model_to_evaluate(args, settings, overrides, dataset)
        model.to(device)
        metrics = evaluate(
            model,
            dataset,
            device,
            score_thresh=settings.score_thresh,
            cpu_amp=settings.cpu_amp_eval,
        )
    print(format_table(metrics))
    if args.out:
        write_json_atomic(args.out, metrics)
        print(f"metrics written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    settings, overrides = settings_from_args(args)
    device = resolve_device(settings.device)
    model, run_cfg, categories = model_from_checkpoint(args.checkpoint, device=device)
    model = _postprocessed(model, run_cfg, overrides)
    written = predict_images(
        model,
        args.images,
        args.out,
        device,
        categories=categories,
        score_thresh=settings.score_thresh,
        cpu_amp=settings.cpu_amp_eval,
    )
    print(f"{written['num_images']} images, {written['num_predictions']} predictions")
    print(f"results: {written['results']}")
    print(f"overlays: {args.out}")
    return 0


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    if args.kind == "mask2former":
        licence = mask2former_weights.WEIGHTS_LICENCE
        print(f"{args.model_id}: weights licence {licence} (non-commercial use only)")
        print(f"weights ready: {mask2former_weights.fetch_mask2former_weights(args.model_id)}")
        return 0
    path = weights.fetch_maskrcnn_weights(args.kind, args.arch, progress=True)
    print(f"weights ready: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    # Bad values fail here, not in notebook 03.
    apply_overrides(TrainConfig.from_profile(args.profile), overrides)
    name = args.run or new_run_name()
    paths = get_paths(args.profile, run=name)
    check_can_start(paths, name, overwrite=args.overwrite)  # before spending time on 01-02
    for note in headless.preflight(args.profile, paths):
        print(note)
    notebooks, left_out = notebook_runner.select_notebooks(args.profile, args.notebooks)
    for note in left_out:
        print(note)
    if args.profile == "seed" and not weights.weights_file("coco", "v1").is_file():
        # `make run` is the explicit request for the seed experiment, whose weights these are.
        print(f"fetched {weights.fetch_maskrcnn_weights('coco', 'v1')}")
    out = args.out or paths.layout.notebooks_out
    print(
        f"run {name!r} ({args.profile}): {paths.run}"
        + (f", overrides {overrides}" if overrides else "")
    )
    side_by_side = () if args.one_at_a_time else notebook_runner.SIDE_BY_SIDE
    for line in notebook_runner.plan_lines(notebook_runner.plan_stages(notebooks, side_by_side)):
        print(line)
    # Each notebook's outputs are checked as soon as it is written, beside the chains still
    # running, not all at the end: there, on one core, they took 1.6 s of the demo.
    problems: list[str] = []
    for done in notebook_runner.run_notebooks(
        args.profile,
        out,
        run_name=name,
        overrides=overrides,
        overwrite=args.overwrite,
        notebooks=notebooks,
        side_by_side=side_by_side,
        timeout=args.timeout,
    ):
        print(f"executed {done}", flush=True)
        problems += headless.check_outputs(paths, [done.stem])
    print(
        f"executed notebooks in {out}; figures in {paths.layout.figures} and {paths.data_figures}"
    )
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if "03_train" in [nb.stem for nb in notebooks]:
        print(f"val mask AP50: {headline_ap(paths)['segm_AP50']:.3f}")
    for note in left_out:
        print(note)
    return 1 if problems else 0


def cmd_study(args: argparse.Namespace) -> int:
    return {
        "postprocess": _study_postprocess,
        "family": _study_family,
        "augmentation": _study_axis,
        "data": _study_axis,
    }[args.study](args)


def _study_postprocess(args: argparse.Namespace) -> int:
    settings, _ = settings_from_args(args)
    paths = get_paths(args.profile)
    data = args.data or paths.require(paths.subset, "`python -m seglib subset` (or notebook 01)")
    checkpoint = args.checkpoint or paths.require(
        paths.layout.best_checkpoint, "`python -m seglib train` (or notebook 03)"
    )
    result = occlusion_study.run_study(
        checkpoint,
        data,
        resolve_device(settings.device),
        methods=args.methods,
        tta=(False,) if args.no_tta else (False, True),
        timing_images=args.timing_images,
    )
    written = save_study(result, args.out or RunFolder(Path(checkpoint).parent).eval_dir)
    print(format_study(result))
    print(f"written: {written['json']} and {written['table']}")
    return 0


def _study_family(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    paths = get_paths(args.profile)
    data = args.data or paths.require(paths.subset, "`python -m seglib subset` (or notebook 01)")
    plan = family_comparison.plan_comparison(cfg)
    for reason in plan.skipped:
        print(f"left out: {reason}")
    if plan.needs_detr_extra:
        print("Mask2Former needs the optional detr extra: `make install-detr`")
    out = args.out or paths.comparison
    summary = family_comparison.compare_models(
        plan,
        data,
        out,
        num_epochs=cfg.compare_epochs,
        reusable=paths.run_dirs(),
        callback=_announce_study,
    )
    for table in comparison_tables(summary).values():
        print(table)
    print(f"written: {out / 'comparison.json'}")
    return 0


def _study_axis(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    paths = get_paths(args.profile)
    data = args.data or paths.require(paths.subset, "`python -m seglib subset` (or notebook 01)")
    base = axes.study_base(cfg)
    out = args.out or paths.studies / args.study
    reusable = paths.run_dirs()
    folders = {}
    if args.study == "augmentation":
        contenders = axes.augmentation_contenders(base)
    else:
        source = prepare_source(cfg, paths)
        contenders, folders = axes.data_contenders(base, source, out / "subsets")
        # the augmentation study's baseline is this curve's point at num_train
        reusable += sorted((paths.studies / "augmentation" / "baseline").glob("seed-*"))
    seeds = axes.study_seeds(cfg)
    print(f"{args.study} study: {len(contenders)} contenders x seeds {list(seeds)} -> {out}")
    result = study.run_study(
        base,
        contenders,
        data,
        out,
        seeds=seeds,
        reusable=reusable,
        data_dirs=folders,
        callback=_announce_study,
    )
    print(study_report.study_table(result))
    print(f"written: {out / study.STUDY_JSON}")
    return 0
