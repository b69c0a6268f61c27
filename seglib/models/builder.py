"""Models: the interface the rest of seglib relies on, and rebuilding one from a checkpoint.

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

Where the rest lives (all re-exported here)
    ``seglib.models.registry``: ``build_model`` and the builder registry (``register_arch``);
    ``seglib.models.maskrcnn``: torchvision's Mask R-CNN ("v1", "v2"); ``seglib.models.zeroshot``: the
    zero-shot COCO baseline; ``seglib.models.mask2former``: the optional Mask2Former family.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from seglib.core.config import TrainConfig
from seglib.models.checkpoint import (
    CheckpointError,
    check_class_map,
    checkpoint_config,
    load_checkpoint,
    load_model_state,
    restore_norm_eps,
    unwrap,
)
from seglib.models.maskrcnn import COCO_NUM_CLASSES, FrozenBatchNorm2d, build_maskrcnn
from seglib.models.registry import (
    ModelBuilder,
    available_archs,
    build_model,
    build_model_structure,
    register_arch,
)
from seglib.models.weights import MissingWeightsError, fetch_weights, weights_file
from seglib.models.zeroshot import (
    ZERO_SHOT_CANDIDATES,
    ZeroShotMaskRCNN,
    build_zero_shot_model,
    zero_shot_baseline,
)

# Re-exported for callers from before the split into seglib.models.checkpoint and seglib.models.weights,
# and into seglib.models.registry, seglib.models.maskrcnn and seglib.models.zeroshot.
__all__ = ["CheckpointError", "MissingWeightsError", "fetch_weights", "load_checkpoint", "unwrap"]
__all__ += ["SegmentationModel", "available_archs", "build_model", "build_model_structure"]
__all__ += ["FrozenBatchNorm2d", "build_maskrcnn", "model_from_checkpoint", "register_arch"]
__all__ += ["ZeroShotMaskRCNN", "build_zero_shot_model", "weights_file", "zero_shot_baseline"]
__all__ += ["COCO_NUM_CLASSES", "ZERO_SHOT_CANDIDATES", "ModelBuilder"]


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


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, categories: list[dict] | None = None
) -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Rebuild the trained model from a checkpoint alone (no weight files, no network).

    Args:
        categories: the data's categories (e.g. ``dataset.categories``); when given, the
            checkpoint's class map must match them (``check_class_map``).

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
    cfg = checkpoint_config(ckpt, path)
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
    from seglib.models.postprocess import wrap

    return wrap(model.to(device).eval(), cfg), cfg, stored
