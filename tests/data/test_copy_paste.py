"""Copy-Paste: pasted and original masks never share a pixel, boxes are the masks' boxes,
crowds are never pasted and are cut like any mask, draws follow the seed, and the dataset
pastes before its transforms (and not at all at prob 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglib.data.copy_paste import (
    MIN_PIXELS,
    CopyPaste,
    choose_instances,
    paste_generator,
    paste_instances,
)
from seglib.data.dataset import CocoSubsetDataset
from seglib.data.transforms import boxes_from_masks, train_transforms

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

#: Target instances carry labels 1-2, source instances 3-4, so the output says which is which.
TARGET_LABELS, SOURCE_LABELS = (1, 2), (3, 4)


def _sample(rng, h, w, n, labels):
    """A noise image and ``n`` random rectangles and ellipses of at least a few pixels."""
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for m in masks:
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(2, max(3, h // 3)), rng.integers(2, max(3, w // 3))
        if rng.random() < 0.5:
            m[max(0, cy - ry) : cy + ry, max(0, cx - rx) : cx + rx] = 1
        else:
            m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    return image, masks, rng.choice(labels, n).astype(np.int64)


def _split(out):
    """(target part, pasted part) of a ``Pasted``, told apart by their labels."""
    pasted = np.isin(out.labels, SOURCE_LABELS)
    assert not pasted[: (~pasted).sum()].any(), "target instances come first, then pasted ones"
    return out.masks[~pasted], out.masks[pasted]


@pytest.mark.parametrize("hw, source_hw", [((48, 64), (56, 40)), ((480, 640), (427, 640))])
def test_masks_are_disjoint_boxes_match_and_the_paste_is_drawn_in(hw, source_hw):
    rng = np.random.default_rng(0)
    draws = 60 if hw[0] < 100 else 12
    pasted_any = 0
    for seed in range(draws):
        image, masks, labels = _sample(rng, *hw, int(rng.integers(0, 6)), TARGET_LABELS)
        src_image, src_masks, src_labels = _sample(rng, *source_hw, 5, SOURCE_LABELS)
        out = paste_instances(
            image, masks, labels, src_image, src_masks, src_labels, paste_generator(seed)
        )
        target, pasted = _split(out)
        assert out.image.shape == image.shape and out.image.dtype == np.uint8
        assert out.masks.shape[1:] == hw and out.masks.dtype == np.uint8
        assert len(out.labels) == len(out.masks) == len(out.boxes) == len(out.iscrowd)
        np.testing.assert_array_equal(out.boxes, boxes_from_masks(out.masks))
        union = pasted.any(0)
        assert not (target.any(0) & union).any(), "a pixel is both pasted and original"
        # Pasted pixels show the source's colours, so they differ from the target's noise;
        # outside them the target image is untouched.
        np.testing.assert_array_equal(out.image[~union], image[~union])
        assert (out.masks.reshape(len(out.masks), -1).sum(1) >= 1).all()
        pasted_any += len(pasted) > 0
    assert pasted_any > draws // 2


def _plain(h=40, w=50):
    image = np.full((h, w, 3), 10, np.uint8)
    source = np.full((h, w, 3), 200, np.uint8)
    return image, source


def test_at_scale_one_the_paste_is_exact_and_the_covered_pixels_leave_the_target():
    image, src_image = _plain()
    masks = np.zeros((2, 40, 50), np.uint8)
    masks[0, 5:25, 5:30] = 1  # half under the pasted object
    masks[1, 30:38, 40:48] = 1  # untouched
    src = np.zeros((1, 40, 50), np.uint8)
    src[0, 10:20, 15:45] = 1
    for hflip, expected in ((0.0, src[0]), (1.0, src[0, :, ::-1])):
        out = paste_instances(
            image, masks, np.array([1, 2]), src_image, src, np.array([3]),
            np.random.default_rng(1), scale=(1.0, 1.0), hflip_prob=hflip,
        )  # fmt: skip
        np.testing.assert_array_equal(out.labels, [1, 2, 3])
        np.testing.assert_array_equal(out.masks[2], expected)
        np.testing.assert_array_equal(out.masks[0], masks[0] & (1 - expected))
        np.testing.assert_array_equal(out.masks[1], masks[1])
        np.testing.assert_array_equal(out.image[expected == 1], np.full((300, 3), 200))
        np.testing.assert_array_equal(out.image[expected == 0], image[expected == 0])


def _covered_case(left: int):
    """A target instance under a pasted square that leaves it ``left`` pixels, plus an
    untouched target instance of 3 pixels (fewer than MIN_PIXELS)."""
    image, src_image = _plain()
    src = np.zeros((1, 40, 50), np.uint8)
    src[0, 5:35, 10:40] = 1  # symmetric about the centre column: any flip pastes it here
    masks = np.zeros((2, 40, 50), np.uint8)
    masks[0, 10:20, 15:25] = 1  # wholly under the square
    masks[0, 0, :left] = 1  # outside it
    masks[1, 38, 0:3] = 1
    return image, masks, src_image, src


@pytest.mark.parametrize("left", [0, MIN_PIXELS - 1, MIN_PIXELS])
def test_an_instance_the_paste_leaves_below_min_pixels_is_dropped(left):
    image, masks, src_image, src = _covered_case(left)
    out = paste_instances(
        image, masks, np.array([1, 2]), src_image, src, np.array([3]),
        np.random.default_rng(0), scale=(1.0, 1.0),
    )  # fmt: skip
    kept = left >= MIN_PIXELS
    np.testing.assert_array_equal(out.labels, [1, 2, 3] if kept else [2, 3])
    assert out.masks[-1].sum() == 30 * 30
    np.testing.assert_array_equal(out.masks[-2], masks[1])  # 3 pixels, untouched: kept
    if kept:
        assert out.masks[0].sum() == left


def test_crowds_are_never_pasted_and_a_target_crowd_is_cut_like_any_mask():
    image, src_image = _plain()
    src = np.zeros((3, 40, 50), np.uint8)
    src[0, 5:35, 10:40] = 1  # a crowd (label 4), over everything
    src[1, 5:35, 10:40] = 1  # the same region, not a crowd (label 3)
    src[2, 0:2, 0:50] = 1  # a crowd strip (label 4)
    masks = np.zeros((2, 40, 50), np.uint8)
    masks[0, 0:20, 0:50] = 1  # a crowd region of the target, partly under the square
    masks[1, 20:30, 20:30] = 1  # a crowd wholly under it
    for seed in range(20):
        out = paste_instances(
            image, masks, np.array([1, 2]), src_image, src, np.array([4, 3, 4]),
            np.random.default_rng(seed), scale=(1.0, 1.0),
            iscrowd=np.array([True, True]), source_iscrowd=np.array([True, False, True]),
        )  # fmt: skip
        np.testing.assert_array_equal(out.labels, [1, 3])  # only the non-crowd is pasted
        np.testing.assert_array_equal(out.iscrowd, [True, False])  # flags follow their masks
        np.testing.assert_array_equal(out.masks[0], masks[0] & (1 - src[1]))
    only_crowds = paste_instances(
        image, masks, np.array([1, 2]), src_image, src[[0, 2]], np.array([4, 4]),
        np.random.default_rng(0), source_iscrowd=np.array([True, True]),
    )  # fmt: skip
    assert only_crowds.image is image and only_crowds.masks is masks


def test_the_same_seed_gives_the_same_paste_and_other_seeds_others():
    rng = np.random.default_rng(3)
    target = _sample(rng, 60, 80, 4, TARGET_LABELS)
    source = _sample(rng, 60, 80, 6, SOURCE_LABELS)

    def run(seed):
        return paste_instances(*target, *source, paste_generator(seed))

    first = run(7)
    for a, b in zip(first, run(7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(run(s).image, first.image) for s in range(8, 12))
    assert not np.array_equal(paste_generator(7).random(3), np.random.default_rng(7).random(3))


def test_choose_instances_takes_one_to_max_of_the_eligible_ones():
    rng = np.random.default_rng(0)
    eligible = np.array([True, False, True, True, False, True])
    sizes = set()
    for _ in range(200):
        pick = choose_instances(rng, eligible, 3)
        assert set(pick) <= {0, 2, 3, 5} and list(pick) == sorted(set(pick))
        sizes.add(len(pick))
    assert sizes == {1, 2, 3}
    assert len(choose_instances(rng, np.zeros(4, bool), 3)) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prob": 1.5}, "prob"),
        ({"max_instances": 0}, "max_instances"),
        ({"scale": (2.0, 1.0)}, "scale must be"),
        ({"scale": (0.0, 1.0)}, "scale must be"),
    ],
)
def test_copy_paste_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CopyPaste(**kwargs)


def test_pick_source_follows_prob_and_never_picks_the_image_itself():
    rng = np.random.default_rng(0)
    always = [CopyPaste(prob=1.0).pick_source(rng, 2, [0, 2, 5]) for _ in range(100)]
    assert set(always) == {0, 5}
    assert CopyPaste(prob=1.0).pick_source(rng, 2, [2]) is None
    assert all(CopyPaste(prob=0.0).pick_source(rng, 2, [0, 5]) is None for _ in range(50))


# --- in the dataset -------------------------------------------------------------------------
def _datasets(subset, **copy_paste):
    split, images = subset / "train.json", subset / "images"
    plain = CocoSubsetDataset(split, images, transforms=train_transforms())
    pasted = CocoSubsetDataset(
        split, images, transforms=train_transforms(), copy_paste=CopyPaste(**copy_paste)
    )
    return plain, pasted


def _same(a, b):
    return torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_prob_zero_gives_exactly_todays_pipeline(synthetic_subset):
    plain, off = _datasets(synthetic_subset, prob=0.0)
    for i in range(len(plain)):
        assert _same(plain[(i, 100 + i)], off[(i, 100 + i)])
    torch.manual_seed(5)
    unkeyed = [plain[i] for i in range(len(plain))]
    torch.manual_seed(5)
    assert all(_same(a, off[i]) for i, a in enumerate(unkeyed))


def test_the_dataset_pastes_before_its_transforms_and_follows_the_seed(synthetic_subset):
    _, pasted = _datasets(synthetic_subset, prob=1.0, scale=(0.5, 1.5))
    seen = []
    transform = pasted.transforms
    pasted.transforms = lambda **kw: seen.append(kw) or transform(**kw)
    grew = 0
    for i in range(len(pasted)):
        image, target = pasted[(i, 7)]
        before, after = seen[-1], pasted.load_instances(i)[0]
        grew += len(before["masks"]) > len(after)  # the transform received pasted objects
        np.testing.assert_array_equal(
            target["boxes"].numpy(), boxes_from_masks(target["masks"].numpy())
        )
        assert _same((image, target), pasted[(i, 7)])
    assert grew > len(pasted) // 2
    assert any(not _same(pasted[(i, 7)], pasted[(i, 8)]) for i in range(len(pasted)))


@pytest.mark.coco_tiny
def test_copy_paste_on_real_coco_images(coco_tiny):
    """Real sizes (about 480x640), real polygons, LSJ-scaled pastes: disjoint and in sync."""
    ds = CocoSubsetDataset(coco_tiny / "instances_train2017_tiny.json", coco_tiny / "train2017")
    with_objects = [i for i in range(len(ds)) if len(ds.load_instances(i)[0])]
    for n, i in enumerate(with_objects):
        j = with_objects[(n + 1) % len(with_objects)]
        masks, labels, boxes = ds.load_instances(i)
        src_masks, src_labels, src_boxes = ds.load_instances(j)
        out = CopyPaste(prob=1.0).paste(
            paste_generator(n), ds.load_image(i), masks, labels, boxes,
            ds.load_image(j), src_masks, src_labels + 100, src_boxes,
        )  # fmt: skip
        pasted = out.labels > 100
        assert not (out.masks[~pasted].any(0) & out.masks[pasted].any(0)).any()
        np.testing.assert_array_equal(out.boxes, boxes_from_masks(out.masks))
        assert out.image.shape == ds.load_image(i).shape
