"""The suppression rules: which of one image's overlapping detections survive.

``suppress`` applies the rule ``Settings.postprocess`` names to one image's candidates and
keeps the best ``detections_per_img``. Each rule is vectorised torch on the candidates'
device; docs/occlusion.md lists every convention below with its source.

* ``nms``: torchvision's batched box NMS at ``box_nms_thresh`` (the seed's rule);
* ``soft-nms-gaussian`` / ``soft-nms-linear`` (Bodla et al., 2017, Algorithm 1): instead of
  dropping an overlapping box, lower its score, by ``exp(-IoU²/sigma)`` or, where IoU >
  ``soft_nms_thresh``, by ``(1 - IoU)``; candidates rescored below ``soft_nms_score_floor``
  are dropped (their code: ``< threshold``, 0.001);
* ``matrix-nms`` (SOLOv2, Wang et al., 2020, eq. 4): every score decays at once, by the mask
  IoU with each higher-scored same-class mask, compensated by how suppressed that one is
  itself; Gaussian ``exp(-sigma * IoU²)`` (their code multiplies by sigma where the paper
  divides) or linear ``1 - IoU``; decayed scores below ``matrix_nms_score_floor`` are dropped
  (their ``update_thr``, 0.05);
* ``mask-nms``: greedy NMS with mask IoU in place of box IoU, so two people whose boxes
  overlap but whose masks do not both survive (solved as the fixed point of Cluster-NMS,
  Zheng et al. 2020, which equals greedy NMS exactly).

The mask rules take mask IoU from ``seglib.models.overlaps`` (exact, on masks binarised at 0.5).
``preselect`` is the box-level step run before the mask head. How the rules are hooked into
a model, and flip TTA, are in ``seglib.models.postprocess``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torchvision.ops import batched_nms, box_iou

from seglib.core.config import POSTPROCESS_METHODS, TrainConfig
from seglib.models.overlaps import mask_iou

#: The rules that compare masks (and so need mask IoU).
MASK_METHODS = ("matrix-nms", "mask-nms")
#: The rules that need boxes only: they run before the mask head.
BOX_METHODS = ("nms", "soft-nms-gaussian", "soft-nms-linear")
#: Box-level Matrix NMS sigma of ``preselect`` (SOLOv2's default 2.0; multiplies IoU²).
PRESELECT_SIGMA = 2.0

Detections = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Settings:
    """The TrainConfig fields post-processing reads; ``from_config`` is the only constructor used.

    No defaults here: every default lives in ``TrainConfig`` (its field comments give units).
    Which way the sigmas point: Soft-NMS's divides IoU², so a larger ``soft_nms_sigma``
    suppresses less; Matrix NMS's multiplies IoU², so a larger ``matrix_nms_sigma``
    suppresses more.
    """

    postprocess: str
    box_nms_thresh: float
    soft_nms_sigma: float
    soft_nms_thresh: float
    soft_nms_score_floor: float
    matrix_nms_kernel: str
    matrix_nms_sigma: float
    matrix_nms_score_floor: float
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


# --- the rules ---------------------------------------------------------------------------------
def _same_class(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, None] == labels[None, :]


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    kernel: str = "gaussian",
    sigma: float = 0.5,
    iou_thresh: float = 0.3,
    score_floor: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al., 2017, Algorithm 1), per class: overlapping scores decay.

    Greedy: take the highest remaining score, then multiply every remaining same-class score
    by ``exp(-IoU²/sigma)`` ("gaussian": a larger sigma suppresses less) or, where IoU >
    ``iou_thresh``, by ``1 - IoU`` ("linear"). Candidates whose score ends below
    ``score_floor`` are dropped, as Bodla et al.'s code drops them (``< threshold``) during
    the loop: a dropped one could only have lowered scores already below the floor.

    Args:
        boxes: float [N, 4] XYXY px. scores: float [N]. labels: int64 [N].

    Returns:
        ``(order, new_scores)``: int64 [K] indices into the inputs, best first, and their
        decayed scores (non-increasing), K <= N after the floor.

    Raises:
        ValueError: unknown kernel.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    n = scores.numel()
    order = torch.empty(n, dtype=torch.int64, device=scores.device)
    if n == 0:
        return order, scores.clone().float()
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
    new = current[order]
    keep = new >= score_floor
    return order[keep], new[keep]


def matrix_nms(
    masks: torch.Tensor | None,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    kernel: str = "gaussian",
    sigma: float = 2.0,
    ious: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matrix NMS (SOLOv2, eq. 4), per class: all scores decay in parallel.

    With candidates sorted by score, the decay of j is the minimum over higher-scored
    same-class i of ``f(IoU(i, j)) / f(c_i)``, where ``c_i`` is the largest IoU of i with a
    mask above it (i is itself likely suppressed, so it suppresses less), and at most 1.
    ``f`` is ``exp(-sigma * IoU²)`` ("gaussian": SOLOv2's code multiplies by sigma where the
    paper divides, so a larger sigma suppresses more) or ``1 - IoU`` ("linear"; an i with
    ``c_i = 1`` suppresses nothing, as its own decay is already 0). An exact duplicate of the
    best mask decays to ``exp(-sigma)`` (Gaussian) or 0 (linear) of its score.

    Args:
        masks: [N, (1,) H, W] probabilities or 0/1; unused when ``ious`` is given.
        scores: float [N]. labels: int64 [N].
        ious: float [N, N] mask IoU when already computed (``seglib.models.overlaps``).

    Returns:
        float [N]: the decayed scores, in the input order (no floor: ``suppress`` applies it).

    Raises:
        ValueError: unknown kernel.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    n = scores.numel()
    if n == 0:
        return scores.clone().float()
    order = scores.argsort(descending=True, stable=True)
    ious = mask_iou(masks, labels) if ious is None else ious
    above = _same_class(labels[order]).triu(diagonal=1)  # [i, j]: i same class, scored higher
    iou = torch.where(above, ious[order][:, order], 0.0)
    compensate = iou.max(dim=0).values[:, None]  # c_i, one per row
    if kernel == "gaussian":
        ratio = torch.exp(-sigma * (iou**2 - compensate**2))
    else:
        ratio = torch.where(compensate < 1, (1 - iou) / (1 - compensate).clamp(min=1e-12), math.inf)
    decay = torch.where(above, ratio, 1.0).min(dim=0).values.clamp(max=1.0)
    out = torch.empty_like(scores, dtype=torch.float32)
    out[order] = scores[order].float() * decay
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
    masks: torch.Tensor | None,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    iou_thresh: float = 0.5,
    ious: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy per-class NMS with mask IoU: drop a mask overlapping a better one by > ``iou_thresh``.

    ``ious``: float [N, N] mask IoU when already computed (then ``masks`` is unused).

    Returns:
        int64 indices of the survivors, best first.
    """
    if scores.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    order = scores.argsort(descending=True, stable=True)
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
        det: ``boxes`` float [N,4] XYXY px, ``labels`` int64 [N], ``scores`` float [N] and,
            for the mask rules, ``masks`` float [N,1,H,W] probabilities or ``mask_ious``
            (any extra [N, ...] keys follow along).
        mask_ious: float [N, N], ``mask_iou(det["masks"], det["labels"])`` if already computed.

    Returns:
        The same keys, survivors only, best score first (Soft-NMS and Matrix NMS return
        their decayed scores, above their floors).

    Raises:
        ValueError: unknown ``postprocess``.
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
            score_floor=settings.soft_nms_score_floor,
        )
        return take(det, order[:k], new[:k])
    if method == "matrix-nms":
        new = matrix_nms(
            det.get("masks"),
            scores,
            labels,
            kernel=settings.matrix_nms_kernel,
            sigma=settings.matrix_nms_sigma,
            ious=mask_ious,
        )
        order = new.argsort(descending=True, stable=True)
        order = order[new[order] >= settings.matrix_nms_score_floor][:k]  # SOLOv2's update_thr
        return take(det, order, new[order])
    if method == "mask-nms":
        keep = mask_nms(
            det.get("masks"), scores, labels, iou_thresh=settings.mask_nms_thresh, ious=mask_ious
        )
        return take(det, keep[:k])
    raise ValueError(f"postprocess must be one of {POSTPROCESS_METHODS}, got {method!r}")


def preselect(det: Detections, settings: Settings) -> Detections:
    """The box-level step, before any mask is predicted: what the mask head must see.

    The box rules are the whole rule. For the mask rules, the ``detections_per_img``
    candidates ranked first by a box-level Gaussian Matrix NMS (``PRESELECT_SIGMA``), with
    their own scores: near-copies of one box rank behind distinct objects, so the slots go to
    as many objects as possible, and only their masks are predicted and compared (SOLOv2
    likewise keeps a top-k, ``nms_pre``, before its Matrix NMS).

    Args:
        det: ``boxes`` float [N,4] XYXY px, ``scores`` [N], ``labels`` int64 [N], any extra
            [N, ...] keys.

    Returns:
        The kept candidates, best first (decayed scores for Soft-NMS).
    """
    if settings.postprocess in BOX_METHODS:
        return suppress(det, settings)
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    ranked = matrix_nms(None, scores, labels, sigma=PRESELECT_SIGMA, ious=box_iou(boxes, boxes))
    order = ranked.argsort(descending=True, stable=True)[: settings.detections_per_img]
    return take(det, order[scores[order].argsort(descending=True, stable=True)])
