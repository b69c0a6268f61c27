"""Mask-IoU measures of what the model shows (predictions at or above ``score_thresh``).

``best_match_iou`` is recall-oriented: each non-crowd ground-truth instance scores the IoU of
its best same-class prediction, and the mean is over instances, so extra predictions cost
nothing (AP and ``confusion_matrix`` count those). ``pixel_iou`` is semantic segmentation's
per-class IoU of the union masks over the split; its class average is what that field calls
mean IoU. Inputs are as in ``seglib.evaluation.coco_results``; crowd regions are excluded as each function
says.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO

from seglib.evaluation.coco_results import GroundTruth, Results, class_names, group, prepare


def _gt_rles(coco: COCO) -> tuple[list[dict], list[dict]]:
    """(non-crowd, crowd) annotations, each with its RLE under "rle", in annotation order."""
    plain, crowd = [], []
    for ann in coco.dataset["annotations"]:
        entry = {**ann, "rle": coco.annToRLE(ann)}
        (crowd if ann.get("iscrowd", 0) else plain).append(entry)
    return plain, crowd


def _best_ious(coco: COCO, results: list[dict], score_thresh: float) -> dict[int, float]:
    plain, _ = _gt_rles(coco)
    dets = group(
        (r for r in results if r["score"] >= score_thresh),
        lambda r: (r["image_id"], r["category_id"]),
    )
    best: dict[int, float] = {}
    for (image_id, cat), anns in group(plain, lambda a: (a["image_id"], a["category_id"])).items():
        found = dets.get((image_id, cat))
        if not found:
            best.update({a["id"]: 0.0 for a in anns})
            continue
        ious = np.asarray(
            mask_utils.iou(
                [d["segmentation"] for d in found], [a["rle"] for a in anns], [0] * len(anns)
            )
        )
        best.update({a["id"]: float(v) for a, v in zip(anns, ious.max(axis=0), strict=True)})
    return {a["id"]: best[a["id"]] for a in plain}


def _best_match_iou(coco: COCO, results: list[dict], score_thresh: float) -> float:
    best = list(_best_ious(coco, results, score_thresh).values())
    return float(np.mean(best)) if best else float("nan")


def best_ious(gt: GroundTruth, results: Results, *, score_thresh: float = 0.5) -> dict[int, float]:
    """Annotation id -> mask IoU with its best same-class prediction (0.0 if none), non-crowd GT only."""
    coco, results = prepare(gt, results)
    return _best_ious(coco, results, score_thresh)


def best_match_iou(gt: GroundTruth, results: Results, *, score_thresh: float = 0.5) -> float:
    """Best-match IoU: the mean over ground-truth instances of the mask IoU with their
    best-matching prediction. Recall-oriented: it says how well the objects that are there
    get covered, not how clean the predictions are.

    Definition: for every non-crowd ground-truth instance g of class c in image i, take the
    predictions of class c in image i with score >= ``score_thresh``; g's IoU is the highest
    mask IoU between g and any of them, and 0 when there are none. The result is the mean of
    these values over all non-crowd instances of the split. Matching is not one-to-one (one
    prediction may be the best for two instances; merging two objects into one mask still
    lowers both IoUs). Crowd instances are not counted; false positives do not lower it (the
    confusion matrix and AP measure those).

    Returns:
        A float in [0, 1], or NaN when the ground truth has no non-crowd instance.
    """
    coco, results = prepare(gt, results)
    return _best_match_iou(coco, results, score_thresh)


def _union(rles: list[dict], h: int, w: int) -> dict:
    if not rles:
        return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
    return mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0]


def _pixel_iou(coco: COCO, results: list[dict], score_thresh: float) -> dict[str, float]:
    plain, crowd = _gt_rles(coco)
    key = operator.itemgetter("image_id", "category_id")
    gts, crowds = group(plain, key), group(crowd, key)
    dets = group((r for r in results if r["score"] >= score_thresh), key)
    inter, union = defaultdict(int), defaultdict(int)
    for image_id, cat in set(gts) | set(dets):
        img = coco.imgs[image_id]
        h, w = int(img["height"]), int(img["width"])
        g = _union([a["rle"] for a in gts.get((image_id, cat), [])], h, w)
        p = _union([d["segmentation"] for d in dets.get((image_id, cat), [])], h, w)
        both = mask_utils.merge([g, p], intersect=True)
        either = mask_utils.merge([g, p], intersect=False)
        i, u = int(mask_utils.area(both)), int(mask_utils.area(either))
        if (image_id, cat) in crowds:
            c = _union([a["rle"] for a in crowds[(image_id, cat)]], h, w)
            i -= int(mask_utils.area(mask_utils.merge([both, c], intersect=True)))
            u -= int(mask_utils.area(mask_utils.merge([either, c], intersect=True)))
        inter[cat] += i
        union[cat] += u
    return {
        name: (inter[c] / union[c] if union[c] else -1.0) for c, name in class_names(coco).items()
    }


def pixel_iou(gt: GroundTruth, results: Results, *, score_thresh: float = 0.5) -> dict[str, float]:
    """Per-class semantic IoU of the union masks, accumulated over the split; their average
    over classes is the class-averaged mean IoU of semantic segmentation.

    For class c and image i, G is the union of c's non-crowd ground-truth masks and P the
    union of c's predicted masks with score >= ``score_thresh``. Pixels inside a crowd region
    of class c are ignored (removed from both intersection and union), mirroring COCOeval,
    where a crowd of class c excuses only class-c detections. IoU_c = sum_i |G∩P| / sum_i |G∪P|.

    Returns:
        ``{name: iou}`` in [0, 1]; -1 for a class with neither ground truth nor predictions.
    """
    coco, results = prepare(gt, results)
    return _pixel_iou(coco, results, score_thresh)


def confusion_matrix(
    gt: GroundTruth, results: Results, *, score_thresh: float = 0.5, iou_thresh: float = 0.5
) -> tuple[np.ndarray, list[str]]:
    """Class confusion of matched detections, with background as class 0.

    Per image, predictions with score >= ``score_thresh`` are taken in descending score; each
    is matched one-to-one to the still unmatched non-crowd ground-truth instance of any class
    with the highest mask IoU >= ``iou_thresh``. A match counts at (gt class, predicted class);
    an unmatched prediction at (background, predicted class), unless it lies inside a crowd
    region (of any class; intersection over the prediction's area >= ``iou_thresh``, as
    COCOeval measures crowds), in which case it is ignored; an unmatched ground-truth instance
    counts at (gt class, background).

    Returns:
        ``(matrix, labels)``: int64 [k+1, k+1], rows ground truth, columns prediction, index 0
        background, then classes in label order (the ground truth's list); ``labels`` =
        ["background", names...].
    """
    coco, results = prepare(gt, results)
    names = class_names(coco)
    index = {c: i + 1 for i, c in enumerate(names)}
    matrix = np.zeros((len(names) + 1, len(names) + 1), dtype=np.int64)
    plain, crowd = _gt_rles(coco)
    gts, crowds = (
        group(plain, operator.itemgetter("image_id")),
        group(crowd, operator.itemgetter("image_id")),
    )
    dets = group(
        (r for r in results if r["score"] >= score_thresh), operator.itemgetter("image_id")
    )
    for image_id in coco.getImgIds():
        anns = gts.get(image_id, [])
        found = sorted(dets.get(image_id, []), key=lambda d: -d["score"])
        ious = np.zeros((len(found), len(anns)))
        if found and anns:
            ious = np.asarray(
                mask_utils.iou(
                    [d["segmentation"] for d in found], [a["rle"] for a in anns], [0] * len(anns)
                )
            )
        in_crowd = np.zeros(len(found), dtype=bool)
        if found and crowds.get(image_id):
            regions = crowds[image_id]
            cover = mask_utils.iou(
                [d["segmentation"] for d in found], [a["rle"] for a in regions], [1] * len(regions)
            )
            in_crowd = np.asarray(cover).max(axis=1) >= iou_thresh
        taken = np.zeros(len(anns), dtype=bool)
        for j, det in enumerate(found):
            candidates = np.where(taken, -1.0, ious[j]) if anns else np.empty(0)
            g = int(candidates.argmax()) if candidates.size else -1
            if g >= 0 and candidates[g] >= iou_thresh:
                taken[g] = True
                matrix[index[anns[g]["category_id"]], index[det["category_id"]]] += 1
            elif not in_crowd[j]:
                matrix[0, index[det["category_id"]]] += 1
        for a, hit in zip(anns, taken, strict=True):
            if not hit:
                matrix[index[a["category_id"]], 0] += 1
    return matrix, ["background", *names.values()]


def worst_images(
    gt: GroundTruth, results: Results, *, score_thresh: float = 0.5, n: int = 8
) -> list[tuple[int, float]]:
    """The ``n`` images with the lowest per-image best-match IoU (``best_match_iou`` over
    the image's instances), worst first.

    Only images with at least one non-crowd ground-truth instance are ranked; ties go to the
    lower image id. Returns ``[(image_id, best_match_iou), ...]``.
    """
    coco, results = prepare(gt, results)
    best = _best_ious(coco, results, score_thresh)
    per_image = defaultdict(list)
    for ann in coco.dataset["annotations"]:
        if ann["id"] in best:
            per_image[ann["image_id"]].append(best[ann["id"]])
    ranked = sorted((float(np.mean(v)), image_id) for image_id, v in per_image.items())
    return [(image_id, score) for score, image_id in ranked[:n]]
