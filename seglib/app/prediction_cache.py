"""A run's predictions on a split, computed once and cached with a record of their source.

``split_predictions`` runs ``best.pt`` once per split at permissive thresholds and caches the
COCO results with a record of the checkpoint (sha1) and settings; a changed checkpoint means
they are recomputed. Thresholds are then applied to the cache, never inside the model again.
The cache is a COCO results file, with COCO's category ids
(``seglib.evaluation.prediction.write_results``); it is read back in the split's labels 1..k,
as ``seglib.evaluation.prediction.predict`` returns them. ``evaluate_split`` scores a cache at
an operating point and writes the metrics file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from seglib.app.operating_point import OperatingPoint
from seglib.app.provenance import (
    checkpoint_fingerprint,
    read_results_if_fresh,
    write_results_with_source,
    write_with_source,
)
from seglib.core.config import TrainConfig
from seglib.core.paths import Paths
from seglib.data.dataset import open_split
from seglib.evaluation import prediction
from seglib.evaluation.coco_ap import evaluate_results
from seglib.models import builder, zeroshot
from seglib.models.mask2former_weights import pretrained_available
from seglib.models.weights import weights_file

#: How the cached predictions number categories (recorded, so older caches in the split's
#: labels are recomputed rather than misread).
RESULTS_CATEGORY_IDS = "coco"
#: Inference settings of the cached predictions: keep every detection the model scores above
#: 0, up to COCO's 100 per image, so any slider threshold can be applied to the cache.
PERMISSIVE_SCORE_THRESH = 0.0
MIN_DETECTIONS = 100


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
            f"({how}, {self.source.get('precision', 'fp32')}: {self.file})"
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
    split: str,
    checkpoint: Path,
    cfg: TrainConfig,
    detections: int,
    zero_shot: bool,
    device: torch.device,
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
        "precision": builder.predicts_in_arch(cfg.arch, device, cfg.cpu_amp_eval),
    }
    if zero_shot and cfg.arch == "mask2former":
        cached = pretrained_available(cfg.m2f_pretrained)
        source["zero_shot_weights"] = cfg.m2f_pretrained if cached else "stand-in"
    elif zero_shot:
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

    checkpoint = paths.require(paths.layout.best_checkpoint, "notebooks/03_train.ipynb")
    paths.require(paths.split_json(split), "notebooks/01_data_subset.ipynb")
    dataset = open_split(paths.subset, split)
    cfg = TrainConfig.load(paths.layout.config)
    detections = max(cfg.detections_per_img, MIN_DETECTIONS)
    device = torch.device(device)
    source = _prediction_source(split, checkpoint, cfg, detections, zero_shot, device)
    file = paths.layout.predictions / f"{split}_{'zero_shot' if zero_shot else 'results'}.json"
    cached = read_results_if_fresh(file, source, dataset.coco)
    if cached is not None:
        return SplitPredictions(split, dataset, cached, cfg, file, source, recomputed=False)
    if zero_shot:
        net = zeroshot.zero_shot_baseline(dataset.categories, cfg).to(device)
    else:
        net, _, _ = builder.model_from_checkpoint(checkpoint, device, categories=dataset.categories)
    _permissive(net, detections)
    results = prediction.predict(net, dataset, device, progress=progress, cpu_amp=cfg.cpu_amp_eval)
    write_results_with_source(file, results, dataset.categories, source)
    return SplitPredictions(split, dataset, results, cfg, file, source, recomputed=True)


def evaluate_split(
    paths: Paths, preds: SplitPredictions, op: OperatingPoint, *, with_curves: bool = True
) -> dict[str, Any]:
    """COCO AP and IoU measures of cached predictions, written to ``eval/<split>_metrics.json``.

    The extra NMS of ``op`` is applied first (AP sweeps every score, so ``op.score_thresh``
    reaches only best-match IoU, pixel IoU and the confusion matrix). The file and its
    ``.source.json`` record the checkpoint and the operating point.
    """

    kept = op.suppress(preds.results)
    scores = evaluate_results(
        preds.dataset.coco, kept, score_thresh=op.score_thresh, with_curves=with_curves
    )
    source = {**preds.source, "operating_point": asdict(op)}
    scores["source"] = source
    name = "zero_shot" if preds.source.get("model") == "zero-shot" else "metrics"
    write_with_source(paths.layout.eval_dir / f"{preds.split}_{name}.json", scores, source)
    return scores
