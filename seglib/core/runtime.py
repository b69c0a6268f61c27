"""Where and how a process runs: the device, the autocast precision, and the seeds.

Notebooks call ``runtime.resolve_device`` and
``runtime.seed_everything`` in their first cell; ``batch_to_device`` moves a batch there.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """ "auto" -> CUDA if present else the CPU (with a RuntimeWarning); "cpu", "cuda", "cuda:N".

    Under torchrun, "auto"/"cuda" mean this process's GPU, cuda:LOCAL_RANK.

    Raises:
        RuntimeError: CUDA was asked for but is not available.
        ValueError: an unknown device string.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested not in ("auto", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    if torch.cuda.is_available():
        if requested in ("auto", "cuda"):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device(requested)
    if requested == "auto":
        warnings.warn(
            "CUDA is not available: training runs on the CPU, which takes seconds per image "
            "(the smoke profile is for checking the plumbing, not for results).",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch.device("cpu")
    raise RuntimeError(
        f"device {requested!r} was requested but CUDA is not available (torch {torch.__version__}, "
        f"built for CUDA {torch.version.cuda}); use --device cpu or auto, or check the driver with nvidia-smi."
    )


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16), where bf16 autocast
    is measured faster than fp32 (docs/benchmarks.md); elsewhere it is emulated and slower."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def amp_settings(
    device: torch.device, enabled: bool = True, cpu_amp: str = "off"
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype and GradScaler for ``device``.

    Args:
        enabled: mixed precision on CUDA (``TrainConfig.amp``).
        cpu_amp: bf16 autocast on the CPU (``TrainConfig.cpu_amp``): "auto" where
            ``cpu_bf16_native()``, "bf16" always, "off" never.

    Returns:
        On the CPU, (bfloat16, None) when ``cpu_amp`` asks for it, else (None, None). On CUDA,
        (None, None) when disabled; (bfloat16, None) on GPUs that support bf16; (float16,
        GradScaler) otherwise, since fp16 gradients need loss scaling.
    """
    if device.type != "cuda":
        on = cpu_amp == "bf16" or (cpu_amp == "auto" and cpu_bf16_native())
        return (torch.bfloat16, None) if device.type == "cpu" and on else (None, None)
    if not enabled:
        return None, None
    # Native bf16 only (Ampere and newer): emulated bf16 on older GPUs is slower than fp16.
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def precision_note(
    device: torch.device, cfg_amp: bool, cpu_amp: str, validation: str | None = None
) -> str:
    """One line saying which precision training uses on ``device``, and why; with
    ``validation``, the label the model predicts in ("bf16" or "fp32",
    ``seglib.models.precision.predicts_in``), also that clause."""
    dtype, _ = amp_settings(device, cfg_amp, cpu_amp)
    if device.type == "cuda":
        note = f"training precision: {dtype or torch.float32} autocast on {device}"
    elif dtype is not None:
        why = "native bf16 (AMX or AVX512-BF16)" if cpu_bf16_native() else "cpu_amp='bf16'"
        note = f"training precision: bf16 autocast on the CPU ({why})"
    elif cpu_amp == "auto":
        note = "training precision: fp32 on the CPU (no native bf16: no AMX or AVX512-BF16)"
    else:
        note = "training precision: fp32 on the CPU (cpu_amp='off')"
    if validation is None:
        return note
    return f"{note}; validation predicts in {validation}"


def prediction_dtype(device: torch.device, cpu_amp: str) -> torch.dtype | None:
    """The autocast dtype prediction on ``device`` asks for, None for fp32: CUDA predicts in
    fp32, the CPU in bf16 where ``cpu_amp`` (``TrainConfig.cpu_amp_eval``) asks for it by
    ``amp_settings``' rule. Only a Mask R-CNN's convolutions follow it
    (``seglib.models.precision``)."""
    dtype, _ = amp_settings(device, enabled=False, cpu_amp=cpu_amp)
    return dtype


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that is a fixed function of ``keys`` (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def images_to_device(images: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Copy images to ``device`` (non-blocking from pinned memory); uint8 ones become float
    in 0..1 there, after the copy, so a quarter of the bytes cross the bus."""
    out = []
    for img in images:
        img = img.to(device, non_blocking=True)
        out.append(img.float().div_(255.0) if img.dtype == torch.uint8 else img)
    return out


def batch_to_device(
    images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """``images_to_device`` plus every tensor of every target dict (non-blocking)."""
    targets = [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]
    return images_to_device(images, device), targets


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA), so a timer measures the work and not the queue."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
