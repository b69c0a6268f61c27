"""Scale jitter: the resize-and-place geometry against OpenCV's own resize, the output size
kept, and masks, boxes and image in register through the whole training transform."""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import pytest

import seglib.data.transforms
from seglib.data.scale_jitter import (
    AREA_BELOW,
    PAD_FILL,
    ScaleJitter,
    moved_windows,
    place_image,
    place_masks,
)
from seglib.data.transforms import boxes_from_masks, train_transforms


def _blobs(rng, n, h, w):
    masks = np.zeros((n, h, w), np.uint8)
    for m in masks:
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        m[y : y + rng.integers(1, h // 2), x : x + rng.integers(1, w // 2)] = 1
    return masks


def _reference(array, size, offset, out_hw, fill, interpolation):
    """Resize the whole array with OpenCV, then cut it out at ``offset`` on a filled frame."""
    big = cv2.resize(array, (size[1], size[0]), interpolation=interpolation)
    out = np.empty((*out_hw, *array.shape[2:]), array.dtype)
    out[:] = fill
    oy, ox = offset
    for y in range(out_hw[0]):
        if 0 <= y - oy < size[0]:
            lo, hi = max(0, ox), min(out_hw[1], ox + size[1])
            out[y, lo:hi] = big[y - oy, lo - ox : hi - ox]
    return out


@pytest.mark.parametrize(
    "size, offset",
    [
        ((96, 128), (-10, -50)),
        ((20, 31), (5, 90)),
        ((40, 50), (2, 3)),
        ((48, 64), (0, 0)),
        ((150, 70), (-40, 3)),
    ],
)
def test_placement_matches_opencv_resize_then_cut(size, offset):
    """Masks: PIL-style nearest (OpenCV's INTER_NEAREST_EXACT); image: OpenCV's own resize."""
    rng = np.random.default_rng(0)
    masks = _blobs(rng, 4, 48, 64)
    out = place_masks(masks, size, offset, (50, 60))
    for m, o in zip(masks, out, strict=True):
        ref = _reference(m, size, offset, (50, 60), 0, cv2.INTER_NEAREST_EXACT)
        np.testing.assert_array_equal(o, ref)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    shrink = size[0] < AREA_BELOW * 48 and size[1] < AREA_BELOW * 64
    inter = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    np.testing.assert_array_equal(
        place_image(image, size, offset, (50, 60)),
        _reference(image, size, offset, (50, 60), PAD_FILL, inter),
    )
    # The moved windows hold every placed mask.
    windows = moved_windows(boxes_from_masks(masks), (48, 64), size, offset, (50, 60))
    np.testing.assert_array_equal(boxes_from_masks(out, windows), boxes_from_masks(out))


def _run(t, seed, **data):
    t.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return t(**data)


def test_scale_jitter_keeps_the_size_and_draws_factor_and_position_over_their_ranges():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    masks = _blobs(rng, 3, 60, 80)
    jitter = ScaleJitter((0.5, 2.0))
    t = A.Compose([jitter], is_check_shapes=False)
    scales, offsets = [], set()
    for seed in range(100):
        out = _run(t, seed, image=image, mask3d=masks)
        assert out["image"].shape == image.shape and out["mask3d"].shape == masks.shape
        p = jitter.get_applied_params()
        (dh, dw), (oy, ox) = p["size"], p["offset"]
        assert min(0, 60 - dh) <= oy <= max(0, 60 - dh) and min(0, 80 - dw) <= ox <= max(0, 80 - dw)
        scales.append(p["scale"])
        offsets.add((oy, ox))
    assert 0.5 <= min(scales) < 0.7 and 1.8 < max(scales) <= 2.0
    assert len(offsets) > 50
    with pytest.raises(ValueError, match="scale_range"):
        ScaleJitter((1.25, 0.8))


def test_an_exact_doubling_repeats_every_mask_pixel_twice_each_way():
    rng = np.random.default_rng(2)
    masks = _blobs(rng, 3, 30, 40)
    image = np.zeros((30, 40, 3), np.uint8)
    jitter = ScaleJitter((2.0, 2.0))
    t = A.Compose([jitter], is_check_shapes=False)
    for seed in range(5):
        out = _run(t, seed, image=image, mask3d=masks)["mask3d"]
        oy, ox = jitter.get_applied_params()["offset"]
        big = masks.repeat(2, axis=1).repeat(2, axis=2)
        np.testing.assert_array_equal(out, big[:, -oy : -oy + 30, -ox : -ox + 40])


@pytest.mark.parametrize("strength", [0.0, 1.0])
@pytest.mark.parametrize("name, scale_range", [("standard", (0.8, 1.25)), ("large", (0.1, 2.0))])
def test_the_train_transform_keeps_masks_boxes_and_image_in_register(
    monkeypatch, strength, name, scale_range
):
    """At COCO's 480x640: each output mask covers the image pixels painted for it (in the
    instance's own colour), boxes are the masks' boxes, and the size is the crop's."""
    monkeypatch.setattr(seglib.data.transforms, "JITTER_PROB", 0.0)
    rng = np.random.default_rng(3)
    h, w, n = 480, 640, 4
    t = train_transforms(strength=strength, scale_range=scale_range)
    assert type(t.pipeline.transforms[-1]) is ScaleJitter and t.scale_range == scale_range
    checked = 0
    for seed in range(12):
        masks = _blobs(rng, n, h, w)
        masks = masks * (np.cumsum(masks, axis=0) == 1)  # disjoint, so colours do not mix
        colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)
        image = np.zeros((h, w, 3), np.uint8)
        for m, c in zip(masks, colours, strict=True):
            image[m == 1] = c
        labels = np.arange(n)
        out = t(image=image, masks=masks, labels=labels, boxes=boxes_from_masks(masks), seed=seed)
        if t._crop is None:
            assert out.image.shape == (h, w, 3)
        else:
            x0, y0, x1, y1 = t._crop.get_applied_params()["crop_coords"]
            assert out.image.shape == (y1 - y0, x1 - x0, 3)
        assert out.masks.shape[1:] == out.image.shape[:2]
        np.testing.assert_array_equal(out.boxes, boxes_from_masks(out.masks))
        for m, label in zip(out.masks, out.labels, strict=True):
            inside = out.image[m == 1].astype(int)
            # Edge pixels blend with the neighbours; the bulk is the instance's colour.
            assert np.median(np.abs(inside - colours[label]).sum(1)) < 30
            checked += 1
    assert checked > 10


def test_no_scale_range_leaves_the_seed_pipeline():
    assert all(
        type(op) is not ScaleJitter for op in train_transforms(strength=1.0).pipeline.transforms
    )
