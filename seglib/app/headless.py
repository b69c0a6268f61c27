"""The headless run's pre-flight check (``python -m seglib run``), and the check of what the
notebooks produced.

``preflight`` says whether the seed profile can run here (COCO, weights, network) before any
notebook starts; ``seglib.app.notebook_runner`` then executes the notebooks, and
``check_outputs`` reads the files they wrote: every declared figure by content, the metrics
files, their provenance.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from seglib.app import provenance, runs
from seglib.core.paths import Paths, RunFolder
from seglib.models.weights import weights_file
from seglib.studies.comparison_report import models_without_scores
from seglib.viz import files

COCO_HOST = "http://images.cocodataset.org"
WEIGHTS_HOST = "https://download.pytorch.org"


class PreflightError(RuntimeError):
    """The seed profile cannot run here (no COCO, no weights, no network)."""


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def preflight(profile: str, paths: Paths, *, arch: str = "v1") -> list[str]:
    """Check that ``profile`` can run here; return what will be downloaded.

    The smoke profile needs nothing. The seed profile needs the COCO instances JSONs under
    ``paths.coco_root/annotations`` and torchvision's COCO weights in the TORCH_HOME cache, or a
    network that reaches both hosts to fetch them.

    Returns:
        Human-readable notes on what the run will download (empty when all is in place).

    Raises:
        PreflightError: something needed is missing and cannot be fetched; names each item
            and points to ``make demo``.
    """
    if profile != "seed":
        return []

    notes, problems = [], []
    annotations = [
        paths.coco_root / "annotations" / f"instances_{s}2017.json" for s in ("train", "val")
    ]
    if not all(p.is_file() for p in annotations):
        if reachable(COCO_HOST):
            notes.append(
                f"COCO annotations will be downloaded into {paths.coco_root / 'annotations'} (241 MB, once)"
            )
        else:
            problems.append(
                f"COCO 2017 annotations are missing ({annotations[0]}, {annotations[1].name}) and "
                f"{COCO_HOST} cannot be reached to download them"
            )
    elif not reachable(COCO_HOST) and not (paths.coco_root / "train2017").is_dir():
        problems.append(
            f"COCO images are not under {paths.coco_root} and {COCO_HOST} cannot be reached"
        )
    weights = weights_file("coco", arch)
    if not weights.is_file():
        if reachable(WEIGHTS_HOST):
            notes.append(
                f"COCO-trained Mask R-CNN weights will be downloaded to {weights} (170 MB, once)"
            )
        else:
            problems.append(
                f"the COCO-trained weights {weights} are missing and {WEIGHTS_HOST} cannot be reached"
            )
    if problems:
        raise PreflightError(
            "the seed profile cannot run on this machine:\n  - "
            + "\n  - ".join(problems)
            + "\nPut the files in place by hand (see README, 'Getting COCO and the weights'), "
            "or run `make demo` for the offline smoke profile."
        )
    return notes


# --- what the notebooks produced --------------------------------------------------------------
def check_outputs(
    paths: Paths, notebooks: Iterable[str], *, min_val_ap50: float | None = None
) -> list[str]:
    """Problems with what ``notebooks`` (stems, e.g. "04_evaluate") left under ``paths``.

    * every figure each declares in ``files.NOTEBOOK_FIGURES``: present, not blank, and every
      axes holding data (``files.check_figure_file``); a notebook that recorded which of its
      figures this run could draw (``files.record_figures``: 07, which draws none when there
      is nothing to compare) is held to those;
    * 01: the split JSONs. 03: config.json, run_info.json, metrics.jsonl with a validation
      row, best.pt. 04: eval/val_metrics.json and eval/test_metrics.json recording the current
      best.pt, and val mask AP50 >= ``min_val_ap50`` when given. 05: the cached test
      predictions recording the current best.pt, and the saved operating point. 07:
      comparison.json, and each compared model scoring above 0 somewhere in its charts. 08:
      the study.json of both studies.

    Returns:
        One message per problem (empty when all is well).
    """
    notebooks = list(notebooks)
    problems = _figure_problems(paths, notebooks)
    if "01_data_subset" in notebooks:
        problems += [
            f"{paths.split_json(s)} was not written"
            for s in ("train", "val", "test")
            if not paths.split_json(s).is_file()
        ]
    if "07_detr_comparison" in notebooks:
        problems += _comparison_problems(paths)
    if "08_augmentation_and_data" in notebooks:
        problems += [
            f"{paths.studies / name / 'study.json'} was not written by notebook 08"
            for name in ("augmentation", "data")
            if not (paths.studies / name / "study.json").is_file()
        ]
    if any(nb[:2] in ("03", "04", "05") for nb in notebooks):
        problems += _run_problems(paths, notebooks, min_val_ap50)
    return problems


def _figure_problems(paths: Paths, notebooks: list[str]) -> list[str]:
    """Each notebook's declared (or recorded) figures, checked by content."""

    problems: list[str] = []
    for nb in notebooks:
        try:
            figure_files = files.notebook_figures(paths, nb)
        except KeyError as e:
            problems.append(str(e.args[0]))
            continue
        except FileNotFoundError as e:  # the run folder is gone
            problems.append(f"{nb}: {e}")
            continue
        for file in figure_files:
            problems += files.check_figure_file(file)
    return problems


def _comparison_problems(paths: Paths) -> list[str]:
    """07: its comparison.json, and no compared model at 0 (or undefined) on every bar of its
    charts: such a series shows nothing, however full the other models' bars are."""

    file = paths.comparison / "comparison.json"
    if not file.is_file():
        return [f"{file} was not written by notebook 07"]
    return [
        f"{file}: {name} scores 0 on every class and occlusion bucket, so its bars in 07's "
        "charts hold no data (too few compare_epochs for it to learn anything?)"
        for name in models_without_scores(json.loads(file.read_text()))
    ]


def _run_problems(paths: Paths, notebooks: list[str], min_val_ap50: float | None) -> list[str]:
    """03-05: the run's files, its metrics and predictions recording the current best.pt."""

    problems: list[str] = []
    try:
        run = paths.run
    except FileNotFoundError as e:
        return [str(e)]
    fingerprint = (
        provenance.checkpoint_fingerprint(paths.layout.best_checkpoint)
        if paths.layout.best_checkpoint.is_file()
        else None
    )
    if "03_train" in notebooks:
        layout = RunFolder(run)
        for file in (layout.config, layout.info, layout.metrics, layout.best_checkpoint):
            if not file.is_file():
                problems.append(f"{file} was not written by notebook 03")
        if not runs.run_summary(paths, run.name)["evals"]:
            problems.append(f"{layout.metrics} holds no validation row")

    def recorded(file: Path, what: str) -> dict | None:
        if not file.is_file():
            problems.append(f"{file} was not written ({what})")
            return None
        record = provenance.source_file(file)
        source = json.loads(record.read_text()) if record.is_file() else {}
        sha1 = (source.get("checkpoint") or {}).get("sha1")
        if fingerprint is None or sha1 != fingerprint["sha1"]:
            problems.append(f"{file} does not record the run's current best.pt ({record})")
        return json.loads(file.read_text())

    if "04_evaluate" in notebooks:
        val = recorded(paths.layout.eval_dir / "val_metrics.json", "notebook 04")
        recorded(paths.layout.eval_dir / "test_metrics.json", "notebook 04")
        if val is not None and min_val_ap50 is not None:
            ap50 = val["segm"]["AP50"]
            if not ap50 >= min_val_ap50:
                problems.append(
                    f"val mask AP50 is {ap50:.3f}, below the {min_val_ap50:.2f} this profile must "
                    f"reach ({paths.layout.eval_dir / 'val_metrics.json'})"
                )
    if "05_inference_viz" in notebooks:
        recorded(paths.layout.predictions / "test_results.json", "notebook 05")
        if not paths.layout.operating_point.is_file():
            problems.append(f"{paths.layout.operating_point} was not saved by notebook 05")
    return problems
