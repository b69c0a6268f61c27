"""COCO instances JSONs as the subset builder reads and writes them.

``load_instances`` reads a file with clear errors for truncated or foreign JSON;
``validate_instances`` checks what would otherwise crash later, in pycocotools or in training,
and names the image or annotation at fault; ``split_document`` writes one split of a subset
(COCO's category ids, the categories listed in label order: ``seglib.core.categories``). Everything
raises ``SubsetError``.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

__all__ = [
    "SubsetError",
    "area_bbox",
    "category_counts",
    "check_file_name",
    "clean_segmentation",
    "load_instances",
    "resolve_categories",
    "split_document",
    "validate_instances",
]


class SubsetError(ValueError):
    """Bad input to ``build_subset``: the message names the file, annotation or argument."""


def load_instances(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances JSON (``images``, ``annotations``, ``categories`` lists).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SubsetError: not valid JSON (e.g. truncated) or not a COCO instances file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO instances file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubsetError(
            f"{path} is not valid JSON (truncated or corrupt download?): {e}. "
            "Delete it and fetch it again (build_subset(..., download=True) / --download)."
        ) from e
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise SubsetError(
            f"{path} is not a COCO instances file: it needs 'images', 'annotations' and 'categories' lists"
        )
    return data


def check_file_name(name: Any, where: str) -> str:
    """``name`` if it is a bare file name that stays inside the image folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise SubsetError(f"{where}: file_name must be a non-empty string, got {name!r}")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or len(pure.parts) != 1 or pure.name in (".", ".."):
            raise SubsetError(
                f"{where}: file_name {name!r} escapes the image folder (absolute path, '..' or a "
                "folder part); COCO file names are bare names like 000000000139.jpg"
            )
    return name


def validate_instances(data: dict[str, Any], path: str | Path) -> None:
    """Catch, with ids in the message, what would otherwise crash later in pycocotools or training.

    Raises:
        SubsetError: a category without int id and str name, an image without a positive
            width/height or with an unsafe or repeated file_name, an annotation of an unknown
            image or category, or a malformed segmentation (polygon or RLE).
    """
    cat_ids = set()
    for c in data["categories"]:
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("id"), int)
            or not isinstance(c.get("name"), str)
        ):
            raise SubsetError(f"{path}: category {c!r} needs an int 'id' and a str 'name'")
        cat_ids.add(c["id"])
    images: dict[int, dict[str, Any]] = {}
    names: dict[str, int] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            raise SubsetError(f"{path}: image entry {str(im)[:80]} has no int 'id'")
        where = f"{path}: image {im['id']}"
        if im["id"] in images:
            raise SubsetError(f"{where} appears twice")
        for key in ("width", "height"):
            if not isinstance(im.get(key), int) or im[key] < 1:
                raise SubsetError(f"{where}: '{key}' must be a positive int, got {im.get(key)!r}")
        name = check_file_name(im.get("file_name"), where)
        if names.setdefault(name, im["id"]) != im["id"]:
            raise SubsetError(f"{where}: file_name {name!r} is also used by image {names[name]}")
        images[im["id"]] = im
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("id"), int):
            raise SubsetError(f"{path}: annotation entry {str(a)[:80]} has no int 'id'")
        where = f"{path}: annotation {a['id']}"
        if a.get("category_id") not in cat_ids:
            raise SubsetError(
                f"{where} has category_id {a.get('category_id')!r}, which is not in 'categories' ({sorted(cat_ids)})"
            )
        im = images.get(a.get("image_id"))
        if im is None:
            raise SubsetError(
                f"{where} refers to image_id {a.get('image_id')!r}, which is not in 'images'"
            )
        if a.get("iscrowd", 0) not in (0, 1):
            raise SubsetError(f"{where}: iscrowd must be 0 or 1, got {a.get('iscrowd')!r}")
        seg = a.get("segmentation")
        if isinstance(seg, dict):
            if list(seg.get("size", [])) != [im["height"], im["width"]] or "counts" not in seg:
                raise SubsetError(
                    f"{where}: RLE segmentation needs 'counts' and size [h, w] = "
                    f"[{im['height']}, {im['width']}] of image {im['id']}, got size {seg.get('size')!r}"
                )
        elif isinstance(seg, list):
            for poly in seg:
                if not isinstance(poly, list) or len(poly) % 2:
                    raise SubsetError(f"{where}: each polygon must be a flat list of x, y pairs")
        else:
            raise SubsetError(
                f"{where}: segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}"
            )


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
