"""Models: the interface the rest of seglib relies on, the builder registry, and Mask R-CNN.

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

The registry
    ``build_model`` looks up a builder by architecture name (``cfg.arch``). "v1" and "v2" are
    torchvision's Mask R-CNN R50-FPN, registered below. "mask2former" is registered by
    ``seglib.mask2former`` when first asked for, so transformers is imported only then. A
    family plugs in with ``register_arch(name, builder)``; ``builder(cfg, arch=, num_classes=,
    weights=, load=)`` returns the model, reading weight files only when ``load`` is true
    (``load=False`` gives the structure a checkpoint is loaded into).

Mask R-CNN
    The torchvision builders always get ``weights=None, weights_backbone=None``: weight files
    are read from the torch hub cache by ``seglib.weights``, never downloaded here. A model's
    structure depends on where its weights came from, as in torchvision: a pretrained v1
    backbone uses frozen BatchNorm and freezes its first stages, a random one trains
    everything. So a checkpoint rebuilds the same structure from its stored config without
    reading any weight file (``model_from_checkpoint``).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torchvision
from torch import nn
from torchvision.models.detection import (
    MaskRCNN,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from seglib.checkpoint import (
    CheckpointError,
    check_class_map,
    checkpoint_config,
    load_checkpoint,
    load_model_state,
    load_state_file,
    unwrap,
)
from seglib.config import WEIGHT_CHOICES, TrainConfig
from seglib.weights import MissingWeightsError, fetch_weights, load_weight_file, weights_file

# Re-exported for callers from before the split into seglib.checkpoint and seglib.weights.
__all__ = ["CheckpointError", "MissingWeightsError", "fetch_weights", "load_checkpoint", "unwrap"]
__all__ += ["SegmentationModel", "available_archs", "build_model", "build_model_structure"]
__all__ += ["FrozenBatchNorm2d", "build_maskrcnn", "model_from_checkpoint", "register_arch"]
__all__ += ["ZeroShotMaskRCNN", "build_zero_shot_model", "weights_file", "zero_shot_baseline"]

COCO_NUM_CLASSES = 91  # torchvision's label space: index == COCO category id, 0 = background
#: Detections the zero-shot COCO model keeps per image before its 91 classes are narrowed to
#: the subset's k: a cap of 100 there would leave the subset far fewer than 100.
ZERO_SHOT_CANDIDATES = 300
_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"


# --- the interface and the registry -----------------------------------------------------
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


#: ``builder(cfg, *, arch, num_classes, weights, load) -> model``.
ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}
# Families whose module registers them on import; imported only when chosen.
_LAZY_ARCHS = {"mask2former": "seglib.mask2former"}


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


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, categories: list[dict] | None = None
) -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Rebuild the trained model from a checkpoint alone (no weight files, no network).

    Args:
        categories: the data's categories (e.g. ``dataset.categories``); when given, the
            checkpoint's class map must match them (``check_class_map``).

    Returns:
        (model in eval mode on ``device``, its TrainConfig, its categories with coco_id).
        The model is wrapped by ``seglib.postprocess.wrap`` when the config names another
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
    from seglib.postprocess import wrap  # the run's suppression rule; the bare model for "nms"

    return wrap(model.to(device).eval(), cfg), cfg, stored


# --- Mask R-CNN ---------------------------------------------------------------------------
class FrozenBatchNorm2d(torchvision.ops.misc.FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d, with its output in the input's dtype.

    torchvision's multiplies by a float32 scale, so under bf16/fp16 autocast every backbone
    activation after a BatchNorm comes out float32: twice the memory and bandwidth, and a cast
    back at the next convolution. Here scale and shift are computed in float32 (from the
    same buffers, so state dicts are interchangeable) and cast to the input's dtype; float32
    inputs give torchvision's result bit for bit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + shift.to(x.dtype).reshape(1, -1, 1, 1)


def _weights_kind(weights: str) -> str:
    if weights in WEIGHT_CHOICES:
        return weights
    if str(weights).endswith((".pth", ".pt")):
        return "file"
    raise ValueError(
        f"weights must be one of {WEIGHT_CHOICES} or a path ending in .pth/.pt, got {weights!r}"
    )


def _freeze_batchnorm(module: nn.Module, eps: float | None = None) -> None:
    """Swap every BatchNorm2d below ``module`` for ``FrozenBatchNorm2d``, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps if eps is None else eps)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child, eps)


def _freeze_backbone_layers(model: MaskRCNN, trainable_layers: int) -> None:
    # Same rule as torchvision's _resnet_fpn_extractor, which we cannot use through the
    # builder: with weights=None it forces all 5 stages trainable.
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers.append("bn1")
    for name, param in model.backbone.body.named_parameters():
        if not any(name.startswith(layer) for layer in layers):
            param.requires_grad_(False)


def _groupnorm_backbone() -> nn.Module:
    """ResNet-50 + FPN with GroupNorm(32) after every convolution, randomly initialised.

    The same layers as torchvision's v1 backbone, with GroupNorm in place of BatchNorm in
    the ResNet and added to the FPN's convolutions: from scratch with batches of 2, batch
    statistics are too noisy to train on and differ between training and evaluation.
    """
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    def group_norm(channels: int) -> nn.GroupNorm:
        return nn.GroupNorm(32, channels)

    body = resnet50(weights=None, norm_layer=group_norm)
    return _resnet_fpn_extractor(body, 5, norm_layer=group_norm)


def _skeleton(
    num_classes: int, arch: str, cfg: TrainConfig, *, pretrained: bool, eps0: bool
) -> MaskRCNN:
    """The randomly initialised structure that weights of the given origin are loaded into.

    ``eps0``: frozen BatchNorm with eps 0, as the legacy v1 COCO weights were trained.
    """
    builder = maskrcnn_resnet50_fpn if arch == "v1" else maskrcnn_resnet50_fpn_v2
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
    )
    if cfg.norm == "gn":
        model.backbone = _groupnorm_backbone()
    if pretrained and arch == "v1":
        # torchvision's v1 recipe freezes backbone BatchNorm when starting from trained
        # weights (batch 2 is far too small for batch statistics); v2 keeps BatchNorm2d.
        _freeze_batchnorm(model.backbone.body, eps=0.0 if eps0 else None)
    _freeze_backbone_layers(model, cfg.trainable_backbone_layers if pretrained else 5)
    return model


def _replace_predictors(model: MaskRCNN, num_classes: int) -> None:
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, num_classes)


def _load_file(cfg: TrainConfig, arch: str, num_classes: int, path: str) -> MaskRCNN:
    """A local state dict or seglib checkpoint; a COCO-trained one (91 classes) gets new
    predictors when ``num_classes`` differs."""
    state = load_state_file(path)
    have = int(state[_CLS_KEY].shape[0]) if _CLS_KEY in state else num_classes
    if have == COCO_NUM_CLASSES and num_classes != COCO_NUM_CLASSES:
        # A COCO-trained file placed by hand: as weights="coco", from a file.
        model = _skeleton(COCO_NUM_CLASSES, arch, cfg, pretrained=True, eps0=arch == "v1")
        load_model_state(model, state, source=path)
        _replace_predictors(model, num_classes)
        return model
    if have != num_classes:
        raise CheckpointError(
            f"{path} was trained for {have} classes ({have - 1} categories + background) but the "
            f"model has {num_classes} ({num_classes - 1} categories + background). Use the same "
            f"categories as the file, or start from weights='coco' to train new heads."
        )
    model = _skeleton(num_classes, arch, cfg, pretrained=True, eps0=False)
    load_model_state(model, state, source=path)
    return model


def build_maskrcnn(
    cfg: TrainConfig, *, arch: str, num_classes: int, weights: str, load: bool
) -> MaskRCNN:
    """The registry's builder for "v1" and "v2" (see ``build_model`` for the arguments)."""
    kind = _weights_kind(weights)
    coco_v1 = arch == "v1" and kind == "coco"  # the legacy COCO_V1 weights were trained with eps 0
    if not load or kind == "none":
        return _skeleton(num_classes, arch, cfg, pretrained=kind != "none", eps0=coco_v1)
    if kind == "file":
        return _load_file(cfg, arch, num_classes, weights)
    if kind == "coco":
        model = _skeleton(COCO_NUM_CLASSES, arch, cfg, pretrained=True, eps0=coco_v1)
        model.load_state_dict(load_weight_file("coco", arch))
        if num_classes != COCO_NUM_CLASSES:
            _replace_predictors(model, num_classes)
        return model
    model = _skeleton(num_classes, arch, cfg, pretrained=True, eps0=False)  # imagenet: body only
    missing, unexpected = model.backbone.body.load_state_dict(
        load_weight_file("imagenet", arch), strict=False
    )
    if missing or any(not k.startswith("fc.") for k in unexpected):
        raise CheckpointError(
            f"{weights_file('imagenet', arch)} is not a torchvision ResNet-50 state dict "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); delete it and fetch it again."
        )
    return model


register_arch("v1", build_maskrcnn)
register_arch("v2", build_maskrcnn)


# --- zero-shot baseline -----------------------------------------------------------------
class ZeroShotMaskRCNN(nn.Module):
    """A 91-class COCO model whose detections are mapped to subset labels 1..k by ``coco_id``.

    Detections of COCO classes outside the subset are dropped, then the ``detections_per_img``
    best are kept. The wrapped model should keep more candidates than that
    (``build_zero_shot_model`` gives it ``ZERO_SHOT_CANDIDATES``), or the subset's classes get
    only what is left of a cap shared with the other COCO classes. Inference only.
    """

    def __init__(
        self, model: nn.Module, categories: list[dict], detections_per_img: int = 100
    ) -> None:
        super().__init__()
        lut = torch.zeros(COCO_NUM_CLASSES, dtype=torch.int64)
        for cat in categories:
            coco_id = cat.get("coco_id")
            if not isinstance(coco_id, int) or not 1 <= coco_id < COCO_NUM_CLASSES:
                raise ValueError(
                    f"category {cat.get('name')!r} needs an integer coco_id in 1..90, got {coco_id!r}"
                )
            lut[coco_id] = int(cat["id"])
        self.model = model
        self.categories = [dict(c) for c in categories]
        self.detections_per_img = int(detections_per_img)
        self.register_buffer("coco_to_label", lut, persistent=False)

    def forward(
        self, images: list[torch.Tensor], targets: Any = None
    ) -> list[dict[str, torch.Tensor]]:
        if self.training or targets is not None:
            raise RuntimeError(
                "the zero-shot model is for evaluation only: call .eval() and pass images alone"
            )
        outputs = []
        for out in self.model(images):
            mapped = self.coco_to_label[out["labels"]]
            kept = (mapped > 0).nonzero().squeeze(1)
            # Best first (stable: ties keep the model's order), then the cap.
            order = out["scores"][kept].argsort(descending=True, stable=True)
            kept = kept[order[: self.detections_per_img]]
            outputs.append({k: (mapped if k == "labels" else v)[kept] for k, v in out.items()})
        return outputs


def build_zero_shot_model(
    categories: list[dict],
    arch: str = "v1",
    cfg: TrainConfig | None = None,
    *,
    weights: str = "coco",
    model: nn.Module | None = None,
) -> ZeroShotMaskRCNN:
    """The unmodified COCO-trained Mask R-CNN, reporting only the subset's categories.

    It keeps ``max(ZERO_SHOT_CANDIDATES, cfg.detections_per_img)`` detections per image over
    its 91 classes, then the ``cfg.detections_per_img`` best of the subset's.

    Args:
        categories: subset category dicts with "id" (1..k) and "coco_id".
        arch: "v1" or "v2".
        weights: "coco", or "none" for a random stand-in that checks the plumbing.
        model: a 91-class model to wrap instead of loading the COCO weights (tests).

    Returns:
        A module in eval mode; outputs use labels 1..k.

    Raises:
        MissingWeightsError: the COCO file is not cached. ValueError: a category lacks coco_id.
    """
    cfg = cfg if cfg is not None else TrainConfig()
    if model is None:
        # torchvision's own structure (BatchNorm), whatever the run's cfg.norm
        keep = max(ZERO_SHOT_CANDIDATES, cfg.detections_per_img)
        wide = cfg.replace(
            norm="bn",
            detections_per_img=keep,
            postprocess_pool=max(keep, cfg.postprocess_pool),  # the pool holds every candidate
        )
        model = build_model(COCO_NUM_CLASSES, weights, arch, wide)
    return ZeroShotMaskRCNN(model, categories, cfg.detections_per_img).eval()


def zero_shot_baseline(categories: list[dict], cfg: TrainConfig) -> nn.Module:
    """The zero-shot baseline for a run: COCO-trained Mask R-CNN weights when they are cached.

    The run's own arch when it is a Mask R-CNN one ("v1", "v2"); a "mask2former" run gets
    ``seglib.mask2former.zero_shot_baseline`` (the COCO Mask2Former). When the COCO file
    is missing and the run itself did not start from COCO weights (the offline smoke
    profile), a randomly initialised 91-class model stands in, with a loud warning: the
    comparison then checks the plumbing (label mapping by ``coco_id``), nothing more.

    Raises:
        MissingWeightsError: ``cfg.weights == "coco"`` and the file is not cached.
    """
    if cfg.arch == "mask2former":  # its own COCO model, its head restricted by name
        from seglib.mask2former import zero_shot_baseline as mask2former_zero_shot

        return mask2former_zero_shot(categories, cfg)
    arch = cfg.arch if cfg.arch in ("v1", "v2") else "v1"
    if weights_file("coco", arch).is_file() or cfg.weights == "coco":
        return build_zero_shot_model(categories, arch, cfg)
    warnings.warn(
        f"ZERO-SHOT STAND-IN: {weights_file('coco', arch)} is not cached, so a randomly "
        "initialised 91-class model stands in for the COCO-trained baseline. Its AP means nothing.",
        UserWarning,
        stacklevel=2,
    )
    return build_zero_shot_model(categories, arch, cfg, weights="none")
