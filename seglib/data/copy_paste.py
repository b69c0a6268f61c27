"""Copy-Paste augmentation (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation
Method for Instance Segmentation", CVPR 2021).

A random subset of the instances of another training image (the source) is flipped, scale
jittered and pasted onto the current one (the target), before the target's own flip, crop and
colour jitter (``seglib.data.transforms.TrainTransform``). As in the paper there is no blending:
a pasted pixel takes the source's colour, and it belongs to the pasted instance alone.

- Occlusion: the pasted pixels are subtracted from every target mask they cover; a target
  instance the paste covered and left with fewer than ``MIN_PIXELS`` pixels is dropped. A
  source object with fewer than ``MIN_PIXELS`` after its scaling and the frame's cut is not
  pasted at all (no unlabelled sliver is drawn).
- Crowds: a crowd annotation is never pasted. A crowd region of the target is a mask like any
  other: pasted objects may cover it, its covered pixels leave it, and it is dropped when
  fewer than ``MIN_PIXELS`` remain; its ``iscrowd`` flag goes with it. ``CocoSubsetDataset`` hands
  no crowds to the augmentation (they stay in ``.coco``, evaluation's ignore regions), so in
  training a crowd region is background that pasted objects may cover.
- Geometry: the source objects are flipped with ``hflip_prob`` and resized by a factor drawn
  from ``scale`` in the frame of the source image, which is then laid at a uniformly drawn
  position on the target's frame (anywhere when smaller, any window of it when larger): the
  geometry of ``seglib.data.scale_jitter``, applied to the union box of the chosen objects only.
- Boxes are recomputed from the masks (``boxes_from_masks``), never moved.

``paste_instances`` is the whole operation on arrays; ``CopyPaste`` holds the settings, draws
whether to paste and which image to paste from, and seeds its own generator from a sample's seed
(``paste_generator``), apart from the stream of the transform that follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from seglib.data.scale_jitter import (
    check_scale_range,
    place_masks,
    placement,
    resize_image,
    scaled_size,
)
from seglib.data.transforms import boxes_from_masks

__all__ = [
    "MIN_PIXELS",
    "CopyPaste",
    "Pasted",
    "choose_instances",
    "paste_generator",
    "paste_instances",
]

#: An instance that Copy-Paste changed (covered, or scaled and cut for a pasted one) and left
#: with fewer mask pixels than this is dropped: a 4x4 patch, below any box the model learns from.
MIN_PIXELS = 16
#: Mixed into a sample's seed, so Copy-Paste draws apart from its TrainTransform (seeded by
#: the seed alone).
_STREAM = 0xC0B1


class Pasted(NamedTuple):
    """The target image with the source's objects pasted on it."""

    image: np.ndarray  #: uint8 [H, W, 3]
    masks: np.ndarray  #: uint8 [M, H, W]: kept target instances first, then pasted ones
    labels: np.ndarray  #: int64 [M]
    boxes: np.ndarray  #: float32 [M, 4] XYXY, tight around each mask (``boxes_from_masks``)
    iscrowd: np.ndarray  #: bool [M]; pasted instances are never crowds


def paste_generator(seed: int) -> np.random.Generator:
    """The generator Copy-Paste draws from for a sample seeded ``seed`` (a stream of its own)."""
    return np.random.default_rng([seed, _STREAM])


def choose_instances(
    rng: np.random.Generator, eligible: np.ndarray, max_instances: int
) -> np.ndarray:
    """A uniformly random, non-empty subset of the ``eligible`` (bool [N]) instances, its size
    uniform in 1..min(``max_instances``, eligible ones): sorted int64 indices (none: empty)."""
    candidates = np.flatnonzero(np.asarray(eligible, bool))
    if len(candidates) == 0:
        return candidates.astype(np.int64)
    k = int(rng.integers(1, min(max_instances, len(candidates)) + 1))
    return np.sort(rng.choice(candidates, size=k, replace=False)).astype(np.int64)


def _windows(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Float XYXY boxes rounded outwards to whole pixels and clipped: int64 [N, 4]."""
    windows = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
    return np.clip(windows.astype(np.int64), 0, [hw[1], hw[0], hw[1], hw[0]])


def _pixel_counts(masks: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Nonzero pixels of each mask, counted inside its int XYXY window: int64 [N]."""
    return np.array(
        [
            cv2.countNonZero(m[y0:y1, x0:x1])
            for m, (x0, y0, x1, y1) in zip(masks, windows.astype(np.int64).tolist(), strict=True)
        ],
        dtype=np.int64,
    )


def _jittered(
    source_image: np.ndarray,
    source_masks: np.ndarray,
    pick: np.ndarray,
    boxes: np.ndarray,
    out_hw: tuple[int, int],
    rng: np.random.Generator,
    scale: tuple[float, float],
    hflip_prob: float,
) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """The picked source objects (``boxes``: theirs) flipped, scaled and laid on the target frame.

    Returns:
        (masks uint8 [k, H, W], the resized union crop of the source image, and its
        ``placement`` on the frame, or None when it misses the frame).
    """
    hs, ws = source_image.shape[:2]
    x1, y1 = np.floor(boxes[:, :2].min(0)).astype(int)
    x2, y2 = np.ceil(boxes[:, 2:].max(0)).astype(int)
    image, masks = source_image[y1:y2, x1:x2], source_masks[pick, y1:y2, x1:x2]
    if rng.random() < hflip_prob:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
        x1, x2 = ws - x2, ws - x1
    factor = float(rng.uniform(*scale))
    (fh, fw), (h, w) = scaled_size(hs, ws, factor), out_hw
    oy = int(rng.integers(min(0, h - fh), max(0, h - fh) + 1))
    ox = int(rng.integers(min(0, w - fw), max(0, w - fw) + 1))
    # The union crop, resized like the whole source frame and laid where it lies in it.
    size = scaled_size(y2 - y1, x2 - x1, factor)
    offset = (oy + round(y1 * factor), ox + round(x1 * factor))
    pasted = place_masks(np.ascontiguousarray(masks), size, offset, out_hw)
    where = placement(size, offset, out_hw)
    crop = resize_image(np.ascontiguousarray(image), size) if where is not None else image
    return pasted, crop, where


def paste_instances(
    image: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    source_image: np.ndarray,
    source_masks: np.ndarray,
    source_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    max_instances: int = 10,
    scale: tuple[float, float] = (0.1, 2.0),
    hflip_prob: float = 0.5,
    boxes: np.ndarray | None = None,
    source_boxes: np.ndarray | None = None,
    iscrowd: np.ndarray | None = None,
    source_iscrowd: np.ndarray | None = None,
) -> Pasted:
    """Paste a random subset of the source's non-crowd instances onto the target.

    Args:
        image: target, uint8 [H, W, 3] (not modified).
        masks: target instances, uint8 [N, H, W] 0/1; labels int [N].
        source_image: uint8 [Hs, Ws, 3], any size; source_masks uint8 [Ns, Hs, Ws] 0/1,
            source_labels int [Ns].
        rng: every draw (which instances, flip, factor, position).
        max_instances: most source instances pasted.
        scale: ``(lo, hi)`` range of the factor the source is resized by.
        hflip_prob: probability that the pasted objects are mirrored.
        boxes, source_boxes: the masks' tight boxes, float [N, 4] XYXY, when known (only the
            pixels inside are read); None to find them.
        iscrowd, source_iscrowd: bool [N] / [Ns] crowd flags (None: no crowds).

    Returns:
        ``Pasted(image, masks, labels, boxes, iscrowd)``: the target instances the paste left
        with ``MIN_PIXELS`` or more (all untouched ones), in order, then the pasted ones with
        ``MIN_PIXELS`` or more, in source order. No pixel is in both a target and a pasted mask.

    Raises:
        ValueError: shapes that do not agree, or a ``scale`` that is not 0 < lo <= hi.
    """
    check_scale_range(scale, "scale")
    image, masks, source_masks = np.asarray(image), np.asarray(masks), np.asarray(source_masks)
    h, w = image.shape[:2]
    if masks.shape[1:] != (h, w) or source_masks.shape[1:] != source_image.shape[:2]:
        raise ValueError(
            f"masks {masks.shape} / source_masks {source_masks.shape} must be [N, H, W] of "
            f"their images {image.shape} / {source_image.shape}"
        )
    crowd = np.zeros(len(masks), bool) if iscrowd is None else np.asarray(iscrowd, bool)
    boxes = boxes_from_masks(masks) if boxes is None else np.asarray(boxes, np.float32)
    labels = np.asarray(labels, np.int64)
    if source_boxes is None:
        source_boxes = boxes_from_masks(source_masks)
    source_boxes = np.asarray(source_boxes, np.float32)
    eligible = source_boxes[:, 2] > source_boxes[:, 0]  # non-empty
    if source_iscrowd is not None:
        eligible &= ~np.asarray(source_iscrowd, bool)
    pick = choose_instances(rng, eligible, max_instances)
    if len(pick) == 0:
        return Pasted(image, masks, labels, boxes, crowd)
    pasted, crop, where = _jittered(
        source_image, source_masks, pick, source_boxes[pick], (h, w), rng, scale, hflip_prob
    )
    if where is not None:
        # Objects the scaling or the frame's cut left below MIN_PIXELS are not pasted at all.
        (fy, fx), _ = where
        footprint = np.array([[fx.start, fy.start, fx.stop, fy.stop]] * len(pick))
        big = _pixel_counts(pasted, footprint) >= MIN_PIXELS
        if not big.all():
            pasted, pick = pasted[big], pick[big]
    if where is None or len(pick) == 0:
        return Pasted(image, masks, labels, boxes, crowd)
    source_labels = np.asarray(source_labels, np.int64)[pick]
    return _composite(image, masks, labels, boxes, crowd, pasted, crop, where, source_labels)


def _composite(
    image: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    crowd: np.ndarray,
    pasted: np.ndarray,
    crop: np.ndarray,
    where: tuple,
    pasted_labels: np.ndarray,
) -> Pasted:
    """The pasted objects (each of MIN_PIXELS or more) drawn over the target and taken out of
    its masks; a target mask cut below MIN_PIXELS is dropped (see ``paste_instances``)."""
    (fy, fx), (sy, sx) = where
    # The pasted pixels, within the crop's footprint (OpenCV's OR reads the views in place).
    alpha = np.ascontiguousarray(pasted[0, fy, fx])
    for m in pasted[1:]:
        cv2.bitwise_or(alpha, m[fy, fx], dst=alpha)
    image = image.copy()
    cv2.copyTo(crop[sy, sx], alpha, image[fy, fx])  # in place: the view is a Mat of image
    n, h, w = masks.shape
    windows = _windows(boxes, (h, w))
    before = _pixel_counts(masks, windows)
    out = np.concatenate([masks, pasted])  # the one copy: target masks are cut in it
    free = 1 - alpha
    for j, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        # Only where the mask's window meets the footprint.
        a0, a1 = max(y0, fy.start), min(y1, fy.stop)
        b0, b1 = max(x0, fx.start), min(x1, fx.stop)
        if a1 > a0 and b1 > b0:
            cut = free[a0 - fy.start : a1 - fy.start, b0 - fx.start : b1 - fx.start]
            out[j, a0:a1, b0:b1] &= cut
    after = _pixel_counts(out[:n], windows)
    footprint = np.array([[fx.start, fy.start, fx.stop, fy.stop]] * len(pasted))
    boxes = np.concatenate(
        [boxes_from_masks(out[:n], windows), boxes_from_masks(pasted, footprint)]
    )
    labels = np.concatenate([labels, pasted_labels])
    crowd = np.concatenate([crowd, np.zeros(len(pasted), bool)])
    keep = np.concatenate([(after == before) | (after >= MIN_PIXELS), np.ones(len(pasted), bool)])
    if not keep.all():
        out, labels, boxes, crowd = out[keep], labels[keep], boxes[keep], crowd[keep]
    return Pasted(image, out, labels, boxes.astype(np.float32), crowd)


@dataclass(frozen=True)
class CopyPaste:
    """Copy-Paste settings, and the draws that tie a training sample to its source image.

    Attributes:
        prob: probability that a sample gets objects pasted onto it (0: never).
        max_instances: most source instances pasted at once.
        scale: ``(lo, hi)`` range of the factor the source objects are resized by.
        hflip_prob: probability that the pasted objects are mirrored.

    Raises:
        ValueError: prob or hflip_prob outside [0, 1], max_instances below 1, or a scale that
            is not (lo, hi) with 0 < lo <= hi.
    """

    prob: float = 0.5
    max_instances: int = 10
    scale: tuple[float, float] = (0.1, 2.0)
    hflip_prob: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.prob <= 1.0 and 0.0 <= self.hflip_prob <= 1.0):
            raise ValueError(
                f"prob and hflip_prob must be in [0, 1], got {self.prob}, {self.hflip_prob}"
            )
        if self.max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")
        check_scale_range(self.scale, "scale")
        object.__setattr__(self, "scale", (float(self.scale[0]), float(self.scale[1])))

    def pick_source(
        self, rng: np.random.Generator, index: int, candidates: Sequence[int]
    ) -> int | None:
        """Whether to paste (with ``prob``), and from which of ``candidates`` (images with
        instances) other than ``index``, uniformly; None for no paste."""
        if rng.random() >= self.prob:
            return None
        others = [j for j in candidates if j != index]
        return int(others[rng.integers(len(others))]) if others else None

    def paste(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        masks: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray | None,
        source_image: np.ndarray,
        source_masks: np.ndarray,
        source_labels: np.ndarray,
        source_boxes: np.ndarray | None,
    ) -> Pasted:
        """``paste_instances`` with these settings; arrays as it takes them, no crowds."""
        return paste_instances(
            image,
            masks,
            labels,
            source_image,
            source_masks,
            source_labels,
            rng,
            max_instances=self.max_instances,
            scale=self.scale,
            hflip_prob=self.hflip_prob,
            boxes=boxes,
            source_boxes=source_boxes,
        )
