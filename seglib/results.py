"""COCO results and ground truth as seglib's metrics read them.

* ``gt``: a split's ground truth, as a pycocotools ``COCO``, a path to a split JSON (or to
  COCO's own annotations), or the dict itself. Crowd annotations (``iscrowd=1``) stay in it.
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

``results_to_instances`` and ``filter_predictions`` serve drawings and sliders over cached
results. Nothing here prints: pycocotools' output is swallowed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import operator
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO

from seglib.config import COCO_IDS

#: What every function accepts as ground truth and as results (see the module docstring).
GroundTruth = COCO | str | Path | Mapping
Results = Sequence[Mapping] | str | Path
IOU_TYPES = ("bbox", "segm")


def group(items: Iterable, key: Callable[[Any], Hashable]) -> dict:
    """``items`` in lists by ``key(item)``, in their order."""
    groups = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


def quiet():
    """Swallow what pycocotools prints."""
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
    with quiet():
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


def prepare(gt: GroundTruth, results: Results) -> tuple[COCO, list[dict]]:
    # COCOeval rewrites ground-truth annotations in place (adds "ignore", turns polygons into
    # RLE with bytes counts); a private copy keeps the caller's dict or dataset.coco intact.
    source = load_ground_truth(gt)
    coco = load_ground_truth(copy.deepcopy(source.dataset))
    return coco, load_results(results, coco)


def class_names(coco: COCO) -> dict[int, str]:
    return {c: coco.cats[c]["name"] for c in sorted(coco.getCatIds())}


# --- cached predictions ---------------------------------------------------------------------
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
        groups = group(
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
