"""The model builder registry: ``build_model`` by architecture name.

``build_model`` looks up a builder by architecture name (``cfg.arch``). "v1" and "v2" are
torchvision's Mask R-CNN R50-FPN (``seglib.models.maskrcnn``), registered below. "mask2former" is
registered by ``seglib.models.mask2former`` when first asked for, so transformers is imported only
then. A family plugs in with ``register_arch(name, builder)``; ``builder(cfg, arch=,
num_classes=, weights=, load=)`` returns a model following ``seglib.models.builder.SegmentationModel``,
reading weight files only when ``load`` is true (``load=False`` gives the structure a
checkpoint is loaded into).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from seglib.core.config import TrainConfig
from seglib.models.maskrcnn import build_maskrcnn

#: ``builder(cfg, *, arch, num_classes, weights, load) -> model``.
ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}
# Families whose module registers them on import; imported only when chosen.
_LAZY_ARCHS = {"mask2former": "seglib.models.mask2former"}


def register_arch(arch: str, builder: ModelBuilder) -> None:
    """Make ``build_model(..., arch=arch)`` call ``builder`` (replacing any earlier one)."""
    _BUILDERS[arch] = builder


def available_archs() -> tuple[str, ...]:
    """Architecture names ``build_model`` accepts (lazy ones included)."""
    return tuple(sorted({*_BUILDERS, *_LAZY_ARCHS}))


def _builder(arch: str) -> ModelBuilder:
    if arch not in _BUILDERS and arch in _LAZY_ARCHS:
        module = _LAZY_ARCHS[arch]
        try:
            importlib.import_module(module)  # registers the family
        except ImportError as e:
            raise ImportError(
                f"arch {arch!r} is provided by {module}, which could not be imported ({e}); "
                "install its extra requirements (requirements-detr.txt)"
            ) from e
    if arch not in _BUILDERS:
        raise ValueError(f"arch must be one of {available_archs()}, got {arch!r}")
    return _BUILDERS[arch]


def build_model(
    num_classes: int, weights: str = "coco", arch: str = "v1", cfg: TrainConfig | None = None
) -> nn.Module:
    """The ``arch`` model with predictors for ``num_classes``, following ``SegmentationModel``.

    Args:
        num_classes: k + 1 (categories plus background).
        weights: for Mask R-CNN "coco" (COCO-trained, predictors replaced unless
            num_classes == 91), "imagenet" (ResNet-50 backbone only), "none" (random init, all
            layers trainable), or a local .pth/.pt file (a state dict or a seglib checkpoint).
        arch: a name in ``available_archs()``: "v1" (maskrcnn_resnet50_fpn), "v2"
            (maskrcnn_resnet50_fpn_v2), ...
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
    """The model ``cfg`` describes, randomly initialised but structured for ``cfg.weights``.

    Reads no weight file: for loading a checkpoint trained from that config.
    """
    return _builder(cfg.arch)(
        cfg, arch=cfg.arch, num_classes=cfg.num_classes, weights=cfg.weights, load=False
    )


register_arch("v1", build_maskrcnn)
register_arch("v2", build_maskrcnn)
