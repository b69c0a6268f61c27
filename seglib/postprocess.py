"""Post-processing hooked into a model: another suppression rule than torchvision's, flip TTA.

torchvision's Mask R-CNN suppresses inside ``RoIHeads.postprocess_detections``: per class,
box NMS at ``box_nms_thresh`` (0.5), then the best ``detections_per_img``; masks are then
predicted and pasted for the survivors only. Two objects of one class whose boxes overlap by
more than 0.5, the tightly packed case, lose one of them there, before anything downstream
can bring it back.

``PostProcessed`` wraps a model with another rule (``seglib.suppression``: NMS, Soft-NMS,
Matrix NMS, mask NMS). It switches that suppression off for the call (``nms_thresh`` 1.0,
``detections_per_img`` raised to ``postprocess_pool``). A rule on boxes alone (NMS,
Soft-NMS) without TTA then runs in its place, inside ``postprocess_detections``, so masks are
predicted and pasted for the survivors only. A rule on masks, or any rule with TTA, needs the
candidates' masks: the model returns its best ``postprocess_pool`` candidates with pasted
masks, the rule decides, and the best ``detections_per_img`` are kept.

With ``tta_hflip`` the model also sees each image mirrored; the mirrored detections are
flipped back, pooled with the others, and the rule suppresses the duplicates. Each survivor's
mask is then averaged with its best same-class counterpart from the other view (box IoU >=
``TTA_MATCH_IOU``). mmdetection instead averages the two views per proposal inside the heads;
this detection-level merge needs nothing from the model but its outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou

from seglib.config import TrainConfig
from seglib.suppression import (
    BOX_METHODS,
    MASK_IOU_PIXELS,
    MASK_METHODS,
    Detections,
    Settings,
    mask_iou,
    mask_nms,
    matrix_nms,
    soft_nms,
    suppress,
    take,
)

# Re-exported: the rules lived here before the split into seglib.suppression.
__all__ = ["BOX_METHODS", "MASK_IOU_PIXELS", "MASK_METHODS", "Detections", "Settings"]
__all__ += ["mask_iou", "mask_nms", "matrix_nms", "soft_nms", "suppress"]
__all__ += ["TTA_MATCH_IOU", "PostProcessed", "average_with_counterparts", "merge_views"]
__all__ += ["unflip", "wrap"]

#: A detection and its counterpart from the other flip view are merged from this box IoU on.
TTA_MATCH_IOU = 0.6


# --- flip TTA ---------------------------------------------------------------------------------
def unflip(det: Detections, width: int) -> Detections:
    """Detections made on a horizontally mirrored image, mapped back to the original.

    Boxes XYXY: x1' = W - x2, x2' = W - x1; masks [N,1,H,W] mirrored along W.
    """
    out = dict(det)
    x1, y1, x2, y2 = det["boxes"].unbind(-1)
    out["boxes"] = torch.stack([width - x2, y1, width - x1, y2], dim=-1)
    out["masks"] = det["masks"].flip(-1)
    return out


def merge_views(views: Sequence[Detections]) -> Detections:
    """Concatenate detections of several views of one image; ``view`` records each one's source."""
    merged = {k: torch.cat([v[k] for v in views]) for k in views[0]}
    merged["view"] = torch.cat([torch.full_like(v["labels"], i) for i, v in enumerate(views)])
    return merged


def average_with_counterparts(kept: Detections, pool: Detections) -> Detections:
    """Average each kept mask with its best same-class detection from another view.

    A counterpart is the pool detection of the same class from another view with the highest
    box IoU, if that is >= ``TTA_MATCH_IOU``; the kept mask becomes the mean of both
    probabilities. Boxes and scores stay.
    """
    if kept["scores"].numel() == 0 or pool["scores"].numel() == 0:
        return kept
    ious = box_iou(kept["boxes"], pool["boxes"])
    valid = (kept["labels"][:, None] == pool["labels"][None, :]) & (
        kept["view"][:, None] != pool["view"][None, :]
    )
    best, index = torch.where(valid, ious, torch.zeros_like(ious)).max(dim=1)
    matched = best >= TTA_MATCH_IOU
    out = dict(kept)
    averaged = 0.5 * (kept["masks"] + pool["masks"][index])
    out["masks"] = torch.where(matched[:, None, None, None], averaged, kept["masks"])
    return out


# --- the wrapper ------------------------------------------------------------------------------
def _roi_heads(model: nn.Module) -> RoIHeads:
    for module in model.modules():
        if isinstance(module, RoIHeads):
            return module
    raise TypeError(
        f"{type(model).__name__} holds no torchvision RoIHeads; post-processing needs a "
        "torchvision Mask R-CNN (or a module wrapping one, like the zero-shot model)"
    )


class PostProcessed(nn.Module):
    """A Mask R-CNN whose suppression is ``settings.postprocess``, with optional flip TTA.

    Same call contract as the model in eval mode: a list of float [3,H,W] images in 0..1 in,
    a list of dicts out (``boxes`` [N,4] XYXY px, ``labels`` int64, ``scores``, ``masks``
    float [N,1,H,W]). In train mode, or given targets, it calls the model unchanged.
    """

    def __init__(self, model: nn.Module, settings: Settings) -> None:
        super().__init__()
        self.model = model  # not ``module``: seglib.model.unwrap must not strip this wrapper
        self.settings = settings
        self._heads = _roi_heads(model)
        # A new Module is in train mode; wrapping an eval-mode model must give an eval-mode one,
        # or forward would hand every call to the model untouched.
        self.train(model.training)

    @contextlib.contextmanager
    def _pool_mode(self) -> Iterator[None]:
        """The model's own NMS off and ``postprocess_pool`` candidates kept, for one call."""
        heads = self._heads
        saved = heads.nms_thresh, heads.detections_per_img
        heads.nms_thresh, heads.detections_per_img = 1.0, self.settings.postprocess_pool
        try:
            yield
        finally:
            heads.nms_thresh, heads.detections_per_img = saved

    @contextlib.contextmanager
    def _rule_in_heads(self) -> Iterator[None]:
        """For one call, apply a box rule inside ``RoIHeads.postprocess_detections``.

        The heads then predict and paste masks for the survivors only, instead of the whole
        pool: on an H200 at 800 px that is the difference between about +20 ms (Soft-NMS's
        own time) and +60 ms per image (``bench/bench_postprocess.py``).
        """
        heads, settings = self._heads, self.settings
        original = heads.postprocess_detections

        def postprocess_detections(*args: torch.Tensor) -> tuple[list, list, list]:
            kept = [
                suppress({"boxes": b, "scores": s, "labels": lab}, settings)
                for b, s, lab in zip(*original(*args), strict=True)
            ]
            return (
                [k["boxes"] for k in kept],
                [k["scores"] for k in kept],
                [k["labels"] for k in kept],
            )

        heads.postprocess_detections = postprocess_detections  # shadows the method, this call only
        try:
            yield
        finally:
            del heads.postprocess_detections

    def candidates(
        self, images: list[torch.Tensor], *, tta_hflip: bool | None = None
    ) -> list[Detections]:
        """Per image, the model's unsuppressed candidates of every view, merged (``merge_views``).

        ``tta_hflip`` overrides the settings (the occlusion study collects both views once
        and sweeps rules over them with ``select``).
        """
        flip = self.settings.tta_hflip if tta_hflip is None else tta_hflip
        with self._pool_mode():
            outputs = [self.model(images)]
            if flip:
                mirrored = self.model([img.flip(-1) for img in images])
                outputs.append(
                    [unflip(o, img.shape[-1]) for o, img in zip(mirrored, images, strict=True)]
                )
        return [merge_views(list(views)) for views in zip(*outputs, strict=True)]

    @staticmethod
    def select(candidates: Detections, settings: Settings, cache: dict | None = None) -> Detections:
        """Suppress one image's ``candidates`` by ``settings``; only views it asks for count.

        ``cache``: a dict kept per image across calls (the study's parameter sweep), which
        holds the candidates' mask IoU once computed.
        """
        views = None if settings.tta_hflip else torch.nonzero(candidates["view"] == 0).flatten()
        det = candidates if views is None else take(candidates, views)
        ious = None
        if settings.postprocess in MASK_METHODS:
            cache = {} if cache is None else cache
            if "mask_iou" not in cache:
                cache["mask_iou"] = mask_iou(candidates["masks"], candidates["labels"])
            ious = cache["mask_iou"] if views is None else cache["mask_iou"][views][:, views]
        kept = suppress(det, settings, mask_ious=ious)
        if settings.tta_hflip:
            kept = average_with_counterparts(kept, candidates)
        return {k: v for k, v in kept.items() if k != "view"}

    def forward(self, images: list[torch.Tensor], targets: object = None) -> list[Detections]:
        if self.training or targets is not None:
            return self.model(images, targets)
        if self.settings.postprocess in BOX_METHODS and not self.settings.tta_hflip:
            with self._pool_mode(), self._rule_in_heads():
                return self.model(images)
        return [self.select(c, self.settings) for c in self.candidates(images)]


def wrap(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with ``cfg``'s post-processing; the bare model when that is torchvision's own.

    Re-wrapping a ``PostProcessed`` replaces its settings, so a command-line choice can
    override the one stored in a checkpoint's config.
    """
    inner = model.model if isinstance(model, PostProcessed) else model
    settings = Settings.from_config(cfg)
    return inner if settings.passthrough else PostProcessed(inner, settings)
