"""COCO results: made from model outputs, written and read back, with the ground truth.

* ``gt``: a split's ground truth, as a pycocotools ``COCO``, a path to a split JSON (or to
  COCO's own annotations), or the dict itself. Crowd annotations (``iscrowd=1``) stay in it.
* ``results``: COCO detection results, a list of dicts or a path to a results JSON. Each has
  ``image_id`` (int), ``category_id``, ``score`` (float), ``segmentation`` (RLE for the
  image's full size; compressed, uncompressed or polygons are accepted) and optionally
  ``bbox`` ([x, y, w, h] pixels; derived from the mask when absent). Ids may be numpy or torch
  scalars; they are cast to int.

Category ids (``seglib.core.categories``): ground truth and every results *file* carry COCO's
category ids (person 1, car 3, dog 18, cake 61), as COCO's evaluation server and pycocotools
expect, so a file is scored against a split as it is, and scores the same against COCO's
original annotations of the same images. A results *list* (what ``seglib.evaluation.prediction.predict``
returns, and what viz draws) carries the model's labels 1..k, the positions of the ground
truth's categories: ``to_coco_ids`` converts on export (``seglib.evaluation.prediction.write_results``),
``read_results`` converts back, and ``load_results`` converts a list before scoring it.

``to_coco_results`` is where a model's output becomes COCO results (``masks_to_host`` brings
its masks to the host) and ``write_results`` writes them. Nothing here prints: pycocotools'
output is swallowed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import operator
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO

from seglib.core.atomic import write_json_atomic
from seglib.core.categories import category_labels
from seglib.data.annotations import load_instances, read_json, validate_instances

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


def load_ground_truth(gt: GroundTruth) -> COCO:
    """Return ``gt`` as a pycocotools COCO (a COCO is returned unchanged), its categories
    checked to give labels (``seglib.core.categories.category_labels``).

    A path or a dict is checked by ``seglib.data.annotations.validate_instances`` (file names
    aside: no image is read); a COCO is taken as it is.

    Raises:
        FileNotFoundError: ``gt`` is a path that does not exist.
        ValueError: the file is not JSON, the dict is not a valid COCO instances dict
            (``AnnotationError``, naming the entry at fault), or its categories are numbered as
            an older seglib did (``CategoryError``, saying how to rebuild the subset).
    """
    if isinstance(gt, COCO):
        category_labels(gt.dataset.get("categories", []), source="ground truth")
        return gt
    if isinstance(gt, (str, Path)):
        source = str(gt)
        gt = load_instances(
            gt,
            "ground-truth file",
            "pass a split json such as subset/<profile>/val.json",
            files=False,
        )
    elif isinstance(gt, Mapping):
        source = "ground-truth dict"
        validate_instances(gt, source, files=False)
    else:
        raise ValueError(f"gt must be a COCO, a path or a dict, got {type(gt).__name__}")
    category_labels(gt["categories"], source=source)
    coco = COCO()
    coco.dataset = dict(gt)
    with quiet():
        coco.createIndex()
    return coco


def as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        as_float = float(value)
        if not as_float.is_integer():
            raise ValueError(f"{what} must be an integer, got {value!r}") from None
        return int(as_float)


def as_rle(seg: Any, h: int, w: int, where: str) -> dict:
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
        return as_rle(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)), h, w, where)
    raise ValueError(
        f"{where}: segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}"
    )


# --- category ids: COCO's in files and ground truth, labels in results lists ---------------
def _check_known(used: set[int], known: Mapping[int, Any], message: Callable[[list], str]) -> None:
    unknown = sorted(used - set(known))
    if unknown:
        raise ValueError(message(unknown))


def _category_ids(results: Sequence[Mapping]) -> set[int]:
    return {as_int(r["category_id"], "category_id") for r in results}


def _with_category_ids(results: Sequence[Mapping], table: Mapping[int, int]) -> list[dict]:
    return [{**r, "category_id": table[as_int(r["category_id"], "category_id")]} for r in results]


def to_coco_ids(
    results: Sequence[Mapping], categories: Sequence[Mapping], *, source: str = "categories"
) -> list[dict]:
    """Copies of in-memory results with each ``category_id`` (a label 1..k) replaced by its
    category's COCO id: what a results file holds.

    Args:
        categories: the split's (or checkpoint's) category dicts in label order, ``id`` being
            COCO's (``seglib.core.categories.category_labels``).
        source: where ``categories`` came from, for the errors.

    Raises:
        ValueError: a label outside 1..k (names the categories), or ``categories`` in an older
            seglib's numbering.
    """
    labels = category_labels(categories, source=source)
    table = {label: cat_id for cat_id, label in labels.items()}
    names = ", ".join(f"{label} {c.get('name')}" for label, c in enumerate(categories, 1))
    _check_known(
        _category_ids(results),
        table,
        lambda unknown: f"results use labels {unknown}, but the labels of {source} are {names}",
    )
    return _with_category_ids(results, table)


def _check_coco_ids(results: Sequence[Mapping], coco: COCO, source: str) -> None:
    """Raise unless every ``category_id`` of ``results`` is one of ``coco``'s category ids."""
    valid = ", ".join(f"{c['name']} {c['id']}" for c in coco.dataset["categories"])
    _check_known(
        _category_ids(results),
        coco.cats,
        lambda unknown: (
            f"{source} uses category ids {unknown}, which are none of the ground truth's "
            f"categories ({valid}). Results files and ground truth both carry COCO's category "
            "ids, as `python -m seglib predict` and seglib.evaluation.prediction.write_results write them; "
            "a file numbered 1..k, or made for other categories, cannot be scored against it"
        ),
    )


def from_coco_ids(
    results: Sequence[Mapping], gt: GroundTruth, *, source: str = "results"
) -> list[dict]:
    """Copies of results that carry COCO's category ids (a results file's) with the labels of
    ``gt``'s categories instead (in-memory results, as ``prediction.predict`` returns them).

    Raises:
        ValueError: an id that is not one of ``gt``'s categories (names the ids, the valid
            ones and ``source``).
    """
    coco = load_ground_truth(gt)
    _check_coco_ids(results, coco, source)
    return _with_category_ids(results, category_labels(coco.dataset["categories"]))


def _read_results_file(path: str | Path) -> list[dict]:
    """A results file's list as it is (COCO's category ids), checked to be result dicts."""
    results = read_json(path, "results file", "write it with `python -m seglib predict`")
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise ValueError(f"results file {path} must hold a JSON list of result dicts")
    missing = [i for i, r in enumerate(results) if "category_id" not in r]
    if missing:
        raise ValueError(f"results file {path}: result {missing[0]} has no category_id")
    return results


def read_results(path: str | Path, gt: GroundTruth) -> list[dict]:
    """A results file (COCO's category ids) as in-memory results: labels of ``gt``'s categories.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON list, or category ids that are none of ``gt``'s.
    """
    return from_coco_ids(_read_results_file(path), gt, source=f"results file {path}")


def _as_coco_ids(results: Results, coco: COCO) -> list[dict]:
    """``results`` with COCO's category ids: a file's as they are, a list's labels converted."""
    if isinstance(results, (str, Path)):
        found = _read_results_file(results)
        _check_coco_ids(found, coco, f"results file {results}")
        return found
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"results must be a list of dicts, got {type(results).__name__}")
    missing = [
        i for i, r in enumerate(results) if not isinstance(r, Mapping) or "category_id" not in r
    ]
    if missing:
        raise ValueError(
            f"result {missing[0]} lacks 'category_id'; each result needs image_id, category_id, score, segmentation"
        )
    return to_coco_ids(results, coco.dataset["categories"], source="the ground truth's categories")


def load_results(results: Results, gt: GroundTruth) -> list[dict]:
    """Validate results against ``gt`` and return clean copies (plain ints/floats, RLE with str
    counts, COCO's category ids as in ``gt``): what pycocotools' ``loadRes`` takes.

    A path is a results file: its COCO category ids are compared with ``gt``'s as they are. A
    list is in-memory results (``prediction.predict``'s): its labels 1..k are turned into the
    ids of ``gt``'s categories (``seglib.core.categories.category_labels``). The copies carry COCO's
    ids, so they are for pycocotools; a seglib function taking ``results`` wants the input.

    Raises:
        FileNotFoundError: ``results`` is a missing path.
        ValueError: a result lacks keys, names an image id that is not in the ground truth (an
            image id must be a plain int, not a tensor), a category that is not (a file's id or
            a list's label), or has a mask of the wrong size.
    """
    coco = load_ground_truth(gt)
    results = _as_coco_ids(results, coco)
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in coco.dataset["images"]}
    out, bad_images = [], set()
    for i, r in enumerate(results):
        missing = {"image_id", "category_id", "score", "segmentation"} - set(r)
        if missing:
            raise ValueError(
                f"result {i} lacks {sorted(missing)}; each result needs image_id, category_id, score, segmentation"
            )
        image_id = as_int(r["image_id"], f"result {i} image_id")
        if image_id not in sizes:
            bad_images.add(image_id)
            continue
        h, w = sizes[image_id]
        seg = as_rle(r["segmentation"], h, w, f"result {i} (image {image_id})")
        bbox = r.get("bbox")
        bbox = (
            mask_utils.toBbox(seg).tolist()
            if bbox is None
            else [float(v) for v in np.asarray(bbox).reshape(4)]
        )
        out.append(
            {
                "image_id": image_id,
                "category_id": as_int(r["category_id"], f"result {i} category_id"),
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
    return out


def prepare(gt: GroundTruth, results: Results) -> tuple[COCO, list[dict]]:
    # COCOeval rewrites ground-truth annotations in place (adds "ignore", turns polygons into
    # RLE with bytes counts); a private copy keeps the caller's dict or dataset.coco intact.
    source = load_ground_truth(gt)
    coco = load_ground_truth(copy.deepcopy(source.dataset))
    return coco, load_results(results, coco)


def class_names(coco: COCO) -> dict[int, str]:
    """Category id -> name, in label order (the order of the ground truth's ``categories``)."""
    return {int(c["id"]): c["name"] for c in coco.dataset["categories"]}


# --- model outputs to COCO results ---------------------------------------------------------
def masks_to_host(probs: torch.Tensor) -> np.ndarray:
    """Binary masks on the host from mask probabilities on any device.

    Each mask is thresholded at 0.5 and cut to its own extent on the device; only those
    uint8 crops are copied (one copy), then pasted back into full-size masks on the host.

    Args:
        probs: float [N, 1, H, W] probabilities (torchvision's ``masks`` output).

    Returns:
        uint8 [N, H, W] with values 0/1.
    """
    binary = probs[:, 0] > 0.5
    n, h, w = binary.shape
    out = np.zeros((n, h, w), dtype=np.uint8)
    if n == 0:
        return out
    rows, cols = binary.any(dim=2), binary.any(dim=1)  # [N, H], [N, W]
    present = rows.any(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    extents = (torch.stack([y0, y1, x0, x1], dim=1) * present[:, None]).cpu().tolist()
    crops = [binary[i, a:b, c:d].reshape(-1) for i, (a, b, c, d) in enumerate(extents)]
    flat = torch.cat(crops).to(torch.uint8).cpu().numpy()
    start = 0
    for i, (a, b, c, d) in enumerate(extents):
        size = (b - a) * (d - c)
        out[i, a:b, c:d] = flat[start : start + size].reshape(b - a, d - c)
        start += size
    return out


def to_coco_results(
    image_id: int, output: dict[str, torch.Tensor], score_thresh: float
) -> list[dict[str, Any]]:
    """One image's model output as COCO results: xywh boxes, RLE masks, labels 1..k.

    Only detections scoring at least ``score_thresh`` are kept; ``image_id`` is a plain int.
    """
    keep = output["scores"] >= score_thresh
    if not bool(keep.any()):
        return []
    boxes = output["boxes"][keep]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    masks = masks_to_host(output["masks"][keep])
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    results = []
    for box, label, score, rle in zip(
        xywh, output["labels"][keep].tolist(), output["scores"][keep].tolist(), rles, strict=True
    ):
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [float(v) for v in box],
                "score": float(score),
                "segmentation": rle,
            }
        )
    return results


def write_results(
    path: str | Path, results: Sequence[dict[str, Any]], categories: Sequence[dict]
) -> Path:
    """Write in-memory results (labels 1..k) as a COCO results file, with COCO's category ids.

    Every results file seglib writes goes through here, so pycocotools scores it against the
    split's json (or COCO's own annotations) as it is; ``seglib.evaluation.coco_results.read_results`` turns
    the ids back into labels.

    Args:
        categories: the split's or checkpoint's category dicts in label order (``id`` COCO's).

    Raises:
        ValueError: a result's label is outside 1..k, or ``categories`` are numbered as an
            older seglib did.
    """

    return write_json_atomic(path, to_coco_ids(results, categories), indent=None)
