"""The zero-shot baseline: the unmodified COCO-trained model, reporting the subset's classes.

``ZeroShotMaskRCNN`` wraps a 91-class COCO Mask R-CNN and maps its detections to the
subset's labels 1..k by category id (COCO's, as in the split: ``seglib.core.categories``),
dropping the other COCO classes. ``zero_shot_baseline`` gives a run's baseline:
``zero_shot_maskrcnn`` for a Mask R-CNN run, ``seglib.models.mask2former.zero_shot_mask2former``
(the COCO Mask2Former) for a "mask2former" run; each is a loudly announced random stand-in
when the COCO weights are not cached. Inference only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

from seglib.core.categories import category_labels
from seglib.core.config import TrainConfig
from seglib.models.builder import build_model
from seglib.models.mask2former import zero_shot_mask2former
from seglib.models.maskrcnn import COCO_NUM_CLASSES
from seglib.models.weights import weights_file

#: Detections the zero-shot COCO model keeps per image before its 91 classes are narrowed to
#: the subset's k: a cap of 100 there would leave the subset far fewer than 100.
ZERO_SHOT_CANDIDATES = 300


class ZeroShotMaskRCNN(nn.Module):
    """A 91-class COCO model whose detections are mapped to subset labels 1..k by COCO id.

    Detections of COCO classes outside the subset are dropped, then the ``detections_per_img``
    best are kept. The wrapped model should keep more candidates than that
    (``build_zero_shot_model`` gives it ``ZERO_SHOT_CANDIDATES``), or the subset's classes get
    only what is left of a cap shared with the other COCO classes. In a torchvision Mask
    R-CNN the narrowing happens between the box head and the mask head, so masks are
    predicted and pasted for the kept detections only, not for all the candidates of the
    other classes; the outputs are the same. Inference only.
    """

    def __init__(
        self, model: nn.Module, categories: list[dict], detections_per_img: int = 100
    ) -> None:
        super().__init__()
        lut = torch.zeros(COCO_NUM_CLASSES, dtype=torch.int64)
        for coco_id, label in category_labels(categories, source="zero-shot categories").items():
            if not 1 <= coco_id < COCO_NUM_CLASSES:
                raise ValueError(
                    f"category id {coco_id} is not a COCO category id (1..90); the zero-shot "
                    "model needs the split's categories, which carry COCO's ids"
                )
            lut[coco_id] = label
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
        with self._narrowed_before_masks():
            found = self.model(images)
        outputs = []
        for out in found:
            kept = self._kept(out["scores"], out["labels"])
            mapped = self.coco_to_label[out["labels"]]
            outputs.append({k: (mapped if k == "labels" else v)[kept] for k, v in out.items()})
        return outputs

    def _kept(self, scores: torch.Tensor, coco_labels: torch.Tensor) -> torch.Tensor:
        """Indices of the subset's detections, best first (stable: ties keep the model's
        order), at most ``detections_per_img``."""
        kept = (self.coco_to_label[coco_labels] > 0).nonzero().squeeze(1)
        order = scores[kept].argsort(descending=True, stable=True)
        return kept[order[: self.detections_per_img]]

    @contextlib.contextmanager
    def _narrowed_before_masks(self) -> Iterator[None]:
        """For one call: the box head's detections narrowed by ``_kept`` before the mask head.

        Shadows ``RoIHeads.postprocess_detections`` (or a shadow already in place, such as
        ``seglib.models.postprocess.PostProcessed``'s) and restores it after. A wrapped model
        without torchvision's ``RoIHeads`` is called as it is.
        """
        heads = next((m for m in self.model.modules() if isinstance(m, RoIHeads)), None)
        if heads is None:
            yield
            return
        shadowed = heads.__dict__.get("postprocess_detections")
        inner = heads.postprocess_detections

        def narrowed(*args: torch.Tensor) -> tuple[list, list, list]:
            boxes, scores, labels = inner(*args)
            kept = [self._kept(s, lab) for s, lab in zip(scores, labels, strict=True)]
            return tuple(
                [t[k] for t, k in zip(ts, kept, strict=True)] for ts in (boxes, scores, labels)
            )

        heads.postprocess_detections = narrowed
        try:
            yield
        finally:
            if shadowed is None:
                del heads.postprocess_detections
            else:
                heads.postprocess_detections = shadowed


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
        categories: the split's category dicts in label order, ``id`` being COCO's.
        arch: "v1" or "v2".
        weights: "coco", or "none" for a random stand-in that checks the plumbing.
        model: a 91-class model to wrap instead of loading the COCO weights (tests).

    Returns:
        A module in eval mode; outputs use labels 1..k.

    Raises:
        MissingWeightsError: the COCO file is not cached. ValueError: a category id that is
            not COCO's.
    """
    cfg = cfg if cfg is not None else TrainConfig()
    if model is None:
        # torchvision's own structure (BatchNorm, RoIAlign), whatever the run's cfg says
        keep = max(ZERO_SHOT_CANDIDATES, cfg.detections_per_img)
        wide = cfg.replace(
            norm="bn",
            roi_sampling_ratio=TrainConfig.roi_sampling_ratio,
            mask_pool_size=TrainConfig.mask_pool_size,
            detections_per_img=keep,
            postprocess_pool=max(keep, cfg.postprocess_pool),  # the pool holds every candidate
        )
        model = build_model(COCO_NUM_CLASSES, weights, arch, wide)
    return ZeroShotMaskRCNN(model, categories, cfg.detections_per_img).eval()


def zero_shot_baseline(categories: list[dict], cfg: TrainConfig) -> nn.Module:
    """The zero-shot baseline for a run of ``cfg.arch``: the COCO-trained model of its family.

    A "mask2former" run gets ``zero_shot_mask2former`` (the COCO Mask2Former, its head
    restricted by name), any other ``zero_shot_maskrcnn``.

    Raises:
        MissingWeightsError: ``cfg.weights == "coco"`` and the COCO weights are not cached.
    """
    if cfg.arch == "mask2former":
        return zero_shot_mask2former(categories, cfg)
    return zero_shot_maskrcnn(categories, cfg)


def zero_shot_maskrcnn(categories: list[dict], cfg: TrainConfig) -> ZeroShotMaskRCNN:
    """The zero-shot Mask R-CNN baseline: COCO-trained weights when they are cached.

    The run's own arch when it is a Mask R-CNN one ("v1", "v2"), else "v1". When the COCO
    file is missing and the run itself did not start from COCO weights (the offline smoke
    profile), a randomly initialised 91-class model stands in, with a loud warning: the
    comparison then checks the plumbing (label mapping by COCO id), nothing more.

    Raises:
        MissingWeightsError: ``cfg.weights == "coco"`` and the file is not cached.
    """
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
