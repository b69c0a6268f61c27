"""Suppression rules on hand-made boxes and masks with known answers, and the model wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from seglib.config import POSTPROCESS_METHODS, TrainConfig
from seglib.postprocess import (
    PostProcessed,
    Settings,
    mask_iou,
    mask_nms,
    matrix_nms,
    merge_views,
    soft_nms,
    suppress,
    unflip,
    wrap,
)


def _strips(*spans: tuple[int, int], width: int = 12, height: int = 4) -> torch.Tensor:
    """Masks [N, 1, H, W] that fill columns [a, b) of every row: IoUs are ratios of lengths."""
    masks = torch.zeros(len(spans), 1, height, width)
    for k, (a, b) in enumerate(spans):
        masks[k, 0, :, a:b] = 1.0
    return masks


def _settings(method: str, **changes) -> Settings:
    return Settings.from_config(TrainConfig(), postprocess=method, **changes)


SQUARE = [0.0, 0.0, 10.0, 10.0]
FAR = [20.0, 20.0, 30.0, 30.0]


def test_soft_nms_gaussian_decays_sequentially_and_per_class():
    boxes = torch.tensor([SQUARE, SQUARE, SQUARE, FAR, SQUARE])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.85])
    labels = torch.tensor([1, 1, 1, 1, 2])  # the last one is another class: untouched
    order, new = soft_nms(boxes, scores, labels, kernel="gaussian", sigma=0.5)
    e2 = math.exp(-2.0)  # IoU 1: exp(-1 / 0.5)
    # 0.9 and 0.85 (other class) stay; far box stays; the copies decay once, then again.
    assert order.tolist() == [0, 4, 3, 1, 2]
    assert new.tolist() == pytest.approx([0.9, 0.85, 0.6, 0.8 * e2, 0.7 * e2 * e2], rel=1e-5)


def test_soft_nms_linear_only_above_its_threshold():
    half = [0.0, 0.0, 10.0, 5.0]  # IoU 0.5 with SQUARE
    fifth = [0.0, 0.0, 10.0, 2.0]  # IoU 0.2 with SQUARE
    boxes = torch.tensor([SQUARE, half, fifth])
    order, new = soft_nms(
        boxes, torch.tensor([0.9, 0.8, 0.7]), torch.ones(3, dtype=torch.int64), kernel="linear"
    )
    # SQUARE first: half (IoU 0.5) drops to 0.8 * 0.5; fifth (IoU 0.2 <= 0.3) keeps 0.7 and
    # goes next, and half, IoU 0.4 with fifth, decays again by 1 - 0.4.
    assert order.tolist() == [0, 2, 1]
    assert new.tolist() == pytest.approx([0.9, 0.7, 0.8 * 0.5 * 0.6], rel=1e-5)


def test_soft_nms_handles_no_boxes_and_rejects_unknown_kernel():
    order, new = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert order.numel() == 0 and new.numel() == 0
    with pytest.raises(ValueError, match="kernel"):
        soft_nms(
            torch.tensor([SQUARE]), torch.ones(1), torch.ones(1, dtype=torch.int64), kernel="x"
        )


def test_mask_iou_exact_on_small_masks_and_close_when_pooled():
    ious = mask_iou(_strips((0, 6), (2, 8), (6, 12), (0, 0)))
    assert ious[0, 1].item() == pytest.approx(0.5)
    assert ious[1, 2].item() == pytest.approx(2 / 10)
    assert ious[0, 2].item() == 0.0 and ious[3, 3].item() == 0.0  # empty masks: 0, not NaN
    big = _strips((0, 600), (200, 800), width=1000, height=300)  # pooled to <= 256 x 256 px
    assert mask_iou(big)[0, 1].item() == pytest.approx(0.5, abs=0.01)


def test_matrix_nms_decays_in_parallel_with_compensation():
    # A > B > C in score; A-B mask IoU 0.5, B-C IoU 0.2, A and C disjoint.
    masks = _strips((0, 6), (2, 8), (6, 12))
    new = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.7]), torch.ones(3, dtype=torch.int64))
    # B decays by exp(-2 * 0.5²). C overlaps only B, which is itself suppressed (its own worst
    # overlap 0.5 exceeds C's 0.2), so C keeps its score: the compensation term.
    assert new.tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.5), 0.7], rel=1e-5)
    other_class = matrix_nms(masks, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 3]))
    assert other_class.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_mask_nms_is_greedy_not_fast_nms():
    # A suppresses B (IoU 0.5 > 0.3); B would suppress C (IoU 1/3) but B is gone, and A-C
    # overlap is 1/11, so greedy NMS keeps A and C. Fast NMS would wrongly drop C too.
    masks = _strips((0, 6), (2, 8), (5, 11))
    keep = mask_nms(
        masks, torch.tensor([0.9, 0.8, 0.7]), torch.ones(3, dtype=torch.int64), iou_thresh=0.3
    )
    assert keep.tolist() == [0, 2]


def test_mask_nms_keeps_disjoint_masks_that_box_nms_merges():
    # Two instances with the same box (an L and its complement, say) but disjoint masks.
    masks = _strips((0, 6), (6, 12))
    det = {
        "boxes": torch.tensor([[0.0, 0.0, 12.0, 4.0], [0.0, 0.0, 12.0, 4.0]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 1]),
        "masks": masks,
    }
    assert len(suppress(det, _settings("nms"))["scores"]) == 1
    assert len(suppress(det, _settings("mask-nms"))["scores"]) == 2
    assert suppress(det, _settings("matrix-nms"))["scores"].tolist() == pytest.approx([0.9, 0.8])


@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_suppress_returns_best_first_and_at_most_detections_per_img(method):
    torch.manual_seed(0)
    n = 30
    xy = torch.rand(n, 2) * 20
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2) * 4], dim=1)
    masks = torch.zeros(n, 1, 40, 40)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[k, 0, y1:y2, x1:x2] = 0.9
    det = {
        "boxes": boxes,
        "scores": torch.rand(n),
        "labels": torch.randint(1, 3, (n,)),
        "masks": masks,
    }
    out = suppress(det, _settings(method, detections_per_img=10, postprocess_pool=10))
    assert set(out) == set(det)
    assert 1 <= len(out["scores"]) <= 10
    assert out["masks"].shape[1:] == (1, 40, 40)
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


def test_unflip_and_merge_views():
    det = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([2]),
        "masks": _strips((0, 3), width=100),
    }
    back = unflip(det, width=100)
    assert back["boxes"].tolist() == [[70.0, 5.0, 90.0, 20.0]]
    assert back["masks"][0, 0, 0, 97:].tolist() == [1.0, 1.0, 1.0]
    merged = merge_views([det, back])
    assert merged["view"].tolist() == [0, 1] and merged["boxes"].shape == (2, 4)


def test_settings_come_from_the_config_and_are_validated():
    cfg = TrainConfig(postprocess="soft-nms-linear", soft_nms_thresh=0.4, tta_hflip=True)
    settings = Settings.from_config(cfg)
    assert (settings.postprocess, settings.soft_nms_thresh, settings.tta_hflip) == (
        "soft-nms-linear",
        0.4,
        True,
    )
    assert not settings.passthrough and Settings.from_config(TrainConfig()).passthrough
    with pytest.raises(ValueError, match="postprocess must be one of"):
        TrainConfig(postprocess="wbf")
    with pytest.raises(ValueError, match="postprocess_pool"):
        TrainConfig(postprocess_pool=10)


@pytest.fixture(scope="module")
def tiny_model():
    from seglib.model import build_model

    cfg = TrainConfig.smoke(min_size=64, max_size=64, detections_per_img=20, postprocess_pool=60)
    torch.manual_seed(0)
    return build_model(3, "none", "v1", cfg).eval(), cfg


def test_wrap_is_the_bare_model_for_plain_nms(tiny_model):
    model, cfg = tiny_model
    assert wrap(model, cfg) is model
    wrapped = wrap(model, cfg.replace(postprocess="soft-nms-gaussian"))
    assert isinstance(wrapped, PostProcessed) and wrapped.model is model
    # Re-wrapping replaces the settings instead of stacking wrappers.
    again = wrap(wrapped, cfg.replace(postprocess="mask-nms", tta_hflip=True))
    assert again.model is model and again.settings.postprocess == "mask-nms"
    assert wrap(again, cfg) is model


def test_wrapper_keeps_the_call_contract_and_restores_the_model(tiny_model):
    model, cfg = tiny_model
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    heads = model.roi_heads
    before = (heads.nms_thresh, heads.detections_per_img)
    with torch.inference_mode():
        plain = model(images)
        # "nms" on the unsuppressed pool, through both paths, gives torchvision's own result.
        wrapped = PostProcessed(model, _settings_for(cfg, "nms", tta=False))
        assert not wrapped.training  # follows the wrapped model's mode
        in_heads = wrapped(images)
        from_pool = [wrapped.select(c, wrapped.settings) for c in wrapped.candidates(images)]
        for method in POSTPROCESS_METHODS:
            out = PostProcessed(model, _settings_for(cfg, method, tta=True))(images)
            for o, img in zip(out, images, strict=True):
                n = len(o["scores"])
                assert n <= cfg.detections_per_img
                assert o["masks"].shape == (n, 1, *img.shape[-2:])
                assert o["labels"].dtype == torch.int64 and o["boxes"].shape == (n, 4)
    assert (heads.nms_thresh, heads.detections_per_img) == before
    assert "postprocess_detections" not in vars(heads)  # the per-call hook is gone again
    for a, b, c in zip(plain, in_heads, from_pool, strict=True):
        for key in ("scores", "boxes", "masks"):
            assert torch.allclose(a[key], b[key], atol=1e-5) and torch.allclose(
                a[key], c[key], atol=1e-5
            )
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["labels"], c["labels"])


def test_box_rules_in_the_heads_equal_the_rule_on_the_pool(tiny_model):
    """The fast path (rule before the mask head) and the pool path give the same detections."""
    model, cfg = tiny_model
    torch.manual_seed(2)
    images = [torch.rand(3, 64, 64)]
    for method in ("soft-nms-gaussian", "soft-nms-linear"):
        wrapped = PostProcessed(model, _settings_for(cfg, method, tta=False))
        with torch.inference_mode():
            (fast,) = wrapped(images)
            (cand,) = wrapped.candidates(images)
            slow = wrapped.select(cand, wrapped.settings)
            plain = model(images)[0]
        assert len(fast["scores"]) > 0
        for key in ("scores", "boxes", "masks"):
            assert torch.allclose(fast[key], slow[key], atol=1e-5), (method, key)
        # Soft-NMS really ran: it keeps what NMS removed, at decayed scores.
        assert len(fast["scores"]) >= len(plain["scores"])


def _settings_for(cfg: TrainConfig, method: str, *, tta: bool) -> Settings:
    return Settings.from_config(cfg, postprocess=method, tta_hflip=tta)


def test_candidates_hold_both_views_with_tta(tiny_model):
    model, cfg = tiny_model
    wrapped = PostProcessed(model, _settings_for(cfg, "soft-nms-gaussian", tta=True))
    with torch.inference_mode():
        (cand,) = wrapped.candidates([torch.rand(3, 64, 64)])
        single = wrapped.select(cand, _settings_for(cfg, "nms", tta=False))
    assert set(cand["view"].tolist()) == {0, 1}
    assert len(cand["scores"]) <= 2 * cfg.postprocess_pool
    assert "view" not in single


def test_per_class_mask_iou_and_precomputed_ious_give_the_same_answers():
    masks = _strips((0, 6), (2, 8), (5, 11), (0, 12))
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 1, 2, 1])
    blocks = mask_iou(masks, labels)
    assert torch.allclose(blocks, mask_iou(masks) * (labels[:, None] == labels[None, :]))
    assert blocks[0, 2].item() == 0.0 and blocks[0, 3].item() == pytest.approx(0.5)
    assert torch.equal(
        mask_nms(masks, scores, labels, iou_thresh=0.3, ious=blocks),
        mask_nms(masks, scores, labels, iou_thresh=0.3),
    )
    assert torch.allclose(
        matrix_nms(masks, scores, labels, ious=blocks), matrix_nms(masks, scores, labels)
    )


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_an_image_without_candidates(method, tta):
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, 16, 16),
        "view": torch.zeros(0, dtype=torch.int64),
    }
    out = PostProcessed.select(empty, _settings(method, tta_hflip=tta), {})
    assert out["scores"].shape == (0,) and out["masks"].shape == (0, 1, 16, 16)
    assert mask_iou(empty["masks"], empty["labels"]).shape == (0, 0)
