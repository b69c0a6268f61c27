"""A synthetic COCO 2017 root: the offline stand-in for COCO in tests and the smoke profile.

Each category is a distinct shape with its own colour palette, so a model can learn it:
person (head + body, red), car (body + wheels, blue), dog (body + head + legs, brown),
cake (two layers + candle, pink); distractors bicycle (wheels + frame, green) and cat
(head + ears, grey) sit in the same scenes, and some images hold none of the four.

The layout and JSON match COCO's ``instances_{train,val}2017.json``: polygons as lists of
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

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .io import write_bytes_atomic, write_json_atomic

#: COCO 2017 categories drawn here: the project's four plus two distractors.
CATEGORIES: list[dict[str, Any]] = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 17, "name": "cat"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
    {"supercategory": "food", "id": 61, "name": "cake"},
]
TARGETS = ("person", "car", "dog", "cake")
DISTRACTORS = ("bicycle", "cat")
CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}

JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112
#: Crowd annotation ids follow COCO's pattern (900100000000 + image id), beyond int32.
CROWD_ID_BASE = 900100000000


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 16) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return list(zip((cx + rx * np.cos(t)).tolist(), (cy + ry * np.sin(t)).tolist(), strict=True))


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# Shapes as polygons in a unit box (x right, y down); aspect = width / height of the box.
SHAPES: dict[str, tuple[float, list[list[tuple[float, float]]]]] = {
    "person": (
        0.42,
        [
            _ellipse(0.5, 0.13, 0.32, 0.13),
            [
                (0.1, 0.28),
                (0.9, 0.28),
                (0.9, 0.62),
                (0.72, 1.0),
                (0.56, 1.0),
                (0.5, 0.72),
                (0.44, 1.0),
                (0.28, 1.0),
                (0.1, 0.62),
            ],
        ],
    ),
    "car": (
        1.9,
        [
            [
                (0.0, 0.45),
                (0.22, 0.42),
                (0.32, 0.08),
                (0.7, 0.08),
                (0.82, 0.42),
                (1.0, 0.5),
                (1.0, 0.82),
                (0.0, 0.82),
            ],
            _ellipse(0.23, 0.82, 0.11, 0.18),
            _ellipse(0.77, 0.82, 0.11, 0.18),
        ],
    ),
    "dog": (
        1.45,
        [
            _ellipse(0.58, 0.48, 0.36, 0.22),
            _ellipse(0.16, 0.3, 0.15, 0.2),
            _rect(0.3, 0.55, 0.38, 1.0),
            _rect(0.78, 0.55, 0.86, 1.0),
            [(0.92, 0.42), (1.0, 0.18), (0.96, 0.45)],
        ],
    ),
    "cake": (
        1.1,
        [
            _rect(0.0, 0.45, 1.0, 1.0),
            _rect(0.14, 0.18, 0.86, 0.47),
            _rect(0.45, 0.0, 0.55, 0.2),
        ],
    ),
    "bicycle": (
        1.6,
        [
            _ellipse(0.2, 0.68, 0.2, 0.32),
            _ellipse(0.8, 0.68, 0.2, 0.32),
            [(0.2, 0.66), (0.45, 0.2), (0.8, 0.66), (0.7, 0.7), (0.45, 0.38), (0.3, 0.7)],
        ],
    ),
    "cat": (
        0.9,
        [
            _ellipse(0.5, 0.6, 0.46, 0.4),
            [(0.08, 0.45), (0.12, 0.0), (0.4, 0.25)],
            [(0.92, 0.45), (0.88, 0.0), (0.6, 0.25)],
        ],
    ),
}
PALETTE: dict[str, tuple[int, int, int]] = {
    "person": (205, 40, 45),
    "car": (40, 80, 210),
    "dog": (160, 100, 30),
    "cake": (235, 125, 205),
    "bicycle": (40, 170, 60),
    "cat": (120, 120, 120),
}


def _instance_polygons(
    name: str, x: float, y: float, h: float, flip: bool, width: int, height: int
) -> list[list[float]]:
    """The shape ``name`` with box top-left (x, y) and height h, as COCO polygon lists."""
    aspect, parts = SHAPES[name]
    w = h * aspect
    polys = []
    for part in parts:
        pts = np.array(part, dtype=np.float64)
        if flip:
            pts[:, 0] = 1.0 - pts[:, 0]
        # Objects may run off the border (COCO has truncated ones); clamp to the image.
        px = np.clip(x + pts[:, 0] * w, 0, width)
        py = np.clip(y + pts[:, 1] * h, 0, height)
        polys.append(np.round(np.stack([px, py], 1), 2).ravel().tolist())
    return polys


def _raster(polys: list[list[float]], height: int, width: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    return mask_utils.decode(rle).astype(bool)


def _mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer boundary of a binary mask [H, W] as COCO polygons along pixel edges.

    Traced on the grid of pixel corners at twice the resolution, so the polygon follows the
    edges of the boundary pixels and re-rasterises (pycocotools) to nearly the same mask.
    Holes are not representable (COCO polygons have none); callers avoid creating them.
    """
    fine = np.pad(np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8)), 1)
    corners = fine[:-1, :-1] | fine[:-1, 1:] | fine[1:, :-1] | fine[1:, 1:]
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c[:, 0, :] / 2.0).ravel().tolist() for c in contours if len(c) >= 3]


def _polygon_iou(polys: list[list[float]], mask: np.ndarray) -> float:
    if not polys:
        return 0.0
    m = _raster(polys, *mask.shape)
    return float((m & mask).sum() / max((m | mask).sum(), 1))


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major mask, starting with zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _polygon_bbox(polys: list[list[float]]) -> list[float]:
    xs = np.concatenate([np.asarray(p[0::2]) for p in polys])
    ys = np.concatenate([np.asarray(p[1::2]) for p in polys])
    return [
        round(float(xs.min()), 2),
        round(float(ys.min()), 2),
        round(float(xs.max() - xs.min()), 2),
        round(float(ys.max() - ys.min()), 2),
    ]


class _Scene:
    """One image under construction: instances in z-order (later ones occlude earlier ones)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng, self.width, self.height = rng, width, height
        self.items: list[dict[str, Any]] = []  # name, full mask, polys, colour, crowd

    def visible(self, index: int, extra: np.ndarray | None = None) -> np.ndarray:
        vis = self.items[index]["mask"].copy()
        for later in self.items[index + 1 :]:
            vis &= ~later["mask"]
        if extra is not None:
            vis &= ~extra
        return vis

    def _still_fine(self, index: int, occluder: np.ndarray) -> bool:
        """Earlier instance ``index`` keeps half its area and a polygon-representable visible part."""
        it = self.items[index]
        before, after = self.visible(index), self.visible(index, occluder)
        if after.sum() < 0.5 * it["mask"].sum():
            return False
        if it["crowd"] or after.sum() == before.sum():
            return True
        # An occluder inside an object would punch a hole that COCO polygons cannot express.
        return _polygon_iou(_mask_to_polygons(after), after) >= 0.95

    def _colour(self, name: str) -> np.ndarray:
        base = np.array(PALETTE[name], dtype=np.float64)
        return np.clip(base + self.rng.uniform(-25, 25, 3), 0, 255)

    def try_add(
        self,
        name: str,
        rel_h: tuple[float, float],
        near: tuple[float, float] | None = None,
        tries: int = 30,
    ) -> bool:
        """Place one instance whose box height is ``rel_h`` of the shorter image side.

        Placement is rejected while it would hide more than half of an earlier instance, so
        occluded instances keep a sensible visible part.
        """
        side = min(self.width, self.height)
        for _ in range(tries):
            h = self.rng.uniform(*rel_h) * side
            w = h * SHAPES[name][0]
            if w > 0.95 * self.width:
                h, w = 0.95 * self.width / SHAPES[name][0], 0.95 * self.width
            if near is None:
                x = self.rng.uniform(-0.05 * w, self.width - 0.95 * w)
                y = self.rng.uniform(-0.05 * h, self.height - 0.95 * h)
            else:
                x = near[0] + self.rng.uniform(-0.1, 0.1) * w
                y = near[1] + self.rng.uniform(-0.1, 0.1) * h
            polys = _instance_polygons(
                name, x, y, h, bool(self.rng.integers(2)), self.width, self.height
            )
            mask = _raster(polys, self.height, self.width)
            if mask.sum() < 0.5 * w * h * 0.5:  # mostly off-image
                continue
            if all(self._still_fine(i, mask) for i in range(len(self.items))):
                self.items.append(
                    {
                        "name": name,
                        "mask": mask,
                        "polys": polys,
                        "colour": self._colour(name),
                        "crowd": False,
                        "w": w,
                        "h": h,
                        "x": x,
                        "y": y,
                    }
                )
                return True
        return False

    def add_crowd(self, name: str) -> None:
        """A tightly packed group of small instances annotated as one crowd region."""
        side = min(self.width, self.height)
        member_h = 0.14 * side / max(1.0, SHAPES[name][0])
        region_w = self.rng.uniform(0.3, 0.45) * self.width
        region_h = 1.4 * member_h
        x0 = self.rng.uniform(0, self.width - region_w)
        y0 = self.rng.uniform(0, self.height - region_h)
        union = np.zeros((self.height, self.width), dtype=bool)
        members = []
        # About one member per 40% of a member's width: heavily overlapping, like a real crowd.
        count = max(4, int(region_w / (0.4 * member_h * SHAPES[name][0])))
        for _ in range(count):
            h = member_h * self.rng.uniform(0.85, 1.15)
            x = x0 + self.rng.uniform(0, max(region_w - h * SHAPES[name][0], 1))
            y = y0 + self.rng.uniform(0, max(region_h - h, 1))
            polys = _instance_polygons(
                name, x, y, h, bool(self.rng.integers(2)), self.width, self.height
            )
            m = _raster(polys, self.height, self.width)
            union |= m
            members.append((m, self._colour(name)))
        self.items.append({"name": name, "mask": union, "members": members, "crowd": True})

    def render(self) -> np.ndarray:
        """uint8 [H, W, 3]: a soft gradient background with noise, instances painted in z-order."""
        h, w = self.height, self.width
        c0, c1 = self.rng.uniform(60, 200, 3), self.rng.uniform(60, 200, 3)
        t = np.linspace(0, 1, h)[:, None, None] * 0.6 + np.linspace(0, 1, w)[None, :, None] * 0.4
        img = (c0 * (1 - t) + c1 * t) * 0.7  # desaturated so palette colours stand out
        for it in self.items:
            for m, colour in it.get("members", [(it["mask"], it.get("colour"))]):
                shade = colour * (0.85 + 0.15 * np.linspace(0, 1, h))[:, None, None]
                img = np.where(m[..., None], shade, img)
        img = img + self.rng.normal(0, 6, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    def annotations(self) -> list[dict[str, Any]]:
        """COCO annotation dicts (without ids) for every item, by visible part."""
        anns = []
        for i, it in enumerate(self.items):
            vis = self.visible(i)
            if it["crowd"]:
                seg: Any = _uncompressed_rle(vis)
                rle = mask_utils.frPyObjects(seg, self.height, self.width)
                bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
                area = float(mask_utils.area(rle))
            else:
                polys = it["polys"] if vis.sum() == it["mask"].sum() else _mask_to_polygons(vis)
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, self.height, self.width))
                seg, bbox, area = polys, _polygon_bbox(polys), float(mask_utils.area(rle))
            if area < 1:
                continue
            anns.append(
                {
                    "segmentation": seg,
                    "area": area,
                    "iscrowd": int(it["crowd"]),
                    "bbox": bbox,
                    "category_id": CAT_ID[it["name"]],
                }
            )
        return anns


# Box height as a fraction of the shorter image side, per shape: the longer box side ends up
# at roughly 30-60% of the image, so objects stay learnable at 128 px (the smoke profile).
REL_H: dict[str, tuple[float, float]] = {
    name: (0.3 / max(1.0, aspect), 0.6 / max(1.0, aspect)) for name, (aspect, _) in SHAPES.items()
}


def _plan(n: int, rng: np.random.Generator, heavy_share: float = 0.0) -> list[str]:
    """Scene kinds for one split: mostly images with the four categories, a few without.

    ``heavy_share`` of the images with objects become "heavy" scenes; with 0 the plan (and
    the random stream) is exactly that of earlier versions, so their files stay byte-identical.
    """
    none = [] if n < 4 else ["empty"] + ["distractors"] * max(0, round(n * 0.08) - 1)
    crowd = ["crowd_only", "crowd_plus"] if n >= 8 else []
    rest = n - len(none) - len(crowd)
    heavy = ["heavy"] * round(heavy_share * rest)
    kinds = ["single", "pair", "group"] * (rest // 3 + 1)
    plan = none + crowd + heavy + kinds[: rest - len(heavy)]
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def _compose(
    kind: str, primary: str, rng: np.random.Generator, width: int, height: int, crowd_cat: str
) -> _Scene:
    scene = _Scene(rng, width, height)
    if kind in ("crowd_only", "crowd_plus"):
        scene.add_crowd(crowd_cat)
        if kind == "crowd_plus":
            scene.try_add(crowd_cat, REL_H[crowd_cat])
        else:
            scene.try_add(DISTRACTORS[int(rng.integers(2))], REL_H["cat"])
        return scene
    if kind == "empty":
        return scene
    if kind == "distractors":
        for name in DISTRACTORS:
            scene.try_add(name, REL_H[name])
        return scene
    if kind == "heavy":
        _add_contained_pair(scene, primary, rng)
        return scene
    if rng.random() < 0.4:
        d = DISTRACTORS[int(rng.integers(2))]
        scene.try_add(d, REL_H[d])
    if kind == "single":
        if not scene.try_add(primary, REL_H[primary], tries=200):
            scene.items.clear()
            scene.try_add(primary, REL_H[primary], tries=200)
    elif kind == "pair":
        scene.try_add(primary, REL_H[primary], tries=200)
        other = TARGETS[(TARGETS.index(primary) + 1 + int(rng.integers(3))) % 4]
        first = scene.items[-1]
        # Put the second object over a corner of the first, so boxes overlap and it occludes.
        near = (first["x"] + 0.5 * first["w"], first["y"] + 0.3 * first["h"])
        if not scene.try_add(other, REL_H[other], near=near):
            scene.try_add(other, REL_H[other])
    else:  # group: a tightly packed row of the same category, each partly hiding the previous
        lo, hi = REL_H[primary]
        rel = (0.9 * lo, 0.9 * hi)
        scene.try_add(primary, rel, tries=200)
        for _ in range(2):
            prev = scene.items[-1]
            step = 0.55 * prev["w"]
            near = (
                prev["x"] + step if prev["x"] + 1.6 * prev["w"] < width else prev["x"] - step,
                prev["y"] + 0.1 * prev["h"],
            )
            if not scene.try_add(primary, rel, near=near):
                scene.try_add(primary, rel)
    return scene


#: Heavy scenes: the smaller object's box height as a fraction of the larger one's, and how much
#: of it hangs below the larger one's lower edge (so the larger one's visible part has no hole).
CONTAINED_REL_H = (0.45, 0.6)
CONTAINED_OVERHANG = 0.25
CONTAINED_TRIES = 5


def _add_contained_pair(scene: _Scene, primary: str, rng: np.random.Generator) -> None:
    """A large object with a smaller one in front of it, mostly inside its box.

    The smaller one lies wholly in the larger one's extent except for an overhang at the
    bottom, so its occlusion level (``seglib.occlusion``) is about 0.6-0.75 or more: heavy by
    construction. Box IoU of such a pair is low (the small box is a fraction of the large
    one), which is the containment case box IoU misses. Falls back to a plain pair when the
    small one cannot be placed without hiding more than half of the large one.
    """
    # The large object must be wide enough to hold another one: a person is too narrow.
    big = primary if primary != "person" else "car"
    lo, hi = REL_H[big]
    if not scene.try_add(big, ((lo + hi) / 2, hi), tries=200):
        return
    first = scene.items[-1]
    side = min(scene.width, scene.height)
    fits = [
        name
        for name in TARGETS
        if name != big and CONTAINED_REL_H[0] * first["h"] * SHAPES[name][0] <= 0.8 * first["w"]
    ]
    small = fits[int(rng.integers(len(fits)))] if fits else "person"
    aspect = SHAPES[small][0]
    h = min(rng.uniform(*CONTAINED_REL_H) * first["h"], 0.8 * first["w"] / aspect)
    near = (
        first["x"] + rng.uniform(0.1, max(0.1, 0.9 - h * aspect / first["w"])) * first["w"],
        first["y"] + first["h"] - (1 - CONTAINED_OVERHANG) * h,
    )
    rel = (h / side, h / side)
    for _ in range(CONTAINED_TRIES):
        if not scene.try_add(small, rel, near=near):
            break
        # The large one's polygon may fill in a hole the small one left (``_still_fine``
        # allows 5% of the large one's area): keep only placements where that annotation
        # stays off the small one, as COCO's visible parts do.
        outline = _raster(
            _mask_to_polygons(scene.visible(len(scene.items) - 2)), *first["mask"].shape
        )
        placed = scene.items[-1]["mask"]
        if (outline & placed).sum() <= 0.05 * placed.sum():
            return
        scene.items.pop()
    scene.try_add(small, REL_H[small])


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


def _split(
    split: str,
    image_ids: list[int],
    first_ann_id: int,
    size: int,
    rng: np.random.Generator,
    out: Path,
    heavy_share: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    n = len(image_ids)
    plan = _plan(n, rng, heavy_share)
    crowd_cat = "person" if split == "train" else "car"
    special = {}
    qualifying = [
        i for i, k in enumerate(plan) if k in ("single", "pair", "group", "crowd_plus", "heavy")
    ]
    for mode, i in zip(("L", "CMYK", "exif"), qualifying, strict=False):
        special[i] = mode
    primaries = list(TARGETS) * (n // 4 + 1)
    images, annotations = [], []
    ann_id = first_ann_id
    for i, (image_id, kind) in enumerate(zip(image_ids, plan, strict=True)):
        short = round(0.75 * size)
        shape = [(size, size), (size, short), (short, size)][int(rng.integers(3))]
        if special.get(i) == "exif":
            shape = (
                size,
                short,
            )  # non-square, so a wrongly applied EXIF rotation shows up as a size mismatch
        width, height = shape
        scene = _compose(kind, primaries[i], rng, width, height, crowd_cat)
        file_name = f"{image_id:012d}.jpg"
        write_bytes_atomic(
            out / f"{split}2017" / file_name, _encode(scene.render(), special.get(i, "RGB"))
        )
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "coco_url": f"http://images.cocodataset.org/{split}2017/{file_name}",
                "height": height,
                "width": width,
                "date_captured": "2017-01-01 00:00:00",
                "id": image_id,
            }
        )
        for ann in scene.annotations():
            if ann["iscrowd"]:
                ann["id"] = CROWD_ID_BASE + image_id
            else:
                ann["id"] = ann_id
                ann_id += 1
            ann["image_id"] = image_id
            annotations.append(ann)
    data = {
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
            level >= 0.3, ``seglib.occlusion``). The other scenes already hold some heavy
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
