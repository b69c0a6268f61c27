"""True positives, false positives and misses on one image, for the error galleries.

A prediction is a true positive when it takes a still unmatched ground-truth instance of its
own class with mask IoU >= ``iou_thresh`` (predictions taken in descending score, as COCOeval
does at one IoU threshold). An unmatched prediction inside a crowd region (intersection over
its own area >= ``iou_thresh``) is ignored, as COCOeval ignores it; any other is a false
positive. A ground-truth instance no prediction took is a miss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from seglib.metrics import GroundTruth, load_ground_truth, load_results

TP, FP, IGNORED = "tp", "fp", "ignored"


def match_image(
    gt: GroundTruth, results: Sequence[Mapping], image_id: int, *, iou_thresh: float = 0.5
) -> dict[str, Any]:
    """Classify one image's predictions and ground-truth instances.

    Args:
        gt: the split's ground truth (``COCO``, split JSON path or dict).
        results: COCO results (all images; the caller applies any score threshold first).
        image_id: the image to look at.

    Returns:
        ``{"prediction": {boxes float32 [N,4] XYXY px, masks uint8 [N,H,W], labels int64 [N],
        scores float32 [N], outcome: list of "tp" | "fp" | "ignored"}, "ground_truth":
        {boxes, masks, labels, matched: bool [M]}, "counts": {"tp", "fp", "missed"}}``,
        predictions highest score first, ground truth non-crowd only, in annotation order.

    Raises:
        KeyError: ``image_id`` is not in ``gt``. ValueError: malformed results.
    """
    coco = load_ground_truth(gt)
    if int(image_id) not in coco.imgs:
        raise KeyError(f"image id {image_id} is not in the ground truth")
    info = coco.imgs[int(image_id)]
    h, w = int(info["height"]), int(info["width"])
    mine = [r for r in results if int(r["image_id"]) == int(image_id)]
    preds = sorted(load_results(mine, coco), key=lambda r: -r["score"])
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[int(image_id)]))
    plain = [a for a in anns if not a.get("iscrowd", 0)]
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    gt_rles = [coco.annToRLE(a) for a in plain]
    pred_rles = [p["segmentation"] for p in preds]
    ious = (
        np.asarray(mask_utils.iou(pred_rles, gt_rles, [0] * len(gt_rles))).reshape(
            len(preds), len(plain)
        )
        if preds and plain
        else np.zeros((len(preds), len(plain)))
    )
    in_crowd = np.zeros(len(preds), dtype=bool)
    if preds and crowd:
        cover = mask_utils.iou(pred_rles, [coco.annToRLE(a) for a in crowd], [1] * len(crowd))
        in_crowd = np.asarray(cover).reshape(len(preds), len(crowd)).max(axis=1) >= iou_thresh
    matched = np.zeros(len(plain), dtype=bool)
    outcome = []
    for i, p in enumerate(preds):
        same = np.array([a["category_id"] == p["category_id"] for a in plain], dtype=bool)
        candidates = np.where(same & ~matched, ious[i], -1.0) if plain else np.empty(0)
        g = int(candidates.argmax()) if candidates.size else -1
        if g >= 0 and candidates[g] >= iou_thresh:
            matched[g] = True
            outcome.append(TP)
        else:
            outcome.append(IGNORED if in_crowd[i] else FP)
    return {
        "prediction": {
            "boxes": _xyxy([p["bbox"] for p in preds]),
            "masks": _decode(pred_rles, h, w),
            "labels": np.array([p["category_id"] for p in preds], dtype=np.int64),
            "scores": np.array([p["score"] for p in preds], dtype=np.float32),
            "outcome": outcome,
        },
        "ground_truth": {
            "boxes": _xyxy([a["bbox"] for a in plain]),
            "masks": _decode(gt_rles, h, w),
            "labels": np.array([a["category_id"] for a in plain], dtype=np.int64),
            "matched": matched,
        },
        "counts": {
            "tp": outcome.count(TP),
            "fp": outcome.count(FP),
            "missed": int((~matched).sum()),
        },
    }


def _xyxy(xywh: list) -> np.ndarray:
    boxes = np.array(xywh, dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _decode(rles: list, h: int, w: int) -> np.ndarray:
    if not rles:
        return np.zeros((0, h, w), dtype=np.uint8)
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)).astype(np.uint8)
