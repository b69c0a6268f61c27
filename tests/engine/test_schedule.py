"""The optimizer (``TrainConfig.optimizer``) and its implementations (``optimizer_impl``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from seglib.core.config import TrainConfig
from seglib.engine.schedule import clip_gradients, make_optimizer, optimizer_impl_kwargs


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


def test_adamw_decays_only_the_weights_of_convolutions_and_linear_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    opt = make_optimizer(model, TrainConfig(optimizer="adamw", lr=3e-4, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2, 4}
    assert {p.ndim for p in plain["params"]} == {1}  # biases, GroupNorm scale and shift
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_frozen_parameters_are_not_optimised():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    for name in ("sgd", "adamw"):
        opt = make_optimizer(model, TrainConfig(optimizer=name))
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        assert held == {id(p) for p in model[1].parameters()}


def _with_grads(scale: float) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n)) for n in (7, 300, 64)]
    for p in params:
        p.grad = torch.randn_like(p) * scale
    params.append(torch.nn.Parameter(torch.randn(3)))  # no gradient: left out, as torch does
    return params


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_clipping_matches_torch_bit_for_bit_above_and_below_the_limit(scale):
    ours, theirs = _with_grads(scale), _with_grads(scale)
    norm = clip_gradients(ours, max_norm=5.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm=5.0)
    assert torch.equal(norm, expected)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours[:3], theirs[:3], strict=True))
    assert (norm > 5.0) == (scale == 10.0)  # both regimes are exercised


def test_clipping_leaves_gradients_under_the_limit_untouched_on_the_cpu(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grads_with_norm_", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    clip_gradients(_with_grads(0.01), max_norm=5.0)
    assert calls == []  # nothing to clip: no pass over the gradients
    clip_gradients(_with_grads(10.0), max_norm=5.0)
    assert calls == [1]
