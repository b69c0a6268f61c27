"""Galleries over a dataset split: one row (or panel) per image, several overlays each.

``draw_errors`` / ``error_gallery`` colour predictions by outcome (``OUTCOME_COLORS``),
``draw_model_comparison`` puts several models beside the ground truth,
``draw_occlusion_gallery`` colours ground truth by occlusion bucket and ``draw_before_after``
compares two sets of COCO results. All draw through ``viz.overlay.draw_instances``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from seglib.core.categories import category_labels
from seglib.evaluation.matching import match_image
from seglib.evaluation.occlusion import HEAVY_FROM, bucket_of
from seglib.evaluation.shown_results import results_to_instances
from seglib.viz.common import BUCKET_COLORS, _name, _subplots, _to_image, _to_masks, make_grid
from seglib.viz.overlay import _instances, draw_instances

#: Colours of the error galleries: matched, wrong, missed, ignored (inside a crowd of its class).
#: Outside tab10, so an outcome is never mistaken for a class colour.
OUTCOME_COLORS = {
    "tp": (0.0, 0.9, 0.2),
    "fp": (1.0, 0.0, 0.8),
    "missed": (1.0, 0.9, 0.0),
    "ignored": (0.6, 0.6, 0.6),
}


def draw_errors(
    image: Any,
    match: Mapping,
    class_names: Sequence[str] | None = None,
    axes: Sequence[Axes] | None = None,
    title: str | None = None,
) -> Sequence[Axes]:
    """Ground truth (left) and the predictions coloured by outcome (right) for one image.

    ``match`` is ``seglib.evaluation.matching.match_image``'s dict. Right panel (``OUTCOME_COLORS``): true
    positives green, false positives magenta, missed ground-truth instances yellow, predictions
    inside a crowd region of their own class grey (COCOeval ignores them); captions say which ("TP dog 0.91", "FP car 0.55", "missed
    person").
    """
    if axes is None:
        _, axes = _subplots(1, 2, figsize=(8, 4), layout="constrained")
    gt, pred, counts = match["ground_truth"], match["prediction"], match["counts"]
    draw_instances(
        image,
        boxes=gt["boxes"],
        masks=gt["masks"],
        labels=gt["labels"],
        class_names=class_names,
        ax=axes[0],
        title=f"ground truth ({len(gt['labels'])})" if title is None else title,
    )
    missed = ~np.asarray(gt["matched"], dtype=bool)
    h, w = _to_image(image).shape[:2]
    pred_masks = (
        _to_masks(pred["masks"], h, w) if len(pred["labels"]) else np.zeros((0, h, w), bool)
    )
    gt_masks = _to_masks(gt["masks"], h, w) if len(gt["labels"]) else np.zeros((0, h, w), bool)
    outcomes = [*pred["outcome"], *["missed"] * int(missed.sum())]
    captions = [
        f"{o.upper() if o != 'ignored' else 'crowd'} {_name(int(lab), class_names)} {sc:.2f}"
        for o, lab, sc in zip(pred["outcome"], pred["labels"], pred["scores"], strict=True)
    ] + [f"missed {_name(int(lab), class_names)}" for lab in gt["labels"][missed]]
    draw_instances(
        image,
        boxes=np.concatenate(
            [np.reshape(pred["boxes"], (-1, 4)), np.reshape(gt["boxes"], (-1, 4))[missed]]
        ),
        masks=np.concatenate([pred_masks, gt_masks[missed]]),
        labels=np.concatenate([pred["labels"], gt["labels"][missed]]).astype(np.int64),
        class_names=class_names,
        ax=axes[1],
        colors=[OUTCOME_COLORS[o] for o in outcomes],
        captions=captions,
        title=f"TP {counts['tp']} · FP {counts['fp']} · missed {counts['missed']}",
    )
    return axes


def error_gallery(
    dataset: Any,
    results: Sequence[Mapping],
    image_ids: Sequence[int],
    *,
    titles: Sequence[str] | None = None,
    iou_thresh: float = 0.5,
    size: float = 3.0,
) -> Figure:
    """``draw_errors`` for each image id, one row each (ground truth | outcomes).

    ``results`` are the cached COCO results after the operating point was applied.
    """

    if not image_ids:
        raise ValueError("error_gallery needs at least one image id")
    fig, axes = _subplots(
        len(image_ids),
        2,
        figsize=(2 * size, size * len(image_ids)),
        squeeze=False,
        layout="constrained",
    )
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    for row, image_id in enumerate(image_ids):
        image = dataset.load_image(position[image_id])
        match = match_image(dataset.coco, results, image_id, iou_thresh=iou_thresh)
        draw_errors(
            image,
            match,
            dataset.class_names,
            axes=axes[row],
            title=titles[row] if titles else f"image {image_id}: ground truth",
        )
    return fig


def draw_model_comparison(
    dataset: Any,
    image_ids: Sequence[int],
    predictions: Mapping[str, Sequence[Mapping]],
    *,
    score_thresh: float = 0.5,
    size: float = 3.0,
) -> Figure:
    """Ground truth, then each model's predictions, on the same images: one row per image.

    ``predictions`` maps a model name ("fine-tuned", "zero-shot") to its COCO results.
    """
    if not image_ids:
        raise ValueError("draw_model_comparison needs at least one image id")
    ncols = 1 + len(predictions)
    fig, axes = _subplots(
        len(image_ids),
        ncols,
        figsize=(size * ncols, size * len(image_ids)),
        squeeze=False,
        layout="constrained",
    )
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    for row, image_id in enumerate(image_ids):
        image, target = dataset[position[image_id]]
        draw_instances(
            image,
            **_instances(target),
            class_names=dataset.class_names,
            ax=axes[row][0],
            title=f"image {image_id}: ground truth",
        )
        for col, (name, results) in enumerate(predictions.items(), start=1):
            shown = results_to_instances(results, image_id, score_thresh=score_thresh)
            draw_instances(
                image,
                **_instances(shown),
                class_names=dataset.class_names,
                ax=axes[row][col],
                title=f"{name} ({len(shown['labels'])} with score >= {score_thresh:g})",
            )
    return fig


def draw_occlusion_gallery(
    dataset: Any,
    image_ids: Sequence[int],
    levels: Mapping[int, float],
    *,
    heavy_from: float = HEAVY_FROM,
    ncols: int = 3,
    size: float = 3.0,
) -> Figure:
    """Ground truth of ``image_ids``, each instance coloured by bucket and captioned with its level.

    Args:
        dataset: a ``seglib.data.dataset`` split (``coco``, ``ids``, ``class_names``; ``dataset[i]``
            gives the image).
        levels: annotation id -> level (``occlusion.occlusion_levels(dataset.coco)``).

    Raises:
        ValueError: no image ids (the split has no instance in the bucket asked for).
    """
    if not image_ids:
        raise ValueError("no images to draw: the split has no instance in that bucket")
    fig, axes = make_grid(len(image_ids), ncols=ncols, size=size)
    coco = dataset.coco
    label = category_labels(dataset.categories)  # the split's COCO ids -> labels 1..k
    for ax, image_id in zip(axes, image_ids, strict=True):
        image = dataset[dataset.ids.index(image_id)][0]
        anns = [
            a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0) and a["id"] in levels
        ]
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32
        ).reshape(-1, 4)
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else None
        buckets = [bucket_of(levels[a["id"]], heavy_from) for a in anns]
        draw_instances(
            image,
            boxes=boxes,
            masks=masks,
            labels=[label[a["category_id"]] for a in anns],
            ax=ax,
            colors=[BUCKET_COLORS[b] for b in buckets],
            captions=[
                f"{dataset.class_names[label[a['category_id']] - 1]} {levels[a['id']]:.2f}"
                for a in anns
            ],
            title=f"image {image_id}: {buckets.count('heavy')} heavy",
        )
    return fig


def draw_before_after(
    dataset: Any,
    image_ids: Sequence[int],
    before: Sequence[Mapping],
    after: Sequence[Mapping],
    *,
    names: tuple[str, str] = ("before", "after"),
    score_thresh: float = 0.5,
    size: float = 3.0,
) -> Figure:
    """Rows of [ground truth | ``before`` | ``after``] for each image (COCO results in, drawn at ``score_thresh``).

    With no image ids (the two sets agree everywhere) the figure says so in one panel.
    """
    if not image_ids:
        fig, ax = _subplots(figsize=(6.0, 1.5), layout="constrained")
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{names[0]} and {names[1]} agree on every image", ha="center")
        return fig
    fig, axes = make_grid(3 * len(image_ids), ncols=3, size=size)
    for row, image_id in enumerate(image_ids):
        image, target = dataset[dataset.ids.index(image_id)]
        draw_instances(
            image,
            boxes=target["boxes"],
            masks=target["masks"],
            labels=target["labels"],
            class_names=dataset.class_names,
            ax=axes[3 * row],
            title=f"image {image_id}: ground truth",
        )
        for col, (name, results) in enumerate(zip(names, (before, after), strict=True), start=1):
            pred = results_to_instances(results, image_id, score_thresh=score_thresh)
            draw_instances(
                image,
                **pred,
                class_names=dataset.class_names,
                ax=axes[3 * row + col],
                title=f"{name}: {len(pred['scores'])}",
            )
    return fig
