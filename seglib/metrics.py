"""Evaluation: COCO AP through pycocotools, plus the IoU-based measures the notebooks plot.

Inputs everywhere:

* ``gt``: the split's ground truth, as a pycocotools ``COCO``, a path to a split JSON, or the
  split dict itself. Crowd annotations (``iscrowd=1``) stay in it: COCOeval treats them as
  ignore regions, and the IoU measures below exclude them as documented per function.
* ``results``: COCO detection results, a list of dicts or a path to a results JSON. Each has
  ``image_id`` (int), ``category_id``, ``score`` (float), ``segmentation`` (RLE for the
  image's full size; compressed, uncompressed or polygons are accepted) and optionally
  ``bbox`` ([x, y, w, h] pixels; derived from the mask when absent). Ids may be numpy or torch
  scalars; they are cast to int.

Category ids: labels stay the split's ids (1..k) inside seglib, so a results *list* (what
``seglib.inference.predict`` returns) uses the ground truth's own ids. Results *files* carry
COCO's category ids (person 1, car 3, dog 18, cake 61), as COCO's evaluation server and any
other COCO tool expect: ``to_coco_ids`` converts on export (``seglib.inference.write_results``)
and ``read_results`` converts back, matching each ground-truth category by its ``coco_id``
(subset splits) or its own id (COCO's annotation files). So a results file scores the same
against a subset's ``val.json`` as against COCO's original annotations of the same images.

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

import contextlib
import copy
import io
import json
import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglib.config import COCO_IDS

#: What every function accepts as ground truth and as results (see the module docstring).
GroundTruth = COCO | str | Path | Mapping
Results = Sequence[Mapping] | str | Path

IOU_TYPES = ("bbox", "segm")
#: Keys of each iou-type section, in the order of ``COCOeval.stats``.
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SUMMARY_KEYS = STAT_KEYS[:9]
#: COCO's area ranges in px² (upper bound exclusive here, so each instance is in one bucket).
SIZE_RANGES = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, float("inf")),
}


# --- loading ----------------------------------------------------------------------------
def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _read_json(path: str | Path, what: str, hint: str) -> Any:
    """JSON from ``path``; a missing file or bad JSON raises an error naming it, with ``hint``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_ground_truth(gt: GroundTruth) -> COCO:
    """Return ``gt`` as a pycocotools COCO (a COCO is returned unchanged).

    Raises:
        FileNotFoundError: ``gt`` is a path that does not exist.
        ValueError: the file is not JSON, or the dict lacks images/annotations/categories.
    """
    if isinstance(gt, COCO):
        return gt
    source = "ground-truth dict"
    if isinstance(gt, (str, Path)):
        source = str(gt)
        gt = _read_json(
            gt, "ground-truth file", "pass a split json such as subset/<profile>/val.json"
        )
    if not isinstance(gt, Mapping):
        raise ValueError(f"gt must be a COCO, a path or a dict, got {type(gt).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in gt]
    if missing:
        raise ValueError(
            f"{source} lacks keys {missing}; a COCO split json has images, annotations and categories"
        )
    coco = COCO()
    coco.dataset = dict(gt)
    with _quiet():
        coco.createIndex()
    return coco


def _as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        as_float = float(value)
        if not as_float.is_integer():
            raise ValueError(f"{what} must be an integer, got {value!r}") from None
        return int(as_float)


def _as_rle(seg: Any, h: int, w: int, where: str) -> dict:
    if isinstance(seg, Mapping) and "counts" in seg:
        if isinstance(seg["counts"], list):
            seg = mask_utils.frPyObjects(dict(seg), h, w)
        size = [int(s) for s in seg["size"]]
        if size != [h, w]:
            raise ValueError(
                f"{where}: mask size {size} differs from the image's [height, width] [{h}, {w}]; "
                "encode masks at the original image size"
            )
        counts = seg["counts"]
        return {"size": size, "counts": counts.decode() if isinstance(counts, bytes) else counts}
    if isinstance(seg, list) and seg:
        return _as_rle(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)), h, w, where)
    raise ValueError(
        f"{where}: segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}"
    )


# --- category ids: the split's on the inside, COCO's in files ----------------------------
def coco_category_ids(categories: Sequence[Mapping]) -> dict[int, int]:
    """Category id -> COCO category id, for the ``categories`` of a split or a COCO file.

    A subset split's categories carry ``coco_id``. A category without one is taken at its own
    id (COCO's files), unless its name is one of the project's (``config.COCO_IDS``) at another
    id: then it is a renumbered split that lost its ``coco_id``, matched by name.

    Raises:
        ValueError: two categories claim the same COCO id.
    """
    out: dict[int, int] = {}
    for c in categories:
        coco_id = c.get("coco_id")
        if coco_id is None:
            coco_id = COCO_IDS.get(c.get("name"), c["id"])
        out[int(c["id"])] = int(coco_id)
    if len(set(out.values())) != len(out):
        raise ValueError(f"categories map to repeated COCO ids: {out}")
    return out


def _replace_category_ids(results: Sequence[Mapping], table: dict[int, int]) -> list[dict]:
    return [{**r, "category_id": table[_as_int(r["category_id"], "category_id")]} for r in results]


def to_coco_ids(results: Sequence[Mapping], categories: Sequence[Mapping]) -> list[dict]:
    """Copies of in-memory results with each ``category_id`` (a split label 1..k) replaced by
    its COCO id: what a results file holds.

    Args:
        categories: the split's (or checkpoint's) category dicts: ``id``, ``name``, ``coco_id``.

    Raises:
        ValueError: a label that is none of ``categories``' ids (names the valid ones).
    """
    table = coco_category_ids(categories)
    unknown = sorted({_as_int(r["category_id"], "category_id") for r in results} - set(table))
    if unknown:
        raise ValueError(
            f"results use labels {unknown}, but the categories have ids {sorted(table)}"
        )
    return _replace_category_ids(results, table)


def from_coco_ids(
    results: Sequence[Mapping], gt: GroundTruth, *, source: str = "results"
) -> list[dict]:
    """Copies of results that carry COCO category ids, renumbered to ``gt``'s own ids.

    ``gt`` may use either numbering: a subset split (ids 1..k, each with ``coco_id``) or COCO's
    original annotations (ids are COCO's). See ``coco_category_ids``.

    Raises:
        ValueError: an id that is not the COCO id of any category of ``gt`` (names the ids,
            the valid ones by name, and ``source``).
    """
    coco = load_ground_truth(gt)
    table = coco_category_ids(coco.dataset["categories"])
    inverse = {coco_id: cat_id for cat_id, coco_id in table.items()}
    used = {_as_int(r["category_id"], "category_id") for r in results}
    unknown = sorted(used - set(inverse))
    if unknown:
        valid = ", ".join(f"{coco.cats[c]['name']} {table[c]}" for c in sorted(table))
        raise ValueError(
            f"{source} uses category ids {unknown}, which are not COCO ids of the ground "
            f"truth's categories ({valid}). Results files carry COCO's category ids, as "
            "`python -m seglib predict` and seglib.inference.write_results write them; a file "
            "numbered like a subset's labels (1..k), or made for other categories, cannot be "
            "scored against this ground truth"
        )
    return _replace_category_ids(results, inverse)


def read_results(path: str | Path, gt: GroundTruth) -> list[dict]:
    """A results file (COCO category ids) with its category ids in ``gt``'s numbering.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON list, or category ids that fit no category of ``gt``.
    """
    results = _read_json(path, "results file", "write it with `python -m seglib predict`")
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise ValueError(f"results file {path} must hold a JSON list of result dicts")
    missing = [i for i, r in enumerate(results) if "category_id" not in r]
    if missing:
        raise ValueError(f"results file {path}: result {missing[0]} has no category_id")
    return from_coco_ids(results, gt, source=f"results file {path}")


def load_results(results: Results, gt: GroundTruth) -> list[dict]:
    """Validate results against ``gt`` and return clean copies (plain ints/floats, RLE with str counts).

    A path is read with ``read_results`` (its COCO category ids become ``gt``'s); a list is
    taken to use ``gt``'s own category ids already.

    Raises:
        FileNotFoundError: ``results`` is a missing path.
        ValueError: a result lacks keys, names an image id or a category id that is not in the
            ground truth (an image id must be a plain int, not a tensor; a category id must be
            the ground truth's, or in a file COCO's), or has a mask of the wrong size.
    """
    coco = load_ground_truth(gt)
    if isinstance(results, (str, Path)):
        results = read_results(results, coco)
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"results must be a list of dicts, got {type(results).__name__}")
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in coco.dataset["images"]}
    valid_cats = sorted(coco.getCatIds())
    out, bad_images, bad_cats = [], set(), set()
    for i, r in enumerate(results):
        missing = (
            {"image_id", "category_id", "score", "segmentation"} - set(r)
            if isinstance(r, Mapping)
            else {"all"}
        )
        if missing:
            raise ValueError(
                f"result {i} lacks {sorted(missing)}; each result needs image_id, category_id, score, segmentation"
            )
        image_id = _as_int(r["image_id"], f"result {i} image_id")
        category_id = _as_int(r["category_id"], f"result {i} category_id")
        if image_id not in sizes:
            bad_images.add(image_id)
            continue
        if category_id not in valid_cats:
            bad_cats.add(category_id)
            continue
        h, w = sizes[image_id]
        seg = _as_rle(r["segmentation"], h, w, f"result {i} (image {image_id})")
        bbox = r.get("bbox")
        bbox = (
            mask_utils.toBbox(seg).tolist()
            if bbox is None
            else [float(v) for v in np.asarray(bbox).reshape(4)]
        )
        out.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": bbox,
                "score": float(r["score"]),
                "segmentation": seg,
            }
        )
    if bad_images:
        raise ValueError(
            f"results reference image ids {sorted(bad_images)[:10]} that are not in the ground truth "
            f"({len(sizes)} images); evaluate predictions against the split they were made on"
        )
    if bad_cats:
        names = {c: coco.cats[c]["name"] for c in valid_cats}
        raise ValueError(
            f"results use category_id {sorted(bad_cats)} not in the ground truth; valid ids: {names}. "
            "In-memory results use the ground truth's own category ids (a split's labels 1..k); "
            "only results files carry COCO's ids (read them with read_results, or pass the path)"
        )
    return out


def _prepare(gt: GroundTruth, results: Results) -> tuple[COCO, list[dict]]:
    # COCOeval rewrites ground-truth annotations in place (adds "ignore", turns polygons into
    # RLE with bytes counts); a private copy keeps the caller's dict or dataset.coco intact.
    source = load_ground_truth(gt)
    coco = load_ground_truth(copy.deepcopy(source.dataset))
    return coco, load_results(results, coco)


def _class_names(coco: COCO) -> dict[int, str]:
    return {c: coco.cats[c]["name"] for c in sorted(coco.getCatIds())}


# --- COCOeval -----------------------------------------------------------------------------
def _run_cocoeval(coco: COCO, results: list[dict], iou_type: str) -> COCOeval:
    # Like torchvision's reference: bbox results carry no mask, segm results no box, so
    # loadRes takes each detection's area from the box or the mask respectively.
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    dets = [{k: v for k, v in r.items() if k != drop} for r in results]
    with _quiet():
        if dets:
            dt = coco.loadRes(dets)
        else:  # loadRes indexes anns[0]; an empty result set is built by hand.
            dt = COCO()
            dt.dataset = {
                "images": list(coco.dataset["images"]),
                "annotations": [],
                "categories": copy.deepcopy(coco.dataset["categories"]),
            }
            dt.createIndex()
        evaluator = COCOeval(coco, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_valid(values: np.ndarray) -> float:
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
            "AP": _mean_valid(precision[:, :, k, 0, -1]),
            "AP50": _mean_valid(precision[t50, :, k, 0, -1]),
            "AP75": _mean_valid(precision[t75, :, k, 0, -1]),
        }
        for k, c in enumerate(evaluator.params.catIds)
    }
    return section


def _curves(evaluator: COCOeval, names: dict[int, str], iou_thresh: float) -> dict:
    precision = evaluator.eval["precision"][
        _iou_index(evaluator, iou_thresh), :, :, 0, -1
    ]  # [R, K]
    recall = evaluator.params.recThrs.tolist()
    curves = {}
    for k, c in enumerate(evaluator.params.catIds):
        if (precision[:, k] > -1).any():
            curves[names[c]] = {
                "recall": recall,
                "precision": precision[:, k].tolist(),
                "AP": _mean_valid(precision[:, k]),
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
    coco, results = _prepare(gt, results)
    return _curves(_run_cocoeval(coco, results, iou_type), _class_names(coco), iou_thresh)


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
        "num_images", "num_predictions", "score_thresh", "categories": [{id, name, coco_id}]}``
        on a 0-1 scale, -1 where undefined
        (no ground truth). With ``with_curves``, each section also holds ``"pr_curves"`` as
        returned by ``pr_curves`` at IoU 0.5.

    Raises:
        ValueError: see ``load_results``.
    """
    coco, results = _prepare(gt, results)
    names = _class_names(coco)
    metrics: dict[str, Any] = {}
    for iou_type in IOU_TYPES:
        evaluator = _run_cocoeval(coco, results, iou_type)
        metrics[iou_type] = _section(evaluator, names)
        if with_curves:
            metrics[iou_type]["pr_curves"] = _curves(evaluator, names, 0.5)
    best = _best_match_iou(coco, results, score_thresh)
    metrics["best_match_iou"] = -1.0 if np.isnan(best) else best
    metrics["pixel_iou"] = _pixel_iou(coco, results, score_thresh)
    defined = [v for v in metrics["pixel_iou"].values() if v >= 0]
    metrics["mean_pixel_iou"] = float(np.mean(defined)) if defined else -1.0
    metrics["num_images"] = len(coco.getImgIds())
    metrics["num_predictions"] = len(results)
    metrics["score_thresh"] = float(score_thresh)
    coco_ids = coco_category_ids(coco.dataset["categories"])
    metrics["categories"] = [
        {"id": c, "name": name, "coco_id": coco_ids[c]} for c, name in names.items()
    ]
    return metrics


# --- IoU measures -------------------------------------------------------------------------
def _gt_rles(coco: COCO) -> tuple[list[dict], list[dict]]:
    """(non-crowd, crowd) annotations, each with its RLE under "rle", in annotation order."""
    plain, crowd = [], []
    for ann in coco.dataset["annotations"]:
        entry = {**ann, "rle": coco.annToRLE(ann)}
        (crowd if ann.get("iscrowd", 0) else plain).append(entry)
    return plain, crowd


def _group(items, key) -> dict:
    groups = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def _best_ious(coco: COCO, results: list[dict], score_thresh: float) -> dict[int, float]:
    plain, _ = _gt_rles(coco)
    dets = _group(
        (r for r in results if r["score"] >= score_thresh),
        lambda r: (r["image_id"], r["category_id"]),
    )
    best: dict[int, float] = {}
    for (image_id, cat), anns in _group(plain, lambda a: (a["image_id"], a["category_id"])).items():
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
    coco, results = _prepare(gt, results)
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
    coco, results = _prepare(gt, results)
    return _best_match_iou(coco, results, score_thresh)


def _union(rles: list[dict], h: int, w: int) -> dict:
    if not rles:
        return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
    return mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0]


def _pixel_iou(coco: COCO, results: list[dict], score_thresh: float) -> dict[str, float]:
    plain, crowd = _gt_rles(coco)
    key = operator.itemgetter("image_id", "category_id")
    gts, crowds = _group(plain, key), _group(crowd, key)
    dets = _group((r for r in results if r["score"] >= score_thresh), key)
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
        name: (inter[c] / union[c] if union[c] else -1.0) for c, name in _class_names(coco).items()
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
    coco, results = _prepare(gt, results)
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
        background, then classes in category-id order; ``labels`` = ["background", names...].
    """
    coco, results = _prepare(gt, results)
    names = _class_names(coco)
    index = {c: i + 1 for i, c in enumerate(names)}
    matrix = np.zeros((len(names) + 1, len(names) + 1), dtype=np.int64)
    plain, crowd = _gt_rles(coco)
    gts, crowds = (
        _group(plain, operator.itemgetter("image_id")),
        _group(crowd, operator.itemgetter("image_id")),
    )
    dets = _group(
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


# --- dataset statistics -----------------------------------------------------------------
def size_buckets(gt: GroundTruth) -> dict[str, dict[str, int]]:
    """Per class, non-crowd instances in COCO's area ranges (px², annotation ``area``).

    small: area < 32², medium: 32² <= area < 96², large: area >= 96². (COCOeval's ranges
    share their end points; here each instance falls in exactly one bucket.)

    Returns:
        ``{name: {"small": n, "medium": n, "large": n}}`` in category-id order.
    """
    coco = load_ground_truth(gt)
    names = _class_names(coco)
    counts = {name: dict.fromkeys(SIZE_RANGES, 0) for name in names.values()}
    for ann in coco.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        area = float(ann["area"]) if "area" in ann else float(mask_utils.area(coco.annToRLE(ann)))
        bucket = next(b for b, (lo, hi) in SIZE_RANGES.items() if lo <= area < hi)
        counts[names[ann["category_id"]]][bucket] += 1
    return counts


def worst_images(
    gt: GroundTruth, results: Results, *, score_thresh: float = 0.5, n: int = 8
) -> list[tuple[int, float]]:
    """The ``n`` images with the lowest per-image best-match IoU (``best_match_iou`` over
    the image's instances), worst first.

    Only images with at least one non-crowd ground-truth instance are ranked; ties go to the
    lower image id. Returns ``[(image_id, best_match_iou), ...]``.
    """
    coco, results = _prepare(gt, results)
    best = _best_ious(coco, results, score_thresh)
    per_image = defaultdict(list)
    for ann in coco.dataset["annotations"]:
        if ann["id"] in best:
            per_image[ann["image_id"]].append(best[ann["id"]])
    ranked = sorted((float(np.mean(v)), image_id) for image_id, v in per_image.items())
    return [(image_id, score) for score, image_id in ranked[:n]]


# --- cached predictions and reporting -----------------------------------------------------
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
                    _as_rle(
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
        groups = _group(
            kept,
            lambda i: (
                _as_int(results[i]["image_id"], "image_id"),
                _as_int(results[i]["category_id"], "category_id"),
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
