"""Scale jitter: resize by a random factor, then pad or crop back to the input's size.

``ScaleJitter`` is an albumentations ``DualTransform`` that ``TrainTransform`` puts in its
``A.Compose``, so it draws from the pipeline's shared generators like the crop and the flip.
It is torchvision's detection reference recipe (``ScaleJitter`` then ``FixedSizeCrop``, with
the image padded by the ImageNet mean) with the target size being the image's own size:
"standard" scale jitter draws the factor from 0.8-1.25, large scale jitter (LSJ, Ghiasi et
al., CVPR 2021) from 0.1-2.0. The output keeps the input's size, which is what makes it a
change of object scale under Mask R-CNN: the model resizes every image to ``min_size``, which
would undo a bare resize, but not the padding around a shrunken image nor the crop of an
enlarged one.

Neither albumentations 2.0.8 transform fits alone: ``RandomScale`` changes the output size
(the model's resize undoes it), and ``Affine(scale=...)`` draws its translation independently
of the scale, so it cannot place a shrunken image anywhere in the frame or cut any window out
of an enlarged one. The geometry here is also what Copy-Paste (``seglib.data.copy_paste``)
uses to jitter the objects it pastes.

Geometry: an array of [h, w] is resized to ``size`` = (h', w') and laid with its top-left corner
at ``offset`` = (y, x) (negative: cut at the top or left) on an [H, W] frame. Pixel centres
map to pixel centres: output row r reads source row ``floor((r - y + 0.5) * h / h')`` for masks
(nearest), which is where OpenCV's ``resize`` samples the image, so the two stay in register.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

__all__ = [
    "AREA_BELOW",
    "PAD_FILL",
    "ScaleJitter",
    "check_scale_range",
    "moved_windows",
    "place_image",
    "place_masks",
    "placement",
    "resize_image",
    "scaled_size",
]

#: Colour of the padding around a shrunken image: the ImageNet mean in 0..255, as torchvision's
#: LSJ preset pads (references/detection/presets.py), so it normalises to about zero.
PAD_FILL = (123, 117, 104)
#: Factor below which images are shrunk by area averaging: bilinear reads 2x2 pixels, so under
#: 0.5 it would skip whole source pixels (aliasing).
AREA_BELOW = 0.5

Region = tuple[slice, slice]


def check_scale_range(scale: tuple[float, float], name: str = "scale_range") -> None:
    """Raise ValueError, naming ``name``, unless ``scale`` is ``(lo, hi)`` with 0 < lo <= hi."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {tuple(scale)}")


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """``(round(h * scale), round(w * scale))``, at least one pixel each."""
    return max(1, round(h * scale)), max(1, round(w * scale))


def placement(
    size: tuple[int, int], offset: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[Region, Region] | None:
    """Where an array of ``size`` laid at ``offset`` meets an ``out_hw`` frame.

    Returns:
        ``(frame region, array region)`` as (rows, columns) slices of equal extent, or None
        when the array lies wholly outside the frame.
    """
    (dh, dw), (oy, ox), (h, w) = size, offset, out_hw
    y0, y1, x0, x1 = max(oy, 0), min(oy + dh, h), max(ox, 0), min(ox + dw, w)
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3] resized to ``size`` (h', w'), pixel centres kept in register: area
    averaging when both sides shrink below ``AREA_BELOW`` (no aliasing at LSJ's 0.1), bilinear
    otherwise (OpenCV's area resize at factors near 1 costs about four times as much)."""
    h, w = image.shape[:2]
    shrink = size[0] < AREA_BELOW * h and size[1] < AREA_BELOW * w
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interpolation)


def place_image(
    image: np.ndarray,
    size: tuple[int, int],
    offset: tuple[int, int],
    out_hw: tuple[int, int],
    fill: tuple[int, int, int] = PAD_FILL,
) -> np.ndarray:
    """uint8 [h, w, 3] resized to ``size``, laid at ``offset`` on an ``out_hw`` frame of ``fill``.

    Returns:
        uint8 [H, W, 3], contiguous.
    """
    where = placement(size, offset, out_hw)
    if where is None:
        return np.full((*out_hw, 3), fill, np.uint8)
    (fy, fx), (sy, sx) = where
    inside = resize_image(image, size)[sy, sx]
    # One OpenCV pass writes the cut image and its padding (a numpy fill costs more).
    return cv2.copyMakeBorder(
        inside, fy.start, out_hw[0] - fy.stop, fx.start, out_hw[1] - fx.stop,
        cv2.BORDER_CONSTANT, value=tuple(int(v) for v in fill),
    )  # fmt: skip


def _source_index(start: int, stop: int, shift: int, src: int, dst: int) -> np.ndarray:
    """Source row (or column) read by each output row in ``start..stop``: pixel centres, nearest."""
    index = np.floor((np.arange(start, stop) - shift + 0.5) * (src / dst)).astype(np.intp)
    return np.clip(index, 0, src - 1)


def place_masks(
    masks: np.ndarray, size: tuple[int, int], offset: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """uint8 [N, h, w] masks resized (nearest) to ``size`` and laid at ``offset`` on an
    ``out_hw`` frame of zeros, each read only within its bounding rectangle.

    Returns:
        uint8 [N, H, W], contiguous; a mask that leaves the frame comes back empty.
    """
    n, h, w = masks.shape
    out = np.zeros((n, *out_hw), np.uint8)
    where = placement(size, offset, out_hw)
    if where is None:
        return out
    (fy, fx), _ = where
    rows = _source_index(fy.start, fy.stop, offset[0], h, size[0])
    cols = _source_index(fx.start, fx.stop, offset[1], w, size[1])
    for j in range(n):
        mask = masks[j] if masks.dtype == np.uint8 else (masks[j] != 0).astype(np.uint8)
        x, y, bw, bh = cv2.boundingRect(np.ascontiguousarray(mask))
        # The output rows and columns that read the mask's rectangle (the maps are monotonic).
        r0, r1 = np.searchsorted(rows, [y, y + bh])
        c0, c1 = np.searchsorted(cols, [x, x + bw])
        if bw and r1 > r0 and c1 > c0:
            window = mask.take(rows[r0:r1], axis=0).take(cols[c0:c1], axis=1)
            out[j, fy.start + r0 : fy.start + r1, fx.start + c0 : fx.start + c1] = window
    return out


def moved_windows(
    windows: np.ndarray,
    in_hw: tuple[int, int],
    size: tuple[int, int],
    offset: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """int [N, 4] XYXY windows of an [h, w] array moved by ``place_masks(.., size, offset,
    out_hw)``: int64 [N, 4], each holding whatever its window held, clipped to the frame."""
    (h, w), (dh, dw), (oy, ox), (fh, fw) = in_hw, size, offset, out_hw
    windows = np.asarray(windows, np.float64)
    # Source column c lands on output columns ceil(c * dw/w - 0.5 + ox) onwards; one pixel of
    # margin on each side absorbs floating-point rounding.
    lo = np.floor(windows[:, :2] * (dw / w, dh / h) - 0.5 + (ox, oy)) - 1
    hi = np.ceil(windows[:, 2:] * (dw / w, dh / h) - 0.5 + (ox, oy)) + 1
    moved = np.concatenate([lo, hi], axis=1).astype(np.int64)
    return np.clip(moved, 0, [fw, fh, fw, fh])


class ScaleJitter(A.DualTransform):
    """Resize by a factor drawn uniformly from ``scale_range``, then pad (with ``fill``) or crop
    back to the input's size, at a uniformly drawn position: anywhere in the frame when the
    resized image is smaller, any window of it when it is larger (per side).

    Targets: ``image`` (uint8 [H, W, 3]), ``mask3d`` (uint8 [N, H, W], nearest) and ``bboxes``
    (moved and clipped). Factor and position come from the transform's ``py_random``, which
    ``Compose.set_random_state`` shares with the rest of the pipeline.

    Raises:
        ValueError: ``scale_range`` is not ``(lo, hi)`` with 0 < lo <= hi.
    """

    def __init__(
        self,
        scale_range: tuple[float, float],
        fill: tuple[int, int, int] = PAD_FILL,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        check_scale_range(scale_range)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.fill = tuple(int(v) for v in fill)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale_range", "fill")

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        h, w = params["shape"][:2]
        scale = self.py_random.uniform(*self.scale_range)
        dh, dw = scaled_size(h, w, scale)
        oy = self.py_random.randint(min(0, h - dh), max(0, h - dh))
        ox = self.py_random.randint(min(0, w - dw), max(0, w - dw))
        return {"scale": scale, "size": (dh, dw), "offset": (oy, ox)}

    def apply(self, img: np.ndarray, size: tuple, offset: tuple, **params) -> np.ndarray:
        return place_image(img, size, offset, img.shape[:2], self.fill)

    def apply_to_mask3d(
        self, mask3d: np.ndarray, size: tuple, offset: tuple, **params
    ) -> np.ndarray:
        return place_masks(mask3d, size, offset, mask3d.shape[1:])

    def apply_to_bboxes(
        self, bboxes: np.ndarray, size: tuple, offset: tuple, shape: tuple, **params
    ) -> np.ndarray:
        # Normalised XYXY in, normalised out: scaled by size / shape, moved by offset, clipped.
        h, w = shape[:2]
        out = np.array(bboxes, dtype=np.float64, copy=True)
        out[:, [0, 2]] = np.clip((out[:, [0, 2]] * size[1] + offset[1]) / w, 0.0, 1.0)
        out[:, [1, 3]] = np.clip((out[:, [1, 3]] * size[0] + offset[0]) / h, 0.0, 1.0)
        return out.astype(bboxes.dtype)
