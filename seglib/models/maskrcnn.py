"""Mask R-CNN: torchvision's R50-FPN (v1, v2), built from locally cached weights only.

The torchvision builders always get ``weights=None, weights_backbone=None``: weight files
are read from the torch hub cache by ``seglib.models.weights``, never downloaded here. A model's
structure depends on where its weights came from, as in torchvision: a pretrained v1
backbone uses frozen BatchNorm and freezes its first stages, a random one trains
everything. So a checkpoint rebuilds the same structure from its stored config without
reading any weight file (``seglib.models.builder.model_from_checkpoint``). ``build_maskrcnn`` is
the builder of "v1" and "v2" (``seglib.models.builder.BUILDERS``).
"""

from __future__ import annotations

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

from seglib.core.config import WEIGHT_CHOICES, TrainConfig
from seglib.models.checkpoint import CheckpointError, load_model_state, load_state_file
from seglib.models.roi_align import MultiScaleRoIAlign
from seglib.models.weights import load_weight_file, weights_file

COCO_NUM_CLASSES = 91  # torchvision's label space: index == COCO category id, 0 = background
_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"


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
    heads = model.roi_heads
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = MultiScaleRoIAlign.replacing(getattr(heads, name), sparse=cfg.roi_align == "auto")
        pool.sampling_ratio = cfg.roi_sampling_ratio
        setattr(heads, name, pool)
    heads.mask_roi_pool.output_size = (cfg.mask_pool_size, cfg.mask_pool_size)
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
    """The builder of "v1" and "v2" (see ``seglib.models.builder.build_model`` for the arguments)."""
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
