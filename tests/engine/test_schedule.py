"""The optimizer's implementations (``TrainConfig.optimizer_impl``): one update, three kernels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seglib.core.config import TrainConfig
from seglib.engine.schedule import make_optimizer, optimizer_impl_kwargs


@pytest.mark.parametrize(
    ("impl", "device_type", "expected"),
    [
        ("auto", "cpu", {"fused": True}),
        ("auto", "cuda", {"fused": True}),
        ("auto", "mps", {}),
        ("fused", "cpu", {"fused": True}),
        ("foreach", "cpu", {"foreach": True}),
        ("for-loop", "cuda", {"foreach": False}),
    ],
)
def test_optimizer_impl_kwargs(impl, device_type, expected):
    assert optimizer_impl_kwargs(impl, device_type) == expected


def test_every_impl_makes_the_same_sgd_update():
    """Momentum and weight decay included, over a few steps: fused, foreach and the for-loop
    agree to float rounding, so the choice changes speed, not what is learned."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    weights = {}
    for impl in ("fused", "foreach", "for-loop"):
        model = copy.deepcopy(base)  # the same start for each
        opt = make_optimizer(model, TrainConfig(lr=0.1, weight_decay=1e-2, optimizer_impl=impl))
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    assert not torch.allclose(weights["fused"], start)  # it moved
    torch.testing.assert_close(weights["fused"], weights["for-loop"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights["foreach"], weights["for-loop"], rtol=1e-5, atol=1e-6)


def test_auto_is_fused_for_a_cpu_model():
    model = nn.Linear(4, 2)
    assert make_optimizer(model, TrainConfig(optimizer_impl="auto")).defaults["fused"] is True
    assert not make_optimizer(model, TrainConfig(optimizer_impl="for-loop")).defaults["foreach"]


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="optimizer_impl"):
        TrainConfig(optimizer_impl="adam")
