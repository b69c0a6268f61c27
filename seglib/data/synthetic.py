"""A synthetic COCO 2017 root: the offline stand-in for COCO in tests and the smoke profile.

This module writes the root: images and ``instances_{train,val}2017.json`` for each split.
The scenes come from ``seglib.data.synthetic_scenes``: each category is a distinct shape with its own
colour palette, so a model can learn it (``seglib.data.synthetic_shapes``): person, car, dog and cake;
distractors bicycle and cat sit in the same scenes, and some images hold none of the four.

The layout and JSON match COCO's ``instances_{train,val}2017.json``, category ids included
(person 1, car 3, dog 18, cake 61, so a subset built from it numbers them as one built from
COCO does: ``seglib.core.categories``): polygons as lists of
polygons, ``bbox`` = polygon extents ``[x, y, w, h]``, ``area`` = rasterised mask area,
crowd groups as *uncompressed* RLE (``{"counts": [ints], "size": [h, w]}``, column-major)
with ``iscrowd=1``. Occluded instances are annotated by their visible part, as in COCO.
A few files come in awkward modes COCO also has: one grayscale (L) JPEG, one CMYK JPEG
and one JPEG with an EXIF Orientation tag (6). As in COCO, JSON width/height and annotations
describe the stored pixels; the tag is what a viewer would apply, and training must not.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seglib.core.atomic import write_bytes_atomic, write_json_atomic
from seglib.data.synthetic_scenes import compose, plan_scenes
from seglib.data.synthetic_shapes import CATEGORIES, TARGETS

__all__ = ["CROWD_ID_BASE", "EXIF_ORIENTATION", "JPEG_QUALITY", "make_synthetic_coco"]

JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112
#: Crowd annotation ids follow COCO's pattern (900100000000 + image id), beyond int32.
CROWD_ID_BASE = 900100000000


def _encode(image: np.ndarray, mode: str) -> bytes:
    """JPEG bytes of ``image`` (upright RGB uint8 [H, W, 3]) stored in ``mode``."""
    pil = Image.fromarray(image, "RGB")
    buf = io.BytesIO()
    if mode == "L":
        pil.convert("L").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif mode == "CMYK":
        pil.convert("CMYK").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif mode == "exif":
        # Orientation 6 asks viewers to turn the image 90 degrees; the pixels and the
        # annotations stay in the stored frame, as in COCO.
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        pil.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    else:
        pil.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _special_modes(plan: list[str]) -> dict[int, str]:
    """Plan index -> "L", "CMYK" or "exif": the first three images with a target get one each."""
    special = {}
    qualifying = [
        i for i, k in enumerate(plan) if k in ("single", "pair", "group", "crowd_plus", "heavy")
    ]
    for mode, i in zip(("L", "CMYK", "exif"), qualifying, strict=False):
        special[i] = mode
    return special


def _image_record(split: str, file_name: str, image_id: int, width: int, height: int) -> dict:
    """COCO's ``images`` entry of one file."""
    return {
        "license": 1,
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/{split}2017/{file_name}",
        "height": height,
        "width": width,
        "date_captured": "2017-01-01 00:00:00",
        "id": image_id,
    }


def _dataset(images: list[dict], annotations: list[dict]) -> dict[str, Any]:
    """The whole instances JSON of one split: COCO's top-level keys around ``images``."""
    return {
        "info": {
            "description": "seglib synthetic COCO 2017 stand-in",
            "url": "",
            "version": "1.0",
            "year": 2017,
            "contributor": "seglib",
            "date_created": "2017/01/01",
        },
        "licenses": [
            {
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
                "id": 1,
                "name": "CC0 1.0",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def _split(
    split: str,
    image_ids: list[int],
    first_ann_id: int,
    size: int,
    rng: np.random.Generator,
    out: Path,
    heavy_share: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write one split's images under ``out``; return its instances JSON and ``_summary``."""
    n = len(image_ids)
    plan = plan_scenes(n, rng, heavy_share)
    crowd_cat = "person" if split == "train" else "car"
    special = _special_modes(plan)
    primaries = list(TARGETS) * (n // 4 + 1)
    images, annotations = [], []
    ann_id = first_ann_id
    for i, (image_id, kind) in enumerate(zip(image_ids, plan, strict=True)):
        short = round(0.75 * size)
        shape = [(size, size), (size, short), (short, size)][int(rng.integers(3))]
        if special.get(i) == "exif":
            # non-square, so a wrongly applied EXIF rotation shows up as a size mismatch
            shape = (size, short)
        width, height = shape
        scene = compose(kind, primaries[i], rng, width, height, crowd_cat)
        file_name = f"{image_id:012d}.jpg"
        write_bytes_atomic(
            out / f"{split}2017" / file_name, _encode(scene.render(), special.get(i, "RGB"))
        )
        images.append(_image_record(split, file_name, image_id, width, height))
        for ann in scene.annotations():
            if ann["iscrowd"]:
                ann["id"] = CROWD_ID_BASE + image_id
            else:
                ann["id"] = ann_id
                ann_id += 1
            ann["image_id"] = image_id
            annotations.append(ann)
    data = _dataset(images, annotations)
    return data, _summary(data)


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    id_to_name = {c["id"]: c["name"] for c in data["categories"]}
    per_cat: dict[str, dict[str, Any]] = {
        c["name"]: {"images": set(), "instances": 0} for c in data["categories"]
    }
    for a in data["annotations"]:
        if not a["iscrowd"]:
            entry = per_cat[id_to_name[a["category_id"]]]
            entry["images"].add(a["image_id"])
            entry["instances"] += 1
    qualifying = set().union(*(per_cat[t]["images"] for t in TARGETS))
    return {
        "images": len(data["images"]),
        "annotations": len(data["annotations"]),
        "crowd": sum(a["iscrowd"] for a in data["annotations"]),
        "qualifying_images": len(qualifying),
        "per_category": {
            k: {"images": len(v["images"]), "instances": v["instances"]} for k, v in per_cat.items()
        },
    }


def make_synthetic_coco(
    out: str | Path,
    images_per_split: int = 40,
    size: int = 256,
    seed: int = 0,
    heavy_share: float = 0.0,
) -> dict:
    """Write a synthetic COCO-2017-shaped root under ``out``.

    Layout: ``annotations/instances_{train,val}2017.json``, ``train2017/*.jpg``,
    ``val2017/*.jpg`` (file names ``%012d.jpg``; image ids distinct across splits).
    Images are ``size`` px on their longer side (some 3:4 or 4:3). Same arguments give
    byte-identical files.

    Args:
        out: root folder (created; existing files with the same names are replaced).
        images_per_split: images in each of train2017 and val2017 (>= 1). About 85% hold at
            least one non-crowd person/car/dog/cake.
        size: image side in px (>= 32).
        seed: seeds every random choice.
        heavy_share: fraction (0-1) of the images with objects drawn as a heavy-occlusion
            scene: a smaller object in front of a larger one, inside its extent (occlusion
            level >= 0.3, ``seglib.evaluation.occlusion``). The other scenes already hold some heavy
            occlusion (rows of packed objects, pairs over a corner); this sets a floor, so the
            occlusion buckets are populated even in small splits. 0 keeps the files of
            earlier versions byte for byte.

    Returns:
        ``{"root", "seed", "size", "images_per_split", "heavy_share", "splits": {split: {"images",
        "annotations", "crowd", "qualifying_images", "per_category": {name: {"images",
        "instances"}}}}}`` (per-category counts are non-crowd).

    Raises:
        ValueError: ``images_per_split`` < 1, ``size`` < 32 or ``heavy_share`` outside [0, 1].
    """
    if not 0.0 <= heavy_share <= 1.0:
        raise ValueError(f"heavy_share must be in [0, 1], got {heavy_share}")
    if images_per_split < 1:
        raise ValueError(f"images_per_split must be >= 1, got {images_per_split}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 600000), size=2 * images_per_split, replace=False).tolist()
    summary: dict[str, Any] = {
        "root": str(out),
        "seed": seed,
        "size": size,
        "images_per_split": images_per_split,
        "heavy_share": heavy_share,
        "splits": {},
    }
    for k, split in enumerate(("train", "val")):
        split_rng = np.random.default_rng([seed, k])
        split_ids = ids[k * images_per_split : (k + 1) * images_per_split]
        data, counts = _split(
            split, split_ids, 1 + k * 10_000_000, size, split_rng, out, heavy_share
        )
        write_json_atomic(out / "annotations" / f"instances_{split}2017.json", data, indent=None)
        summary["splits"][split] = counts
    return summary
