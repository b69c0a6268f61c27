"""Instance overlays on one image: ``draw_instances`` and the figures built straight on it.

``draw_instances`` blends masks, draws boxes and captions; ``draw_prediction_vs_gt`` puts
ground truth and prediction side by side; ``draw_instance_grid`` draws many images in a grid;
``prediction_samples`` pairs a split's images with their cached COCO results for that grid.
Galleries over a dataset (errors, model comparison, occlusion) live in ``viz.galleries``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from seglib.evaluation.shown_results import results_to_instances
from seglib.viz.common import (
    _name,
    _new_ax,
    _numpy,
    _subplots,
    _to_image,
    _to_masks,
    class_color,
    make_grid,
)


def _instance_arrays(
    img: np.ndarray,
    boxes: Any,
    masks: Any,
    labels: Any,
    scores: Any,
    colors: Sequence | None,
    captions: Sequence[str] | None,
) -> tuple[dict[str, np.ndarray | None], int]:
    """The per-instance arrays as numpy (None where not given) and the number of instances.

    Raises:
        ValueError: masks of the wrong shape, or arrays, colours or captions of unequal length.
    """
    h, w = img.shape[:2]
    arrays = {
        "boxes": None if boxes is None else _numpy(boxes).reshape(-1, 4),
        "masks": None if masks is None else _to_masks(masks, h, w),
        "labels": None if labels is None else _numpy(labels).reshape(-1).astype(np.int64),
        "scores": None if scores is None else _numpy(scores).reshape(-1).astype(np.float64),
    }
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"boxes, masks, labels and scores must have one entry per instance, got lengths {lengths}"
        )
    n = next(iter(lengths.values()), 0)
    for name, given in (("colors", colors), ("captions", captions)):
        if given is not None and len(given) != n:
            raise ValueError(f"{name} must have one entry per instance ({n}), got {len(given)}")
    return arrays, n


def _blend_masks(
    img: np.ndarray,
    masks: np.ndarray | None,
    keep: np.ndarray,
    color_of: Sequence[tuple[float, float, float]],
    alpha: float,
) -> np.ndarray:
    """uint8 image with each kept mask blended in its colour at opacity ``alpha``."""
    overlay = img.astype(np.float64)
    if masks is not None:
        for i in np.flatnonzero(keep):
            overlay[masks[i]] = (1 - alpha) * overlay[masks[i]] + alpha * 255 * np.array(
                color_of[i]
            )
    return overlay.astype(np.uint8)


def _draw_box(ax: Axes, arrays: Mapping[str, Any], i: int, color: Any) -> tuple[Any, Any] | None:
    """Draw instance ``i``'s box when there are boxes; return where its caption goes.

    The caption goes at the box's top-left corner, else at its mask's; None (no caption) when
    there is no box and the mask is empty or absent.
    """
    if arrays["boxes"] is not None:
        x1, y1, x2, y2 = arrays["boxes"][i]
        # Pixel i covers [i - 0.5, i + 0.5] in imshow coordinates; XYXY x2 is exclusive.
        ax.add_patch(
            Rectangle(
                (x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5
            )
        )
        return x1, y1
    if arrays["masks"] is not None and arrays["masks"][i].any():
        ys, xs = np.nonzero(arrays["masks"][i])
        return xs.min(), ys.min()
    return None


def _caption(
    i: int,
    arrays: Mapping[str, Any],
    labels: np.ndarray,
    class_names: Sequence[str] | None,
    captions: Sequence[str] | None,
) -> str:
    """``captions[i]`` when given, else "name score" ("#i" without labels, no score without scores)."""
    if captions is not None:
        return captions[i]
    caption = _name(int(labels[i]), class_names) if arrays["labels"] is not None else f"#{i}"
    if arrays["scores"] is not None:
        caption += f" {arrays['scores'][i]:.2f}"
    return caption


def _put_caption(ax: Axes, anchor: tuple[Any, Any], caption: str, color: Any) -> None:
    """White caption on a box of the instance's colour, its bottom-left at ``anchor``."""
    ax.text(
        *anchor,
        caption,
        fontsize=7,
        color="white",
        va="bottom",
        bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
    )


def draw_instances(
    image: Any,
    *,
    boxes: Any = None,
    masks: Any = None,
    labels: Any = None,
    scores: Any = None,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.0,
    ax: Axes | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    colors: Sequence[tuple[float, float, float]] | None = None,
    captions: Sequence[str] | None = None,
) -> Axes:
    """Overlay instance masks, boxes and "name score" captions on an image.

    Args:
        image: uint8 [H,W,3] or float [3,H,W] in 0..1 (numpy or torch).
        boxes: float [N,4] XYXY pixels. masks: [N,H,W] uint8/bool, or float probabilities
            [N,H,W] / [N,1,H,W] thresholded at 0.5. labels: int [N], 1..k. scores: float [N].
        class_names: names of labels 1..k (index 0 = label 1); labels shown as numbers otherwise.
        score_thresh: instances with a score below it are not drawn.
        colors: one RGB (0..1) per instance instead of the class colours (error galleries).
        captions: one caption per instance instead of "name score".

    Returns:
        The axes, with one Rectangle patch per drawn box and one caption per drawn instance.

    Raises:
        ValueError: image or masks of the wrong shape, or per-instance arrays of unequal length.
    """
    img = _to_image(image)
    h, w = img.shape[:2]
    arrays, n = _instance_arrays(img, boxes, masks, labels, scores, colors, captions)
    labels_ = arrays["labels"] if arrays["labels"] is not None else np.arange(1, n + 1)
    keep = np.ones(n, dtype=bool) if arrays["scores"] is None else arrays["scores"] >= score_thresh
    color_of = [
        tuple(colors[i]) if colors is not None else class_color(labels_[i]) for i in range(n)
    ]
    ax = _new_ax(ax, (6.0, 6.0 * h / max(w, 1)))
    ax.imshow(_blend_masks(img, arrays["masks"], keep, color_of, alpha))
    for i in np.flatnonzero(keep):
        anchor = _draw_box(ax, arrays, i, color_of[i])
        if anchor is not None:
            caption = _caption(i, arrays, labels_, class_names, captions)
            _put_caption(ax, anchor, caption, color_of[i])
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _instances(d: Mapping) -> dict[str, Any]:
    return {k: d.get(k) for k in ("boxes", "masks", "labels", "scores")}


def prediction_samples(
    dataset: Any,
    results: Sequence[Mapping],
    image_ids: Sequence[int] | None = None,
    *,
    score_thresh: float = 0.0,
) -> list[tuple[Any, dict[str, np.ndarray]]]:
    """``(image, prediction)`` pairs for ``draw_instance_grid`` from cached COCO results.

    ``dataset`` is a ``CocoSubsetDataset`` (images by position, ``.ids``); ``image_ids``
    defaults to all of its images, in order.

    Raises:
        KeyError: an image id that is not in the dataset (names it).
    """
    position = {image_id: i for i, image_id in enumerate(dataset.ids)}
    samples = []
    for image_id in dataset.ids if image_ids is None else image_ids:
        if image_id not in position:
            raise KeyError(f"image id {image_id} is not in this split")
        image = dataset[position[image_id]][0]
        samples.append((image, results_to_instances(results, image_id, score_thresh=score_thresh)))
    return samples


def draw_prediction_vs_gt(
    image: Any,
    target: Mapping,
    prediction: Mapping,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Ground truth (left) and prediction (right) on the same image.

    ``target`` and ``prediction`` are the dataset's target and the model's output dicts
    (boxes XYXY, labels, masks, and scores for the prediction).
    """
    if axes is None:
        _, axes = _subplots(1, 2, figsize=(10, 5), layout="constrained")
    n_gt = len(_numpy(target["labels"])) if target.get("labels") is not None else 0
    draw_instances(
        image,
        **_instances(target),
        class_names=class_names,
        ax=axes[0],
        title=f"ground truth ({n_gt})",
    )
    scores = prediction.get("scores")
    shown = int((_numpy(scores) >= score_thresh).sum()) if scores is not None else 0
    draw_instances(
        image,
        **_instances(prediction),
        class_names=class_names,
        score_thresh=score_thresh,
        ax=axes[1],
        title=f"prediction ({shown} with score >= {score_thresh:g})",
    )
    return axes[0].figure


def draw_instance_grid(
    samples: Sequence[tuple[Any, Mapping]],
    class_names: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    size: float = 3.0,
    score_thresh: float = 0.0,
    titles: Sequence[str] | None = None,
) -> Figure:
    """``draw_instances`` for each ``(image, target_or_prediction)`` pair, in a grid."""
    fig, axes = make_grid(len(samples), ncols, size)
    for i, (ax, (image, instances)) in enumerate(zip(axes, samples, strict=True)):
        draw_instances(
            image,
            **_instances(instances),
            class_names=class_names,
            score_thresh=score_thresh,
            ax=ax,
            title=titles[i] if titles else None,
        )
    return fig
