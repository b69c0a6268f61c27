"""COCO AP through pycocotools: box and mask, overall, per class and per size, with the tables.

Inputs everywhere are a split's ground truth ``gt`` and COCO ``results``, as described in
``seglib.evaluation.coco_results``: ground truth and results files carry COCO's category ids and are
compared as they are; results lists carry labels 1..k, turned into the ground truth's ids
first (``seglib.core.categories``). The mask-IoU measures live in ``seglib.evaluation.iou_measures``.

AP needs no score threshold (it sweeps all scores); ``score_thresh`` only applies to the
IoU measures, the confusion matrix and the galleries, which look at "what the model shows".
Undefined values are -1 in dicts (COCOeval's convention), NaN only from ``best_match_iou``.

Two IoU summaries, named for what they measure: ``best_match_iou`` is recall-oriented (each
ground-truth instance scores the IoU of its best-matching prediction; unmatched predictions
cost nothing), and ``pixel_iou`` is semantic segmentation's per-class IoU over the split, whose
class average (``mean_pixel_iou`` in ``evaluate_results``) is what that field calls mean IoU.
The module never prints: pycocotools' output is swallowed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglib.evaluation.coco_results import (
    IOU_TYPES,
    GroundTruth,
    Results,
    class_names,
    load_ground_truth,
    prepare,
    quiet,
)
from seglib.evaluation.iou_measures import best_match_iou, pixel_iou

#: Keys of each iou-type section, in the order of ``COCOeval.stats``.
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SUMMARY_KEYS = STAT_KEYS[:9]
#: COCO's area ranges in px² (upper bound exclusive here, so each instance is in one bucket).
SIZE_RANGES = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, float("inf")),
}


# --- COCOeval -----------------------------------------------------------------------------
def load_detections(coco: COCO, results: list[dict], iou_type: str) -> COCO:
    """``results`` as pycocotools' detection set against ``coco``, for one ``iou_type``.

    Like torchvision's reference: bbox results carry no mask, segm results no box, so loadRes
    takes each detection's area from the box or the mask respectively. An empty list gives an
    empty set (loadRes indexes anns[0]).
    """
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    dets = [{k: v for k, v in r.items() if k != drop} for r in results]
    with quiet():
        if dets:
            return coco.loadRes(dets)
        dt = COCO()
        dt.dataset = {
            "images": list(coco.dataset["images"]),
            "annotations": [],
            "categories": copy.deepcopy(coco.dataset["categories"]),
        }
        dt.createIndex()
    return dt


def _run_cocoeval(coco: COCO, results: list[dict], iou_type: str) -> COCOeval:
    dt = load_detections(coco, results, iou_type)
    with quiet():
        evaluator = COCOeval(coco, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def mean_valid(values: np.ndarray) -> float:
    """Mean of the entries COCOeval defined (> -1), or -1 when there is none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _iou_index(evaluator: COCOeval, iou_thresh: float) -> int:
    hits = np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou_thresh))
    if not hits.size:
        raise ValueError(
            f"iou_thresh {iou_thresh} is not one of COCOeval's thresholds {evaluator.params.iouThrs.tolist()}"
        )
    return int(hits[0])


def _section(evaluator: COCOeval, names: dict[int, str]) -> dict:
    section = {
        k: float(v) for k, v in zip(SUMMARY_KEYS, evaluator.stats[: len(SUMMARY_KEYS)], strict=True)
    }
    precision = evaluator.eval["precision"]  # [iou T, recall R, class K, area A, maxDets M]
    t50, t75 = _iou_index(evaluator, 0.5), _iou_index(evaluator, 0.75)
    section["per_class"] = {
        names[c]: {
            "AP": mean_valid(precision[:, :, k, 0, -1]),
            "AP50": mean_valid(precision[t50, :, k, 0, -1]),
            "AP75": mean_valid(precision[t75, :, k, 0, -1]),
        }
        for k, c in enumerate(evaluator.params.catIds)
    }
    # label order, as the ground truth lists its categories; COCOeval sorts them by id
    section["per_class"] = {name: section["per_class"][name] for name in names.values()}
    return section


def _curves(evaluator: COCOeval, names: dict[int, str], iou_thresh: float) -> dict:
    precision = evaluator.eval["precision"][
        _iou_index(evaluator, iou_thresh), :, :, 0, -1
    ]  # [R, K]
    recall = evaluator.params.recThrs.tolist()
    curves = {}
    column = {c: k for k, c in enumerate(evaluator.params.catIds)}
    for c in names:  # label order; COCOeval's columns are in id order
        k = column[c]
        if (precision[:, k] > -1).any():
            curves[names[c]] = {
                "recall": recall,
                "precision": precision[:, k].tolist(),
                "AP": mean_valid(precision[:, k]),
            }
    has_gt = (precision > -1).all(axis=0)
    if has_gt.any():
        overall = precision[:, has_gt].mean(axis=1)
        curves["all"] = {
            "recall": recall,
            "precision": overall.tolist(),
            "AP": float(overall.mean()),
        }
    return curves


def pr_curves(
    gt: GroundTruth, results: Results, *, iou_type: str = "segm", iou_thresh: float = 0.5
) -> dict[str, dict]:
    """Precision against recall from COCOeval, per class and over all classes.

    Read from ``COCOeval.eval["precision"]`` at one IoU threshold, area "all", 100 detections
    per image, at COCO's 101 recall points (precision is already COCO's interpolated,
    monotone envelope; 0 beyond the highest recall reached).

    Returns:
        ``{name: {"recall": [101 floats], "precision": [101 floats], "AP": float}}`` plus
        ``"all"`` (the mean over classes). Classes without ground truth are left out.

    Raises:
        ValueError: unknown ``iou_type``, an ``iou_thresh`` not in 0.50:0.05:0.95, or bad results.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco, results = prepare(gt, results)
    return _curves(_run_cocoeval(coco, results, iou_type), class_names(coco), iou_thresh)


def evaluate_results(
    gt: GroundTruth, results: Results, *, score_thresh: float = 0.5, with_curves: bool = False
) -> dict:
    """COCO AP for boxes and masks plus best-match and pixel IoU, as a JSON-able dict.

    AP is computed over all images of ``gt`` (images without predictions count) and all
    predictions (no threshold); ``score_thresh`` applies to the IoU measures
    (``best_match_iou``, ``pixel_iou`` and its class mean ``mean_pixel_iou``).

    Returns:
        ``{"bbox": {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, "per_class": {name:
        {AP, AP50, AP75}}}, "segm": {...}, "best_match_iou", "pixel_iou": {name: iou},
        "mean_pixel_iou",
        "num_images", "num_predictions", "score_thresh", "categories": [{id, name}]}`` on a
        0-1 scale, -1 where undefined (no ground truth); classes in label order, ``id`` being
        COCO's. With ``with_curves``, each section also holds ``"pr_curves"`` as
        returned by ``pr_curves`` at IoU 0.5.

    Raises:
        ValueError: see ``load_results``.
    """
    coco, loaded = prepare(gt, results)
    names = class_names(coco)
    metrics: dict[str, Any] = {}
    for iou_type in IOU_TYPES:
        evaluator = _run_cocoeval(coco, loaded, iou_type)
        metrics[iou_type] = _section(evaluator, names)
        if with_curves:
            metrics[iou_type]["pr_curves"] = _curves(evaluator, names, 0.5)
    # the IoU measures take ``results`` as given: ``loaded`` carries COCO's ids, not labels
    best = best_match_iou(coco, results, score_thresh=score_thresh)
    metrics["best_match_iou"] = -1.0 if np.isnan(best) else best
    metrics["pixel_iou"] = pixel_iou(coco, results, score_thresh=score_thresh)
    defined = [v for v in metrics["pixel_iou"].values() if v >= 0]
    metrics["mean_pixel_iou"] = float(np.mean(defined)) if defined else -1.0
    metrics["num_images"] = len(coco.getImgIds())
    metrics["num_predictions"] = len(loaded)
    metrics["score_thresh"] = float(score_thresh)
    metrics["categories"] = [{"id": c, "name": name} for c, name in names.items()]
    return metrics


# --- dataset statistics -----------------------------------------------------------------
def size_buckets(gt: GroundTruth) -> dict[str, dict[str, int]]:
    """Per class, non-crowd instances in COCO's area ranges (px², annotation ``area``).

    small: area < 32², medium: 32² <= area < 96², large: area >= 96². (COCOeval's ranges
    share their end points; here each instance falls in exactly one bucket.)

    Returns:
        ``{name: {"small": n, "medium": n, "large": n}}`` in label order.
    """
    coco = load_ground_truth(gt)
    names = class_names(coco)
    counts = {name: dict.fromkeys(SIZE_RANGES, 0) for name in names.values()}
    for ann in coco.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        area = float(ann["area"]) if "area" in ann else float(mask_utils.area(coco.annToRLE(ann)))
        bucket = next(b for b, (lo, hi) in SIZE_RANGES.items() if lo <= area < hi)
        counts[names[ann["category_id"]]][bucket] += 1
    return counts


def _pct(value: float) -> str:
    return f"{100 * value:6.1f}" if value is not None and value >= 0 else "     -"


def format_table(metrics: Mapping) -> str:
    """A fixed-width text table of an ``evaluate_results`` dict, in percent ("-" = undefined)."""
    cols = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    sections = [t for t in IOU_TYPES if t in metrics]
    lines = [f"{'(percent)':<14}" + "".join(f"{c:>7}" for c in cols)]
    lines += [
        f"{t:<14}" + "".join(f" {_pct(metrics[t].get(c, -1))}" for c in cols) for t in sections
    ]
    names = list(metrics[sections[0]].get("per_class", {})) if sections else []
    if names:
        pixel = metrics.get("pixel_iou", {})
        lines += [
            "",
            f"{'per class':<14}"
            + "".join(f"{t + ' AP':>10}" for t in sections)
            + f"{'pixel IoU':>11}",
        ]
        for name in names:
            row = "".join(
                f"    {_pct(metrics[t]['per_class'].get(name, {}).get('AP', -1))}" for t in sections
            )
            lines.append(f"{name[:14]:<14}{row}     {_pct(pixel.get(name, -1))}")
    if "best_match_iou" in metrics:
        lines += [
            "",
            f"{'best-match IoU':<22}{_pct(metrics['best_match_iou'])}"
            "  each ground-truth instance's best prediction (recall-oriented)",
        ]
    if "mean_pixel_iou" in metrics:
        lines.append(
            f"{'pixel IoU, class mean':<22}{_pct(metrics['mean_pixel_iou'])}"
            "  per-class pixel IoU over the split, averaged over classes"
        )
    return "\n".join(lines)
