"""RoIAlign as a sparse product: torchvision's numbers, forward and backward.

Every comparison runs torchvision's own ``MultiScaleRoIAlign`` (or ``roi_align``) on the same
features and boxes: FPN levels of a 128 px and a 480 x 640 image, sampling ratios 1-3, and
boxes that are tiny, on the border, past the border or far outside the image.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import roi_align

from seglib.core.config import TrainConfig
from seglib.models.builder import build_model
from seglib.models.roi_align import MultiScaleRoIAlign, multiscale_roi_align, sampling_matrix

NAMES = ["0", "1", "2", "3"]
SIZES = [(128, 128), (480, 640)]


def _features(size: tuple[int, int], channels: int = 16, images: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    h, w = size
    return {
        name: torch.randn(images, channels, h // 4 >> i, w // 4 >> i, generator=generator)
        for i, name in enumerate(NAMES)
    }


def _boxes(size: tuple[int, int], count: int, seed: int) -> torch.Tensor:
    """Boxes of every scale (so every level gets some), plus the edge cases."""
    generator = torch.Generator().manual_seed(seed)
    h, w = size
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([w, h])
    extent = torch.rand(count, 2, generator=generator) ** 3 * torch.tensor([w, h]) + 0.1
    boxes = torch.cat([corner, corner + extent], 1)
    edge_cases = torch.tensor(
        [
            [0.0, 0.0, float(w), float(h)],  # the whole image
            [w - 0.4, h - 0.4, float(w), float(h)],  # under a pixel, in the corner
            [-6.0, -6.0, 20.0, 20.0],  # past the top-left edge
            [w - 10.0, h - 10.0, w + 30.0, h + 30.0],  # past the bottom-right edge
            [w + 50.0, h + 50.0, w + 90.0, h + 90.0],  # wholly outside: zeros
            [5.0, 5.0, 5.0, 5.0],  # a point
        ]
    )
    return torch.cat([boxes, edge_cases])


def _both(features: dict, boxes: list, size, output_size: int, ratio: int):
    """(torchvision's result, ours) and their gradients for the same upstream gradient."""
    results = []
    for pool in (
        torchvision.ops.MultiScaleRoIAlign(NAMES, output_size, ratio),
        MultiScaleRoIAlign(NAMES, output_size, ratio),
    ):
        inputs = {k: v.clone().requires_grad_(True) for k, v in features.items()}
        out = pool(inputs, boxes, [size] * len(boxes))
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        grads = torch.autograd.grad(out, list(inputs.values()), upstream)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("output_size", "ratio"), [(7, 1), (7, 2), (14, 2), (14, 3)])
def test_multiscale_pooling_matches_torchvision_forward_and_backward(size, output_size, ratio):
    features = _features(size)
    boxes = [_boxes(size, 40, seed=1), _boxes(size, 25, seed=2)]
    (theirs, their_grads), (ours, our_grads) = _both(features, boxes, size, output_size, ratio)
    assert ours.shape == theirs.shape == (77, 16, output_size, output_size)
    assert ours.dtype == theirs.dtype and ours.is_contiguous()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    for mine, reference in zip(our_grads, their_grads, strict=True):
        assert mine.shape == reference.shape
        scale = reference.abs().max().clamp(min=1.0)
        torch.testing.assert_close(mine / scale, reference / scale, rtol=1e-4, atol=1e-5)
    outside = (40 + 6) + 25 + 4  # the second image's "wholly outside" box
    assert ours[outside].abs().max() == 0 == theirs[outside].abs().max()


@pytest.mark.parametrize("ratio", [1, 2])
def test_one_level_matches_roi_align(ratio):
    feature = _features((480, 640))["0"]
    rois = torch.cat([torch.zeros(30, 1), _boxes((480, 640), 24, seed=4)], 1)
    ours = multiscale_roi_align(
        [feature], rois, torch.zeros(30, dtype=torch.long), [0.25], (7, 7), ratio
    )
    theirs = roi_align(feature, rois, (7, 7), 0.25, ratio, aligned=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_under_bf16_autocast_it_returns_the_features_dtype_as_torchvision():
    size = (128, 128)
    features = {k: v.bfloat16().requires_grad_(True) for k, v in _features(size).items()}
    boxes = [_boxes(size, 30, seed=5), _boxes(size, 30, seed=6)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, [size] * 2)
        ours = MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, [size] * 2)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    # Both pool in fp32 and round once to bf16: at most one bf16 step apart.
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2**-7, atol=2**-7)


def test_no_boxes_gives_an_empty_result_and_a_zero_gradient():
    features = {k: v.requires_grad_(True) for k, v in _features((128, 128)).items()}
    out = MultiScaleRoIAlign(NAMES, 7, 1)(features, [torch.zeros(0, 4)] * 2, [(128, 128)] * 2)
    assert out.shape == (0, 16, 7, 7)
    grads = torch.autograd.grad(out.sum(), list(features.values()), allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)


def test_prediction_pools_with_torchvision_exactly():
    size = (480, 640)
    features = {k: v.requires_grad_(True) for k, v in _features(size).items()}
    boxes = [_boxes(size, 30, seed=9)]
    reference = torchvision.ops.MultiScaleRoIAlign(NAMES, 14, 2)(features, boxes, [size])
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert torch.equal(MultiScaleRoIAlign(NAMES, 14, 2)(features, boxes, [size]), reference)
    frozen = {k: v.detach() for k, v in features.items()}
    assert torch.equal(MultiScaleRoIAlign(NAMES, 14, 2)(frozen, boxes, [size]), reference.detach())


def test_adaptive_sampling_and_the_torchvision_choice_use_torchvision_exactly():
    size = (128, 128)
    features = {k: v.requires_grad_(True) for k, v in _features(size).items()}
    boxes = [_boxes(size, 20, seed=7)]
    reference = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 0)(features, boxes, [size])
    adaptive = MultiScaleRoIAlign(NAMES, 7, 0)(features, boxes, [size])
    assert torch.equal(adaptive, reference)
    reference = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, [size])
    switched_off = MultiScaleRoIAlign(NAMES, 7, 2, sparse=False)(features, boxes, [size])
    assert torch.equal(switched_off, reference)
    with pytest.raises(ValueError, match="sampling_ratio must be > 0"):
        sampling_matrix(
            torch.zeros(1, 5), torch.zeros(1, dtype=torch.long), [(1, 8, 8)], [1.0], (7, 7), 0
        )


@pytest.mark.parametrize("choice", ["auto", "torchvision"])
def test_the_builder_pools_with_the_configured_op(choice):
    cfg = TrainConfig.demo(roi_align=choice)
    model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
        assert isinstance(pool, MultiScaleRoIAlign)
        assert pool.sparse is (choice == "auto")
        assert pool.sampling_ratio == cfg.roi_sampling_ratio
        assert (pool.canonical_scale, pool.canonical_level) == (224, 4)  # torchvision's rule
    with pytest.raises(ValueError, match="roi_align"):
        TrainConfig.demo(roi_align="fast")


def test_a_training_step_gives_torchvisions_losses_and_gradients():
    torch.manual_seed(0)
    cfg = TrainConfig.demo()
    model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg).train()
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    boxes = torch.tensor(
        [[10.0, 12.0, 60.0, 70.0], [40.0, 30.0, 120.0, 100.0], [5.0, 80.0, 50.0, 127.0]]
    )
    masks = torch.zeros(3, 128, 128, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
        mask[y1:y2, x1:x2] = 1
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}] * 2
    steps = {}
    for sparse in (False, True):
        for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
            pool.sparse = sparse
        torch.manual_seed(1)  # the same sampled proposals both times
        model.zero_grad()
        losses = model(images, targets)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        steps[sparse] = (losses, grads)
    (their_losses, their_grads), (our_losses, our_grads) = steps[False], steps[True]
    for name, value in their_losses.items():
        torch.testing.assert_close(our_losses[name], value, rtol=1e-5, atol=1e-6)
    for name, grad in their_grads.items():
        relative = (our_grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        # Rounding only: up to 7e-4 in conv1 under ATEN_CPU_CAPABILITY=default, far below the
        # O(1) difference of a wrong sample or weight.
        assert relative < 5e-3, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_it_is_torchvisions_op():
    size = (128, 128)
    features = {k: v.cuda().requires_grad_(True) for k, v in _features(size).items()}
    boxes = [_boxes(size, 20, seed=8).cuda()]
    reference = torchvision.ops.MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, [size])
    assert torch.equal(MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, [size]), reference)
