"""Training augmentations (albumentations 2.0.8) that keep masks, boxes and labels in sync.

A transform is called as ``t(image=..., masks=..., labels=...)`` and returns
``(image, masks, labels)``. Boxes are never carried through albumentations: the dataset derives
them from the augmented masks with ``boxes_from_masks``, so they cannot drift out of sync
(albumentations#836), and labels are indexed in numpy, so they never come back as floats.

The train recipe is a horizontal flip, a bbox-safe random crop and light colour jitter. There is
no separate random rescale: torchvision's Mask R-CNN resizes every image to ``min_size`` itself,
which would undo it. The crop is what changes object scale (crop, then the model's resize, zooms
in), and it is steered by the box of one randomly chosen instance so that instance always
survives whole: a crop never removes every instance (albumentations#383).
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch

__all__ = ["TrainTransform", "boxes_from_masks", "eval_transforms", "train_transforms"]


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes around binary masks.

    Args:
        masks: uint8 or bool [N, H, W]; nonzero pixels belong to the instance.

    Returns:
        float32 [N, 4] XYXY in pixels, with x2 = last column + 1 and y2 = last row + 1, so a
        one-pixel mask has width and height 1. Rows of empty masks are all zeros (width 0);
        callers drop them.

    Raises:
        ValueError: ``masks`` is not 3-dimensional.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    n, h, w = masks.shape
    boxes = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return boxes
    # max, not any: numpy reduces uint8 with max several times faster than with logical_or.
    rows = masks.max(axis=2) > 0  # [N, H]
    cols = masks.max(axis=1) > 0  # [N, W]
    present = rows.any(axis=1)
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~present] = 0.0
    return boxes


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # When the window is exactly the box, rounding can leave hi a hair below lo.
    return float(rng.uniform(lo, max(lo, hi)))


class TrainTransform:
    """Horizontal flip, bbox-safe random crop and colour jitter for one training image.

    ``strength`` scales the crop and jitter magnitudes linearly: 0 leaves only the flip, 1 is
    the seed recipe (crops keep at least 60% of each side, brightness/contrast/saturation
    +-20%, hue +-0.02), 2 is the maximum (crops down to 20% of a side).

    Randomness: every call draws one seed from torch's global generator and seeds the crop and
    albumentations from it, like torchvision's own transforms. So ``torch.manual_seed(s)`` makes
    the draws reproducible, and each DataLoader worker (which torch seeds with
    ``base_seed + worker_id``) draws its own stream instead of a forked copy of the same one
    (albumentations' own generator would be copied into every worker).
    """

    def __init__(self, strength: float = 1.0, hflip_prob: float = 0.5) -> None:
        if not 0.0 <= strength <= 2.0:
            raise ValueError(f"strength must be in [0, 2], got {strength}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.strength = float(strength)
        self.hflip_prob = float(hflip_prob)
        # Smallest crop side as a fraction of the image side.
        self.min_crop = max(0.2, 1.0 - 0.4 * self.strength)
        ops: list = [A.HorizontalFlip(p=self.hflip_prob)]
        if self.strength > 0:
            s = self.strength
            ops.append(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=1.0))
            ops.append(
                A.ColorJitter(
                    brightness=0.2 * s, contrast=0.2 * s, saturation=0.2 * s, hue=0.02 * s, p=0.8
                )
            )
        # The only box given to albumentations is the crop guide; clip guards against float
        # noise at the border (albumentations#459).
        self._pipeline = A.Compose(
            ops,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["guide_ids"], clip=True),
        )
        self._rng = np.random.default_rng(0)

    def __repr__(self) -> str:
        return f"TrainTransform(strength={self.strength}, hflip_prob={self.hflip_prob})"

    def _reseed_from_torch(self) -> None:
        seed = int(torch.randint(0, 2**32, (1,)).item())
        self._pipeline.set_random_seed(seed)
        self._rng = np.random.default_rng(seed)

    def _crop_guide(self, masks: np.ndarray, h: int, w: int) -> np.ndarray:
        """A random window of at least ``min_crop`` of each side containing one instance's box.

        BBoxSafeRandomCrop then crops a random region that contains this window, so the chosen
        instance is kept whole and the crop is never smaller than ``min_crop``.
        """
        rng = self._rng
        frac = rng.uniform(self.min_crop, 1.0)
        gw, gh = frac * w, frac * h
        if len(masks) == 0:
            gx, gy = rng.uniform(0, w - gw), rng.uniform(0, h - gh)
            return np.array([[gx, gy, gx + gw, gy + gh]], dtype=np.float32)
        # One pixel of margin: albumentations rounds crop coordinates down.
        j = int(rng.integers(len(masks)))
        x1, y1, x2, y2 = (float(v) for v in boxes_from_masks(masks[j : j + 1])[0])
        x1, y1 = max(x1 - 1.0, 0.0), max(y1 - 1.0, 0.0)
        x2, y2 = min(x2 + 1.0, float(w)), min(y2 + 1.0, float(h))
        gw, gh = max(gw, x2 - x1), max(gh, y2 - y1)
        gx = _uniform(rng, max(0.0, x2 - gw), min(x1, w - gw))
        gy = _uniform(rng, max(0.0, y2 - gh), min(y1, h - gh))
        return np.array([[gx, gy, min(gx + gw, w), min(gy + gh, h)]], dtype=np.float32)

    def __call__(
        self, *, image: np.ndarray, masks: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment one image and its instances.

        Args:
            image: uint8 [H, W, 3].
            masks: uint8 [N, H, W] with values 0/1 (N may be 0).
            labels: int [N].

        Returns:
            ``(image uint8 [H', W', 3], masks uint8 [M, H', W'], labels int64 [M])`` where the
            M <= N instances are those whose mask is still non-empty, in their original order.

        Raises:
            ValueError: the shapes of image, masks and labels do not agree.
        """
        image = np.asarray(image)
        masks = np.asarray(masks)
        labels = np.asarray(labels)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(f"masks must be [N, {h}, {w}] to match the image, got {masks.shape}")
        if labels.shape != (masks.shape[0],):
            raise ValueError(
                f"labels must be [{masks.shape[0]}] to match masks, got {labels.shape}"
            )
        self._reseed_from_torch()

        data = {"image": image, "guide_ids": [0]}
        data["bboxes"] = self._crop_guide(masks, h, w)
        if len(masks):
            # albumentations 2.0.8 cannot stack an empty list of masks; leave them out instead.
            data["masks"] = masks
        out = self._pipeline(**data)
        image = np.ascontiguousarray(out["image"])
        if not len(masks):
            return image, np.zeros((0, *image.shape[:2]), dtype=np.uint8), labels.astype(np.int64)
        masks = np.asarray(out["masks"], dtype=np.uint8)
        keep = masks.reshape(len(masks), -1).max(axis=1) > 0
        return image, np.ascontiguousarray(masks[keep]), labels[keep].astype(np.int64)


def train_transforms(strength: float = 1.0, hflip_prob: float = 0.5) -> TrainTransform:
    """The training augmentation: flip, bbox-safe random crop, colour jitter.

    Args:
        strength: 0 (flip only) to 2; scales the crop and jitter magnitudes.
        hflip_prob: probability of a horizontal flip.

    Returns:
        A picklable callable ``t(image=, masks=, labels=) -> (image, masks, labels)``.

    Raises:
        ValueError: strength outside [0, 2] or hflip_prob outside [0, 1].
    """
    return TrainTransform(strength=strength, hflip_prob=hflip_prob)


def eval_transforms() -> None:
    """No evaluation augmentation: the model resizes and normalises images itself."""
    return None
