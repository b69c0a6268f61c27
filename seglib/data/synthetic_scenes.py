"""Scenes of the synthetic COCO root: shapes placed, occluding each other, and painted.

A ``Scene`` holds instances in z-order (later ones occlude earlier ones), renders the image
and annotates each instance by its visible part, as COCO does. ``plan_scenes`` chooses the
kinds of scene for one split and ``compose`` builds one: a single object, an overlapping
pair, a packed row of one category, a crowd, distractors only, an empty image, or a "heavy"
pair with a smaller object in front of a larger one. Shapes and colours are in
``seglib.data.synthetic_shapes``; the COCO files in ``seglib.data.synthetic``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from seglib.data.synthetic_shapes import (
    CAT_ID,
    DISTRACTORS,
    PALETTE,
    REL_H,
    SHAPES,
    TARGETS,
    instance_polygons,
    mask_to_polygons,
    polygon_bbox,
    polygon_iou,
    raster,
    uncompressed_rle,
)


class Scene:
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
        return polygon_iou(mask_to_polygons(after), after) >= 0.95

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
            polys = instance_polygons(
                name, x, y, h, bool(self.rng.integers(2)), self.width, self.height
            )
            mask = raster(polys, self.height, self.width)
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
            polys = instance_polygons(
                name, x, y, h, bool(self.rng.integers(2)), self.width, self.height
            )
            m = raster(polys, self.height, self.width)
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
                seg: Any = uncompressed_rle(vis)
                rle = mask_utils.frPyObjects(seg, self.height, self.width)
                bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
                area = float(mask_utils.area(rle))
            else:
                polys = it["polys"] if vis.sum() == it["mask"].sum() else mask_to_polygons(vis)
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, self.height, self.width))
                seg, bbox, area = polys, polygon_bbox(polys), float(mask_utils.area(rle))
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


def plan_scenes(n: int, rng: np.random.Generator, heavy_share: float = 0.0) -> list[str]:
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


def compose(
    kind: str, primary: str, rng: np.random.Generator, width: int, height: int, crowd_cat: str
) -> Scene:
    """One ``width`` x ``height`` scene of ``kind`` (a ``plan_scenes`` entry).

    ``primary`` is the main target category; ``crowd_cat`` the category of crowd scenes.
    """
    scene = Scene(rng, width, height)
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


def _add_contained_pair(scene: Scene, primary: str, rng: np.random.Generator) -> None:
    """A large object with a smaller one in front of it, mostly inside its box.

    The smaller one lies wholly in the larger one's extent except for an overhang at the
    bottom, so its occlusion level (``seglib.evaluation.occlusion``) is about 0.6-0.75 or more: heavy by
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
        outline = raster(
            mask_to_polygons(scene.visible(len(scene.items) - 2)), *first["mask"].shape
        )
        placed = scene.items[-1]["mask"]
        if (outline & placed).sum() <= 0.05 * placed.sum():
            return
        scene.items.pop()
    scene.try_add(small, REL_H[small])
