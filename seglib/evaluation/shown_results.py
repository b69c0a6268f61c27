"""What the model shows: cached COCO results at a score / NMS threshold, decoded for drawing.

``filter_predictions`` re-applies thresholds to cached results (the operating point of
notebook 05, the sliders); ``results_to_instances`` decodes one image's results into the arrays
a model returns, which ``seglib.viz`` draws.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np
import pycocotools.mask as mask_utils

from seglib.evaluation.coco_results import IOU_TYPES, as_int, as_rle, group


def results_to_instances(
    results: Sequence[Mapping], image_id: int, *, score_thresh: float = 0.0
) -> dict[str, np.ndarray]:
    """Decode one image's COCO results into the arrays the model returns, for drawing.

    Returns:
        ``boxes`` float32 [N,4] XYXY px, ``masks`` uint8 [N,H,W], ``labels`` int64 [N],
        ``scores`` float32 [N], for results of ``image_id`` with score >= ``score_thresh``,
        highest score first. With no such result the mask array is [0,0,0].
    """
    rows = sorted(
        (r for r in results if int(r["image_id"]) == int(image_id) and r["score"] >= score_thresh),
        key=operator.itemgetter("score"),
        reverse=True,
    )
    boxes = np.array([r["bbox"] for r in rows], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    if rows:
        masks = np.stack(
            [
                mask_utils.decode(
                    as_rle(
                        r["segmentation"],
                        *r["segmentation"]["size"],
                        f"result for image {image_id}",
                    )
                )
                for r in rows
            ]
        )
    else:
        masks = np.zeros((0, 0, 0), dtype=np.uint8)
    return {
        "boxes": boxes,
        "masks": masks.astype(np.uint8),
        "labels": np.array([r["category_id"] for r in rows], dtype=np.int64),
        "scores": np.array([r["score"] for r in rows], dtype=np.float32),
    }


def filter_predictions(
    results: Sequence[Mapping],
    *,
    score_thresh: float = 0.0,
    nms_thresh: float | None = None,
    iou_type: str = "segm",
) -> list[dict]:
    """Re-apply a score threshold and, optionally, per-class NMS to cached COCO results.

    NMS is greedy per (image, class) in descending score: a result is dropped when its mask
    (``iou_type="segm"``) or box (``"bbox"``, [x, y, w, h]) IoU with a kept one exceeds
    ``nms_thresh``. Needs no ground truth. Returns the kept dicts, unchanged, in input order.

    Raises:
        ValueError: ``nms_thresh`` outside [0, 1] or unknown ``iou_type``.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if nms_thresh is not None and not 0.0 <= nms_thresh <= 1.0:
        raise ValueError(f"nms_thresh must be in [0, 1] or None, got {nms_thresh}")
    kept = [i for i, r in enumerate(results) if float(r["score"]) >= score_thresh]
    if nms_thresh is not None:
        groups = group(
            kept,
            lambda i: (
                as_int(results[i]["image_id"], "image_id"),
                as_int(results[i]["category_id"], "category_id"),
            ),
        )
        survivors = set()
        for members in groups.values():
            members.sort(key=lambda i: -float(results[i]["score"]))
            if iou_type == "segm":
                items = [results[i]["segmentation"] for i in members]
            else:
                items = np.asarray(
                    [np.asarray(results[i]["bbox"], dtype=np.float64).reshape(4) for i in members]
                )
            ious = np.asarray(mask_utils.iou(items, items, [0] * len(members))).reshape(
                len(members), len(members)
            )
            alive = []
            for j in range(len(members)):
                if not alive or ious[j, alive].max() <= nms_thresh:
                    alive.append(j)
            survivors.update(members[j] for j in alive)
        kept = [i for i in kept if i in survivors]
    return [results[i] for i in kept]
