"""Training augmentations (albumentations 2.0.8) that keep masks, boxes and labels in sync.

A transform is called as ``t(image=..., masks=..., labels=..., boxes=..., seed=...)`` and
returns ``Augmented(image, masks, labels, boxes)``. albumentations does the flip
(``A.HorizontalFlip``) and the crop (``A.BBoxSafeRandomCrop``), on the image and on all the
masks, passed as one stacked array.
Boxes are never carried through albumentations: they are the tight boxes of the augmented
masks (``boxes_from_masks``), so they cannot drift out of sync (albumentations#836), and
labels are indexed in numpy, so they never come back as floats. Colour jitter is
``color_jitter``: torchvision's four adjustments composed into one affine colour map and applied
in a single pass (albumentations' ``ColorJitter`` cost about 20 times as much).

The train recipe is a horizontal flip, a bbox-safe random crop and light colour jitter. There is
no bare random rescale in it: torchvision's Mask R-CNN resizes every image to ``min_size`` itself,
which would undo it. The crop is what changes object scale (crop, then the model's resize, zooms
in), and it is steered by the box of one randomly chosen instance so that instance always
survives whole: a crop never removes every instance (albumentations#383). Off by default,
scale jitter (``seglib.data.scale_jitter.ScaleJitter``, "standard" or LSJ) resizes and then pads
or crops back to the image's size, which the model's resize keeps; it comes after the crop and
the flip, and an enlarging draw can cut every instance out, as in LSJ.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import albucore
import albumentations as A
import cv2
import numpy as np
import torch

from seglib.data.scale_jitter import ScaleJitter, moved_windows

__all__ = [
    "Augmented",
    "StackedHorizontalFlip",
    "TrainTransform",
    "boxes_from_masks",
    "color_jitter",
    "eval_transforms",
    "train_transforms",
]


def boxes_from_masks(masks: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """Tight boxes around binary masks.

    Args:
        masks: uint8 or bool [N, H, W]; nonzero pixels belong to the instance.
        within: optional int-valued [N, 4] XYXY windows, each known to hold every nonzero
            pixel of its mask (a box of the mask before a crop or flip, moved with it): only
            the pixels inside are read. A window that misses part of its mask gives that
            part's box wrong, so pass only windows that hold their masks.

    Returns:
        float32 [N, 4] XYXY in pixels, with x2 = last column + 1 and y2 = last row + 1, so a
        one-pixel mask has width and height 1. Rows of empty masks are all zeros (width 0);
        callers drop them.

    Raises:
        ValueError: ``masks`` is not 3-dimensional, or ``within`` is not [N, 4].
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    n, h, w = masks.shape
    if within is None:
        windows = np.tile(np.array([0, 0, w, h], np.int64), (n, 1))
    else:
        windows = np.asarray(within)
        if windows.shape != (n, 4):
            raise ValueError(f"within must be [{n}, 4] to match masks, got {windows.shape}")
        windows = np.clip(np.asarray(windows, np.int64), 0, [w, h, w, h])
    boxes = np.zeros((n, 4), dtype=np.float32)
    # OpenCV's bounding rectangle of the non-zero pixels reads each window once, vectorised;
    # numpy needs a reduction per axis, and its row-wise one over uint8 is slow.
    for j, (x1, y1, x2, y2) in enumerate(windows.tolist()):
        if x2 <= x1 or y2 <= y1:
            continue
        x, y, bw, bh = cv2.boundingRect(_cv_mask(masks[j, y1:y2, x1:x2]))
        if bw:
            boxes[j] = (x1 + x, y1 + y, x1 + x + bw, y1 + y + bh)
    return boxes


def _cv_mask(mask: np.ndarray) -> np.ndarray:
    """A 2-D mask as OpenCV reads it: uint8 with contiguous rows (usually ``mask`` itself)."""
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    elif mask.dtype != np.uint8:
        mask = (mask != 0).astype(np.uint8)
    return mask if mask.strides[-1] == 1 else np.ascontiguousarray(mask)


#: Colour jitter: probability per image, and the magnitudes at strength 1 (torchvision's
#: ColorJitter parameters: factors drawn from 1 +- these, hue shift from +- the last, in turns).
JITTER_PROB = 0.8
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}
#: Luma weights of cv2.COLOR_RGB2GRAY (ITU-R BT.601), and RGB <-> YIQ, whose chroma plane a hue
#: shift rotates (NVIDIA DALI's hue and color_twist operators do the same).
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _jitter_step(op: str, factor: float, mean_luma: float) -> tuple[np.ndarray, np.ndarray]:
    """One adjustment as an affine colour map ``x -> a @ x + b`` on RGB pixel columns."""
    if op == "brightness":  # torchvision: img * factor
        return factor * np.eye(3), np.zeros(3)
    if op == "contrast":  # blend with the image's mean grey level
        return factor * np.eye(3), np.full(3, (1 - factor) * mean_luma)
    if op == "saturation":  # blend with the image's own grey version
        return factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), _LUMA), np.zeros(3)
    angle = -2 * np.pi * factor  # hue: a turn of the chroma plane (factor in turns)
    cos, sin = np.cos(angle), np.sin(angle)
    turn = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    return _YIQ2RGB @ turn @ _RGB2YIQ, np.zeros(3)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """torchvision's ColorJitter (brightness, contrast, saturation, hue in a random order),
    fused into one affine colour map and applied in one pass with one rounding.

    Brightness, contrast and saturation are torchvision's formulas (equal to its output within
    one grey level where nothing clips). The hue shift turns the chroma plane (YIQ) by the same
    angle, in the same direction, as torchvision's shift of the HSV hue: NVIDIA DALI's
    definition, which keeps the whole adjustment affine. It is a different hue jitter of the same
    size, not a copy of torchvision's pixel by pixel. Grey stays grey under saturation and hue
    (up to one level of rounding), so every step is monotonic on grey levels. Values are
    rounded and clipped to 0..255 once, at the end.

    Args:
        image: uint8 [H, W, 3] RGB.
        rng: draws the four factors and their order.
        strength: scales the magnitudes in ``JITTER``.

    Returns:
        uint8 [H, W, 3].
    """
    a, b = np.eye(3), np.zeros(3)
    mean = np.array(cv2.mean(image)[:3])  # the mean colour, for contrast's grey level
    for op in rng.permutation(list(JITTER)):
        size = JITTER[op] * strength
        if op == "hue":
            factor = rng.uniform(-size, size)
        else:
            factor = rng.uniform(max(0.0, 1 - size), 1 + size)
        step_a, step_b = _jitter_step(op, factor, float(_LUMA @ (a @ mean + b)))
        a, b = step_a @ a, step_a @ b + step_b
    return cv2.transform(image, np.hstack([a, b[:, None]]).astype(np.float32))


class StackedHorizontalFlip(A.HorizontalFlip):
    """albumentations' ``HorizontalFlip``, with the stacked masks (its ``mask3d`` target,
    uint8 [N, H, W]) mirrored by one OpenCV call on the [N*H, W] view, every row reversed.

    The base class returns ``np.flip`` of the stack, a view that albumentations' Compose then
    copies into a contiguous array element by element: about ten times the cost of
    ``albucore.hflip`` (``cv2.flip``), and most of the augmentation's time on a COCO image with a
    dozen instances. The decision to flip and the image, box and keypoint flips are the base
    class's, unchanged; the result is the same array.
    """

    def apply_to_mask3d(self, mask3d: np.ndarray, **params) -> np.ndarray:
        n, h, w = mask3d.shape
        rows = np.ascontiguousarray(mask3d).reshape(n * h, w)
        return albucore.hflip(rows).reshape(n, h, w)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # When the window is exactly the box, rounding can leave hi a hair below lo.
    return float(rng.uniform(lo, max(lo, hi)))


class Augmented(NamedTuple):
    """One augmented training sample: what ``TrainTransform`` returns."""

    image: np.ndarray  #: uint8 [H', W', 3]
    masks: np.ndarray  #: uint8 [M, H', W'], each non-empty
    labels: np.ndarray  #: int64 [M]
    boxes: np.ndarray  #: float32 [M, 4] XYXY, tight around each mask (``boxes_from_masks``)


class TrainTransform:
    """Horizontal flip, bbox-safe random crop and colour jitter for one training image.

    ``strength`` scales the crop and jitter magnitudes linearly: 0 leaves only the flip, 1 is
    the seed recipe (crops keep at least 60% of each side, brightness/contrast/saturation
    +-20%, hue +-0.02), 2 is the maximum (crops down to 20% of a side).

    The flip and the crop are albumentations' ``HorizontalFlip(p=hflip_prob)`` (as
    ``StackedHorizontalFlip``) and ``BBoxSafeRandomCrop(erosion_rate=0.0)`` in one
    ``A.Compose`` (``pipeline``), applied to the image and to the stacked masks alike (its
    ``mask3d`` target: one slice for the crop, one OpenCV call for the flip, rather than one
    call per mask and a re-stacking copy). The only box albumentations sees is the crop guide: a
    random window of at least ``min_crop`` of each side around one randomly chosen instance
    (pascal_voc, clipped to the image), so the crop keeps that instance whole and is never
    smaller than ``min_crop``. The crop runs before the flip: the guide is drawn in the
    unflipped frame and mirrored with the image, which is the same distribution as flipping
    first, and the flip then copies the cropped arrays rather than the whole ones. With
    ``scale_range`` (None by default), ``ScaleJitter`` follows in the same Compose: a random
    resize padded or cropped back to the size the crop left. Colour jitter (``color_jitter``)
    touches the final image alone (the padding too).

    Boxes are never moved by albumentations: the output boxes are the tight boxes of the
    augmented masks (``boxes_from_masks``), and a mask the crop emptied is dropped with its
    label. When the caller knows the input masks' boxes (the dataset keeps them from
    construction), the crop and the flip that albumentations applied (``get_applied_params``)
    move them into windows that hold each augmented mask, and only those pixels are read.

    Randomness: every call seeds all its draws from one seed: the ``seed`` argument when given
    (the training loader passes a per-sample seed derived from the run's seed, the epoch, the
    image index and the rank, so no worker state is involved), else one drawn from torch's
    global generator, like torchvision's own transforms. The seed makes a numpy generator (crop
    guide, colour jitter) and a Python one, and ``Compose.set_random_state`` hands that pair to
    the Compose and all its transforms, which draw from it in turn (the flip decision and the
    crop coordinates come from the Python one). ``Compose(seed=...)`` and ``set_random_seed``
    would instead give each transform its own copy of the same stream, so two transforms would
    draw the same numbers. So the same seed gives the same output whatever was drawn before,
    ``torch.manual_seed(s)`` makes unseeded calls reproducible, and each DataLoader worker draws
    its own stream instead of a forked copy of the same one.
    """

    def __init__(
        self,
        strength: float = 1.0,
        hflip_prob: float = 0.5,
        scale_range: tuple[float, float] | None = None,
    ) -> None:
        if not 0.0 <= strength <= 2.0:
            raise ValueError(f"strength must be in [0, 2], got {strength}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.strength = float(strength)
        self.hflip_prob = float(hflip_prob)
        # Smallest crop side as a fraction of the image side.
        self.min_crop = max(0.2, 1.0 - 0.4 * self.strength)
        self._crop = A.BBoxSafeRandomCrop(erosion_rate=0.0, p=1.0) if self.strength > 0 else None
        self._flip = StackedHorizontalFlip(p=self.hflip_prob)
        self._scale = None if scale_range is None else ScaleJitter(scale_range)
        self.scale_range = None if self._scale is None else self._scale.scale_range
        ops = [op for op in (self._crop, self._flip, self._scale) if op is not None]
        # The only box given to albumentations is the crop guide; clip guards against float
        # noise at the border (albumentations#459). Nothing reads the guide back, so it is not
        # re-filtered after each transform; shapes are checked once, in __call__.
        bbox_params = (
            A.BboxParams(
                format="pascal_voc",
                label_fields=["guide_ids"],
                clip=True,
                check_each_transform=False,
            )
            if self.strength > 0
            else None
        )
        self.pipeline = A.Compose(ops, bbox_params=bbox_params, is_check_shapes=False)
        self._rng = np.random.default_rng(0)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(strength={self.strength}, hflip_prob={self.hflip_prob}, "
            f"scale_range={self.scale_range})"
        )

    def _reseed(self, seed: int | None) -> None:
        if seed is None:
            seed = int(torch.randint(0, 2**32, (1,)).item())
        # One numpy generator, shared with albumentations and drawn in order, and the Python
        # one albumentations draws its flip and crop from (Mersenne Twister, unrelated to PCG64).
        self._rng = np.random.default_rng(seed)
        self.pipeline.set_random_state(self._rng, random.Random(seed))

    def _crop_guide(
        self, masks: np.ndarray, boxes: np.ndarray | None, h: int, w: int
    ) -> np.ndarray:
        """The box BBoxSafeRandomCrop must keep: ``[[x1, y1, x2, y2]]`` (pascal_voc, float32).

        A random window of at least ``min_crop`` of each side, holding the box of one randomly
        chosen instance (anywhere, when there is none), rounded outwards to whole pixels and
        grown by one pixel on each side (within the image). BBoxSafeRandomCrop draws each side
        of its crop between the guide's edge and the image's, in normalised coordinates, and
        rounds down: a side drawn at the guide's far edge can come out one pixel short
        (``int(15 / 22 * 22) == 14``), and the margin rules that out, so the crop holds the
        whole window.
        """
        rng = self._rng
        frac = rng.uniform(self.min_crop, 1.0)
        gw, gh = frac * w, frac * h
        if len(masks) == 0:
            gx, gy = rng.uniform(0, w - gw), rng.uniform(0, h - gh)
        else:
            j = int(rng.integers(len(masks)))
            box = boxes[j] if boxes is not None else boxes_from_masks(masks[j : j + 1])[0]
            x1, y1, x2, y2 = (float(v) for v in box)
            gw, gh = max(gw, x2 - x1), max(gh, y2 - y1)
            gx = _uniform(rng, max(0.0, x2 - gw), min(x1, w - gw))
            gy = _uniform(rng, max(0.0, y2 - gh), min(y1, h - gh))
        box = (
            max(math.floor(gx) - 1, 0),
            max(math.floor(gy) - 1, 0),
            min(math.ceil(gx + gw) + 1, w),
            min(math.ceil(gy + gh) + 1, h),
        )
        return np.array([box], dtype=np.float32)

    def __call__(
        self,
        *,
        image: np.ndarray,
        masks: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray | None = None,
        seed: int | None = None,
    ) -> Augmented:
        """Augment one image and its instances.

        Args:
            image: uint8 [H, W, 3] (any strides: a view of a [3, H, W] tensor will do).
            masks: uint8 [N, H, W] with values 0/1 (N may be 0).
            labels: int [N].
            boxes: the masks' tight boxes, float [N, 4] XYXY as ``boxes_from_masks`` gives
                them, when known (then only the pixels inside their moved windows are read
                to find the output boxes); None to find them from the whole masks.
            seed: seeds every random choice of this call (None: drawn from torch's generator).

        Returns:
            ``Augmented(image, masks, labels, boxes)``, all contiguous, holding the M <= N
            instances whose mask is still non-empty, in their original order.

        Raises:
            ValueError: the shapes of image, masks, labels and boxes do not agree.
        """
        image, masks, labels = np.asarray(image), np.asarray(masks), np.asarray(labels)
        _check_sample(image, masks, labels, boxes)
        h, w = image.shape[:2]
        self._reseed(seed)
        data: dict = {"image": image}  # albumentations copies it if it is not contiguous
        if self.strength > 0:
            data["bboxes"] = self._crop_guide(masks, boxes, h, w)
            data["guide_ids"] = [0]
        if len(masks):
            # As albumentations' 3-D mask: cropped and flipped as one array.
            data["mask3d"] = masks
        out = self.pipeline(**data)
        image = out["image"]
        masks = out["mask3d"] if len(masks) else np.zeros((0, *image.shape[:2]), np.uint8)
        windows = None if boxes is None else self._moved(boxes, image.shape[:2])
        out_boxes = boxes_from_masks(masks, windows)
        keep = out_boxes[:, 2] > out_boxes[:, 0]
        if not keep.all():
            masks, labels, out_boxes = masks[keep], labels[keep], out_boxes[keep]
        if self.strength > 0 and self._rng.random() < JITTER_PROB:
            image = color_jitter(image, self._rng, self.strength)
        return Augmented(
            np.ascontiguousarray(image),
            np.ascontiguousarray(masks, dtype=np.uint8),
            labels.astype(np.int64),
            out_boxes,
        )

    def _moved(self, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The input boxes moved by the crop, flip and scale jitter the last call applied,
        rounded outwards to whole pixels: int64 [N, 4] windows, each holding its augmented mask."""
        h, w = shape
        windows = np.stack([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], 1).reshape(-1, 4)
        windows = windows.astype(np.int64)
        if self._crop is not None:
            x0, y0, _, _ = self._crop.get_applied_params()["crop_coords"]
            windows -= np.array([x0, y0, x0, y0])
        windows = np.clip(windows, 0, [w, h, w, h])
        if self._flip.get_applied_params():  # empty when the flip was not drawn
            windows[:, [0, 2]] = w - windows[:, [2, 0]]
        if self._scale is not None:  # same size in and out
            p = self._scale.get_applied_params()
            windows = moved_windows(windows, shape, p["size"], p["offset"], shape)
        return windows


def _check_sample(
    image: np.ndarray, masks: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None
) -> None:
    """Raise ValueError unless image, masks, labels and boxes have agreeing shapes."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise ValueError(f"masks must be [N, {h}, {w}] to match the image, got {masks.shape}")
    n = masks.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must be [{n}] to match masks, got {labels.shape}")
    if boxes is not None and np.shape(boxes) != (n, 4):
        raise ValueError(f"boxes must be [{n}, 4] to match masks, got {np.shape(boxes)}")


def train_transforms(
    strength: float = 1.0, hflip_prob: float = 0.5, scale_range: tuple[float, float] | None = None
) -> TrainTransform:
    """The training augmentation: flip, bbox-safe random crop, optional scale jitter, colour jitter.

    Args:
        strength: 0 (flip only) to 2; scales the crop and jitter magnitudes.
        hflip_prob: probability of a horizontal flip.
        scale_range: ``(lo, hi)`` factors of ``ScaleJitter`` after the crop and flip (0.8-1.25
            standard, 0.1-2.0 LSJ); None for none, the seed recipe.

    Returns:
        A picklable callable ``t(image=, masks=, labels=, boxes=None, seed=None)`` returning
        ``Augmented(image, masks, labels, boxes)``.

    Raises:
        ValueError: strength outside [0, 2], hflip_prob outside [0, 1], or a scale_range
            that is not (lo, hi) with 0 < lo <= hi.
    """
    return TrainTransform(strength=strength, hflip_prob=hflip_prob, scale_range=scale_range)


def eval_transforms() -> None:
    """No evaluation augmentation: the model resizes and normalises images itself."""
    return None
