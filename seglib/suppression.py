"""The suppression rules: which of one image's overlapping detections survive.

``suppress`` applies the rule ``Settings.postprocess`` names to one image's candidates and
keeps the best ``detections_per_img``. Each rule is vectorised torch on the candidates'
device:

* ``nms``: torchvision's batched box NMS at ``box_nms_thresh`` (the seed's rule; without
  TTA ``seglib.postprocess.wrap`` returns the model itself, unchanged);
* ``soft-nms-gaussian`` / ``soft-nms-linear`` (Bodla et al., 2017): instead of dropping an
  overlapping box, lower its score, by ``exp(-IoU²/sigma)`` or by ``(1 - IoU)`` above
  ``soft_nms_thresh``; one greedy pass, each step on the whole candidate vector;
* ``matrix-nms`` (SOLOv2, Wang et al., 2020): every score decays at once, by the mask IoU
  with each higher-scored same-class mask, compensated by how suppressed that one is itself;
  no sequential step at all;
* ``mask-nms``: greedy NMS with mask IoU in place of box IoU, so two people whose boxes
  overlap but whose masks do not both survive (solved as the fixed point of Cluster-NMS,
  Zheng et al. 2020, which equals greedy NMS exactly).

Mask IoU is computed on binarised masks (probability > 0.5), average-pooled to at most
``MASK_IOU_PIXELS`` pixels first: enough to rank overlaps, and bounded in memory at COCO size.
How the rules are hooked into a model, and flip TTA, are in ``seglib.postprocess``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_iou

from seglib.config import POSTPROCESS_METHODS, TrainConfig

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


def take(det: Detections, index: torch.Tensor, scores: torch.Tensor | None = None) -> Detections:
    """The detections at ``index`` (every key), with ``scores`` in place of theirs if given."""
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
        return take(det, batched_nms(boxes, scores, labels, settings.box_nms_thresh)[:k])
    if method.startswith("soft-nms"):
        order, new = soft_nms(
            boxes,
            scores,
            labels,
            kernel=method.removeprefix("soft-nms-"),
            sigma=settings.soft_nms_sigma,
            iou_thresh=settings.soft_nms_thresh,
        )
        return take(det, order[:k], new[:k])
    if method == "matrix-nms":
        new = matrix_nms(
            det["masks"], scores, labels, sigma=settings.matrix_nms_sigma, ious=mask_ious
        )
        order = new.argsort(descending=True)[:k]
        return take(det, order, new[order])
    if method == "mask-nms":
        keep = mask_nms(
            det["masks"], scores, labels, iou_thresh=settings.mask_nms_thresh, ious=mask_ious
        )
        return take(det, keep[:k])
    raise ValueError(f"postprocess must be one of {POSTPROCESS_METHODS}, got {method!r}")
