"""True positives, false positives and misses on one image, for the error galleries.

The outcomes are COCOeval's own: ``match_image`` runs pycocotools' ``COCOeval`` (mask IoU, one
category at a time, the image alone, one IoU threshold, area range "all", every prediction
kept) and reads its per-image matches (``evaluateImg``: ``dtMatches``, ``gtMatches``,
``dtIgnore``). So, as in COCO's AP at that threshold: predictions take ground truth of their
own class in descending score, each instance at most once; a prediction matched to a crowd
region *of its own class* (intersection over the prediction's area >= the threshold) is
ignored; any other unmatched prediction, including one of another class inside a crowd, is a
false positive; a non-crowd instance no prediction took is a miss.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglib.core.categories import category_labels
from seglib.evaluation.coco_ap import load_detections
from seglib.evaluation.coco_results import GroundTruth, load_ground_truth, load_results, quiet

TP, FP, IGNORED = "tp", "fp", "ignored"


def _image_only(coco: COCO, image_id: int) -> tuple[COCO, list[dict]]:
    """A private COCO holding ``image_id`` alone, and its annotations in their order.

    COCOeval rewrites ground-truth annotations in place (adds "ignore", polygons become RLE),
    so it gets copies, re-numbered 1..M: its matches store annotation ids, and 0 means none.
    """
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    private = load_ground_truth(
        {
            "images": [copy.deepcopy(coco.imgs[image_id])],
            "annotations": [{**copy.deepcopy(a), "id": i} for i, a in enumerate(anns, start=1)],
            "categories": copy.deepcopy(coco.dataset["categories"]),
        }
    )
    return private, anns


def _cocoeval_outcomes(
    coco: COCO, preds: list[dict], image_id: int, iou_thresh: float
) -> tuple[list[str], np.ndarray]:
    """COCOeval's matching of ``preds`` (ids 1..N in this order) against ``coco`` (ids 1..M).

    Returns:
        (outcome per prediction, ``TP``/``FP``/``IGNORED``; bool [M], whether each
        annotation was taken by a prediction that counts: crowds come out False).
    """
    outcome, taken = [FP] * len(preds), np.zeros(len(coco.anns), dtype=bool)
    if not preds:
        return outcome, taken
    with quiet():
        evaluator = COCOeval(coco, load_detections(coco, preds, "segm"), "segm")
        params = evaluator.params
        params.imgIds, params.useCats = [int(image_id)], 1
        params.iouThrs = np.array([float(iou_thresh)])
        params.areaRng, params.areaRngLbl = [[0.0, 1e10]], ["all"]
        params.maxDets = [len(preds)]
        evaluator.evaluate()
    for entry in evaluator.evalImgs:  # one per category with ground truth or predictions
        if entry is None:
            continue
        for d, dt_id in enumerate(entry["dtIds"]):
            if entry["dtIgnore"][0, d]:
                outcome[dt_id - 1] = IGNORED
            elif entry["dtMatches"][0, d] > 0:
                outcome[dt_id - 1] = TP
        for g, gt_id in enumerate(entry["gtIds"]):
            taken[gt_id - 1] = entry["gtMatches"][0, g] > 0 and not entry["gtIgnore"][g]
    return outcome, taken


def match_image(
    gt: GroundTruth, results: Sequence[Mapping], image_id: int, *, iou_thresh: float = 0.5
) -> dict[str, Any]:
    """Classify one image's predictions and ground-truth instances as COCOeval matches them.

    Args:
        gt: the split's ground truth (``COCO``, split JSON path or dict); left unchanged.
        results: in-memory COCO results, as ``seglib.evaluation.prediction.predict`` returns them (all
            images; the caller applies any score threshold first).
        image_id: the image to look at.
        iou_thresh: the mask IoU from which a prediction takes an instance (COCO's AP50: 0.5).

    Returns:
        ``{"prediction": {boxes float32 [N,4] XYXY px, masks uint8 [N,H,W], labels int64 [N],
        scores float32 [N], outcome: list of "tp" | "fp" | "ignored"}, "ground_truth":
        {boxes float32 [M,4], masks uint8 [M,H,W], labels int64 [M], matched: bool [M]},
        "counts": {"tp", "fp", "missed"}}``, predictions highest score first (ties in their
        order in ``results``), ground truth non-crowd only, in annotation order. Labels are
        1..k (``seglib.core.categories.category_labels``, what ``class_names`` indexes).

    Raises:
        KeyError: ``image_id`` is not in ``gt``.
        ValueError: malformed results (``load_results``).
    """
    source = load_ground_truth(gt)
    if int(image_id) not in source.imgs:
        raise KeyError(f"image id {image_id} is not in the ground truth")
    image_id = int(image_id)
    coco, anns = _image_only(source, image_id)
    info = coco.imgs[image_id]
    h, w = int(info["height"]), int(info["width"])
    mine = [r for r in results if int(r["image_id"]) == image_id]
    preds = sorted(load_results(mine, coco), key=lambda r: -r["score"])
    outcome, taken = _cocoeval_outcomes(coco, preds, image_id, iou_thresh)
    plain = [i for i, a in enumerate(anns) if not a.get("iscrowd", 0)]
    matched = taken[plain]
    label = category_labels(coco.dataset["categories"])  # COCO id -> 1..k, as drawings index
    return {
        "prediction": {
            "boxes": _xyxy([p["bbox"] for p in preds]),
            "masks": _decode([p["segmentation"] for p in preds], h, w),
            "labels": np.array([label[p["category_id"]] for p in preds], dtype=np.int64),
            "scores": np.array([p["score"] for p in preds], dtype=np.float32),
            "outcome": outcome,
        },
        "ground_truth": {
            "boxes": _xyxy([anns[i]["bbox"] for i in plain]),
            "masks": _decode([source.annToRLE(anns[i]) for i in plain], h, w),
            "labels": np.array([label[anns[i]["category_id"]] for i in plain], dtype=np.int64),
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
