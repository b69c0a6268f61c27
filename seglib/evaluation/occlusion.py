"""How occluded each ground-truth instance is, and COCO AP per occlusion bucket.

**The measure.** COCO annotates the *visible* part of an object, so the masks of two instances
barely overlap even when one hides half of the other; what does overlap is an instance's
visible part and the *extent* (box) of its neighbour. For a non-crowd instance A of an image,

    level(A) = max over the other instances B of |region(A) ∩ box(B)| / |region(A)|

where region(A) is A's mask (its box when it has no mask) and B runs over every other
annotation of the image, crowd regions included: a person standing in a crowd is packed even
though the crowd has no single outline. Pixels count when their centre lies inside the box.

Box IoU, the measure this replaces, misses containment: a dog entirely inside a car's box
has box IoU (dog area / car area), maybe 0.1, yet it sits wholly in the car's extent; here
its level is 1.0. The measure is symmetric in neither direction nor amodal (nothing tells how
much of A is hidden), so it is a proxy for "entangled with a neighbour", which is what trips
box-based suppression.

**The buckets** (``BUCKETS``, edges in ``HEAVY_FROM``):

* ``none``: level == 0, no other instance's box touches A's pixels;
* ``partial``: 0 < level < 0.3;
* ``heavy``: level >= 0.3, a third or more of A lies inside another instance's extent.

0.3 is a round number of the same order as the 35% that splits partial from heavy occlusion
in the Caltech pedestrian benchmark (Dollár et al., 2012) and CityPersons; the measure is not
theirs (they annotate the full extent), so the counts per bucket are always reported beside
the numbers. ``occlusion_levels`` keeps the raw values for other cut-offs.

**AP per bucket** (``occlusion_ap``) is computed the way COCOeval computes AP per area range,
with the bucket in place of the area: ground truth outside the bucket is ignored, and a
detection matched to ignored ground truth is not counted. A detection that matches nothing
belongs to the bucket of the ground-truth instance it overlaps most (box IoU, any class,
crowds excluded) and to ``none`` when it overlaps none; outside that bucket it is ignored, as
COCO ignores an unmatched detection whose own area is outside the range. So a duplicate left
next to a heavily occluded person lowers heavy AP, not none AP, and a false positive on empty
background lowers none AP. Counting every unmatched detection in every bucket would let the
many background false positives swamp the few heavy instances; ignoring them all would make
AP blind to the duplicates that a softer suppression keeps.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglib.evaluation.coco_ap import load_detections, mean_valid
from seglib.evaluation.coco_results import (
    IOU_TYPES,
    GroundTruth,
    Results,
    class_names,
    load_ground_truth,
    load_results,
    quiet,
)
from seglib.evaluation.iou_measures import best_ious

BUCKETS = ("none", "partial", "heavy")
#: Level at and above which an instance is heavily occluded (see the module docstring).
HEAVY_FROM = 0.3
#: Rows of ``occlusion_ap``: every non-crowd instance, then each bucket.
ROWS = ("all", *BUCKETS)


# --- the measure --------------------------------------------------------------------------
def _pixel_box(bbox: Any, h: int, w: int) -> tuple[int, int, int, int]:
    """Rows/columns [r0, r1) x [c0, c1) whose pixel centres lie inside an [x, y, w, h] box."""
    x, y, bw, bh = (float(v) for v in bbox)
    c0, c1 = int(np.floor(x + 0.5)), int(np.floor(x + bw + 0.5))
    r0, r1 = int(np.floor(y + 0.5)), int(np.floor(y + bh + 0.5))
    return max(r0, 0), min(max(r1, 0), h), max(c0, 0), min(max(c1, 0), w)


def _has_mask(ann: Mapping) -> bool:
    seg = ann.get("segmentation")
    return bool(seg) and (not isinstance(seg, list) or any(len(p) >= 6 for p in seg))


def _box_coverage(own: Any, other: Any) -> float:
    """|box(own) ∩ box(other)| / |box(own)| in continuous coordinates; boxes [x, y, w, h]."""
    ox, oy, ow, oh = (float(v) for v in own)
    px, py, pw, ph = (float(v) for v in other)
    iw = max(0.0, min(ox + ow, px + pw) - max(ox, px))
    ih = max(0.0, min(oy + oh, py + ph) - max(oy, py))
    return iw * ih / (ow * oh) if ow * oh > 0 else 0.0


def _image_levels(coco: COCO, anns: list[dict], h: int, w: int) -> dict[int, float]:
    levels = {}
    for a in anns:
        if a.get("iscrowd", 0):
            continue
        others = [b for b in anns if b is not a]
        if not others:
            levels[a["id"]] = 0.0
            continue
        mask = coco.annToMask(a).astype(bool) if _has_mask(a) else None
        if mask is None or not mask.any():
            levels[a["id"]] = max(_box_coverage(a["bbox"], b["bbox"]) for b in others)
            continue
        # An integral image answers "pixels of A inside box B" in O(1) per neighbour.
        integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        total = float(integral[-1, -1])
        best = 0.0
        for b in others:
            r0, r1, c0, c1 = _pixel_box(b["bbox"], h, w)
            if r1 <= r0 or c1 <= c0:
                continue
            inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
            best = max(best, float(inside) / total)
        levels[a["id"]] = best
    return levels


def occlusion_levels(gt: GroundTruth) -> dict[int, float]:
    """Annotation id -> occlusion level in [0, 1] for every non-crowd instance.

    The level is the largest fraction of the instance's mask (its box where it has none) that
    lies inside the box of another annotation of the same image, crowd regions included (see
    the module docstring). 0.0 for an instance alone in its image.
    """
    coco = load_ground_truth(gt)
    by_image = defaultdict(list)
    for ann in coco.dataset["annotations"]:
        by_image[ann["image_id"]].append(ann)
    levels: dict[int, float] = {}
    for image_id, anns in by_image.items():
        img = coco.imgs[image_id]
        levels.update(_image_levels(coco, anns, int(img["height"]), int(img["width"])))
    return {
        a["id"]: levels[a["id"]] for a in coco.dataset["annotations"] if not a.get("iscrowd", 0)
    }


def bucket_of(level: float, heavy_from: float = HEAVY_FROM) -> str:
    """``none`` for level 0, ``partial`` below ``heavy_from``, ``heavy`` from it on."""
    if level <= 0.0:
        return "none"
    return "heavy" if level >= heavy_from else "partial"


def occlusion_buckets(gt: GroundTruth, heavy_from: float = HEAVY_FROM) -> dict[int, str]:
    """Annotation id -> bucket (``BUCKETS``) for every non-crowd instance."""
    return {k: bucket_of(v, heavy_from) for k, v in occlusion_levels(gt).items()}


def bucket_counts(gt: GroundTruth, heavy_from: float = HEAVY_FROM) -> dict[str, Any]:
    """Non-crowd instances per bucket, in total and per class.

    Returns:
        ``{"none": n, "partial": n, "heavy": n, "per_class": {name: {bucket: n}}}``.
    """
    coco = load_ground_truth(gt)
    names = class_names(coco)
    buckets = occlusion_buckets(coco, heavy_from)
    counts: dict[str, Any] = dict.fromkeys(BUCKETS, 0)
    counts["per_class"] = {name: dict.fromkeys(BUCKETS, 0) for name in names.values()}
    for ann_id, bucket in buckets.items():
        counts[bucket] += 1
        counts["per_class"][names[coco.anns[ann_id]["category_id"]]][bucket] += 1
    return counts


def split_counts(
    subset_dir: str | Path,
    splits: tuple[str, ...] = ("train", "val", "test"),
    heavy_from: float = HEAVY_FROM,
) -> dict[str, dict[str, Any]]:
    """``bucket_counts`` of each split JSON of a subset folder (``<subset_dir>/<split>.json``).

    Raises:
        FileNotFoundError: a split JSON is missing (names it and the step that writes it).
    """
    return {
        split: bucket_counts(Path(subset_dir) / f"{split}.json", heavy_from) for split in splits
    }


def format_bucket_counts(counts: Mapping[str, Mapping]) -> str:
    """A fixed-width table of ``split_counts``: instances per bucket and split, with shares."""
    lines = [f"{'split':<6}" + "".join(f"{b:>16}" for b in BUCKETS)]
    for split, c in counts.items():
        total = sum(c[b] for b in BUCKETS) or 1
        lines.append(
            f"{split:<6}" + "".join(f"{c[b]:>9} ({100 * c[b] / total:3.0f}%)" for b in BUCKETS)
        )
    return "\n".join(lines)


def most_occluded_images(
    gt: GroundTruth, *, n: int = 6, bucket: str | None = "heavy", heavy_from: float = HEAVY_FROM
) -> list[int]:
    """Image ids with the most instances in ``bucket``, most first (ties: lower id first).

    Images with none are left out, so the list may be shorter than ``n``. With
    ``bucket=None``, every image holding a non-crowd instance is ranked by its largest
    occlusion level instead, so the list is as long as it can be.

    Raises:
        ValueError: an unknown bucket.
    """
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS} or None, got {bucket!r}")
    coco = load_ground_truth(gt)
    per_image: dict[int, float] = defaultdict(float)
    for ann_id, level in occlusion_levels(coco).items():
        image_id = coco.anns[ann_id]["image_id"]
        if bucket is None:
            per_image[image_id] = max(per_image[image_id], level)
        elif bucket_of(level, heavy_from) == bucket:
            per_image[image_id] += 1
    return [i for _, i in sorted((-k, i) for i, k in per_image.items())[:n]]


# --- AP per bucket ------------------------------------------------------------------------
def _detection_buckets(coco: COCO, results: list[dict], gt_bucket: dict[int, int]) -> list[int]:
    """Bucket index of each result: that of the non-crowd GT it overlaps most (box IoU), else 0."""
    by_image = defaultdict(list)
    for ann in coco.dataset["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(ann)
    out = []
    for r in results:
        anns = by_image.get(r["image_id"], [])
        if not anns:
            out.append(0)
            continue
        ious = np.asarray(
            mask_utils.iou([r["bbox"]], [a["bbox"] for a in anns], [0] * len(anns))
        ).reshape(-1)
        k = int(ious.argmax())
        out.append(gt_bucket[anns[k]["id"]] if ious[k] > 0 else 0)
    return out


def _cocoeval_by_bucket(
    coco: COCO, results: list[dict], iou_type: str, gt_bucket: dict[int, int], det_bucket: list[int]
) -> COCOeval:
    """COCOeval with the bucket index standing in for the area, and one area range per row.

    COCOeval reads ``area`` only to decide what an area range ignores (ground truth outside
    it; unmatched detections outside it), so ranges [0, 2], [0, 0], [1, 1], [2, 2] over the
    bucket index give the rows all / none / partial / heavy with COCO's own matching.
    """
    gt = copy.deepcopy(coco)
    for ann in gt.dataset["annotations"]:
        ann["area"] = float(gt_bucket.get(ann["id"], 0))  # crowds are ignored whatever their area
    with quiet():
        gt.createIndex()
    dt = load_detections(gt, results, iou_type)
    with quiet():
        for ann, bucket in zip(dt.dataset["annotations"], det_bucket, strict=True):
            ann["area"] = float(bucket)
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.areaRng = [[0, len(BUCKETS) - 1]] + [[i, i] for i in range(len(BUCKETS))]
        evaluator.params.areaRngLbl = list(ROWS)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _ap_rows(evaluator: COCOeval) -> dict[str, dict[str, float]]:
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    thrs = evaluator.params.iouThrs
    t50, t75 = int(np.argmin(abs(thrs - 0.5))), int(np.argmin(abs(thrs - 0.75)))
    return {
        row: {
            "AP": mean_valid(precision[:, :, :, a, -1]),
            "AP50": mean_valid(precision[t50, :, :, a, -1]),
            "AP75": mean_valid(precision[t75, :, :, a, -1]),
            "AR100": mean_valid(recall[:, :, a, -1]),
        }
        for a, row in enumerate(ROWS)
    }


def occlusion_ap(
    gt: GroundTruth,
    results: Results,
    *,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    heavy_from: float = HEAVY_FROM,
) -> dict[str, dict[str, Any]]:
    """Box and mask AP per occlusion bucket, with recall and best-match IoU beside them.

    AP follows COCOeval's area-range rule with buckets for areas (module docstring): all
    scores, IoU 0.50:0.95, 100 detections per image. Recall and best-match IoU are those of
    ``iou_measures.best_ious`` over the bucket's instances: each instance's best mask IoU with a
    same-class prediction scoring >= ``score_thresh`` (0 with none); ``best_match_iou`` is
    their mean (recall-oriented, as ``iou_measures.best_match_iou``: extra predictions cost
    nothing), recall the share reaching ``iou_thresh``.

    Returns:
        ``{row: {"instances", "bbox": {AP, AP50, AP75, AR100}, "segm": {...}, "recall",
        "best_match_iou"}}`` for rows ``all``, ``none``, ``partial``, ``heavy``; 0-1 scale,
        -1 where the row has no instance.

    Raises:
        ValueError: see ``coco_results.load_results``.
    """
    source = load_ground_truth(gt)
    coco = load_ground_truth(copy.deepcopy(source.dataset))
    loaded = load_results(results, coco)  # COCO's ids, for COCOeval
    buckets = occlusion_buckets(coco, heavy_from)
    gt_bucket = {ann_id: BUCKETS.index(b) for ann_id, b in buckets.items()}
    det_bucket = _detection_buckets(coco, loaded, gt_bucket)
    out: dict[str, dict[str, Any]] = {
        row: {"instances": sum(1 for b in buckets.values() if row in ("all", b))} for row in ROWS
    }
    for iou_type in IOU_TYPES:
        rows = _ap_rows(_cocoeval_by_bucket(coco, loaded, iou_type, gt_bucket, det_bucket))
        for row in ROWS:
            out[row][iou_type] = rows[row]
    best = best_ious(coco, results, score_thresh=score_thresh)  # as given: labels in a list
    for row in ROWS:
        values = np.asarray(
            [v for k, v in best.items() if row == "all" or buckets[k] == row], dtype=np.float64
        )
        out[row]["recall"] = float((values >= iou_thresh).mean()) if values.size else -1.0
        out[row]["best_match_iou"] = float(values.mean()) if values.size else -1.0
    return out


def format_occlusion_ap(table: Mapping[str, Mapping]) -> str:
    """Fixed-width text of ``occlusion_ap``: one line per row, percent, '-' where undefined."""

    def pct(v: float) -> str:
        return f"{100 * v:7.1f}" if v is not None and v >= 0 else "      -"

    head = (
        f"{'bucket':<9}{'n':>5}{'box AP':>8}{'mask AP':>8}{'AP50':>7}{'recall':>8}{'best IoU':>10}"
    )
    lines = [head]
    for row, r in table.items():
        lines.append(
            f"{row:<9}{r['instances']:>5}{pct(r['bbox']['AP'])}{pct(r['segm']['AP'])}"
            f"{pct(r['segm']['AP50'])}{pct(r['recall'])}   {pct(r['best_match_iou'])}"
        )
    return "\n".join(lines)
