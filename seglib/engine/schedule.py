"""The optimizer, the learning-rate schedule, and one optimizer step of a run.

SGD (the seed's) or AdamW over the trainable parameters, and one multiplier per optimizer
step: a linear warmup times a schedule that spans the whole run (multistep at fractions of
it, cosine, or constant), so changing the number of epochs keeps the schedule's shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from seglib.core.config import TrainConfig

#: Device types where torch has fused SGD and AdamW kernels; ``optimizer_impl="auto"`` uses them.
FUSED_DEVICES = ("cpu", "cuda")


def optimizer_impl_kwargs(impl: str, device_type: str) -> dict[str, bool]:
    """The optimizer's keyword for ``TrainConfig.optimizer_impl`` on ``device_type``.

    "auto" is ``fused=True`` on ``FUSED_DEVICES`` and torch's default elsewhere.
    """
    if impl == "fused" or (impl == "auto" and device_type in FUSED_DEVICES):
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "for-loop":
        return {"foreach": False}
    return {}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters (frozen backbone stages excluded),
    implemented as ``cfg.optimizer_impl`` says for the parameters' device.

    SGD decays every parameter by ``cfg.weight_decay`` (torchvision's reference). AdamW decays
    only the weights of convolutions and linear layers (more than one dimension), as
    transformer and ViTDet recipes do: decaying GroupNorm's scales and the biases to 0 only
    fights the normalisation.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    impl = optimizer_impl_kwargs(cfg.optimizer_impl, params[0].device.type if params else "cpu")
    if cfg.optimizer == "adamw":
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, **impl)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **impl
    )


def lr_factor(iteration: int, cfg: TrainConfig, iters_per_epoch: int) -> float:
    """Multiplier of cfg.lr at a 0-based optimizer step: linear warmup times the schedule.

    Warmup ramps from cfg.warmup_factor to 1 over cfg.warmup_iters steps. The schedule runs
    over the whole run, ``num_epochs * iters_per_epoch`` steps: "multistep" multiplies by
    lr_gamma at each fraction of it in lr_milestones, "cosine" decays to 0 at its end,
    "constant" stays at 1. max_iters stops a run early without changing the schedule, so a
    run stopped there and resumed matches an uninterrupted one.
    """
    warm = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    total = max(1, cfg.num_epochs * iters_per_epoch)
    if cfg.lr_schedule == "multistep":
        passed = sum(iteration >= m * total for m in cfg.lr_milestones)
        return warm * cfg.lr_gamma**passed
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(iteration, total) / total))
    return warm


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``lr_factor``, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, cfg, iters_per_epoch)
    )


def optimizer_step(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip_norm: float | None = None,
) -> None:
    """Back-propagate ``loss`` and step: loss scaling with ``scaler`` (fp16), and clipping of
    the global gradient norm to ``grad_clip_norm`` (of the unscaled gradients)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if grad_clip_norm is not None:
        clip_gradients(model.parameters(), grad_clip_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's ``clip_grad_norm_`` without its pass over every gradient when none is needed.

    torch multiplies every gradient by min(1, max_norm / (norm + 1e-6)), also when that factor
    is exactly 1: on the CPU, 3.0 s of a demo run's 288 steps (cProfile, 2-core Xeon). The
    factor is computed as torch computes it, so the gradients come out the same bit for bit.
    On CUDA, reading the factor would make the CPU wait for the GPU: torch's call runs as is.

    Returns:
        The total norm of the gradients (before clipping), as ``clip_grad_norm_`` does.
    """
    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if params and params[0].grad.device.type != "cuda" and max_norm / (norm + 1e-6) >= 1.0:
        return norm
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
