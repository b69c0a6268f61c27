"""Prediction in bf16 where it pays, fp32 where the numbers are read.

Autocast over a whole Mask R-CNN returns bf16 boxes and scores: coordinates in steps of 0.5 px
at 128 px and of 4 px at 800 px, and scores with 8 bits of mantissa, so COCOeval ranks many
detections as ties. ``autocast_parts`` runs only the convolutions under autocast, the
backbone with its FPN, the RPN's head and the box and mask heads (``BF16_PARTS``), and hands
their outputs on in fp32, so proposals, box decoding, scores, NMS and mask pasting stay fp32.

On the 2-core Xeon kind (AMX), a demo model predicting 100 detections an image on the 24
synthetic val images: 0.22 s an image against 0.49 in fp32, mask AP 0.429 in both; on
another, mask AP50 0.763 against 0.790 (docs/benchmarks.md). Models without torchvision's
Mask R-CNN inside (Mask2Former) are left in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from seglib.core.runtime import prediction_dtype

#: The submodules of a torchvision Mask R-CNN that run in bf16: nearly all its arithmetic.
BF16_PARTS = (
    "backbone",
    "rpn.head",
    "roi_heads.box_head",
    "roi_heads.mask_head",
    "roi_heads.mask_predictor",
)


def as_float32(value: Any) -> Any:
    """``value`` with every floating tensor inside (dicts, lists, tuples) made fp32."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, as_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    return value


def bf16_parts(model: nn.Module) -> list[nn.Module]:
    """The ``BF16_PARTS`` of every torchvision detector inside ``model`` (wrappers included)."""
    detectors = [m for m in model.modules() if isinstance(m, GeneralizedRCNN)]
    return [
        d.get_submodule(name) for d in detectors for name in BF16_PARTS if _has_submodule(d, name)
    ]


def predicts_in(model: nn.Module, device: torch.device, cpu_amp: str) -> str:
    """The precision ``model`` predicts in on ``device`` at ``cpu_amp``
    (``TrainConfig.cpu_amp_eval``): "bf16" where ``prediction_dtype`` asks for bf16 and
    ``model`` has ``bf16_parts`` to run in it, else "fp32" (on CUDA, and Mask2Former always)."""
    return "bf16" if prediction_dtype(device, cpu_amp) is not None and bf16_parts(model) else "fp32"


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


@contextmanager
def autocast_parts(model: nn.Module, dtype: torch.dtype | None) -> Iterator[bool]:
    """Within the block, ``model``'s ``bf16_parts`` run under autocast to ``dtype`` on their
    device and return fp32; the rest of the model is untouched.

    Yields whether any part was switched: False when ``dtype`` is None or ``model`` holds no
    torchvision detector (it then runs in fp32). Each part's ``forward`` is restored on exit,
    also when the block raises.
    """
    parts = bf16_parts(model) if dtype is not None else []
    with replaced_forwards(parts, lambda part: _autocast_forward(part, dtype)):
        yield bool(parts)


@contextmanager
def replaced_forwards(
    parts: Sequence[nn.Module], make: Callable[[nn.Module], Callable[..., Any]]
) -> Iterator[None]:
    """Within the block, each part's ``forward`` is ``make(part)``, which may call the
    forward it replaces; each part's own is restored on exit, also when the block raises."""
    saved = [part.__dict__.get("forward") for part in parts]  # None: the class's forward
    for part in parts:
        part.forward = make(part)
    try:
        yield
    finally:
        for part, forward in zip(parts, saved, strict=True):
            if forward is None:
                del part.forward
            else:
                part.forward = forward


def _autocast_forward(part: nn.Module, dtype: torch.dtype) -> Any:
    forward, device_type = part.forward, next(part.parameters()).device.type

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            out = forward(*args, **kwargs)
        return as_float32(out)

    return run
