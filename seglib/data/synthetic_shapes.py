"""The shapes of the synthetic COCO root: categories, outlines, colours and mask geometry.

Each category is a distinct shape with its own colour palette, so a model can learn it:
person (head + body, red), car (body + wheels, blue), dog (body + head + legs, brown),
cake (two layers + candle, pink); distractors bicycle (wheels + frame, green) and cat
(head + ears, grey). Shapes are polygons in a unit box; the helpers here place one in an
image and convert between COCO polygons, binary masks and uncompressed RLE. Scenes built
from them are in ``seglib.data.synthetic_scenes``; the COCO files in ``seglib.data.synthetic``.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from seglib.core.config import COCO_IDS

#: COCO 2017 categories drawn here, with COCO's ids: the project's four plus two distractors.
CATEGORIES: list[dict[str, Any]] = [
    {"supercategory": "person", "id": COCO_IDS["person"], "name": "person"},
    {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
    {"supercategory": "vehicle", "id": COCO_IDS["car"], "name": "car"},
    {"supercategory": "animal", "id": 17, "name": "cat"},
    {"supercategory": "animal", "id": COCO_IDS["dog"], "name": "dog"},
    {"supercategory": "food", "id": COCO_IDS["cake"], "name": "cake"},
]
TARGETS = ("person", "car", "dog", "cake")
DISTRACTORS = ("bicycle", "cat")
CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}


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

# Box height as a fraction of the shorter image side, per shape: the longer box side ends up
# at roughly 30-60% of the image, so objects stay learnable at 128 px (the smoke profile).
REL_H: dict[str, tuple[float, float]] = {
    name: (0.3 / max(1.0, aspect), 0.6 / max(1.0, aspect)) for name, (aspect, _) in SHAPES.items()
}


def instance_polygons(
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


def raster(polys: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons rasterised (pycocotools) to one bool mask [height, width]."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    return mask_utils.decode(rle).astype(bool)


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer boundary of a binary mask [H, W] as COCO polygons along pixel edges.

    Traced on the grid of pixel corners at twice the resolution, so the polygon follows the
    edges of the boundary pixels and re-rasterises (pycocotools) to nearly the same mask.
    Holes are not representable (COCO polygons have none); callers avoid creating them.
    """
    fine = np.pad(mask.astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1), 1)  # 2x2 per pixel
    corners = fine[:-1, :-1] | fine[:-1, 1:] | fine[1:, :-1] | fine[1:, 1:]
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c[:, 0, :] / 2.0).ravel().tolist() for c in contours if len(c) >= 3]


def polygon_iou(polys: list[list[float]], mask: np.ndarray) -> float:
    """IoU of the rasterised ``polys`` with the bool ``mask``; 0 without polygons."""
    if not polys:
        return 0.0
    m = raster(polys, *mask.shape)
    return float((m & mask).sum() / max((m | mask).sum(), 1))


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major mask, starting with zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def polygon_bbox(polys: list[list[float]]) -> list[float]:
    """COCO ``bbox`` ``[x, y, w, h]`` of the polygons' extents, rounded to 0.01 px."""
    xs = np.concatenate([np.asarray(p[0::2]) for p in polys])
    ys = np.concatenate([np.asarray(p[1::2]) for p in polys])
    return [
        round(float(xs.min()), 2),
        round(float(ys.min()), 2),
        round(float(xs.max() - xs.min()), 2),
        round(float(ys.max() - ys.min()), 2),
    ]
