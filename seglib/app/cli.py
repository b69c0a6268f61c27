"""``python -m seglib <command>``: the pipeline's steps, headless.

Each command parses its arguments, calls one library function and prints what it returned.
The parser is built here; the commands' handlers are in ``seglib.app.commands``, imported
once the arguments parse. These two modules (with the notebooks) are the only ones that print.
Every command that builds a TrainConfig (train, evaluate, predict, study, run) takes
``--set FIELD=VALUE``, repeatable; ``--epochs``, ``--lr`` and ``--device`` are its aliases.

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
from types import ModuleType

from seglib.core.config import DEFAULT_CATEGORIES, M2F_MODEL_ID, POSTPROCESS_METHODS
from seglib.core.profiles import PROFILES

__all__ = ["build_parser", "main"]

#: The named flags kept for the settings users reach for most: each is a spelling of one
#: ``--set`` item (``--epochs 3`` is ``--set num_epochs=3``) and goes the same way.
ALIASES = {"--epochs": "num_epochs", "--lr": "lr", "--device": "device"}


class _SetItem(argparse.Action):
    """Append ``FIELD=VALUE`` to the ``--set`` items, in command-line order (the last wins);
    a list (``--categories dog cake``) is written as JSON."""

    def __init__(self, option_strings: list[str], dest: str, field: str, **kwargs) -> None:
        self.field = field
        super().__init__(option_strings, "overrides", default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        value = json.dumps(values) if isinstance(values, list) else values
        namespace.overrides = [*namespace.overrides, f"{self.field}={value}"]


def _add_settings(p: argparse.ArgumentParser, reads: str, aliases: tuple[str, ...]) -> None:
    """``--set FIELD=VALUE`` (repeatable) and ``aliases`` (keys of ``ALIASES``), all into
    ``args.overrides``, which ``seglib.core.overrides.parse_overrides`` reads."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help=f"a TrainConfig field (seglib/core/config.py), repeatable; {reads}",
    )
    for flag in aliases:
        field = ALIASES[flag]
        p.add_argument(
            flag, action=_SetItem, field=field, metavar="VALUE", help=f"--set {field}=VALUE"
        )


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
    _add_settings(
        p,
        "over the profile or --config: --set batch_size=4 --set weights=none --set amp=false",
        ("--epochs", "--lr", "--device"),
    )
    p.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        action=_SetItem,
        field="categories",
        help="--set categories=[...]: names in label order, checked against the subset's "
        "(default: the subset's, from DATA/train.json)",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO AP, best-match IoU and pixel IoU")
    p.add_argument("--data", type=Path, help="subset folder (with --checkpoint or --zero-shot)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to evaluate")
    p.add_argument(
        "--zero-shot", action="store_true", help="evaluate the unmodified COCO-trained model"
    )
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
    p.add_argument("--out", type=Path, help="write the metrics JSON here")
    _add_settings(
        p,
        "reads arch (the --zero-shot model, default v1), score_thresh (for the IoU measures), "
        "device, postprocess, tta_hflip and the rules' parameters (soft_nms_*, matrix_nms_*, "
        "mask_nms_thresh) over the checkpoint's",
        ("--device",),
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict on images: COCO results JSON and overlay PNGs")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image files or folders")
    p.add_argument("--out", type=Path, required=True)
    _add_settings(
        p,
        "reads score_thresh, device, postprocess, tta_hflip and the rules' parameters "
        "(soft_nms_*, matrix_nms_*, mask_nms_thresh) over the checkpoint's",
        ("--device",),
    )


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


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="execute the notebooks in order, headless",
        description="Execute the numbered notebooks headless with nbclient. The run gets its "
        "own folder, runs/<profile>/<run>/; --set values become the notebooks' config (and "
        "their forms' defaults) and are recorded in the run's run_info.json. Once 03 is done, "
        "04 -> 05, 06 and 07 run side by side, sharing the CPUs' threads; --one-at-a-time runs "
        "every notebook in order.",
    )
    p.add_argument("--profile", choices=PROFILES, default="seed")
    p.add_argument("--run", default=None, metavar="NAME", help="run name (default: a timestamp)")
    _add_settings(
        p,
        "the notebooks' config over the profile: --set lr=0.002 --set num_epochs=3",
        ("--epochs", "--lr", "--device"),
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
    p.add_argument(
        "--notebooks",
        nargs="+",
        metavar="NN",
        default=None,
        help="run only these notebooks, by number or name (e.g. 01 02 08). Default: the whole "
        "series; the offline profiles leave out 08 (its studies take half an hour), and say so",
    )
    p.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="run every notebook alone, in order (default: 04 -> 05, 06 and 07 side by side)",
    )
    p.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the studies headless: post-processing, model family, augmentation, data size",
        description="Each study scores its contenders with one evaluator on the test split: "
        "box and mask AP overall, per class and per occlusion bucket. postprocess is notebook "
        "06's, family 07's, augmentation and data 08's.",
    )
    kinds = p.add_subparsers(dest="study", required=True, metavar="STUDY")

    post = kinds.add_parser(
        "postprocess",
        help="post-processing variants (NMS rules, flip TTA) of one checkpoint, tuned on val",
    )
    post.add_argument("--profile", choices=PROFILES, default="seed")
    post.add_argument("--data", type=Path, help="subset folder (default: data/subset/<profile>)")
    post.add_argument("--checkpoint", type=Path, help="default: the profile's run's best.pt")
    post.add_argument(
        "--out",
        type=Path,
        help="folder for occlusion_study.json/.txt (default: CHECKPOINT/../eval)",
    )
    post.add_argument(
        "--methods", nargs="+", choices=POSTPROCESS_METHODS, default=list(POSTPROCESS_METHODS)
    )
    post.add_argument("--no-tta", action="store_true", help="leave out the flip-TTA variants")
    post.add_argument(
        "--timing-images", type=int, default=8, help="test images timed per variant (default 8)"
    )
    _add_settings(post, "reads device", ("--device",))

    helps = {
        "family": "Mask R-CNN v1, v2 and Mask2Former trained on one recipe and budget "
        "(compare_epochs), plus the cached zero-shot COCO models",
        "augmentation": "baseline, + scale jitter, + Copy-Paste, + both, over study_seeds seeds "
        "of study_epochs epochs each",
        "data": "AP against training-set size (study_sizes), about the same steps per size, "
        "over study_seeds seeds",
    }
    for kind, text in helps.items():
        q = kinds.add_parser(kind, help=text, description=text)
        q.add_argument("--profile", choices=PROFILES, default="seed")
        q.add_argument("--data", type=Path, help="subset folder (default: data/subset/<profile>)")
        q.add_argument(
            "--out",
            type=Path,
            help=f"study folder (default: data/{'compare' if kind == 'family' else 'studies'}"
            f"/<profile>{'' if kind == 'family' else '/' + kind})",
        )
        _add_settings(
            q,
            "the profile's config that every contender changes: --set study_seeds=5 "
            "--set study_epochs=4 --set copy_paste_prob=1",
            ("--lr", "--device"),
        )
        q.set_defaults(config=None)


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
    handler = getattr(_handlers(), "cmd_" + args.command.replace("-", "_"))
    try:
        return handler(args)
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


def _handlers() -> ModuleType:
    """``seglib.app.commands``, imported once a command has parsed.

    The one seglib import inside a function: the handlers' module loads torch and the whole
    pipeline, which ``python -m seglib --help`` (and a usage error) should not wait for.

    It goes without ``rfc3987_syntax``. nbformat (``run``'s notebook runner) validates with
    jsonschema, which registers an IRI format checker when that optional module is installed
    (JupyterLab's jupyter-events pulls it in), and the module builds a Lark grammar at import:
    importing nbformat took 2.0 s with it and 0.3 s without on the AMD EPYC kind, before a run's
    first kernel could start. The notebook schema has no IRI formats.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from seglib.app import commands

    return commands
