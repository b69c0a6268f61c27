"""Post-processing hooked into a model: another suppression rule than torchvision's, flip TTA.

torchvision's Mask R-CNN suppresses inside ``RoIHeads.postprocess_detections``: per class,
box NMS at ``box_nms_thresh`` (0.5), then the best ``detections_per_img``; masks are then
predicted and pasted for the survivors only. Two objects of one class whose boxes overlap by
more than 0.5, the tightly packed case, lose one of them there, before anything downstream
can bring it back.

``PostProcessed`` wraps a model with another rule (``seglib.models.suppression``). For the call it
switches that suppression off (``nms_thresh`` 1.0, ``detections_per_img`` raised to
``postprocess_pool``) and puts ``preselect`` in its place: a box rule (NMS, Soft-NMS) runs
whole there; for a mask rule (Matrix NMS, mask NMS) it keeps the ``detections_per_img``
candidates worth a mask. The mask head then runs on those only, and their masks stay in box
coordinates (M x M): a mask rule compares them with ``seglib.models.overlaps.box_mask_iou``, which
pastes only the tiles it needs, and only the final detections are pasted at image size (``paste``, the same
result as torchvision's ``paste_masks_in_image``).

With ``tta_hflip`` the model also sees each image mirrored. Each view is suppressed on its
own, then the two are fused as Weighted Boxes Fusion fuses two models (Solovyev et al.,
2021): a detection and its counterpart from the other view (same class, box IoU >=
``TTA_MATCH_IOU``, one to one, best scores first) become one detection with the
score-weighted mean box and mask probabilities and the mean score, a missing counterpart
counting as 0. A decayed copy left by Soft-NMS or Matrix NMS in one view is matched with
the other view's copy, never with the detection itself, so no object is reported twice for
having been seen twice.

``PostProcessed.hooked`` puts a rule in the model's place for one call of its ROI heads; the
occlusion study runs it over a backbone pass shared with other settings
(``seglib.models.one_pass``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import box_iou

from seglib.core.config import TrainConfig
from seglib.models.overlaps import box_mask_iou, paste_geometry
from seglib.models.suppression import MASK_METHODS, Detections, Settings, preselect, suppress, take

#: A detection and one from the other flip view are fused from this box IoU on (WBF's 0.55).
TTA_MATCH_IOU = 0.55


@dataclass(frozen=True)
class Candidates:
    """One image's unsuppressed candidates, every view, as ``PostProcessed.candidates`` gives.

    Attributes:
        det: ``boxes`` float [N, 4] XYXY px in the image, ``scores`` [N], ``labels`` int64
            [N], ``masks`` float [N, 1, M, M] probabilities in box coordinates (the mask
            head's output, not pasted), ``view`` int64 [N] (0 as given, 1 mirrored back).
        image_size: (H, W) of the image.
        flipped: whether the mirrored view was collected.
    """

    det: Detections
    image_size: tuple[int, int]
    flipped: bool


# --- views and pasting ------------------------------------------------------------------------
def unflip(det: Detections, width: int) -> Detections:
    """Detections made on a horizontally mirrored image, mapped back to the original.

    Boxes XYXY: x1' = W - x2, x2' = W - x1; masks [N, 1, *, *] mirrored along their last axis
    (masks in box coordinates mirror with their box; pasted ones with the image).
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


def paste(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    *,
    weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paste masks in box coordinates into the image, each times its weight, added to ``out``.

    With no weights and no ``out`` this is torchvision's ``paste_masks_in_image``, value for
    value; each mask is resized to its box and written into that region only.

    Args:
        masks: float [N, 1, M, M] probabilities. boxes: float [N, 4] XYXY px.
        image_size: (H, W). weights: float [N] (1 if None); a mask of weight 0 is skipped.
        out: float [N, 1, H, W] to add to (zeros if None).

    Returns:
        float [N, 1, H, W] (``out`` itself when given).
    """
    n = boxes.shape[0]
    h, w = image_size
    if out is None:
        out = torch.zeros(n, 1, h, w, dtype=masks.dtype, device=masks.device)
    if n == 0:
        return out
    padded, pasted, lo, hi = paste_geometry(masks, boxes, image_size)
    factors = [1.0] * n if weights is None else weights.tolist()
    rows = zip(pasted.tolist(), lo.tolist(), hi.tolist(), factors, strict=True)
    for k, ((x0, y0, x2, y2), (cx0, cy0), (cx1, cy1), factor) in enumerate(rows):
        if factor == 0 or cx1 <= cx0 or cy1 <= cy0:
            continue
        size = (max(y2 - y0 + 1, 1), max(x2 - x0 + 1, 1))
        crop = F.interpolate(padded[k : k + 1], size=size, mode="bilinear", align_corners=False)
        region = crop[0, 0, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0].to(out.dtype)
        out[k, 0, cy0:cy1, cx0:cx1] += region if factor == 1 else factor * region
    return out


# --- flip TTA: one detection per object and view pair ------------------------------------------
def match_views(a: Detections, b: Detections) -> torch.Tensor:
    """For each detection of ``a``, its counterpart in ``b``: int64 [len(a)] index, -1 if none.

    A counterpart has the same label and box IoU >= ``TTA_MATCH_IOU``; the matching is one to
    one and greedy by score (each detection, best first, takes the best-scored free
    counterpart), found as rounds of mutually best pairs, which give the same pairs.
    """
    na, nb = len(a["scores"]), len(b["scores"])
    match = torch.full((na,), -1, dtype=torch.int64, device=a["scores"].device)
    if na == 0 or nb == 0:
        return match
    valid = (a["labels"][:, None] == b["labels"][None, :]) & (
        box_iou(a["boxes"], b["boxes"]) >= TTA_MATCH_IOU
    )
    rows = torch.arange(na, device=match.device)
    for _ in range(min(na, nb)):
        best_b = torch.where(valid, b["scores"][None, :].float(), -1.0).argmax(1)
        best_a = torch.where(valid, a["scores"][:, None].float(), -1.0).argmax(0)
        mutual = valid.any(1) & (best_a[best_b] == rows)
        if not bool(mutual.any()):
            break
        match = torch.where(mutual, best_b, match)
        taken = torch.zeros(nb, dtype=torch.int64, device=match.device)
        taken = taken.index_add_(0, best_b, mutual.long()) > 0
        valid &= ~mutual[:, None] & ~taken[None, :]
    return match


def fuse_views(a: Detections, b: Detections) -> Detections:
    """Two views' suppressed detections fused (WBF for two models): one detection per pair.

    A matched pair (``match_views``) gives score (s_a + s_b) / 2 and the score-weighted mean
    box; a detection without counterpart keeps its box, at half its score (WBF rescales by
    the share of models that found it). Masks stay in box coordinates, to be pasted by
    ``paste``: ``masks``/``mask_boxes`` with weight ``weights[:, 0]`` plus
    ``masks2``/``mask_boxes2`` with weight ``weights[:, 1]`` (0 without counterpart).

    Args:
        a, b: ``boxes`` [N, 4], ``scores``, ``labels``, ``masks`` [N, 1, M, M] of each view.

    Returns:
        ``boxes``, ``scores``, ``labels``, ``masks``, ``mask_boxes``, ``masks2``,
        ``mask_boxes2``, ``weights`` [K, 2]: every detection of ``a``, then ``b``'s unmatched.
    """
    match = match_views(a, b)
    found = match >= 0
    other = b if len(b["scores"]) else a  # gathered only where weight 0 when b is empty
    partner = {k: other[k][match.clamp(min=0)] for k in ("boxes", "scores", "masks")}
    sa = a["scores"].float()
    sb = torch.where(found, partner["scores"].float(), 0.0)
    total = sa + sb
    wa = torch.where(total > 0, sa / total.clamp(min=1e-12), torch.where(found, 0.5, 1.0))
    wb = torch.where(found, 1 - wa, 0.0)
    paired = {
        "boxes": wa[:, None] * a["boxes"] + wb[:, None] * partner["boxes"],
        "scores": total / 2,
        "labels": a["labels"],
        "masks": a["masks"],
        "mask_boxes": a["boxes"],
        "masks2": partner["masks"],
        "mask_boxes2": partner["boxes"],
        "weights": torch.stack([wa, wb], dim=1),
    }
    alone = torch.ones(len(b["scores"]), dtype=torch.bool, device=match.device)
    alone[match[found]] = False
    rest = take({k: b[k] for k in ("boxes", "scores", "labels", "masks")}, alone.nonzero()[:, 0])
    lone = {
        **rest,
        "scores": rest["scores"].float() / 2,
        "mask_boxes": rest["boxes"],
        "masks2": rest["masks"],
        "mask_boxes2": rest["boxes"],
        "weights": torch.tensor([1.0, 0.0], device=match.device).expand(len(rest["boxes"]), 2),
    }
    return {k: torch.cat([paired[k], lone[k]]) for k in paired}


# --- after the model: mask rule, fusion, pasting ------------------------------------------------
def _mask_rule(
    det: Detections, view: int, image_size: tuple[int, int], settings: Settings, cache: dict | None
) -> Detections:
    """A mask rule on one view's preselected candidates (masks in box coordinates)."""
    if settings.postprocess not in MASK_METHODS:
        return det
    hit = (cache or {}).get(("mask_iou", view))
    if hit is not None and torch.equal(hit[0], det["boxes"]) and torch.equal(hit[1], det["labels"]):
        ious = hit[2]
    else:
        ious = box_mask_iou(det["masks"], det["boxes"], image_size, det["labels"])
        if cache is not None:
            cache[("mask_iou", view)] = (det["boxes"], det["labels"], ious)
    return suppress(det, settings, mask_ious=ious)


def finish(
    views: Sequence[Detections],
    image_size: tuple[int, int],
    settings: Settings,
    cache: dict | None = None,
) -> Detections:
    """One image's output from its views' preselected candidates (``preselect``).

    A mask rule runs on each view (``box_mask_iou``); with two views they are fused
    (``fuse_views``); the best ``detections_per_img`` are pasted at image size.

    Args:
        views: per view, ``boxes`` float [N, 4] XYXY px, ``scores``, ``labels`` int64,
            ``masks`` float [N, 1, M, M] in box coordinates (extra keys are dropped).
        image_size: (H, W). cache: a dict kept per image across calls (the study's sweep),
            which holds each view's mask IoU once computed.

    Returns:
        ``boxes`` [K, 4], ``labels`` int64 [K], ``scores`` [K], ``masks`` float [K, 1, H, W],
        best first, K <= ``detections_per_img``.
    """
    kept = [_mask_rule(v, i, image_size, settings, cache) for i, v in enumerate(views)]
    if len(kept) == 1:
        det = kept[0]
        masks = paste(det["masks"], det["boxes"], image_size)
    else:
        det = fuse_views(*kept)
        order = det["scores"].argsort(descending=True, stable=True)
        det = take(det, order[: settings.detections_per_img])
        masks = paste(det["masks"], det["mask_boxes"], image_size, weights=det["weights"][:, 0])
        masks = paste(
            det["masks2"], det["mask_boxes2"], image_size, weights=det["weights"][:, 1], out=masks
        )
    return {"boxes": det["boxes"], "labels": det["labels"], "scores": det["scores"], "masks": masks}


# --- the wrapper ------------------------------------------------------------------------------
def _find(model: nn.Module, kind: type) -> nn.Module:
    for module in model.modules():
        if isinstance(module, kind):
            return module
    raise TypeError(
        f"{type(model).__name__} holds no torchvision {kind.__name__}; post-processing needs a "
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
        self.model = (
            model  # not ``module``: seglib.models.checkpoint.unwrap must not strip this wrapper
        )
        self.settings = settings
        self._heads = _find(model, RoIHeads)
        self._transform = _find(model, GeneralizedRCNNTransform)
        # A new Module is in train mode; wrapping an eval-mode model must give an eval-mode one,
        # or forward would hand every call to the model untouched.
        self.train(model.training)

    @contextlib.contextmanager
    def hooked(self, box_step: Callable[[Detections], Detections] | None = None) -> Iterator[None]:
        """For one call: the model's NMS off, ``box_step`` in its place, masks left unpasted.

        The heads keep ``postprocess_pool`` candidates without NMS and hand each image's to
        ``box_step`` (all of them if None); the mask head runs on what it returns. The
        transform then scales boxes to the image but leaves masks in box coordinates.
        """
        heads, transform = self._heads, self._transform
        saved = heads.nms_thresh, heads.detections_per_img
        original = heads.postprocess_detections

        def postprocess_detections(*args: torch.Tensor) -> tuple[list, list, list]:
            found = original(*args)
            if box_step is None:
                return found
            kept = [
                box_step({"boxes": b, "scores": s, "labels": lab})
                for b, s, lab in zip(*found, strict=True)
            ]
            return (
                [k["boxes"] for k in kept],
                [k["scores"] for k in kept],
                [k["labels"] for k in kept],
            )

        def postprocess(result: list[dict], shapes: list, sizes: list) -> list[dict]:
            for r, shape, size in zip(result, shapes, sizes, strict=True):
                r["boxes"] = resize_boxes(r["boxes"], shape, size)
            return result

        heads.nms_thresh, heads.detections_per_img = 1.0, self.settings.postprocess_pool
        heads.postprocess_detections = postprocess_detections  # shadow the methods, this call only
        transform.postprocess = postprocess
        try:
            yield
        finally:
            heads.nms_thresh, heads.detections_per_img = saved
            del heads.postprocess_detections, transform.postprocess

    def _views(
        self,
        images: list[torch.Tensor],
        flip: bool,
        box_step: Callable | None,
        unflipped: list[Detections] | None = None,
    ) -> list[list[Detections]]:
        """Per image, the model's detections of each view (mirrored ones mapped back)."""
        with self.hooked(box_step):
            outputs = [self.model(images) if unflipped is None else unflipped]
            if flip:
                mirrored = self.model([img.flip(-1) for img in images])
                outputs.append(
                    [unflip(o, img.shape[-1]) for o, img in zip(mirrored, images, strict=True)]
                )
        return [list(views) for views in zip(*outputs, strict=True)]

    def candidates(
        self,
        images: list[torch.Tensor],
        *,
        tta_hflip: bool | None = None,
        unflipped: list[Detections] | None = None,
    ) -> list[Candidates]:
        """Per image, the model's unsuppressed candidates of every view, masks unpasted.

        ``tta_hflip`` overrides the settings (the occlusion study collects both views once
        and sweeps rules over them with ``select``). ``unflipped``: the model's output on
        ``images`` under ``hooked()``, when the caller has it (the study runs the ROI heads
        so on the backbone pass it shares with its box NMS grid).
        """
        flip = self.settings.tta_hflip if tta_hflip is None else tta_hflip
        views = self._views(images, flip, None, unflipped)
        return [
            Candidates(merge_views(v), (img.shape[-2], img.shape[-1]), flip)
            for v, img in zip(views, images, strict=True)
        ]

    @staticmethod
    def select(candidates: Candidates, settings: Settings, cache: dict | None = None) -> Detections:
        """What ``settings`` makes of one image's ``candidates``: the same as a call would.

        ``cache``: a dict kept per image across calls (the study's parameter sweep).

        Raises:
            ValueError: ``settings`` asks for flip TTA and the candidates have one view.
        """
        if settings.tta_hflip and not candidates.flipped:
            raise ValueError("tta_hflip needs candidates collected with tta_hflip=True")
        det = candidates.det
        views = [
            preselect(take(det, torch.nonzero(det["view"] == v)[:, 0]), settings)
            for v in range(2 if settings.tta_hflip else 1)
        ]
        return finish(views, candidates.image_size, settings, cache)

    def forward(self, images: list[torch.Tensor], targets: object = None) -> list[Detections]:
        if self.training or targets is not None:
            return self.model(images, targets)
        step = functools.partial(preselect, settings=self.settings)
        views = self._views(images, self.settings.tta_hflip, step)
        return [
            finish(v, (img.shape[-2], img.shape[-1]), self.settings)
            for v, img in zip(views, images, strict=True)
        ]


def wrap(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with ``cfg``'s post-processing; the bare model when that is torchvision's own.

    Re-wrapping a ``PostProcessed`` replaces its settings, so a command-line choice can
    override the one stored in a checkpoint's config.
    """
    inner = model.model if isinstance(model, PostProcessed) else model
    settings = Settings.from_config(cfg)
    return inner if settings.passthrough else PostProcessed(inner, settings)
