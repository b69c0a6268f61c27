"""Which overlapping detections survive: box NMS, Soft-NMS, Matrix NMS, mask NMS, flip TTA.

torchvision's Mask R-CNN suppresses inside ``RoIHeads.postprocess_detections``: per class,
box NMS at ``box_nms_thresh`` (0.5), then the best ``detections_per_img``; masks are then
predicted and pasted for the survivors only. Two objects of one class whose boxes overlap by
more than 0.5, the tightly packed case, lose one of them there, before anything downstream
can bring it back (pitfall 18).

``PostProcessed`` wraps a model with another rule. It switches that suppression off for the
call (``nms_thresh`` 1.0, ``detections_per_img`` raised to ``postprocess_pool``). A rule on
boxes alone (NMS, Soft-NMS) without TTA then runs in its place, inside
``postprocess_detections``, so masks are predicted and pasted for the survivors only. A rule
on masks, or any rule with TTA, needs the candidates' masks: the model returns its best
``postprocess_pool`` candidates with pasted masks, the rule decides, and the best
``detections_per_img`` are kept. Each rule is vectorised torch on the model's device:

* ``nms``: torchvision's batched box NMS at ``box_nms_thresh`` (the seed's rule; without
  TTA ``wrap`` returns the model itself, unchanged);
* ``soft-nms-gaussian`` / ``soft-nms-linear`` (Bodla et al., 2017): instead of dropping an
  overlapping box, lower its score, by ``exp(-IoU²/sigma)`` or by ``(1 - IoU)`` above
  ``soft_nms_thresh``; one greedy pass, each step on the whole candidate vector;
* ``matrix-nms`` (SOLOv2, Wang et al., 2020): every score decays at once, by the mask IoU
  with each higher-scored same-class mask, compensated by how suppressed that one is itself;
  no sequential step at all;
* ``mask-nms``: greedy NMS with mask IoU in place of box IoU, so two people whose boxes
  overlap but whose masks do not both survive (solved as the fixed point of Cluster-NMS,
  Zheng et al. 2020, which equals greedy NMS exactly).

With ``tta_hflip`` the model also sees each image mirrored; the mirrored detections are
flipped back, pooled with the others, and the rule suppresses the duplicates. Each survivor's
mask is then averaged with its best same-class counterpart from the other view (box IoU >=
``TTA_MATCH_IOU``). mmdetection instead averages the two views per proposal inside the heads;
this detection-level merge needs nothing from the model but its outputs.

Mask IoU is computed on binarised masks (probability > 0.5), average-pooled to at most
``MASK_IOU_PIXELS`` pixels first: enough to rank overlaps, and bounded in memory at COCO size.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, box_iou

from seglib.config import POSTPROCESS_METHODS, TrainConfig

#: A detection and its counterpart from the other flip view are merged from this box IoU on.
TTA_MATCH_IOU = 0.6
#: Masks are average-pooled to at most this many pixels before mask IoU (about 256 x 256).
MASK_IOU_PIXELS = 256 * 256
#: The rules that compare masks (and so need mask IoU).
MASK_METHODS = ("matrix-nms", "mask-nms")
#: The rules that need boxes only: without TTA they run inside the heads, before the masks.
BOX_METHODS = ("nms", "soft-nms-gaussian", "soft-nms-linear")

Detections = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Settings:
    """The TrainConfig fields post-processing reads; ``from_config`` is the only constructor used.

    No defaults here: every default lives in ``TrainConfig`` (its field comments give units).
    """

    postprocess: str
    box_nms_thresh: float
    soft_nms_sigma: float
    soft_nms_thresh: float
    matrix_nms_sigma: float
    mask_nms_thresh: float
    postprocess_pool: int
    detections_per_img: int
    tta_hflip: bool

    @classmethod
    def from_config(cls, cfg: TrainConfig, **changes: object) -> Settings:
        """The settings of ``cfg`` with ``changes`` applied (validated through TrainConfig).

        Raises:
            ValueError: a change is out of range or names no field (from TrainConfig).
        """
        cfg = cfg.replace(**changes) if changes else cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    @property
    def passthrough(self) -> bool:
        """True when the model's own suppression is exactly this rule (plain NMS, no TTA)."""
        return self.postprocess == "nms" and not self.tta_hflip


# --- pairwise overlaps ------------------------------------------------------------------------
def _same_class(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, None] == labels[None, :]


def _iou_of_flat(flat: torch.Tensor) -> torch.Tensor:
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))


def mask_iou(masks: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise IoU of masks; with ``labels``, of same-class pairs only (0 across classes).

    Per-class blocks cost a k-th of the full matrix, which matters for the hundreds of
    candidates the suppression rules see.

    Args:
        masks: [N, H, W] or [N, 1, H, W]; values > 0.5 are foreground (probabilities or 0/1).
        labels: int64 [N], optional.

    Returns:
        float32 [N, N]; 0 where both masks are empty.
    """
    masks = (masks[:, None] if masks.dim() == 3 else masks)[:, :1]
    binary = (masks > 0.5).float()
    h, w = binary.shape[-2:]
    factor = math.ceil(math.sqrt(h * w / MASK_IOU_PIXELS)) if h * w > MASK_IOU_PIXELS else 1
    if factor > 1:
        binary = F.avg_pool2d(binary, factor, ceil_mode=True)
    flat = binary.flatten(1)
    if labels is None:
        return _iou_of_flat(flat)
    out = torch.zeros(flat.shape[0], flat.shape[0], device=flat.device)
    for label in labels.unique():
        index = torch.nonzero(labels == label).flatten()
        out[index[:, None], index[None, :]] = _iou_of_flat(flat[index])
    return out


# --- the rules --------------------------------------------------------------------------------
def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    kernel: str = "gaussian",
    sigma: float = 0.5,
    iou_thresh: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al., 2017), per class: overlapping scores decay instead of dropping.

    Greedy: take the highest remaining score, then multiply every remaining same-class score
    by ``exp(-IoU²/sigma)`` ("gaussian") or, where IoU > ``iou_thresh``, by ``1 - IoU``
    ("linear"). Nothing is removed; the order of selection is the new ranking.

    Args:
        boxes: float [N, 4] XYXY pixels. scores: float [N]. labels: int64 [N].

    Returns:
        ``(order, new_scores)``: int64 [N] indices into the inputs, best first, and their
        decayed scores (non-increasing).

    Raises:
        ValueError: unknown kernel.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    n = scores.numel()
    order = torch.empty(n, dtype=torch.int64, device=scores.device)
    if n == 0:
        return order, scores.clone()
    ious = box_iou(boxes, boxes) * _same_class(labels)
    if kernel == "gaussian":
        factors = torch.exp(-(ious**2) / sigma)
    else:
        factors = torch.where(ious > iou_thresh, 1.0 - ious, torch.ones_like(ious))
    current = scores.clone().float()
    alive = torch.ones(n, dtype=torch.bool, device=scores.device)
    positions = torch.arange(n, device=scores.device)
    minus = torch.tensor(-1.0, device=scores.device)
    # Indices stay on the device (no .item(), no indexing by a 0-d tensor): no host sync per
    # step, so on a GPU the loop is queued ahead of the kernels.
    for k in range(n):
        i = torch.where(alive, current, minus).argmax().view(1)
        order[k : k + 1] = i
        alive &= positions != i
        current = torch.where(alive, current * factors.index_select(0, i)[0], current)
    return order, current[order]


def matrix_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    sigma: float = 2.0,
    ious: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matrix NMS (SOLOv2), Gaussian kernel, per class: all scores decay in parallel.

    With candidates sorted by score, the decay of j is the minimum over higher-scored
    same-class i of ``exp(-sigma * IoU(i, j)²) / exp(-sigma * c_i²)``, where ``c_i`` is the
    largest IoU of i with a mask above it (i is itself likely suppressed, so it suppresses
    less).

    Args:
        masks: [N, (1,) H, W] probabilities or 0/1. scores: float [N]. labels: int64 [N].
        ious: ``mask_iou(masks, labels)`` when already computed (the study reuses it).

    Returns:
        float [N]: the decayed scores, in the input order.
    """
    n = scores.numel()
    if n == 0:
        return scores.clone()
    order = scores.argsort(descending=True)
    ious = mask_iou(masks, labels) if ious is None else ious
    ious = ious[order][:, order].triu(diagonal=1)
    compensate = ious.max(dim=0).values  # [N]: each candidate's own worst overlap above it
    decay = torch.exp(-sigma * (ious**2 - compensate[:, None] ** 2))
    # Only pairs (i above j) count; elsewhere the factor is 1.
    decay = torch.where(ious > 0, decay, torch.ones_like(decay)).min(dim=0).values
    out = torch.empty_like(scores, dtype=torch.float32)
    out[order] = scores[order].float() * decay.clamp(max=1.0)
    return out


def _greedy_keep(over: torch.Tensor) -> torch.Tensor:
    """Greedy NMS from a [N, N] "i suppresses j" matrix of candidates sorted best first.

    Cluster-NMS: iterate keep_j = not any(keep_i and over_ij, i < j) from all-True; entry j
    depends only on entries before it, so after t rounds the first t are final and the fixed
    point is exactly greedy NMS, usually in a few rounds.
    """
    over = over.triu(diagonal=1)
    keep = torch.ones(over.shape[0], dtype=torch.bool, device=over.device)
    for _ in range(over.shape[0]):
        new = ~(over & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    iou_thresh: float = 0.5,
    ious: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy per-class NMS with mask IoU: drop a mask overlapping a better one by > ``iou_thresh``.

    ``ious``: ``mask_iou(masks, labels)`` when already computed.

    Returns:
        int64 indices of the survivors, best first.
    """
    if scores.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    order = scores.argsort(descending=True)
    ious = mask_iou(masks, labels) if ious is None else ious
    over = (ious[order][:, order] > iou_thresh) & _same_class(labels[order])
    return order[_greedy_keep(over)]


def _take(det: Detections, index: torch.Tensor, scores: torch.Tensor | None = None) -> Detections:
    out = {k: v[index] for k, v in det.items()}
    if scores is not None:
        out["scores"] = scores
    return out


def suppress(
    det: Detections, settings: Settings, *, mask_ious: torch.Tensor | None = None
) -> Detections:
    """Apply ``settings.postprocess`` to one image's candidates; keep ``detections_per_img``.

    Args:
        det: ``boxes`` float [N,4] XYXY px, ``labels`` int64 [N], ``scores`` float [N],
            ``masks`` float [N,1,H,W] probabilities (any extra [N, ...] keys follow along).
        mask_ious: ``mask_iou(det["masks"], det["labels"])`` if already computed.

    Returns:
        The same keys, survivors only, best score first (Soft-NMS and Matrix NMS return
        their decayed scores).
    """
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    k = settings.detections_per_img
    method = settings.postprocess
    if method == "nms":
        return _take(det, batched_nms(boxes, scores, labels, settings.box_nms_thresh)[:k])
    if method.startswith("soft-nms"):
        order, new = soft_nms(
            boxes,
            scores,
            labels,
            kernel=method.removeprefix("soft-nms-"),
            sigma=settings.soft_nms_sigma,
            iou_thresh=settings.soft_nms_thresh,
        )
        return _take(det, order[:k], new[:k])
    if method == "matrix-nms":
        new = matrix_nms(
            det["masks"], scores, labels, sigma=settings.matrix_nms_sigma, ious=mask_ious
        )
        order = new.argsort(descending=True)[:k]
        return _take(det, order, new[order])
    if method == "mask-nms":
        keep = mask_nms(
            det["masks"], scores, labels, iou_thresh=settings.mask_nms_thresh, ious=mask_ious
        )
        return _take(det, keep[:k])
    raise ValueError(f"postprocess must be one of {POSTPROCESS_METHODS}, got {method!r}")


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
        det = candidates if views is None else _take(candidates, views)
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
