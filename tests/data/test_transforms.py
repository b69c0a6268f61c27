"""Train augmentation: albumentations flips and crops, and masks, labels and image stay in sync
over many random draws."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import seglib.data.transforms
from seglib.data.images import decode_image
from seglib.data.transforms import (
    StackedHorizontalFlip,
    TrainTransform,
    boxes_from_masks,
    color_jitter,
    eval_transforms,
    train_transforms,
)

# pycocotools 2.0.11 under numpy 2 warns inside its own decode; nothing seglib can change.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),  # torchvision 0.29
]

DRAWS = 200


# --- boxes_from_masks ---------------------------------------------------------------------
def test_boxes_from_masks_are_tight_and_exclusive_at_the_far_edge():
    masks = np.zeros((3, 6, 8), np.uint8)
    masks[0, 1:4, 2:7] = 1  # rows 1..3, cols 2..6
    masks[1, 5, 7] = 1  # one pixel in the bottom-right corner
    boxes = boxes_from_masks(masks)
    assert boxes.dtype == np.float32 and boxes.shape == (3, 4)
    np.testing.assert_array_equal(boxes[0], [2, 1, 7, 4])
    np.testing.assert_array_equal(boxes[1], [7, 5, 8, 6])
    np.testing.assert_array_equal(boxes[2], [0, 0, 0, 0])  # empty mask: zeros, caller drops it


def test_boxes_from_masks_handles_no_instances_and_bool_input():
    assert boxes_from_masks(np.zeros((0, 5, 5), np.uint8)).shape == (0, 4)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 2, 1] = True
    np.testing.assert_array_equal(boxes_from_masks(masks)[0], [1, 2, 2, 3])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        boxes_from_masks(np.zeros((4, 4), np.uint8))


def test_boxes_from_masks_within_windows_reads_only_the_windows():
    rng = np.random.default_rng(6)
    masks = _blobs(rng, 40, 50, 6)
    masks[5] = 0
    full = boxes_from_masks(masks)
    # Windows that hold their masks, some reaching past the image: the same boxes.
    grown = full + np.array([-3, -2, 4, 5], np.float32)
    grown[5] = (10, 10, 20, 20)
    np.testing.assert_array_equal(boxes_from_masks(masks, grown), full)
    # Only the window is read: a window around part of a mask boxes that part.
    part = np.zeros((1, 10, 10), np.uint8)
    part[0, 1, 1] = part[0, 8, 8] = 1
    np.testing.assert_array_equal(
        boxes_from_masks(part, np.array([[5, 5, 10, 10]])), [[8, 8, 9, 9]]
    )
    np.testing.assert_array_equal(boxes_from_masks(part, np.array([[3, 3, 3, 9]])), [[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="within"):
        boxes_from_masks(masks, full[:2])


# --- construction and simple cases --------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{"strength": -0.1}, {"strength": 2.5}, {"hflip_prob": 1.5}])
def test_train_transforms_rejects_out_of_range_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        train_transforms(**kwargs)


def test_eval_transforms_is_none():
    assert eval_transforms() is None


def _asymmetric_case():
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :10] = (255, 0, 0)
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 2:12, 3:6] = 1  # an L: a vertical bar ...
    masks[0, 10:12, 3:12] = 1  # ... and a foot to the right
    masks[1, 15:18, 20:29] = 1
    return image, masks, np.array([2, 1])


def test_flip_mirrors_image_and_masks():
    image, masks, labels = _asymmetric_case()
    out_image, out_masks, out_labels, _ = train_transforms(strength=0.0, hflip_prob=1.0)(
        image=image, masks=masks, labels=labels
    )
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_masks, masks[:, :, ::-1])
    np.testing.assert_array_equal(out_labels, labels)
    assert out_labels.dtype == np.int64 and out_masks.dtype == np.uint8


def test_strength_zero_without_flip_is_identity():
    image, masks, labels = _asymmetric_case()
    out_image, out_masks, out_labels, _ = train_transforms(strength=0.0, hflip_prob=0.0)(
        image=image, masks=masks, labels=labels
    )
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_masks, masks)
    np.testing.assert_array_equal(out_labels, labels)


class _FixedDraws:
    """A stand-in generator: one adjustment, at a chosen factor."""

    def __init__(self, op: str, factor: float):
        self.op, self.factor = op, factor

    def permutation(self, ops):
        return [self.op]

    def uniform(self, lo, hi):
        return self.factor


@pytest.mark.parametrize(
    ("op", "factor", "reference"),
    [
        ("brightness", 1.15, "adjust_brightness"),
        ("contrast", 0.85, "adjust_contrast"),
        ("saturation", 1.2, "adjust_saturation"),
    ],
)
def test_color_jitter_matches_torchvision_within_one_level(op, factor, reference):
    import torchvision.transforms.functional as F

    image = np.random.default_rng(0).integers(40, 200, (30, 40, 3), dtype=np.uint8)
    ours = color_jitter(image, _FixedDraws(op, factor))
    theirs = getattr(F, reference)(torch.from_numpy(image).permute(2, 0, 1), factor)
    diff = np.abs(ours.astype(int) - theirs.permute(1, 2, 0).numpy().astype(int))
    assert diff.max() <= 1


def test_color_jitter_keeps_grey_grey_and_turns_hue_by_the_drawn_angle():
    grey = np.repeat(np.arange(0, 250, 10, dtype=np.uint8)[None, :, None], 3, axis=2)
    for seed in range(10):
        out = color_jitter(grey, np.random.default_rng(seed), strength=2.0)
        spread = out.max(axis=2).astype(int) - out.min(axis=2)
        assert spread.max() <= 1  # grey stays grey (up to one level of rounding)
        assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()  # monotonic on grey levels
    red = np.zeros((4, 4, 3), np.uint8)
    red[...] = (200, 40, 40)
    turned = color_jitter(red, _FixedDraws("hue", 1 / 3))  # a third of a turn: red to green
    assert turned[0, 0, 1] > turned[0, 0, 0] and turned[0, 0, 1] > turned[0, 0, 2]


def test_no_instances_gives_empty_arrays_of_the_right_shape():
    t = train_transforms(strength=2.0, hflip_prob=0.5)
    for seed in range(20):
        torch.manual_seed(seed)
        image, masks, labels, boxes = t(
            image=np.full((40, 50, 3), 90, np.uint8),
            masks=np.zeros((0, 40, 50), np.uint8),
            labels=np.zeros(0, np.int64),
        )
        assert masks.shape == (0, *image.shape[:2]) and masks.dtype == np.uint8
        assert labels.shape == (0,) and labels.dtype == np.int64
        assert boxes.shape == (0, 4) and boxes.dtype == np.float32


def test_mismatched_inputs_are_rejected():
    image, masks, labels = _asymmetric_case()
    t = train_transforms()
    with pytest.raises(ValueError, match="masks"):
        t(image=image, masks=masks[:, :10], labels=labels)
    with pytest.raises(ValueError, match="labels"):
        t(image=image, masks=masks, labels=labels[:1])
    with pytest.raises(ValueError, match="image"):
        t(image=image[:, :, 0], masks=masks, labels=labels)
    with pytest.raises(ValueError, match="boxes"):
        t(image=image, masks=masks, labels=labels, boxes=np.zeros((1, 4)))


def test_draws_are_reproducible_per_torch_seed_and_survive_pickling():
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    masks = np.zeros((1, 60, 80), np.uint8)
    masks[0, 20:30, 30:40] = 1
    t = train_transforms(strength=2.0)

    def draw(transform, seed):
        torch.manual_seed(seed)
        return transform(image=image, masks=masks, labels=np.array([1]))

    first, again = draw(t, 3), draw(t, 3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    copy = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(draw(copy, 3)[0], first[0])
    shapes = {draw(t, seed)[0].shape for seed in range(10)}
    assert len(shapes) > 1, "different seeds should give different crops"


# --- albumentations does the flip and the crop ------------------------------------------------
def test_the_pipeline_is_albumentations_flip_and_bbox_safe_crop():
    t = train_transforms(strength=1.0, hflip_prob=0.3)
    assert isinstance(t.pipeline, A.Compose)
    crop, flip = t.pipeline.transforms
    assert type(crop) is A.BBoxSafeRandomCrop and crop.erosion_rate == 0.0 and crop.p == 1.0
    assert type(flip) is StackedHorizontalFlip and flip.p == 0.3
    assert isinstance(flip, A.HorizontalFlip)
    params = t.pipeline.processors["bboxes"].params
    assert (
        params.format == "pascal_voc" and params.clip and list(params.label_fields) == ["guide_ids"]
    )
    (only,) = train_transforms(strength=0.0, hflip_prob=0.7).pipeline.transforms
    assert type(only) is StackedHorizontalFlip and only.p == 0.7


def test_the_stacked_flip_gives_albumentations_own_result():
    """One OpenCV call over the [N*H, W] rows equals HorizontalFlip's own 3-D mask flip."""
    masks = np.random.default_rng(5).integers(0, 2, (3, 7, 11), dtype=np.uint8)
    ours = StackedHorizontalFlip(p=1.0)(image=masks[0, :, :, None].repeat(3, 2), mask3d=masks)
    theirs = A.HorizontalFlip(p=1.0)(image=masks[0, :, :, None].repeat(3, 2), mask3d=masks)
    np.testing.assert_array_equal(ours["mask3d"], theirs["mask3d"])
    np.testing.assert_array_equal(ours["mask3d"], masks[:, :, ::-1])
    assert ours["mask3d"].flags.c_contiguous


def test_albumentations_performs_the_crop_and_the_flip(monkeypatch):
    """Fix the crop albumentations draws and count its flips: the output must be exactly that
    crop, mirrored by albumentations, for the image and every mask."""
    window = (5, 3, 21, 17)  # x_min, y_min, x_max, y_max

    def fixed_window(self, params, data):
        return {"crop_coords": window}

    flips = []
    hflip_apply = A.HorizontalFlip.apply
    stack_apply = StackedHorizontalFlip.apply_to_mask3d

    def counted_apply(self, img, **params):
        flips.append(img.shape)
        return hflip_apply(self, img, **params)

    def counted_stack(self, masks, **params):
        flips.append(masks.shape)
        return stack_apply(self, masks, **params)

    monkeypatch.setattr(A.BBoxSafeRandomCrop, "get_params_dependent_on_data", fixed_window)
    monkeypatch.setattr(A.HorizontalFlip, "apply", counted_apply)
    monkeypatch.setattr(StackedHorizontalFlip, "apply_to_mask3d", counted_stack)
    monkeypatch.setattr(seglib.data.transforms, "JITTER_PROB", 0.0)
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 4:10, 6:12] = 1
    masks[1, 12:16, 14:29] = 1
    x0, y0, x1, y1 = window
    for hflip_prob, flipped in ((0.0, False), (1.0, True)):
        flips.clear()
        out_image, out_masks, out_labels, _ = train_transforms(strength=1.0, hflip_prob=hflip_prob)(
            image=image, masks=masks, labels=np.array([1, 2]), seed=0
        )
        expect_image, expect_masks = image[y0:y1, x0:x1], masks[:, y0:y1, x0:x1]
        if flipped:
            expect_image, expect_masks = expect_image[:, ::-1], expect_masks[:, :, ::-1]
        np.testing.assert_array_equal(out_image, expect_image)
        np.testing.assert_array_equal(out_masks, expect_masks)
        np.testing.assert_array_equal(out_labels, [1, 2])
        # The image, then the two masks as one stack.
        crop_shape = (y1 - y0, x1 - x0)
        assert flips == ([(*crop_shape, 3), (2, *crop_shape)] if flipped else [])


def _coordinate_image(h: int, w: int) -> np.ndarray:
    """Each pixel holds its own column (red) and row (green), so an output pixel says where in
    the input it came from."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 0] = np.arange(w)[None, :]
    image[:, :, 1] = np.arange(h)[:, None]
    return image


def _blobs(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    masks = np.zeros((n, h, w), np.uint8)
    for m in masks:
        x, y = rng.integers(0, w - 2), rng.integers(0, h - 2)
        m[y : y + rng.integers(1, h // 2), x : x + rng.integers(1, w // 2)] = 1
    return masks


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_masks_follow_the_image_through_every_flip_and_crop(monkeypatch, strength):
    """Without jitter, the output image must be one window of the input, mirrored or not, and
    every mask must be the same window of its input mask."""
    monkeypatch.setattr(seglib.data.transforms, "JITTER_PROB", 0.0)
    rng = np.random.default_rng(2)
    t = train_transforms(strength=strength)
    seen = set()
    for seed in range(60):
        h, w = (int(v) for v in rng.integers(20, 120, size=2))
        image = _coordinate_image(h, w)
        masks = _blobs(rng, h, w, int(rng.integers(1, 5)))
        labels = np.arange(1, len(masks) + 1)
        out_image, out_masks, out_labels, out_boxes = t(
            image=image, masks=masks, labels=labels, seed=seed
        )
        known = t(image=image, masks=masks, labels=labels, boxes=boxes_from_masks(masks), seed=seed)
        np.testing.assert_array_equal(known.boxes, out_boxes)
        np.testing.assert_array_equal(known.masks, out_masks)
        np.testing.assert_array_equal(out_boxes, boxes_from_masks(out_masks))
        cols, rows = out_image[0, :, 0].astype(int), out_image[:, 0, 1].astype(int)
        flipped = len(cols) > 1 and cols[0] > cols[-1]
        x0, y0 = int(cols.min()), int(rows.min())
        oh, ow = out_image.shape[:2]
        window = image[y0 : y0 + oh, x0 : x0 + ow]
        kept = masks[out_labels - 1][:, y0 : y0 + oh, x0 : x0 + ow]
        if flipped:
            window, kept = window[:, ::-1], kept[:, :, ::-1]
        np.testing.assert_array_equal(out_image, window)
        np.testing.assert_array_equal(out_masks, kept)
        dropped = np.setdiff1d(labels, out_labels)
        assert not masks[dropped - 1][:, y0 : y0 + oh, x0 : x0 + ow].any(), "a visible mask lost"
        seen.add((flipped, (oh, ow) != (h, w)))
    assert {f for f, _ in seen} == {False, True}, "the draws never flipped, or always did"
    assert any(cropped for _, cropped in seen), "the draws never cropped"


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_the_guide_instance_is_kept_whole_and_the_crop_is_large_enough(strength):
    """With one instance, the guide is its box: it must survive whole (same pixel count), and
    every crop keeps at least ``min_crop`` of each side."""
    rng = np.random.default_rng(3)
    t = train_transforms(strength=strength)
    sides = set()
    for seed in range(200):
        h, w = (int(v) for v in rng.integers(8, 160, size=2))
        masks = _blobs(rng, h, w, 1)
        image = np.zeros((h, w, 3), np.uint8)
        out_image, out_masks, out_labels, _ = t(
            image=image, masks=masks, labels=np.array([3]), seed=seed
        )
        assert len(out_masks) == 1 and out_labels.tolist() == [3]
        assert int(out_masks.sum()) == int(masks.sum()), f"draw {seed}: the guide was cut"
        oh, ow = out_image.shape[:2]
        assert oh >= t.min_crop * h and ow >= t.min_crop * w, f"draw {seed}: crop too small"
        sides.add(round(oh / h, 1))
    assert len(sides) > 2, "the crops never varied in size"


def test_the_same_seed_gives_the_same_output_and_another_seed_another():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    masks = _blobs(rng, 90, 120, 4)
    labels = np.array([1, 2, 3, 4])
    t = train_transforms(strength=1.0)

    def draw(transform, seed):
        return transform(image=image, masks=masks, labels=labels, seed=seed)

    first = draw(t, 11)
    draw(t, 12)  # draws in between change nothing: each call reseeds everything
    torch.manual_seed(0)  # nor does torch's global state, when a seed is given
    again = draw(t, 11)
    fresh = draw(pickle.loads(pickle.dumps(train_transforms(strength=1.0))), 11)
    for a, b, c in zip(first, again, fresh, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    outputs = {
        (out[0].shape, out[0].tobytes(), out[1].tobytes())
        for out in (draw(t, seed) for seed in range(20, 30))
    }
    assert len(outputs) == 10, "different seeds should give different outputs"


def test_strength_zero_only_flips():
    image, masks, labels = _asymmetric_case()
    t = train_transforms(strength=0.0, hflip_prob=0.5)
    flipped = set()
    for seed in range(30):
        out_image, out_masks, out_labels, _ = t(image=image, masks=masks, labels=labels, seed=seed)
        np.testing.assert_array_equal(out_labels, labels)
        if np.array_equal(out_image, image):
            np.testing.assert_array_equal(out_masks, masks)
            flipped.add(False)
        else:
            np.testing.assert_array_equal(out_image, image[:, ::-1])
            np.testing.assert_array_equal(out_masks, masks[:, :, ::-1])
            flipped.add(True)
    assert flipped == {False, True}


# --- the sync property --------------------------------------------------------------------
def _check_invariants(n_in, image_in, out, k):
    image, masks, labels, boxes = out
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert masks.dtype == np.uint8 and masks.ndim == 3 and masks.shape[1:] == image.shape[:2]
    assert labels.dtype == np.int64 and labels.shape == (len(masks),)
    assert set(np.unique(masks)) <= {0, 1}
    assert masks.any(axis=(1, 2)).all(), "an empty mask survived"
    assert ((labels >= 1) & (labels <= k)).all()
    assert len(masks) <= n_in
    if n_in:
        assert len(masks) >= 1, "the crop removed every instance"
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, boxes_from_masks(masks))  # tight, in sync
    assert ((boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)).all()
    assert image.shape[0] <= image_in.shape[0] and image.shape[1] <= image_in.shape[1]


def test_labels_masks_and_image_stay_paired_over_random_draws():
    """Disjoint instances painted grey by label: after any draw, each surviving mask must sit
    on its own grey level (jitter is monotonic on grey), in label order."""
    rng = np.random.default_rng(0)
    t = train_transforms(strength=1.0)
    for seed in range(DRAWS):
        h, w = rng.integers(40, 120, size=2)
        masks, labels = [], []
        for label in rng.permutation(4)[: rng.integers(0, 5)] + 1:
            m = np.zeros((h, w), np.uint8)
            x0, y0 = rng.integers(0, w - 3), rng.integers(0, h - 3)
            m[y0 : y0 + rng.integers(1, 25), x0 : x0 + rng.integers(1, 25)] = 1
            m[sum(masks, np.zeros((h, w), np.uint8)) > 0] = 0  # keep instances disjoint
            if m.any():
                masks.append(m)
                labels.append(int(label))
        masks = np.array(masks, np.uint8).reshape(len(masks), h, w)
        labels = np.array(labels, np.int64)
        image = np.zeros((h, w, 3), np.uint8)
        for m, label in zip(masks, labels, strict=True):
            image[m > 0] = 30 + 50 * label
        torch.manual_seed(seed)
        out = t(image=image, masks=masks, labels=labels)
        _check_invariants(len(masks), image, out, k=4)
        out_image, out_masks, out_labels, _ = out
        grey = out_image[:, :, 0].astype(int)
        background = grey[~out_masks.any(axis=0)] if len(out_masks) else grey.ravel()
        levels = []
        for m in out_masks:
            inside = grey[m > 0]
            assert inside.min() == inside.max(), f"draw {seed}: mask and image out of sync"
            levels.append(inside[0])
        if len(background):
            assert not levels or background.max() < min(levels)
        order = np.argsort(levels)
        assert (np.diff(out_labels[order]) > 0).all(), f"draw {seed}: labels swapped"


def _coco_samples(json_path: Path, image_dir: Path):
    """(image, masks, labels 1..k, k) per image of a COCO file, non-crowd instances only."""
    coco = COCO()
    coco.dataset = json.loads(json_path.read_text())
    coco.createIndex()
    contiguous = {cid: i + 1 for i, cid in enumerate(sorted(coco.cats))}
    samples = []
    for img_id in sorted(coco.imgs):
        info = coco.imgs[img_id]
        anns = [a for a in coco.imgToAnns[img_id] if not a["iscrowd"]]
        image = decode_image(image_dir / info["file_name"]).permute(1, 2, 0).numpy()
        masks = np.zeros((len(anns), info["height"], info["width"]), np.uint8)
        for j, ann in enumerate(anns):
            masks[j] = coco.annToMask(ann)
        labels = np.array([contiguous[a["category_id"]] for a in anns], np.int64)
        samples.append((image, masks, labels))
    return samples, len(contiguous)


def _property_over_samples(samples, k):
    """DRAWS draws at least; more (up to 5x) until a crop has dropped an instance, which is
    rare when objects are large."""
    t = TrainTransform(strength=1.0, hflip_prob=0.5)
    seen_crop = seen_drop = False
    for seed in range(5 * DRAWS):
        if seed >= DRAWS and seen_crop and seen_drop:
            break
        image, masks, labels = samples[seed % len(samples)]
        out = t(image=image, masks=masks, labels=labels, seed=seed)
        _check_invariants(len(masks), image, out, k)
        # As the dataset calls it, with the boxes known: the same output, read in windows.
        known = t(image=image, masks=masks, labels=labels, boxes=boxes_from_masks(masks), seed=seed)
        for a, b in zip(out, known, strict=True):
            np.testing.assert_array_equal(a, b)
        seen_crop |= out[0].shape != image.shape
        seen_drop |= len(out[1]) < len(masks)
    assert seen_crop and seen_drop, "the draws never cropped or never dropped an instance"


def test_sync_property_on_synthetic_images(synthetic_coco):
    samples, k = _coco_samples(
        synthetic_coco / "annotations" / "instances_train2017.json", synthetic_coco / "train2017"
    )
    _property_over_samples(samples, k)


@pytest.mark.coco_tiny
def test_sync_property_on_real_coco_images(coco_tiny):
    samples, k = _coco_samples(coco_tiny / "instances_train2017_tiny.json", coco_tiny / "train2017")
    _property_over_samples(samples, k)
