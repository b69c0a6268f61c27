"""Models: the interface the rest of seglib relies on, the architectures, and rebuilding one.

The interface (``SegmentationModel``)
    Every model family is an ``nn.Module`` used in exactly two ways, as torchvision's
    detection models are:

    - training (``model.train()``): ``model(images, targets)`` returns a dict of scalar loss
      tensors; the engine back-propagates their sum and logs each under its key.
    - inference (``model.eval()``): ``model(images)`` returns one dict per image: ``boxes``
      float [N, 4] XYXY pixels, ``labels`` int64 [N] in 1..k, ``scores`` float [N], ``masks``
      float [N, 1, H, W] probabilities in 0..1, all at the input image's size.

    ``images`` are float [3, H, W] in 0..1 on the model's device, any size (the model resizes
    and normalises them); ``targets`` are torchvision dicts (``boxes`` float32 [N, 4] XYXY,
    ``labels`` int64 1..k, ``masks`` uint8 [N, H, W]). The engine, evaluation and prediction
    use nothing else of a model: no attribute of one family, no isinstance test.

The architectures (``BUILDERS``, by ``cfg.arch``; its keys are ``seglib.core.config.ARCHS``)
    "v1" and "v2": torchvision's Mask R-CNN R50-FPN (``seglib.models.maskrcnn``);
    "mask2former": Hugging Face Mask2Former (``seglib.models.mask2former``), whose module
    imports ``transformers`` only when a model is built. A builder is called as
    ``builder(cfg, arch=, num_classes=, weights=, load=)`` and returns a model following
    ``SegmentationModel``, reading weight files only when ``load`` is true (``load=False`` gives
    the structure a checkpoint is loaded into).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from seglib.core.config import TrainConfig
from seglib.core.runtime import prediction_dtype
from seglib.models.checkpoint import (
    CheckpointError,
    check_class_map,
    checkpoint_config,
    load_checkpoint,
    load_model_state,
    restore_norm_eps,
)
from seglib.models.mask2former import build_mask2former
from seglib.models.maskrcnn import build_maskrcnn
from seglib.models.postprocess import wrap

#: ``builder(cfg, *, arch, num_classes, weights, load) -> model``, by architecture name.
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "v1": build_maskrcnn,
    "v2": build_maskrcnn,
    "mask2former": build_mask2former,
}


def predicts_in_arch(arch: str, device: torch.device, cpu_amp: str) -> str:
    """``seglib.models.precision.predicts_in`` of an ``arch`` model without building it, for
    cache keys checked before a model is: "bf16" where ``prediction_dtype`` asks for bf16 and
    ``arch`` is built by ``build_maskrcnn`` (the family with ``bf16_parts``), else "fp32".

    Raises:
        ValueError: an unknown arch.
    """
    maskrcnn = _builder(arch) is build_maskrcnn
    return "bf16" if maskrcnn and prediction_dtype(device, cpu_amp) is not None else "fp32"


@runtime_checkable
class SegmentationModel(Protocol):
    """What seglib needs of a model (see the module docstring for the two call forms)."""

    training: bool

    def __call__(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(
        self, state_dict: Any, strict: bool = True, assign: bool = False
    ) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def _builder(arch: str) -> Callable[..., nn.Module]:
    if arch not in BUILDERS:
        raise ValueError(f"arch must be one of {tuple(sorted(BUILDERS))}, got {arch!r}")
    return BUILDERS[arch]


def build_model(
    num_classes: int, weights: str = "coco", arch: str = "v1", cfg: TrainConfig | None = None
) -> nn.Module:
    """The ``arch`` model with predictors for ``num_classes``, following ``SegmentationModel``.

    Args:
        num_classes: k + 1 (categories plus background).
        weights: for Mask R-CNN "coco" (COCO-trained, predictors replaced unless
            num_classes == 91), "imagenet" (ResNet-50 backbone only), "none" (random init, all
            layers trainable), or a local .pth/.pt file (a state dict or a seglib checkpoint).
        arch: a key of ``BUILDERS``: "v1" (maskrcnn_resnet50_fpn), "v2"
            (maskrcnn_resnet50_fpn_v2), "mask2former".
        cfg: sizes, proposal/ROI counts, inference thresholds, trainable_backbone_layers;
            TrainConfig() if None.

    Returns:
        The model in train mode, on the CPU.

    Raises:
        MissingWeightsError: the coco/imagenet file is not in $TORCH_HOME/hub/checkpoints.
        CheckpointError: a local file is unreadable or has another class count.
        ValueError: bad num_classes, weights or arch.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
    cfg = cfg if cfg is not None else TrainConfig()
    return _builder(arch)(cfg, arch=arch, num_classes=num_classes, weights=weights, load=True)


def build_model_structure(cfg: TrainConfig) -> nn.Module:
    """The model ``cfg`` describes, structured for ``cfg.weights``, its weights left as
    allocated (``torch.nn.init`` does nothing while it is built) and no weight file read:
    for loading a checkpoint trained from that config, which fills every one of them.

    Filling weights only to overwrite them took 0.9 s of each Mask R-CNN rebuilt at one thread
    (notebook 04 rebuilds ``best.pt`` twice, 06 once, as their chains start side by side).
    """
    with _init_skipped():
        return _builder(cfg.arch)(
            cfg, arch=cfg.arch, num_classes=cfg.num_classes, weights=cfg.weights, load=False
        )


@contextlib.contextmanager
def _init_skipped() -> Iterator[None]:
    """Every public in-place function of ``torch.nn.init`` returns its tensor untouched."""
    names = [n for n in vars(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, _untouched)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _untouched(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def model_from_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    categories: list[dict] | None = None,
    config: TrainConfig | None = None,
) -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Rebuild the trained model from a checkpoint alone (no weight files, no network).

    Args:
        categories: the data's categories (e.g. ``dataset.categories``); when given, the
            checkpoint's class map must match them (``check_class_map``).
        config: build the model this config describes instead of the stored one, e.g. the
            stored one with other inference thresholds or post-processing. Its structure
            must hold the weights (the same arch, norm and categories); the caller makes
            sure the rest of what was learned agrees.

    Returns:
        (model in eval mode on ``device``, its TrainConfig, its class map: categories in label
        order with COCO's ids, ``seglib.models.checkpoint.class_map``).
        The model is wrapped by ``seglib.models.postprocess.wrap`` when the config names another
        suppression rule than torchvision's box NMS, or flip TTA.

    Raises:
        FileNotFoundError, CheckpointError: see ``load_checkpoint``; also when the stored
        class map and the weights disagree, or the class map and ``categories`` do.
    """
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path) if config is None else config
    stored = ckpt["categories"]
    if categories is not None:
        check_class_map(stored, categories, source=str(path))
    if ckpt["num_classes"] != len(stored) + 1 or cfg.num_classes != ckpt["num_classes"]:
        raise CheckpointError(
            f"{path}: num_classes {ckpt['num_classes']} disagrees with its {len(stored)} categories "
            f"and config categories {list(cfg.categories)}"
        )
    model = build_model_structure(cfg)
    load_model_state(model, ckpt["model"], source=str(path))
    restore_norm_eps(model, ckpt.get("norm_eps", {}))  # absent from checkpoints before it
    return wrap(model.to(device).eval(), cfg), cfg, stored
