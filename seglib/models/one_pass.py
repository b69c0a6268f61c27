"""The ROI heads under several settings over one backbone pass: the occlusion study's sweep.

``on_one_backbone_pass`` runs ``GeneralizedRCNN.forward``'s inference steps with the
transform, the backbone and the RPN once, then the ROI heads once per setting: box NMS at a
threshold (``box_nms_at``) or a post-processing rule's hook (``PostProcessed.hooked``). The
settings differ only from the box suppression on, so the box branch before it (RoIAlign, the
box head and its predictor, on the same proposals) is computed once for all of them
(``_box_branch_once``); NMS and the mask branch run per setting. Each setting's output is
the model's own for it, bit for bit (``tests/studies/test_occlusion_study.py``).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from seglib.models.precision import replaced_forwards
from seglib.models.suppression import Detections


@contextlib.contextmanager
def box_nms_at(model: GeneralizedRCNN, thresh: float) -> Iterator[None]:
    """For one call, the model's own box NMS (``RoIHeads.nms_thresh``) at ``thresh``: what a
    model built with that ``box_nms_thresh`` returns."""
    heads = model.roi_heads
    saved, heads.nms_thresh = heads.nms_thresh, thresh
    try:
        yield
    finally:
        heads.nms_thresh = saved


def on_one_backbone_pass(
    model: GeneralizedRCNN,
    images: list[torch.Tensor],
    heads: Mapping[Any, Callable[[], contextlib.AbstractContextManager]],
) -> dict[Any, list[Detections]]:
    """Per key of ``heads``, ``model(images)`` with its ROI heads (and the transform's
    postprocess) set by that context: ``box_nms_at`` a threshold, ``PostProcessed.hooked``.

    The transform, the backbone, the RPN and the box branch run once for all of them.
    """
    if not heads:
        return {}
    sizes = [(img.shape[-2], img.shape[-1]) for img in images]
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    found = {}
    with _box_branch_once(model.roi_heads):
        for key, setting in heads.items():
            with setting():
                detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
                found[key] = model.transform.postprocess(detections, batch.image_sizes, sizes)
    return found


def _box_branch_once(heads: RoIHeads) -> contextlib.AbstractContextManager:
    """Within the block, the box RoIAlign, box head and box predictor hand back their last
    output when called again with the very same inputs (the same objects)."""
    parts = [heads.box_roi_pool, heads.box_head, heads.box_predictor]
    return replaced_forwards(parts, lambda part: _once(part.forward))


def _once(forward: Callable[..., Any]) -> Callable[..., Any]:
    last: dict[str, Any] = {}  # the last call's arguments (held, so their ids stay theirs)

    def run(*args: Any) -> Any:
        seen = last.get("args")
        if seen is not None and len(seen) == len(args) and all(map(operator.is_, seen, args)):
            return last["out"]
        last["args"], last["out"] = args, forward(*args)
        return last["out"]

    return run
