"""The suppression rules against independent, loop-based references.

Every test runs at 128 px and at a size users run (480 x 640 or more). The references are
written from the papers, not from seglib: Soft-NMS from Bodla et al. 2017, Algorithm 1 (with
their code's score threshold), Matrix NMS from SOLOv2's equation 4 as an explicit double
loop over rectangles whose IoU is worked out by hand. One convention differs from
Bodla et al.'s code on purpose: box IoU here is torchvision's, on continuous coordinates
(their code adds 1 pixel to widths and heights), so the reference uses the same IoU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from seglib.core.config import POSTPROCESS_METHODS, TrainConfig
from seglib.models.suppression import Settings, mask_nms, matrix_nms, preselect, soft_nms, suppress

SIZES = [(128, 128), (480, 640)]


def _settings(method: str, **changes) -> Settings:
    return Settings.from_config(TrainConfig(), postprocess=method, **changes)


# --- independent references ---------------------------------------------------------------------
def bodla_soft_nms(boxes, scores, labels, *, method, sigma, nt, threshold):
    """Bodla et al. 2017, Algorithm 1, one class at a time, with their code's threshold."""
    iou = box_iou(torch.as_tensor(boxes), torch.as_tensor(boxes)).numpy()
    kept = []
    for label in sorted(set(labels)):
        remaining = {i: float(scores[i]) for i in range(len(scores)) if labels[i] == label}
        while remaining:
            m = max(remaining, key=remaining.get)  # M <- b_m, m = argmax S
            kept.append((m, remaining.pop(m)))  # D <- D u M; B <- B - M
            for i in list(remaining):
                ov = iou[m, i]
                if method == "linear":
                    weight = 1 - ov if ov > nt else 1.0
                else:
                    weight = math.exp(-(ov * ov) / sigma)
                remaining[i] *= weight
                if remaining[i] < threshold:  # their code: discard below the threshold
                    del remaining[i]
    return sorted(kept, key=lambda pair: -pair[1])


def solov2_eq4(ious, scores, labels, *, kernel, sigma):
    """SOLOv2 eq. 4: decay_j = min over s_i > s_j of f(iou_ij) / f(iou_.i) (code's sigma)."""

    def f(iou):
        return math.exp(-sigma * iou * iou) if kernel == "gaussian" else 1 - iou

    n = len(scores)
    higher = [
        [i for i in range(n) if scores[i] > scores[j] and labels[i] == labels[j]] for j in range(n)
    ]
    out = []
    for j in range(n):
        decay = 1.0
        for i in higher[j]:
            f_i = min((f(ious[k][i]) for k in higher[i]), default=1.0)  # f(iou_.i)
            if f_i > 0:  # a fully suppressed i (f 0) suppresses nothing
                decay = min(decay, f(ious[i][j]) / f_i)
        out.append(scores[j] * decay)
    return out


# --- the rules against the references -------------------------------------------------------------
def random_boxes(size, n, seed):
    h, w = size
    g = torch.Generator().manual_seed(seed)
    # Clusters of boxes around a few objects, as a detector's candidates come.
    centre = torch.rand(n // 6 + 1, 2, generator=g) * torch.tensor([w, h])
    centre = centre.repeat_interleave(6, 0)[:n] + torch.randn(n, 2, generator=g) * min(h, w) * 0.02
    half = (torch.rand(n, 2, generator=g) * 0.15 + 0.05) * min(h, w)
    boxes = torch.cat([centre - half, centre + half], 1)
    scores = torch.rand(n, generator=g) * 0.95 + 0.01
    labels = torch.randint(1, 4, (n,), generator=g)
    return boxes, scores, labels


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_soft_nms_follows_bodla_algorithm_1(kernel, size):
    boxes, scores, labels = random_boxes(size, 60, seed=size[0])
    scores[:5] = torch.tensor([0.004, 0.003, 0.0012, 0.0011, 0.0009])  # near the floor
    order, new = soft_nms(
        boxes, scores, labels, kernel=kernel, sigma=0.5, iou_thresh=0.3, score_floor=0.001
    )
    ref = bodla_soft_nms(
        boxes.numpy(),
        scores.numpy(),
        labels.tolist(),
        method=kernel,
        sigma=0.5,
        nt=0.3,
        threshold=0.001,
    )
    assert order.tolist() == [i for i, _ in ref]
    assert new.tolist() == pytest.approx([s for _, s in ref], rel=1e-5)
    assert 0 < len(ref) < 60  # the floor dropped some


@pytest.mark.parametrize("size", SIZES)
def test_suppress_applies_the_soft_nms_floor(size):
    boxes, scores, labels = random_boxes(size, 40, seed=1)
    det = {"boxes": boxes, "scores": scores, "labels": labels}
    out = suppress(det, _settings("soft-nms-gaussian", soft_nms_score_floor=0.05))
    ref = bodla_soft_nms(
        boxes.numpy(),
        scores.numpy(),
        labels.tolist(),
        method="gaussian",
        sigma=0.5,
        nt=0.3,
        threshold=0.05,
    )
    assert out["scores"].tolist() == pytest.approx([s for _, s in ref], rel=1e-5)
    assert out["scores"].min().item() >= 0.05


def rectangle_iou(rects: list[list[int]]) -> list[list[float]]:
    """IoU of filled integer rectangles [x1, y1, x2, y2), by their areas."""

    def area(x1, y1, x2, y2):
        return max(x2 - x1, 0) * max(y2 - y1, 0)

    out = []
    for a in rects:
        row = []
        for b in rects:
            inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
            union = area(*a) + area(*b) - inter
            row.append(inter / union if union else 0.0)
        out.append(row)
    return out


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_follows_solov2_equation_4(kernel, size):
    h, w = size
    g = torch.Generator().manual_seed(size[1])
    n = 16
    corner = (torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])).long()
    extent = (torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])).long() + 4
    rects = torch.cat([corner, corner + extent], 1).tolist()
    rects[13:] = rects[:3]  # exact copies
    masks = torch.zeros(n, 1, h, w)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        masks[k, 0, y1:y2, x1:x2] = 1.0
    scores = torch.rand(n, generator=g) * 0.9 + 0.05
    labels = torch.randint(1, 3, (n,), generator=g)
    labels[13:] = labels[:3]  # the copies share their original's class
    ious = rectangle_iou(rects)
    ref = solov2_eq4(ious, scores.tolist(), labels.tolist(), kernel=kernel, sigma=2.0)
    got = matrix_nms(masks, scores, labels, kernel=kernel, sigma=2.0)
    assert got.tolist() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert min(r / s for r, s in zip(ref, scores.tolist(), strict=True)) < 0.5  # it decayed


@pytest.mark.parametrize("size", SIZES)
def test_matrix_nms_decays_an_exact_duplicate_to_exp_minus_sigma(size):
    """Eq. 4 with f(iou) = exp(-sigma iou²): a copy of the best mask has iou 1 with it, and the
    best one has no mask above it (f(iou_.i) = 1), so the copy keeps exp(-2) = 0.135 of its own
    score; a third copy decays by the same, as the second's compensation cancels its own.
    The floor (0.05) is absolute: a copy scored s stays while 0.135 s >= 0.05, s >= 0.3695."""
    h, w = size
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4 : h // 2, w // 3 : w // 2] = 1.0
    masks = torch.cat([mask, mask, mask, torch.zeros(1, 1, h, w)])
    masks[3, 0, -8:, -8:] = 1.0  # elsewhere
    labels = torch.ones(4, dtype=torch.int64)
    scores = torch.tensor([0.9, 0.8, 0.3, 0.2])
    new = matrix_nms(masks, scores, labels, sigma=2.0)
    e2 = math.exp(-2.0)
    assert new.tolist() == pytest.approx([0.9, 0.8 * e2, 0.3 * e2, 0.2], rel=1e-6)
    det = {"boxes": torch.zeros(4, 4), "scores": scores, "labels": labels, "masks": masks}
    out = suppress(det, _settings("matrix-nms"))
    # 0.8 e^-2 = 0.108 stays; 0.3 e^-2 = 0.041 < 0.05 goes.
    assert out["scores"].tolist() == pytest.approx([0.9, 0.2, 0.8 * e2], rel=1e-6)
    linear = suppress(det, _settings("matrix-nms", matrix_nms_kernel="linear"))
    assert linear["scores"].tolist() == pytest.approx([0.9, 0.2])  # 1 - 1 = 0: both copies go


# --- hand-made cases with known answers, at both sizes ---------------------------------------------
def _strips(size, *spans: tuple[int, int]) -> torch.Tensor:
    """Masks [N, 1, H, W] filling columns [a u, b u) of every row, u = W // 12 (spans in
    twelfths): IoUs are exact ratios of lengths."""
    h, w = size
    u = w // 12
    masks = torch.zeros(len(spans), 1, h, w)
    for k, (a, b) in enumerate(spans):
        masks[k, 0, :, a * u : b * u] = 1.0
    return masks


def _box(size, x1, y1, x2, y2):
    h, w = size
    return [x1 * w, y1 * h, x2 * w, y2 * h]


@pytest.mark.parametrize("size", SIZES)
def test_soft_nms_gaussian_decays_sequentially_and_per_class(size):
    square, far = _box(size, 0, 0, 0.3, 0.3), _box(size, 0.6, 0.6, 0.9, 0.9)
    boxes = torch.tensor([square, square, square, far, square])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.85])
    labels = torch.tensor([1, 1, 1, 1, 2])  # the last one is another class: untouched
    order, new = soft_nms(boxes, scores, labels, kernel="gaussian", sigma=0.5)
    e2 = math.exp(-2.0)  # IoU 1: exp(-1 / 0.5)
    assert order.tolist() == [0, 4, 3, 1, 2]
    assert new.tolist() == pytest.approx([0.9, 0.85, 0.6, 0.8 * e2, 0.7 * e2 * e2], rel=1e-5)


@pytest.mark.parametrize("size", SIZES)
def test_soft_nms_linear_only_above_its_threshold(size):
    boxes = torch.tensor(
        [_box(size, 0, 0, 0.5, 0.5), _box(size, 0, 0, 0.5, 0.25), _box(size, 0, 0, 0.5, 0.1)]
    )
    labels = torch.ones(3, dtype=torch.int64)
    order, new = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), labels, kernel="linear")
    # The square first: the half (IoU 0.5) drops to 0.8 * 0.5; the fifth (IoU 0.2 <= 0.3)
    # keeps 0.7 and goes next, and the half, IoU 0.4 with the fifth, decays again by 0.6.
    assert order.tolist() == [0, 2, 1]
    assert new.tolist() == pytest.approx([0.9, 0.7, 0.8 * 0.5 * 0.6], rel=1e-5)


def test_soft_nms_handles_no_boxes_and_rejects_unknown_kernels():
    order, new = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert order.numel() == 0 and new.numel() == 0
    one = (torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), torch.ones(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="kernel"):
        soft_nms(*one, kernel="x")
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(None, *one[1:], kernel="x", ious=torch.ones(1, 1))


@pytest.mark.parametrize("size", SIZES)
def test_matrix_nms_decays_in_parallel_with_compensation(size):
    # A > B > C in score; A-B mask IoU 0.5, B-C IoU 0.2, A and C disjoint.
    masks = _strips(size, (0, 6), (2, 8), (6, 12))
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.ones(3, dtype=torch.int64)
    new = matrix_nms(masks, scores, labels)
    # B decays by exp(-2 * 0.5²). C overlaps only B, which is itself suppressed (its own worst
    # overlap 0.5 exceeds C's 0.2), so C keeps its score: the compensation term.
    assert new.tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.5), 0.7], rel=1e-5)
    linear = matrix_nms(masks, scores, labels, kernel="linear")
    assert linear.tolist() == pytest.approx([0.9, 0.8 * 0.5, 0.7], rel=1e-5)  # (1-0.2)/(1-0.5) > 1
    assert matrix_nms(masks, scores, torch.tensor([1, 2, 3])).tolist() == pytest.approx(
        [0.9, 0.8, 0.7]
    )


@pytest.mark.parametrize("size", SIZES)
def test_mask_nms_is_greedy_not_fast_nms(size):
    # A suppresses B (IoU 0.5 > 0.3); B would suppress C (IoU 1/3) but B is gone, and A-C
    # overlap is 1/11, so greedy NMS keeps A and C. Fast NMS would wrongly drop C too.
    masks = _strips(size, (0, 6), (2, 8), (5, 11))
    keep = mask_nms(
        masks, torch.tensor([0.9, 0.8, 0.7]), torch.ones(3, dtype=torch.int64), iou_thresh=0.3
    )
    assert keep.tolist() == [0, 2]


@pytest.mark.parametrize("size", SIZES)
def test_mask_nms_keeps_disjoint_masks_that_box_nms_merges(size):
    # Two instances with the same box (an L and its complement, say) but disjoint masks.
    h, w = size
    det = {
        "boxes": torch.tensor([[0.0, 0.0, w, h], [0.0, 0.0, w, h]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 1]),
        "masks": _strips(size, (0, 6), (6, 12)),
    }
    assert len(suppress(det, _settings("nms"))["scores"]) == 1
    assert len(suppress(det, _settings("mask-nms"))["scores"]) == 2
    assert suppress(det, _settings("matrix-nms"))["scores"].tolist() == pytest.approx([0.9, 0.8])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("method", POSTPROCESS_METHODS)
def test_suppress_returns_best_first_and_at_most_detections_per_img(method, size):
    boxes, scores, labels = random_boxes(size, 30, seed=0)
    masks = torch.zeros(30, 1, *size)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
        masks[k, 0, max(y1, 0) : y2, max(x1, 0) : x2] = 0.9
    det = {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks}
    out = suppress(det, _settings(method, detections_per_img=10, postprocess_pool=10))
    assert set(out) == set(det)
    assert 1 <= len(out["scores"]) <= 10
    assert out["masks"].shape[1:] == (1, *size)
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])


@pytest.mark.parametrize("size", SIZES)
def test_preselect_gives_the_mask_rules_distinct_objects_first(size):
    """Ten near-copies of one box outscore two other objects; three slots go to all three."""
    a, b, c = (
        _box(size, 0.1, 0.1, 0.4, 0.4),
        _box(size, 0.5, 0.1, 0.9, 0.4),
        _box(size, 0.1, 0.6, 0.4, 0.9),
    )
    copies = torch.tensor([a] * 10) + torch.arange(10.0)[:, None] * 0.002 * size[1]
    boxes = torch.cat([copies, torch.tensor([b, c])])
    scores = torch.cat([torch.linspace(0.95, 0.9, 10), torch.tensor([0.6, 0.5])])
    det = {"boxes": boxes, "scores": scores, "labels": torch.ones(12, dtype=torch.int64)}
    for method in ("matrix-nms", "mask-nms"):
        out = preselect(det, _settings(method, detections_per_img=3))
        assert out["scores"].tolist() == pytest.approx([0.95, 0.6, 0.5])  # own scores, best first
    assert len(preselect(det, _settings("soft-nms-linear", detections_per_img=3))["scores"]) == 3


def test_settings_come_from_the_config_and_are_validated():
    cfg = TrainConfig(
        postprocess="matrix-nms",
        matrix_nms_kernel="linear",
        matrix_nms_score_floor=0.1,
        tta_hflip=True,
    )
    settings = Settings.from_config(cfg, soft_nms_score_floor=0.01)
    assert (settings.postprocess, settings.matrix_nms_kernel, settings.tta_hflip) == (
        "matrix-nms",
        "linear",
        True,
    )
    assert (settings.matrix_nms_score_floor, settings.soft_nms_score_floor) == (0.1, 0.01)
    assert not settings.passthrough and Settings.from_config(TrainConfig()).passthrough
    with pytest.raises(ValueError, match="postprocess must be one of"):
        TrainConfig(postprocess="wbf")
    with pytest.raises(ValueError, match="postprocess_pool"):
        TrainConfig(postprocess_pool=10)
