"""Mask R-CNN R50-FPN builder, local weight files, the zero-shot baseline, and checkpoints.

Nothing here downloads implicitly: the torchvision builders always get ``weights=None,
weights_backbone=None`` (pitfall 12) and weight files are read from the torch hub cache,
``$TORCH_HOME/hub/checkpoints``. ``fetch_weights`` is the one function that downloads.

A model's *structure* depends on where its weights came from, as in torchvision: a
pretrained v1 backbone uses frozen BatchNorm and freezes its first stages, a random one
trains everything. So a checkpoint rebuilds the same structure from its stored config
without reading any weight file (``model_from_checkpoint``).
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

import seglib
from seglib.config import ARCHS, WEIGHT_CHOICES, TrainConfig
from seglib.io import atomic_file

COCO_NUM_CLASSES = 91  # torchvision's label space: index == COCO category id, 0 = background
CHECKPOINT_FORMAT = 1
_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"
# Both torchvision R50-FPN Mask R-CNN recipes start from the ImageNet V1 ResNet-50.
_URLS = {
    ("coco", "v1"): MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url,
    ("coco", "v2"): MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url,
    ("imagenet", "v1"): ResNet50_Weights.IMAGENET1K_V1.url,
    ("imagenet", "v2"): ResNet50_Weights.IMAGENET1K_V1.url,
}


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is not in the torch hub cache (and was not downloaded)."""


class CheckpointError(ValueError):
    """A checkpoint or state dict is unreadable, incomplete, or does not fit the model."""


# --- weight files -----------------------------------------------------------------------
def weights_file(kind: str, arch: str = "v1") -> Path:
    """Where the ``kind`` ("coco" or "imagenet") weights of ``arch`` are expected.

    Returns ``$TORCH_HOME/hub/checkpoints/<torchvision file name>`` (torch.hub.get_dir()).

    Raises:
        ValueError: unknown kind or arch.
    """
    _check_arch(arch)
    if kind not in ("coco", "imagenet"):
        raise ValueError(f"weights kind must be 'coco' or 'imagenet', got {kind!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_URLS[(kind, arch)])


def fetch_weights(kind: str, arch: str = "v1", *, progress: bool = False) -> Path:
    """Download the ``kind`` weights of ``arch`` into the hub cache (no-op when present).

    The only function in seglib that touches the network. The sha256 prefix in
    torchvision's file name is checked.

    Raises:
        MissingWeightsError: the download failed (offline, proxy); says how to fetch by hand.
    """
    dst = weights_file(kind, arch)
    if dst.is_file():
        return dst
    url = _URLS[(kind, arch)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(dst.name)
    try:
        torch.hub.download_url_to_file(
            url, str(dst), hash_prefix=match.group(1) if match else None, progress=progress
        )
    except Exception as e:  # urllib, ssl and hash errors all mean "not obtained"
        raise MissingWeightsError(
            _missing_message(kind, arch) + f"\nThe download failed: {e}"
        ) from e
    return dst


def _missing_message(kind: str, arch: str) -> str:
    path = weights_file(kind, arch)
    url = _URLS[(kind, arch)]
    return (
        f"{kind} weights for Mask R-CNN {arch} need the file {path.name}, looked for in "
        f"{path.parent} ($TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch). "
        f"seglib never downloads implicitly. To put it there: run "
        f"`python -m seglib fetch-weights {kind} --arch {arch}` on a machine with internet, or "
        f"`mkdir -p {path.parent} && curl -L -o {path} {url}` (or wget), then copy the file over. "
        f"Offline, `--weights none` (random init) works without any file."
    )


def _torch_load(path: Path, map_location: Any = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # zip, pickle and EOF errors: the file is damaged or not ours
        raise CheckpointError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(e).__name__}: {e}); "
            f"the file is truncated, corrupt, or not a state dict / seglib checkpoint. "
            f"Delete it and download or train it again."
        ) from e


def _load_weight_file(kind: str, arch: str) -> dict[str, torch.Tensor]:
    path = weights_file(kind, arch)
    if not path.is_file():
        raise MissingWeightsError(_missing_message(kind, arch))
    return _torch_load(path)


# --- building ---------------------------------------------------------------------------
def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def _weights_kind(weights: str) -> str:
    if weights in WEIGHT_CHOICES:
        return weights
    if str(weights).endswith((".pth", ".pt")):
        return "file"
    raise ValueError(
        f"weights must be one of {WEIGHT_CHOICES} or a path ending in .pth/.pt, got {weights!r}"
    )


def _freeze_batchnorm(module: nn.Module) -> None:
    """Swap every BatchNorm2d below ``module`` for torchvision's FrozenBatchNorm2d, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def _freeze_backbone_layers(model: MaskRCNN, trainable_layers: int) -> None:
    # Same rule as torchvision's _resnet_fpn_extractor, which we cannot use through the
    # builder: with weights=None it forces all 5 stages trainable.
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers.append("bn1")
    for name, param in model.backbone.body.named_parameters():
        if not any(name.startswith(layer) for layer in layers):
            param.requires_grad_(False)


def _skeleton(num_classes: int, arch: str, cfg: TrainConfig, *, pretrained: bool) -> MaskRCNN:
    """The randomly initialised structure that weights of the given origin are loaded into."""
    kwargs = dict(
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
    builder = maskrcnn_resnet50_fpn if arch == "v1" else maskrcnn_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if pretrained and arch == "v1":
        # torchvision's v1 recipe freezes backbone BatchNorm when starting from trained
        # weights (batch 2 is far too small for batch statistics); v2 keeps BatchNorm2d.
        _freeze_batchnorm(model.backbone.body)
    _freeze_backbone_layers(model, cfg.trainable_backbone_layers if pretrained else 5)
    return model


def _replace_predictors(model: MaskRCNN, num_classes: int) -> None:
    box_in = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_in, num_classes)
    mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, num_classes)


def _set_frozen_eps(model: nn.Module, eps: float) -> None:
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = eps


def _build(
    num_classes: int, weights: str, arch: str, cfg: TrainConfig | None, *, load: bool
) -> MaskRCNN:
    cfg = cfg if cfg is not None else TrainConfig()
    _check_arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
    kind = _weights_kind(weights)
    pretrained = kind != "none"
    if kind == "coco" and load:
        model = _skeleton(COCO_NUM_CLASSES, arch, cfg, pretrained=True)
        model.load_state_dict(_load_weight_file("coco", arch))
        if num_classes != COCO_NUM_CLASSES:
            _replace_predictors(model, num_classes)
    else:
        model = _skeleton(num_classes, arch, cfg, pretrained=pretrained)
    if kind == "coco" and arch == "v1":
        _set_frozen_eps(model, 0.0)  # the legacy COCO_V1 weights were trained with eps=0
    if kind == "imagenet" and load:
        missing, unexpected = model.backbone.body.load_state_dict(
            _load_weight_file("imagenet", arch), strict=False
        )
        if missing or any(not k.startswith("fc.") for k in unexpected):
            raise CheckpointError(
                f"{weights_file('imagenet', arch)} is not a torchvision ResNet-50 state dict "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}); delete it and fetch it again."
            )
    if kind == "file" and load:
        state = load_checkpoint_or_state(weights)
        if _num_classes_of(state) == COCO_NUM_CLASSES and num_classes != COCO_NUM_CLASSES:
            # A COCO-trained file placed by hand: load it whole, then fit new predictors.
            model = _skeleton(COCO_NUM_CLASSES, arch, cfg, pretrained=True)
            load_model_state(model, state, source=str(weights))
            _replace_predictors(model, num_classes)
            if arch == "v1":
                _set_frozen_eps(model, 0.0)  # as for the COCO_V1 file above
        else:
            load_model_state(model, state, source=str(weights))
    return model


def build_model(
    num_classes: int, weights: str = "coco", arch: str = "v1", cfg: TrainConfig | None = None
) -> MaskRCNN:
    """torchvision Mask R-CNN R50-FPN with box and mask predictors for ``num_classes``.

    Args:
        num_classes: k + 1 (categories plus background).
        weights: "coco" (COCO-trained, predictors replaced unless num_classes == 91),
            "imagenet" (ResNet-50 backbone only), "none" (random init, all layers trainable),
            or a local .pth/.pt file (a state dict or a seglib checkpoint of this class count).
        arch: "v1" (maskrcnn_resnet50_fpn) or "v2" (maskrcnn_resnet50_fpn_v2).
        cfg: sizes, proposal/ROI counts and trainable_backbone_layers; TrainConfig() if None.

    Returns:
        The model in train mode, on the CPU. Input images float [3,H,W] in 0..1; it resizes
        to cfg.min_size/max_size and normalises itself.

    Raises:
        MissingWeightsError: the coco/imagenet file is not in $TORCH_HOME/hub/checkpoints.
        CheckpointError: a local file is unreadable or has another class count.
        ValueError: bad num_classes, weights or arch.
    """
    return _build(num_classes, weights, arch, cfg, load=True)


def build_model_structure(cfg: TrainConfig) -> MaskRCNN:
    """The model ``cfg`` describes, randomly initialised but structured for ``cfg.weights``.

    Reads no weight file: for loading a checkpoint trained from that config.
    """
    return _build(cfg.num_classes, cfg.weights, cfg.arch, cfg, load=False)


# --- zero-shot baseline -----------------------------------------------------------------
class ZeroShotMaskRCNN(nn.Module):
    """A 91-class COCO model whose detections are mapped to subset labels 1..k by ``coco_id``.

    Detections of COCO classes outside the subset are dropped. Inference only.
    """

    def __init__(self, model: nn.Module, categories: list[dict]) -> None:
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
            keep = mapped > 0
            outputs.append({k: (mapped if k == "labels" else v)[keep] for k, v in out.items()})
        return outputs


def build_zero_shot_model(
    categories: list[dict],
    arch: str = "v1",
    cfg: TrainConfig | None = None,
    *,
    model: nn.Module | None = None,
) -> ZeroShotMaskRCNN:
    """The unmodified COCO-trained model, reporting only the subset's categories.

    Args:
        categories: subset category dicts with "id" (1..k) and "coco_id".
        model: a 91-class model to wrap instead of loading the COCO weights (tests).

    Returns:
        A module in eval mode; outputs use labels 1..k.

    Raises:
        MissingWeightsError: the COCO file is not cached. ValueError: a category lacks coco_id.
    """
    if model is None:
        model = build_model(COCO_NUM_CLASSES, "coco", arch, cfg)
    return ZeroShotMaskRCNN(model, categories).eval()


def zero_shot_baseline(categories: list[dict], cfg: TrainConfig) -> ZeroShotMaskRCNN:
    """The zero-shot baseline for a run: COCO-trained weights when they are cached.

    When the COCO file is missing and the run itself did not start from COCO weights (the
    offline smoke profile), a randomly initialised 91-class model stands in, with a loud
    warning: the comparison then checks the plumbing (label mapping by ``coco_id``), nothing
    more.

    Raises:
        MissingWeightsError: ``cfg.weights == "coco"`` and the file is not cached.
    """
    if weights_file("coco", cfg.arch).is_file() or cfg.weights == "coco":
        return build_zero_shot_model(categories, cfg.arch, cfg)
    warnings.warn(
        f"ZERO-SHOT STAND-IN: {weights_file('coco', cfg.arch)} is not cached, so a randomly "
        "initialised 91-class model stands in for the COCO-trained baseline. Its AP means nothing.",
        UserWarning,
        stacklevel=2,
    )
    stand_in = build_model(COCO_NUM_CLASSES, "none", cfg.arch, cfg)
    return build_zero_shot_model(categories, cfg.arch, cfg, model=stand_in)


# --- state dicts and checkpoints --------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else ``model``."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )


def _num_classes_of(state: dict[str, torch.Tensor]) -> int | None:
    return int(state[_CLS_KEY].shape[0]) if _CLS_KEY in state else None


def load_checkpoint_or_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict in a seglib checkpoint or a plain state-dict file."""
    obj = _torch_load(Path(path))
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or seglib checkpoint"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict"
) -> None:
    """Load ``state`` into ``model`` (unwrapping DDP), checking the class count first.

    Raises:
        CheckpointError: another class count (names both), or keys of another architecture.
    """
    model = unwrap(model)
    have, want = _num_classes_of(state), _num_classes_of(model.state_dict())
    if have is not None and want is not None and have != want:
        raise CheckpointError(
            f"{source} was trained for {have} classes ({have - 1} categories + background) but the "
            f"model has {want} ({want - 1} categories + background). Use the same categories as the "
            f"checkpoint, or start from weights='coco' to train new heads."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{source} does not fit this Mask R-CNN (different arch v1/v2?): {str(e)[:600]}"
        ) from e


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        # Tensors and plain tuples only, so torch.load(weights_only=True) accepts them.
        "python": (version, torch.tensor(py_state, dtype=torch.int64), gauss),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of the ``rng`` entry of a checkpoint (python, numpy, torch, CUDA if present)."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in py_state.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    cfg: TrainConfig,
    categories: list[dict],
    epoch: int,
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    scaler: Any = None,
    best_metric: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained checkpoint atomically (temp file in the same folder, then rename).

    Holds the model state (DDP unwrapped), optimizer/scheduler/scaler state, ``epoch``
    (epochs completed), ``iteration`` (optimizer steps done), RNG states, ``config``
    (cfg.to_dict()), ``categories`` (with coco_id), ``num_classes`` and library versions.
    Everything is loadable with torch.load(weights_only=True).
    """
    path = Path(path)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "best_metric": None if best_metric is None else float(best_metric),
        "rng": _rng_state(),
        "config": cfg.to_dict(),
        "categories": [dict(c) for c in categories],
        "num_classes": len(categories) + 1,
        "versions": {
            "seglib": str(seglib.__version__),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
        },
        "extra": extra or {},
    }
    with atomic_file(path) as f:
        torch.save(ckpt, f)
    return path


_REQUIRED = ("format", "model", "config", "categories", "num_classes", "epoch", "iteration")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` with torch.load(weights_only=True).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable, or not a seglib checkpoint (names the missing keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; train one with `python -m seglib train --data DIR --out RUN_DIR` "
            f"(it writes RUN_DIR/last.pt and best.pt) or pass the path of an existing .pt file"
        )
    ckpt = _torch_load(path, map_location)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a seglib checkpoint: it needs keys {list(_REQUIRED)}, has {have}"
        )
    return ckpt


def check_class_map(
    checkpoint_categories: list[dict], data_categories: list[dict], *, source: str = "checkpoint"
) -> None:
    """Raise unless a model's labels mean the same categories as the data's (pitfalls 5, 9).

    Labels 1..k are positions in a category list; a checkpoint trained on ``cake car dog
    person`` would silently score every class wrong on a split ordered otherwise.

    Raises:
        CheckpointError: the (id, name) pairs differ; the message lists both.
    """
    ours = [(int(c["id"]), c["name"]) for c in checkpoint_categories]
    theirs = [(int(c["id"]), c["name"]) for c in data_categories]
    if ours != theirs:
        raise CheckpointError(
            f"{source} was trained with labels {ours} but the data uses {theirs}; evaluate it on a "
            "subset built with the same --categories in the same order"
        )


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, categories: list[dict] | None = None
) -> tuple[MaskRCNN, TrainConfig, list[dict]]:
    """Rebuild the trained model from a checkpoint alone (no weight files, no network).

    Args:
        categories: the data's categories (e.g. ``dataset.categories``); when given, the
            checkpoint's class map must match them (``check_class_map``).

    Returns:
        (model in eval mode on ``device``, its TrainConfig, its categories with coco_id).

    Raises:
        FileNotFoundError, CheckpointError: see ``load_checkpoint``; also when the stored
        class map and the weights disagree, or the class map and ``categories`` do.
    """
    ckpt = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: stored config is invalid for this seglib version: {e}"
        ) from e
    stored = ckpt["categories"]
    if categories is not None:
        check_class_map(stored, categories, source=str(path))
    categories = stored
    if ckpt["num_classes"] != len(categories) + 1 or cfg.num_classes != ckpt["num_classes"]:
        raise CheckpointError(
            f"{path}: num_classes {ckpt['num_classes']} disagrees with its {len(categories)} categories "
            f"and config categories {list(cfg.categories)}"
        )
    model = build_model_structure(cfg)
    load_model_state(model, ckpt["model"], source=str(path))
    return model.to(device).eval(), cfg, categories
