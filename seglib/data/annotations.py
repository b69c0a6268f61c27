"""COCO instances JSONs: reading and checking them, and the subset builder's splits.

``read_json`` reads a file with clear errors for a missing, truncated or foreign one;
``validate_instances`` checks what would otherwise crash later, in pycocotools or in training,
and names the file and the image or annotation at fault (``check_file_name`` refuses a
file_name that would leave the image folder); ``load_instances`` does both. The subset builder,
``seglib.data.dataset`` and ``seglib.evaluation.coco_results`` all check their JSONs here, and
turn ``AnnotationError`` into their own errors. ``split_document`` writes one split of a subset
(COCO's category ids, the categories listed in label order: ``seglib.core.categories``), its
errors ``SubsetError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

__all__ = [
    "AnnotationError",
    "SubsetError",
    "area_bbox",
    "category_counts",
    "check_file_name",
    "clean_segmentation",
    "load_instances",
    "read_json",
    "resolve_categories",
    "split_document",
    "validate_instances",
]


class AnnotationError(ValueError):
    """A JSON file, or an entry of a COCO instances JSON, that cannot be used; the message
    names the file and the image, annotation or category."""


class SubsetError(ValueError):
    """Bad input to ``build_subset``: the message names the file, annotation or argument."""


# --- reading and checking a COCO instances JSON ------------------------------------------
def read_json(path: str | Path, what: str, remedy: str) -> Any:
    """The JSON in ``path``.

    Args:
        what: what the file is, for the errors ("split json", "results file", ...).
        remedy: how to make or fix it, appended to the errors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AnnotationError: not valid JSON (e.g. truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; {remedy}")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(
            f"{what} {path} is not valid JSON (truncated or corrupt?): {e}; {remedy}"
        ) from e


def load_instances(
    path: str | Path,
    what: str = "COCO instances file",
    remedy: str = "delete a damaged copy and fetch it again "
    "(build_subset(..., download=True) / --download)",
    *,
    files: bool = True,
) -> dict[str, Any]:
    """Read a COCO instances JSON and ``validate_instances`` it (``files`` as there).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AnnotationError: not valid JSON (e.g. truncated), or it fails ``validate_instances``.
    """
    data = read_json(path, what, remedy)
    validate_instances(data, path, files=files)
    return data


def check_file_name(name: Any, where: str) -> str:
    """``name`` if it is a bare file name that stays inside the image folder.

    Raises:
        AnnotationError: not a non-empty string, or an absolute path, a drive, ``..`` or a
            folder part (``where`` starts the message).
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise AnnotationError(f"{where}: file_name must be a non-empty string, got {name!r}")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or len(pure.parts) != 1 or pure.name in (".", ".."):
            raise AnnotationError(
                f"{where}: file_name {name!r} escapes the image folder (absolute path, '..' or a "
                "folder part); COCO file names are bare names like 000000000139.jpg"
            )
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_categories(categories: list, path: str | Path) -> dict[int, str]:
    """category id -> name."""
    names = {}
    for c in categories:
        if (
            not isinstance(c, Mapping)
            or not _is_int(c.get("id"))
            or not isinstance(c.get("name"), str)
        ):
            raise AnnotationError(
                f"{path}: category {c!r} needs an integer 'id' and a string 'name'"
            )
        names[c["id"]] = c["name"]
    return names


def _check_images(images: list, path: str | Path, files: bool) -> dict[int, Mapping]:
    """image id -> image entry."""
    by_id: dict[int, Mapping] = {}
    for im in images:
        if not isinstance(im, Mapping) or not _is_int(im.get("id")):
            raise AnnotationError(f"{path}: image entry {str(im)[:80]} has no integer 'id'")
        where = f"{path}: image {im['id']}"
        if im["id"] in by_id:
            raise AnnotationError(f"{where} appears twice")
        for key in ("width", "height"):
            if not _is_int(im.get(key)) or im[key] < 1:
                raise AnnotationError(
                    f"{where}: '{key}' must be a positive int, got {im.get(key)!r}"
                )
        if files:
            check_file_name(im.get("file_name"), where)
        by_id[im["id"]] = im
    return by_id


def _check_segmentation(seg: Any, im: Mapping, where: str) -> None:
    if isinstance(seg, Mapping):
        if list(seg.get("size", [])) != [im["height"], im["width"]] or "counts" not in seg:
            raise AnnotationError(
                f"{where}: RLE segmentation needs 'counts' and size [h, w] = "
                f"[{im['height']}, {im['width']}] of image {im['id']}, got size {seg.get('size')!r}"
            )
    elif isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) % 2:
                raise AnnotationError(f"{where}: each polygon must be a flat list of x, y pairs")
    else:
        raise AnnotationError(
            f"{where}: segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}"
        )


def _check_annotation(
    a: Any, categories: dict[int, str], images: dict[int, Mapping], path: str | Path
) -> None:
    if not isinstance(a, Mapping) or not _is_int(a.get("id")):
        raise AnnotationError(f"{path}: annotation entry {str(a)[:80]} has no integer 'id'")
    where = f"{path}: annotation {a['id']}"
    cat = a.get("category_id")
    if not _is_int(cat) or cat not in categories:
        valid = ", ".join(f"{name} {cat_id}" for cat_id, name in categories.items())
        raise AnnotationError(
            f"{where} has category_id {cat!r}, which is none of the categories of {path} ({valid})"
        )
    image_id = a.get("image_id")
    im = images.get(image_id) if _is_int(image_id) else None
    if im is None:
        raise AnnotationError(f"{where} refers to image_id {image_id!r}, which is not in 'images'")
    if a.get("iscrowd", 0) not in (0, 1):
        raise AnnotationError(f"{where}: iscrowd must be 0 or 1, got {a.get('iscrowd')!r}")
    _check_segmentation(a.get("segmentation"), im, where)


def validate_instances(data: Any, path: str | Path, *, files: bool = True) -> None:
    """Catch, naming ``path`` and the entry, what would otherwise crash later in pycocotools
    or training.

    Args:
        files: check each image's file_name (``check_file_name``); False where no image file
            is read (scoring against ground truth).

    Raises:
        AnnotationError: not a mapping with ``images``, ``annotations`` and ``categories``
            lists; a category without an integer id and a string name; an image without an
            integer id or a positive width and height, repeated, or with an unsafe file_name
            (``check_file_name``); an annotation without an integer id, of an unknown image or
            category, with iscrowd other than 0/1, or with a malformed segmentation (polygon
            or RLE of the wrong size).
    """
    if not isinstance(data, Mapping) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise AnnotationError(
            f"{path} is not a COCO instances file: it needs 'images', 'annotations' and 'categories' lists"
        )
    categories = _check_categories(data["categories"], path)
    images = _check_images(data["images"], path, files)
    for a in data["annotations"]:
        _check_annotation(a, categories, images, path)


def clean_segmentation(seg: Any) -> Any:
    """Drop polygon parts with fewer than 3 points: pycocotools reads a 4-number one as a box."""
    if isinstance(seg, list):
        return [p for p in seg if len(p) >= 6]
    return seg


def resolve_categories(
    data: dict[str, Any], names: list[str], path: str | Path
) -> list[dict[str, Any]]:
    """The category dicts of ``names``, in that order.

    Raises:
        SubsetError: a name that is not a category of ``data`` (lists the valid ones).
    """
    by_name = {c["name"]: c for c in data["categories"]}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SubsetError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"valid names in {path}: {', '.join(sorted(by_name))}"
        )
    return [by_name[n] for n in names]


def area_bbox(seg: Any, height: int, width: int) -> tuple[float, list[float]]:
    """Mask area (px) and COCO box [x, y, w, h] of a polygon or RLE segmentation."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects(seg, height, width)
    rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
    return float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


# --- writing a split -------------------------------------------------------------------------
def _image_entry(im: dict[str, Any], folder: str, base_url: str) -> dict[str, Any]:
    entry = {k: im[k] for k in ("id", "file_name", "width", "height")}
    entry["coco_url"] = im.get("coco_url") or f"{base_url}/{folder}/{im['file_name']}"
    if "license" in im:
        entry["license"] = im["license"]
    return entry


def _annotation_entry(a: dict[str, Any], seg: Any, im: dict[str, Any]) -> dict:
    if "area" in a and "bbox" in a:
        area, bbox = a["area"], a["bbox"]
    else:
        area, bbox = area_bbox(seg, im["height"], im["width"])
    return {
        "id": a["id"],
        "image_id": a["image_id"],
        "category_id": a["category_id"],
        "segmentation": seg,
        "area": area,
        "bbox": bbox,
        "iscrowd": int(a.get("iscrowd", 0)),
    }


def split_document(
    data: dict[str, Any],
    image_ids: list[int],
    cats: list[dict[str, Any]],
    folder: str,
    split: str,
    dropped: list[int],
    base_url: str,
) -> dict[str, Any]:
    """A subset's split JSON: the chosen images of ``data`` (a COCO instances dict) and their
    annotations of ``cats``, whose order in ``categories`` defines labels 1..k
    (``seglib.core.categories.category_labels``).

    Category, image and annotation ids stay COCO's. Images get a ``coco_url``
    (``base_url/folder/file_name`` when the source has none). Ids of annotations left with no
    usable polygon are appended to ``dropped``.
    """
    wanted_cats = {c["id"] for c in cats}
    wanted = set(image_ids)
    images = {im["id"]: im for im in data["images"] if im["id"] in wanted}
    anns = []
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        if a["image_id"] not in images or a["category_id"] not in wanted_cats:
            continue
        seg = clean_segmentation(a["segmentation"])
        if not seg:
            dropped.append(a["id"])
            continue
        anns.append(_annotation_entry(a, seg, images[a["image_id"]]))
    info = dict(data.get("info") or {})
    names = ", ".join(c["name"] for c in cats)
    info["description"] = f"seglib {split} split from COCO {folder}: {names}"
    return {
        "info": info,
        "licenses": data.get("licenses") or [],
        "images": [_image_entry(images[i], folder, base_url) for i in sorted(images)],
        "annotations": anns,
        "categories": [
            {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")}
            for c in cats
        ],
    }


def category_counts(doc: dict[str, Any]) -> dict[str, dict[str, int]]:
    """category name -> images with a non-crowd instance of it, non-crowd instances, crowd regions."""
    names = {c["id"]: c["name"] for c in doc["categories"]}
    imgs: dict[str, set[int]] = {n: set() for n in names.values()}
    counts = {n: {"images": 0, "instances": 0, "crowd": 0} for n in names.values()}
    for a in doc["annotations"]:
        name = names[a["category_id"]]
        if a["iscrowd"]:
            counts[name]["crowd"] += 1
        else:
            counts[name]["instances"] += 1
            imgs[name].add(a["image_id"])
    for n in counts:
        counts[n]["images"] = len(imgs[n])
    return counts
