"""The model wrapper: the rules hooked into a Mask R-CNN, pasting, and flip TTA.

A stub detector stands in for a trained one: a real torchvision ``MaskRCNN`` (transform,
``RoIHeads`` with its own ``postprocess_detections`` and ``maskrcnn_inference``) whose
learned parts are replaced by readings of the image. Channel 0 holds each object's id, 2
its label; the stub proposes each object's box (and shifted copies), scores a proposal by
its IoU with the object times a bias for the image's right side, and predicts the object's
mask in the box. The two flip views then see the same objects at different scores, as a real
model does. Every test runs at 128 px and at 480 x 640.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import box_iou, roi_align

from seglib.core.config import POSTPROCESS_METHODS, TrainConfig
from seglib.models.builder import build_model
from seglib.models.postprocess import (
    TTA_MATCH_IOU,
    Candidates,
    PostProcessed,
    fuse_views,
    match_views,
    merge_views,
    paste,
    unflip,
    wrap,
)
from seglib.models.suppression import Settings

SIZES = [(128, 128), (480, 640)]
NUM_CLASSES = 4


# --- the stub detector -----------------------------------------------------------------------
class _Features(nn.Module):
    out_channels = 3

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return OrderedDict([("0", x)])


def _ids(image: torch.Tensor) -> torch.Tensor:
    return (image[0] * 16).round().long()


def _at_centres(image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The object id under each box's centre."""
    h, w = image.shape[-2:]
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2).long().clamp(0, w - 1)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2).long().clamp(0, h - 1)
    return _ids(image)[cy, cx]


def _tight_box(image: torch.Tensor, k: int) -> torch.Tensor:
    ys, xs = torch.nonzero(_ids(image) == k, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


class _Proposals(nn.Module):
    """Each object's box, and ``copies`` copies shifted right by a tenth of its width each."""

    def __init__(self, copies: int) -> None:
        super().__init__()
        self.copies = copies

    def forward(self, images, features, targets=None):
        out = []
        for image in images.tensors:
            boxes = []
            for k in _ids(image).unique().tolist():
                if k:
                    box = _tight_box(image, k)
                    step = torch.tensor([1.0, 0.0, 1.0, 0.0]) * 0.1 * (box[2] - box[0])
                    boxes += [box + c * step for c in range(self.copies + 1)]
            out.append(torch.stack(boxes) if boxes else torch.zeros(0, 4))
        return out, {}


class _BoxReadout(nn.Module):
    """Per proposal (score, label): IoU with its object times 0.5 + 0.4 x (centre x / W)."""

    def forward(self, features, proposals, image_shapes):
        rows = []
        for image, boxes in zip(features["0"], proposals, strict=True):
            ids = _at_centres(image, boxes)
            tight = torch.stack([_tight_box(image, int(k)) for k in ids]) if len(ids) else boxes
            fit = box_iou(boxes, tight).diagonal() if len(ids) else boxes[:, 0]
            bias = 0.5 + 0.4 * (boxes[:, 0] + boxes[:, 2]) / 2 / image.shape[-1]
            h, w = image.shape[-2:]
            cx = ((boxes[:, 0] + boxes[:, 2]) / 2).long().clamp(0, w - 1)
            cy = ((boxes[:, 1] + boxes[:, 3]) / 2).long().clamp(0, h - 1)
            labels = (image[2, cy, cx] * 8).round()
            rows.append(torch.stack([fit * bias, labels], 1))
        return torch.cat(rows)


class _Logits(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, label = x[:, 0].clamp(1e-4, 1 - 1e-4), x[:, 1].long()
        logits = torch.full((len(x), NUM_CLASSES), -30.0)
        logits[:, 0] = torch.log1p(-score)
        logits[torch.arange(len(x)), label] = torch.log(score)
        return logits, torch.zeros(len(x), NUM_CLASSES * 4)


class _MaskReadout(nn.Module):
    """The object's indicator sampled in each box, 28 x 28 (RoIAlign, as the mask head's input)."""

    def forward(self, features, proposals, image_shapes):
        out = []
        for image, boxes in zip(features["0"], proposals, strict=True):
            ids = _at_centres(image, boxes)
            planes = (_ids(image)[None] == ids[:, None, None]).float()[:, None]  # [R, 1, H, W]
            rois = torch.cat([torch.arange(len(boxes))[:, None].float(), boxes], 1)
            out.append(roi_align(planes, rois, 28, 1.0, 2, False))
        return torch.cat(out) if out else torch.zeros(0, 1, 28, 28)


class _MaskLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (12 * (x - 0.5)).expand(-1, NUM_CLASSES, -1, -1)


def stub_detector(size, *, copies: int = 0, detections: int = 20) -> MaskRCNN:
    h, w = size
    model = MaskRCNN(
        _Features(),
        num_classes=NUM_CLASSES,
        min_size=min(h, w),
        max_size=max(h, w),
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        box_detections_per_img=detections,
    )
    model.rpn = _Proposals(copies)
    heads = model.roi_heads
    heads.box_roi_pool, heads.box_head, heads.box_predictor = (
        _BoxReadout(),
        nn.Identity(),
        _Logits(),
    )
    heads.mask_roi_pool, heads.mask_head, heads.mask_predictor = (
        _MaskReadout(),
        nn.Identity(),
        _MaskLogits(),
    )
    return model.eval()


def scene(size, boxes: list[list[float]], labels: list[int]) -> torch.Tensor:
    """An image whose objects are rectangles at ``boxes`` (fractions of W, H), later on top."""
    h, w = size
    image = torch.zeros(3, h, w)
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True), start=1):
        region = (slice(round(y1 * h), round(y2 * h)), slice(round(x1 * w), round(x2 * w)))
        image[0][region] = k / 16
        image[2][region] = label / 8
    return image


APART = [
    [0.05, 0.1, 0.3, 0.4],
    [0.55, 0.05, 0.95, 0.45],
    [0.1, 0.55, 0.45, 0.95],
    [0.6, 0.6, 0.8, 0.9],
]


def _settings(method: str, *, tta: bool, detections: int = 20, **changes) -> Settings:
    return Settings.from_config(
        TrainConfig(detections_per_img=detections, postprocess_pool=3 * detections),
        postprocess=method,
        tta_hflip=tta,
        **changes,
    )


# --- pasting and views ---------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_paste_is_torchvisions_paste_and_adds_weighted_masks(size):
    h, w = size
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 1, 28, 28, generator=g)
    xy = torch.rand(12, 2, generator=g) * torch.tensor([w, h]) - 10
    boxes = torch.cat([xy, xy + torch.rand(12, 2, generator=g) * torch.tensor([w, h]) / 2 + 1], 1)
    expected = paste_masks_in_image(masks, boxes, size)
    assert torch.equal(paste(masks, boxes, size), expected)
    weights = torch.linspace(0, 1, 12)
    mixed = paste(masks, boxes, size, weights=weights)
    mixed = paste(masks.flip(-1), boxes, size, weights=1 - weights, out=mixed)
    other = paste_masks_in_image(masks.flip(-1), boxes, size)
    assert torch.allclose(
        mixed,
        weights[:, None, None, None] * expected + (1 - weights[:, None, None, None]) * other,
        atol=1e-6,
    )
    assert paste(masks[:0], boxes[:0], size).shape == (0, 1, h, w)


@pytest.mark.parametrize("size", SIZES)
def test_unflip_mirrors_boxes_and_masks_and_merge_views_labels_them(size):
    h, w = size
    masks = torch.zeros(1, 1, h, w)
    masks[..., :3] = 1.0
    det = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([2]),
        "masks": masks,
    }
    back = unflip(det, width=w)
    assert back["boxes"].tolist() == [[w - 30.0, 5.0, w - 10.0, 20.0]]
    assert (
        back["masks"][0, 0, 0, -3:].tolist() == [1.0, 1.0, 1.0]
        and back["masks"][0, 0, 0, :-3].sum() == 0
    )
    merged = merge_views([det, back])
    assert merged["view"].tolist() == [0, 1] and merged["boxes"].shape == (2, 4)


# --- flip TTA ------------------------------------------------------------------------------------
def _det(boxes, scores, labels, size=(128, 128)):
    n = len(scores)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n)),
    }


def test_match_views_is_one_to_one_by_score_and_class():
    a = _det([[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60]], [0.9, 0.5, 0.7], [1, 1, 1])
    # b0 fits a1 best by IoU, but a0 (the best score) takes the best-scored counterpart, b0;
    # a1 then takes b1; a2's only overlap is of another class.
    b = _det([[0, 0, 10, 12], [0, 0, 10, 11], [50, 50, 60, 60]], [0.8, 0.4, 0.9], [1, 1, 2])
    assert match_views(a, b).tolist() == [0, 1, -1]
    assert match_views(a, _det([], [], [])).tolist() == [-1, -1, -1]
    low = _det([[0, 0, 10, 5]], [0.9], [1])  # IoU 0.5 with a0: below TTA_MATCH_IOU
    assert TTA_MATCH_IOU > 0.5 and match_views(a, low).tolist() == [-1, -1, -1]


@pytest.mark.parametrize("size", SIZES)
def test_fuse_views_averages_a_pair_and_halves_a_lone_detection(size):
    h, w = size
    a = _det([[0, 0, w / 4, h / 4], [w / 2, h / 2, w, h]], [0.9, 0.4], [1, 2])
    b = _det([[2, 0, w / 4 + 2, h / 4]], [0.6], [1])
    fused = fuse_views(a, b)
    assert fused["scores"].tolist() == pytest.approx([0.75, 0.2])  # (0.9 + 0.6) / 2; 0.4 / 2
    assert fused["boxes"][0].tolist() == pytest.approx(
        (0.6 * a["boxes"][0] + 0.4 * b["boxes"][0]).tolist()
    )
    assert fused["weights"].flatten().tolist() == pytest.approx([0.6, 0.4, 1.0, 0.0])
    masks = paste(fused["masks"], fused["mask_boxes"], size, weights=fused["weights"][:, 0])
    masks = paste(
        fused["masks2"], fused["mask_boxes2"], size, weights=fused["weights"][:, 1], out=masks
    )
    pa = paste_masks_in_image(a["masks"], a["boxes"], size)
    pb = paste_masks_in_image(b["masks"], b["boxes"], size)
    assert torch.allclose(masks[0], 0.6 * pa[0] + 0.4 * pb[0], atol=1e-6)
    assert torch.equal(masks[1], pa[1])
    lone = fuse_views(_det([], [], []), b)  # a view that found nothing
    assert lone["scores"].tolist() == pytest.approx([0.3])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_flip_tta_gives_one_detection_per_object_with_both_views_score(method, size):
    """One candidate per object and view: every rule must report each object once, at the mean
    of the two views' scores (0.5 + 0.4 x/W and 0.5 + 0.4 (W - x)/W: 0.7), box and mask
    fused. The old merge left Soft-NMS and Matrix NMS a decayed copy of every object."""
    image = scene(size, APART, [1, 2, 3, 1])
    model = stub_detector(size)
    with torch.inference_mode():
        (out,) = PostProcessed(model, _settings(method, tta=True))([image])
        (single,) = PostProcessed(model, _settings(method, tta=False))([image])
    assert len(out["scores"]) == len(APART) == len(single["scores"])
    assert out["scores"].tolist() == pytest.approx([0.7] * len(APART), abs=1e-4)
    assert not torch.allclose(single["scores"], out["scores"], atol=1e-2)  # views do differ
    truth = torch.stack([(_ids(image) == k).float() for k in range(1, len(APART) + 1)])
    tight = torch.stack([_tight_box(image, k) for k in range(1, len(APART) + 1)])
    iou = box_iou(out["boxes"], tight)
    assert torch.all(iou.max(1).values > 0.99) and set(iou.argmax(1).tolist()) == {0, 1, 2, 3}
    for mask, k in zip(out["masks"][:, 0] > 0.5, iou.argmax(1).tolist(), strict=True):
        inter = (mask & (truth[k] > 0)).sum() / (mask | (truth[k] > 0)).sum()
        assert inter > 0.85  # a 28 x 28 mask pasted into a 26 px box blurs its edge pixels


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_flip_tta_adds_no_copies_beyond_what_the_rule_keeps_in_one_view(method, size):
    """With a shifted copy of each object in each view, the rule keeps the same number of
    detections per object with TTA as without: the other view adds score, not detections."""
    boxes = APART + [[0.32, 0.12, 0.5, 0.35]]  # a fifth object, touching the first
    image = scene(size, boxes, [1, 2, 3, 1, 1])
    model = stub_detector(size, copies=1)
    tight = torch.stack([_tight_box(image, k) for k in range(1, len(boxes) + 1)])
    counts = {}
    for tta in (False, True):
        with torch.inference_mode():
            (out,) = PostProcessed(model, _settings(method, tta=tta))([image])
        owner = box_iou(out["boxes"], tight).argmax(1)
        counts[tta] = torch.bincount(owner, minlength=len(boxes)).tolist()
    assert counts[True] == counts[False]
    assert min(counts[True]) >= 1


# --- the wrapper --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_a_call_equals_select_on_the_collected_candidates(method, tta, size):
    """The inference path (rule before the mask head) and the study's path (candidates once,
    then ``select``) give the same detections."""
    boxes = APART + [[0.32, 0.12, 0.5, 0.35], [0.6, 0.55, 0.85, 0.8]]
    image = scene(size, boxes, [1, 2, 3, 1, 1, 1])
    model = stub_detector(size, copies=2)
    wrapped = PostProcessed(model, _settings(method, tta=tta, detections=8))
    with torch.inference_mode():
        (called,) = wrapped([image])
        (cand,) = wrapped.candidates([image], tta_hflip=True)
        cache: dict = {}
        selected = PostProcessed.select(cand, wrapped.settings, cache)
        again = PostProcessed.select(cand, wrapped.settings, cache)  # from the cached mask IoU
    assert (
        isinstance(cand, Candidates)
        and cand.image_size == size
        and set(cand.det["view"].tolist()) == {0, 1}
    )
    assert 0 < len(called["scores"]) <= 8
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.allclose(called[key].float(), selected[key].float(), atol=1e-5), key
        assert torch.equal(selected[key], again[key])
    assert called["masks"].shape == (len(called["scores"]), 1, *size)


@pytest.mark.parametrize("size", SIZES)
def test_box_nms_through_the_wrapper_is_torchvisions_own_output(size):
    image = scene(size, APART + [[0.32, 0.12, 0.5, 0.35]], [1, 2, 3, 1, 1])
    model = stub_detector(size, copies=2, detections=6)
    heads, transform = model.roi_heads, model.transform
    before = (heads.nms_thresh, heads.detections_per_img)
    with torch.inference_mode():
        plain = model([image])[0]
        wrapped = PostProcessed(model, _settings("nms", tta=False, detections=6))
        assert not wrapped.training  # follows the wrapped model's mode
        (called,) = wrapped([image])
    assert (heads.nms_thresh, heads.detections_per_img) == before
    assert "postprocess_detections" not in vars(heads) and "postprocess" not in vars(transform)
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(plain[key], called[key]), key


@pytest.mark.parametrize("size", SIZES)
def test_select_refuses_flip_settings_on_one_view(size):
    model = stub_detector(size)
    wrapped = PostProcessed(model, _settings("nms", tta=False))
    with torch.inference_mode():
        (cand,) = wrapped.candidates([scene(size, APART, [1, 1, 1, 1])])
    assert set(cand.det["view"].tolist()) == {0} and not cand.flipped
    with pytest.raises(ValueError, match="tta_hflip"):
        PostProcessed.select(cand, _settings("nms", tta=True))


def test_wrap_is_the_bare_model_for_plain_nms():
    model = stub_detector((128, 128))
    cfg = TrainConfig()
    assert wrap(model, cfg) is model
    wrapped = wrap(model, cfg.replace(postprocess="soft-nms-gaussian"))
    assert isinstance(wrapped, PostProcessed) and wrapped.model is model
    # Re-wrapping replaces the settings instead of stacking wrappers.
    again = wrap(wrapped, cfg.replace(postprocess="mask-nms", tta_hflip=True))
    assert again.model is model and again.settings.postprocess == "mask-nms"
    assert wrap(again, cfg) is model
    with pytest.raises(TypeError, match="RoIHeads"):
        PostProcessed(nn.Linear(2, 2), again.settings)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_an_image_without_candidates(method, tta, size):
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, 28, 28),
        "view": torch.zeros(0, dtype=torch.int64),
    }
    out = PostProcessed.select(Candidates(empty, size, True), _settings(method, tta=tta), {})
    assert out["scores"].shape == (0,) and out["masks"].shape == (0, 1, *size)
    model = stub_detector(size)
    with torch.inference_mode():
        (called,) = PostProcessed(model, _settings(method, tta=tta))([torch.zeros(3, *size)])
    assert called["masks"].shape == (0, 1, *size)


# --- a real Mask R-CNN ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    cfg = TrainConfig.smoke(min_size=64, max_size=64, detections_per_img=20, postprocess_pool=60)
    torch.manual_seed(0)
    return build_model(3, "none", "v1", cfg).eval(), cfg


@pytest.mark.parametrize("size", SIZES)
def test_a_real_mask_rcnn_keeps_its_call_contract_under_every_rule(tiny_model, size):
    """The model resizes to 64 px inside; boxes, masks and mask IoU are at the image's size."""
    model, cfg = tiny_model
    torch.manual_seed(1)
    images = [torch.rand(3, *size), torch.rand(3, size[1], size[0])]
    with torch.inference_mode():
        plain = model(images)
        same = PostProcessed(model, Settings.from_config(cfg, postprocess="nms"))(images)
        for method in POSTPROCESS_METHODS:
            out = PostProcessed(
                model, Settings.from_config(cfg, postprocess=method, tta_hflip=True)
            )(images)
            for o, img in zip(out, images, strict=True):
                n = len(o["scores"])
                assert 0 < n <= cfg.detections_per_img
                assert o["masks"].shape == (n, 1, *img.shape[-2:])
                assert o["labels"].dtype == torch.int64 and o["boxes"].shape == (n, 4)
    for a, b in zip(plain, same, strict=True):
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
