"""A training run over its life: started on purpose, and every derived file traceable to it.

* ``start_run`` begins a named run and refuses to replace an existing one unless asked
  (``overwrite``, which also clears the old evaluation, predictions and figures) or told to
  continue it (``resume``). It records the overrides and form changes in ``run_info.json``.
* ``split_predictions`` runs ``best.pt`` once per split at permissive thresholds and caches the
  COCO results with a record of the checkpoint (sha1) and settings; a changed checkpoint means
  they are recomputed. Thresholds are then applied to the cache, never inside the model again.
  The cache is a COCO results file, with COCO's category ids (``prediction.write_results``);
  it is read back in the split's labels 1..k, as ``prediction.predict`` returns them.
* ``OperatingPoint`` is the score / NMS threshold pair picked in notebook 05 and saved in the
  run, which overlays, galleries and the confusion matrix use.

The provenance records (``checkpoint_fingerprint``, ``read_if_fresh``, ``write_with_source``
and their results-file forms) live in ``seglib.app.provenance`` and are importable from here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from seglib.app.provenance import (
    checkpoint_fingerprint,
    read_if_fresh,
    read_results_if_fresh,
    source_file,
    write_results_with_source,
    write_with_source,
)
from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.paths import RUN_INFO, Paths, check_run_name
from seglib.evaluation import prediction
from seglib.models import builder, zeroshot

__all__ = [
    "MIN_DETECTIONS",
    "OVERWRITE_ENV",
    "PERMISSIVE_SCORE_THRESH",
    "RESULTS_CATEGORY_IDS",
    "RUN_MARKERS",
    "OperatingPoint",
    "RunExistsError",
    "RunRequest",
    "SplitPredictions",
    "check_can_start",
    "checkpoint_fingerprint",
    "clear_run",
    "env_overwrite",
    "evaluate_split",
    "headline",
    "new_run_name",
    "read_if_fresh",
    "read_results_if_fresh",
    "read_run_info",
    "run_exists",
    "run_summary",
    "source_file",
    "split_predictions",
    "start_run",
    "write_results_with_source",
    "write_with_source",
]

#: Set to 1 by ``python -m seglib run --overwrite``: notebook 03's overwrite box starts ticked.
OVERWRITE_ENV = "SEGLIB_OVERWRITE"
#: Files whose presence makes a folder an existing run.
RUN_MARKERS = (RUN_INFO, "config.json", "metrics.jsonl", "last.pt", "best.pt")
#: How the cached predictions number categories (recorded, so older caches in the split's
#: labels are recomputed rather than misread).
RESULTS_CATEGORY_IDS = "coco"
#: Inference settings of the cached predictions: keep every detection the model scores above
#: 0, up to COCO's 100 per image, so any slider threshold can be applied to the cache.
PERMISSIVE_SCORE_THRESH = 0.0
MIN_DETECTIONS = 100


class RunExistsError(FileExistsError):
    """A run of that name exists and neither overwrite nor resume was chosen."""


def new_run_name(now: datetime | None = None) -> str:
    """A timestamp name such as ``20250131-142501`` (local time), for unnamed runs."""
    return (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def env_overwrite() -> bool:
    """Whether ``$SEGLIB_OVERWRITE`` asks to replace an existing run (1/true/yes)."""
    return os.environ.get(OVERWRITE_ENV, "").strip().lower() in ("1", "true", "yes")


def run_exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (config, metrics or a checkpoint)."""
    return any((Path(run_dir) / name).exists() for name in RUN_MARKERS)


def check_can_start(paths: Paths, name: str, *, overwrite: bool = False) -> Path:
    """The run folder for a new run ``name``, if starting it is allowed.

    Raises:
        RunExistsError: the run exists and ``overwrite`` is False (names the run, the choices).
    """
    run_dir = paths.run_dir(name)
    if run_exists(run_dir) and not overwrite:
        when = _describe(run_dir)
        raise RunExistsError(
            f"run {name!r} already exists ({run_dir}{when}). Pick another run name, tick "
            "'overwrite' in the form (`--overwrite` on the command line) to replace it and its "
            "evaluation, or tick 'resume' to continue it."
        )
    return run_dir


@dataclass(frozen=True)
class RunRequest:
    """What notebook 03's form asks for: a run name, its config, and what to do if it exists."""

    name: str
    cfg: TrainConfig
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if self.resume and self.overwrite:
            raise ValueError("choose resume (continue the run) or overwrite (replace it), not both")


def start_run(
    paths: Paths, request: RunRequest, *, overrides: Mapping[str, Any] | None = None
) -> Paths:
    """Prepare ``runs/<profile>/<request.name>/`` for training; return ``paths`` selecting it.

    A fresh run writes ``run_info.json``: name, profile, start time, the ``overrides`` it was
    given (``--set`` / ``$SEGLIB_SET``) and every field that differs from the profile.
    ``overwrite`` first deletes the old run's files (checkpoints, metrics, eval/,
    predictions/, figures/, operating point), keeping only ``notebooks/`` (executed copies
    that ``python -m seglib run`` is writing). ``resume`` changes nothing on disk.

    Raises:
        RunExistsError: the run exists and neither ``overwrite`` nor ``resume`` is set.
        FileNotFoundError: ``resume`` without ``last.pt`` in the run.
    """
    name, run_dir = request.name, paths.run_dir(request.name)
    if request.resume:
        paths.require(run_dir / "last.pt", "a run of that name (untick 'resume' to start one)")
        return paths.with_run(name)
    check_can_start(paths, name, overwrite=request.overwrite)
    if request.overwrite:
        clear_run(run_dir)
    defaults = TrainConfig.from_profile(paths.profile).to_dict()
    changed = {k: v for k, v in request.cfg.to_dict().items() if v != defaults.get(k)}
    write_json_atomic(
        run_dir / RUN_INFO,
        {
            "name": name,
            "profile": paths.profile,
            "created": datetime.now(timezone.utc).isoformat(),
            "overrides": dict(overrides or {}),
            "changed_from_profile": changed,
        },
    )
    return paths.with_run(name)


def clear_run(run_dir: str | Path) -> None:
    """Delete everything in ``run_dir`` except ``notebooks/``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name == "notebooks":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run_info.json`` of a run, or ``{}`` for runs started by ``python -m seglib train``."""
    path = Path(run_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def _describe(run_dir: Path) -> str:
    info = read_run_info(run_dir)
    if info.get("created"):
        return f", started {info['created'][:19].replace('T', ' ')} UTC"
    return ""


# --- cached predictions -----------------------------------------------------------------------
@dataclass
class SplitPredictions:
    """COCO results of a run's ``best.pt`` (or of the zero-shot model) on one split.

    ``results`` hold every detection scoring above 0 (up to ``MIN_DETECTIONS`` per image);
    ``cfg`` is the run's TrainConfig; ``recomputed`` says whether the model ran this time.
    """

    split: str
    dataset: Any
    results: list[dict[str, Any]]
    cfg: TrainConfig
    file: Path
    source: dict[str, Any]
    recomputed: bool

    def __repr__(self) -> str:
        how = "predicted now" if self.recomputed else "from the cache"
        return (
            f"{len(self.results)} predictions on {len(self.dataset)} {self.split} images "
            f"({how}: {self.file})"
        )


def _permissive(net: Any, detections: int) -> None:
    """Open torchvision's in-model filters: score > 0 kept, ``detections`` per image.

    Applies to every module inside ``net`` with both filters, ``score_thresh`` and
    ``detections_per_img``: torchvision's RoIHeads, so wrappers (the zero-shot model, a
    post-processing wrapper) are opened too, and ``Mask2FormerSegmenter``.
    """
    heads = [
        m for m in net.modules() if hasattr(m, "score_thresh") and hasattr(m, "detections_per_img")
    ]
    if not heads:
        raise TypeError(
            f"{type(net).__name__} holds no in-model filters (score_thresh, detections_per_img) to open"
        )
    for h in heads:
        h.score_thresh = PERMISSIVE_SCORE_THRESH
        h.detections_per_img = detections


def _prediction_source(
    split: str, checkpoint: Path, cfg: TrainConfig, detections: int, zero_shot: bool
) -> dict[str, Any]:
    """What a prediction cache records: checkpoint, settings, and the zero-shot weights."""
    source = {
        "split": split,
        "model": "zero-shot" if zero_shot else "best.pt",
        "checkpoint": checkpoint_fingerprint(checkpoint),
        "box_score_thresh": PERMISSIVE_SCORE_THRESH,
        "box_nms_thresh": cfg.box_nms_thresh,
        "detections_per_img": detections,
        "category_ids": RESULTS_CATEGORY_IDS,
    }
    if zero_shot and cfg.arch == "mask2former":
        from seglib.models.mask2former_weights import pretrained_available

        cached = pretrained_available(cfg.m2f_pretrained)
        source["zero_shot_weights"] = cfg.m2f_pretrained if cached else "stand-in"
    elif zero_shot:
        from seglib.models.weights import weights_file

        coco_weights = weights_file("coco", cfg.arch)
        source["zero_shot_weights"] = str(coco_weights) if coco_weights.is_file() else "stand-in"
    return source


def split_predictions(
    paths: Paths,
    split: str,
    device: Any,
    *,
    zero_shot: bool = False,
    progress: bool = False,
) -> SplitPredictions:
    """Cached predictions of the selected run's ``best.pt`` on ``split`` (val or test).

    Files: ``predictions/<split>_results.json`` (or ``<split>_zero_shot.json``), a COCO
    results file with COCO's category ids, with ``.source.json`` beside it recording the
    checkpoint's sha1 and the inference settings. The model runs only when the record is
    missing or differs. The zero-shot baseline (``zero_shot=True``) uses the run's config for
    image size and NMS, and is keyed on the same checkpoint so it is redone with the run.
    ``results`` are in the split's labels 1..k either way.

    Raises:
        FileNotFoundError: no ``best.pt`` (names notebook 03) or no split (names notebook 01).
        CheckpointError: the checkpoint's class map differs from the split's.
    """
    from seglib.data.dataset import open_split

    checkpoint = paths.require(paths.best_checkpoint, "notebooks/03_train.ipynb")
    paths.require(paths.split_json(split), "notebooks/01_data_subset.ipynb")
    dataset = open_split(paths.subset, split)
    cfg = TrainConfig.load(paths.run / "config.json")
    detections = max(cfg.detections_per_img, MIN_DETECTIONS)
    source = _prediction_source(split, checkpoint, cfg, detections, zero_shot)
    file = paths.predictions / f"{split}_{'zero_shot' if zero_shot else 'results'}.json"
    cached = read_results_if_fresh(file, source, dataset.coco)
    if cached is not None:
        return SplitPredictions(split, dataset, cached, cfg, file, source, recomputed=False)
    if zero_shot:
        net = zeroshot.zero_shot_baseline(dataset.categories, cfg).to(device)
    else:
        net, _, _ = builder.model_from_checkpoint(checkpoint, device, categories=dataset.categories)
    _permissive(net, detections)
    results = prediction.predict(net, dataset, device, progress=progress)
    write_results_with_source(file, results, dataset.categories, source)
    return SplitPredictions(split, dataset, results, cfg, file, source, recomputed=True)


# --- operating point --------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatingPoint:
    """The thresholds a user shows the model at: score, and optional extra mask NMS.

    ``chosen_in`` says where it came from ("config" until notebook 05 saves one).

    Raises:
        ValueError: a threshold outside [0, 1].
    """

    score_thresh: float
    nms_thresh: float | None = None
    chosen_in: str = "config"

    def __post_init__(self) -> None:
        for name in ("score_thresh", "nms_thresh"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"operating point {name} must be in [0, 1], got {value}")

    def apply(self, results: Sequence[Mapping]) -> list[dict]:
        """The cached results the model shows at this point (score, then per-class mask NMS)."""
        from seglib.evaluation.coco_results import filter_predictions

        return filter_predictions(
            results, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh
        )

    def suppress(self, results: Sequence[Mapping]) -> list[dict]:
        """The extra NMS alone, every score kept: what AP (which sweeps all scores) is given."""
        from seglib.evaluation.coco_results import filter_predictions

        return filter_predictions(results, nms_thresh=self.nms_thresh)

    def save(self, path: str | Path) -> Path:
        """Write it as JSON (``paths.operating_point``)."""
        return write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path, default_score_thresh: float) -> OperatingPoint:
        """The saved point, or the config's ``score_thresh`` and no extra NMS when none is saved.

        Raises:
            ValueError: the file is not a valid operating point (names it).
        """
        path = Path(path)
        if not path.is_file():
            return cls(float(default_score_thresh))
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid operating point ({e}); delete it") from e

    def __str__(self) -> str:
        nms = "model NMS only" if self.nms_thresh is None else f"mask NMS IoU {self.nms_thresh:g}"
        return f"score >= {self.score_thresh:g}, {nms} (from {self.chosen_in})"


def evaluate_split(
    paths: Paths, preds: SplitPredictions, op: OperatingPoint, *, with_curves: bool = True
) -> dict[str, Any]:
    """COCO AP and IoU measures of cached predictions, written to ``eval/<split>_metrics.json``.

    The extra NMS of ``op`` is applied first (AP sweeps every score, so ``op.score_thresh``
    reaches only best-match IoU, pixel IoU and the confusion matrix). The file and its
    ``.source.json`` record the checkpoint and the operating point.
    """
    from seglib.evaluation.coco_ap import evaluate_results

    kept = op.suppress(preds.results)
    scores = evaluate_results(
        preds.dataset.coco, kept, score_thresh=op.score_thresh, with_curves=with_curves
    )
    source = {**preds.source, "operating_point": asdict(op)}
    scores["source"] = source
    name = "zero_shot" if preds.source.get("model") == "zero-shot" else "metrics"
    write_with_source(paths.eval_dir / f"{preds.split}_{name}.json", scores, source)
    return scores


# --- comparing runs ---------------------------------------------------------------------------
def run_summary(paths: Paths, name: str) -> dict[str, Any]:
    """What notebook 04 compares across runs, read from files only.

    Returns:
        ``{"name", "history": metrics.jsonl rows, "evals": the validation rows, "best":
        the best validation row by mask AP (or None), "test": eval/test_metrics.json or None}``.
    """
    run_dir = paths.run_dir(name)
    metrics_file = run_dir / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        if metrics_file.is_file()
        else []
    )
    evals = [r for r in rows if "segm_AP" in r]
    best = max(evals, key=lambda r: r["segm_AP"]) if evals else None
    test_file = run_dir / "eval" / "test_metrics.json"
    test = json.loads(test_file.read_text()) if test_file.is_file() else None
    return {"name": name, "history": rows, "evals": evals, "best": best, "test": test}


def headline(paths: Paths) -> dict[str, float]:
    """The selected run's validation mask AP and AP50 (0-1): from notebook 04's file if its
    checkpoint is still ``best.pt``, else from the best validation row of training.

    Raises:
        FileNotFoundError: the run has neither.
    """
    file, record = (
        paths.eval_dir / "val_metrics.json",
        source_file(paths.eval_dir / "val_metrics.json"),
    )
    if file.is_file() and record.is_file() and paths.best_checkpoint.is_file():
        recorded = json.loads(record.read_text()).get("checkpoint") or {}
        if recorded.get("sha1") == checkpoint_fingerprint(paths.best_checkpoint)["sha1"]:
            scores = json.loads(file.read_text())
            return {"segm_AP": scores["segm"]["AP"], "segm_AP50": scores["segm"]["AP50"]}
    best = run_summary(paths, paths.run.name)["best"]
    if best is None:
        raise FileNotFoundError(
            f"{paths.run} has no validation results yet: train it (notebook 03) first"
        )
    return {"segm_AP": best["segm_AP"], "segm_AP50": best["segm_AP50"]}
