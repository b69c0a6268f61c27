"""Figures: instance overlays, training curves and evaluation plots. The only matplotlib user.

Every function draws into ``ax`` (or ``axes``) when given, else into a new pyplot figure, and
returns the axes or figure; none calls ``plt.show()``. New figures come from pyplot so a
notebook displays them; scripts that draw many should pass ``close=True`` to ``save_figure``.
Colours are fixed per class label (``class_color``), so a class looks the same everywhere.
Inputs may be numpy arrays or torch tensors (read through ``.detach().cpu().numpy()``).

Figures are checked by what they hold, not by existing: ``figure_content`` lists each axes'
bars with height, lines with points and images; ``save_figure`` writes that record beside the
image (``<name>.content.json``), and ``check_figure_file`` fails a missing or blank image or
an axes with no data. ``NOTEBOOK_FIGURES`` declares the figures each notebook saves.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from seglib.io import write_bytes_atomic, write_json_atomic
from seglib.metrics import results_to_instances
from seglib.occlusion import BUCKETS, HEAVY_FROM, ROWS, bucket_of


class FigureSet(NamedTuple):
    """The figures one notebook saves, and the ``Paths`` attribute of their folder."""

    folder: str  # "data_figures" (the subset's: 01, 02) or "figures" (the selected run's)
    names: tuple[str, ...]


#: Every figure each notebook saves; checked by content after every notebook test run.
NOTEBOOK_FIGURES: dict[str, FigureSet] = {
    "01_data_subset": FigureSet("data_figures", ("01_counts.png", "01_samples.png")),
    "02_data_augmentations": FigureSet(
        "data_figures", ("02_augmentations.png", "02_sizes.png", "02_overlap.png")
    ),
    "03_train": FigureSet("figures", ("03_lr_schedule.png", "03_training.png")),
    "04_evaluate": FigureSet(
        "figures",
        (
            "04_ap_per_class.png",
            "04_val_vs_test.png",
            "04_pr_curves.png",
            "04_confusion.png",
            "04_vs_zero_shot.png",
            "04_zero_shot_examples.png",
            "04_occlusion.png",
            "04_runs.png",
        ),
    ),
    "05_inference_viz": FigureSet(
        "figures", ("05_test_predictions.png", "05_gt_vs_prediction.png", "05_errors.png")
    ),
    "06_occlusion_study": FigureSet(
        "figures",
        (
            "06_occlusion_levels.png",
            "06_occluded_ground_truth.png",
            "06_ap_per_bucket.png",
            "06_before_after.png",
        ),
    ),
    "07_detr_comparison": FigureSet(
        "comparison_figures", ("07_ap.png", "07_occlusion.png", "07_overlays.png")
    ),
}
#: Colours of the error galleries: matched, wrong, missed, ignored (inside a crowd region).
#: Outside tab10, so an outcome is never mistaken for a class colour.
OUTCOME_COLORS = {
    "tp": (0.0, 0.9, 0.2),
    "fp": (1.0, 0.0, 0.8),
    "missed": (1.0, 0.9, 0.0),
    "ignored": (0.6, 0.6, 0.6),
}

LOSS_KEYS = (
    "loss",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
)
BACKGROUND_COLOR = (0.6, 0.6, 0.6)


def class_color(label: int) -> tuple[float, float, float]:
    """RGB in 0..1 for a class label (1..k; 0 = background grey), the same in every figure."""
    if label <= 0:
        return BACKGROUND_COLOR
    return tuple(float(c) for c in colormaps["tab10"]((int(label) - 1) % 10)[:3])


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_image(image: Any) -> np.ndarray:
    """uint8 [H,W,3] from uint8/float HWC or CHW (floats in 0..1), numpy or torch."""
    img = _numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H,W,3] or [3,H,W] (or grayscale), got shape {img.shape}")
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return img


def _to_masks(masks: Any, h: int, w: int) -> np.ndarray:
    """bool [N,H,W] from uint8/bool [N,H,W] or float probabilities [N,1,H,W] / [N,H,W] (> 0.5)."""
    m = _numpy(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim >= 1 and m.shape[0] == 0:
        return np.zeros((0, h, w), dtype=bool)  # no instances: any empty shape will do
    if m.ndim != 3 or m.shape[1:] != (h, w):
        raise ValueError(
            f"masks must be [N,{h},{w}] or [N,1,{h},{w}] to match the image, got shape {m.shape}"
        )
    return m > 0.5 if np.issubdtype(m.dtype, np.floating) else m > 0


def _new_ax(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return str(label)


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
    labels_ = arrays["labels"] if arrays["labels"] is not None else np.arange(1, n + 1)
    keep = np.ones(n, dtype=bool) if arrays["scores"] is None else arrays["scores"] >= score_thresh
    color_of = [
        tuple(colors[i]) if colors is not None else class_color(labels_[i]) for i in range(n)
    ]
    overlay = img.astype(np.float64)
    if arrays["masks"] is not None:
        for i in np.flatnonzero(keep):
            overlay[arrays["masks"][i]] = (1 - alpha) * overlay[
                arrays["masks"][i]
            ] + alpha * 255 * np.array(color_of[i])
    ax = _new_ax(ax, (6.0, 6.0 * h / max(w, 1)))
    ax.imshow(overlay.astype(np.uint8))
    for i in np.flatnonzero(keep):
        color = color_of[i]
        if arrays["boxes"] is not None:
            x1, y1, x2, y2 = arrays["boxes"][i]
            # Pixel i covers [i - 0.5, i + 0.5] in imshow coordinates; XYXY x2 is exclusive.
            ax.add_patch(
                Rectangle(
                    (x1 - 0.5, y1 - 0.5),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    edgecolor=color,
                    linewidth=1.5,
                )
            )
        elif arrays["masks"] is not None and arrays["masks"][i].any():
            ys, xs = np.nonzero(arrays["masks"][i])
            x1, y1 = xs.min(), ys.min()
        else:
            continue
        if captions is not None:
            caption = captions[i]
        else:
            caption = (
                _name(int(labels_[i]), class_names) if arrays["labels"] is not None else f"#{i}"
            )
            if arrays["scores"] is not None:
                caption += f" {arrays['scores'][i]:.2f}"
        ax.text(
            x1,
            y1,
            caption,
            fontsize=7,
            color="white",
            va="bottom",
            bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"},
        )
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
        _, axes = plt.subplots(1, 2, figsize=(10, 5), layout="constrained")
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


def make_grid(n: int, ncols: int = 4, size: float = 3.0) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` square panels, ``ncols`` per row; spare panels are hidden."""
    if n < 1 or ncols < 1:
        raise ValueError(f"need n >= 1 and ncols >= 1, got n={n}, ncols={ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


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


def draw_errors(
    image: Any,
    match: Mapping,
    class_names: Sequence[str] | None = None,
    axes: Sequence[Axes] | None = None,
    title: str | None = None,
) -> Sequence[Axes]:
    """Ground truth (left) and the predictions coloured by outcome (right) for one image.

    ``match`` is ``seglib.matching.match_image``'s dict. Right panel (``OUTCOME_COLORS``): true
    positives green, false positives magenta, missed ground-truth instances yellow, predictions
    inside crowd regions grey; captions say which ("TP dog 0.91", "FP car 0.55", "missed
    person").
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8, 4), layout="constrained")
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
    from seglib.matching import match_image

    if not image_ids:
        raise ValueError("error_gallery needs at least one image id")
    fig, axes = plt.subplots(
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
    fig, axes = plt.subplots(
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


# --- training curves ----------------------------------------------------------------------
def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _series(
    history: Sequence[Mapping], key: str, x_key: str = "iteration"
) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in history if r.get(key) is not None]
    xs = np.array([r.get(x_key, i) for i, r in enumerate(rows)], dtype=np.float64)
    return xs, np.array([r[key] for r in rows], dtype=np.float64)


def plot_losses(
    history: Sequence[Mapping], ax: Axes | None = None, *, smooth: int = 1, logy: bool = False
) -> Axes:
    """One line per loss component and a bold total, against iteration.

    ``history`` holds metrics.jsonl rows; rows without a loss key (e.g. eval rows) are skipped
    for that key. ``smooth`` is a moving-average window in logged points. The axes are
    cleared first, so a live callback can redraw into the same axes.
    """
    ax = _new_ax(ax)
    ax.clear()
    for key in LOSS_KEYS:
        xs, ys = _series(history, key)
        if len(ys):
            ys = _smooth(ys, smooth)
            ax.plot(
                xs[len(xs) - len(ys) :],
                ys,
                label=key,
                color="black" if key == "loss" else None,
                linewidth=2.0 if key == "loss" else 1.0,
            )
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if logy:
        ax.set_yscale("log")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.set_title("training losses")
    return ax


def plot_lr(history: Sequence[Mapping], ax: Axes | None = None) -> Axes:
    """The learning rate against iteration (shows the warmup and the decay steps)."""
    ax = _new_ax(ax)
    ax.clear()
    xs, ys = _series(history, "lr")
    ax.plot(xs, ys, color="tab:purple")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    return ax


def plot_val_ap(
    history: Sequence[Mapping], ax: Axes | None = None, *, x_key: str = "epoch"
) -> Axes:
    """Validation mask AP and AP50 (percent) against epoch, from metrics rows with ``segm_AP``.

    The axes are cleared first (live redraws); before the first validation it holds a note.
    """
    ax = _new_ax(ax)
    ax.clear()
    for key, style in (("segm_AP", "-o"), ("segm_AP50", "--s")):
        xs, ys = _series(history, key, x_key)
        if len(ys):
            ax.plot(xs, 100 * ys, style, label=f"val mask {key.split('_')[1]}")
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(x_key)
    ax.set_ylabel("%")
    ax.set_title("validation mask AP")
    return ax


def plot_loss_components(history: Sequence[Mapping], axes: Sequence[Axes] | None = None) -> Figure:
    """Each loss on its own axes (its own scale): total, classifier, box, mask, RPN.

    Components differ by orders of magnitude (the mask loss of a random init starts near 17,
    the RPN box loss near 0.05), so one shared linear axis would flatten all but one.
    """
    keys = [k for k in LOSS_KEYS if len(_series(history, k)[1])]
    if axes is None:
        _, axes = make_grid(max(len(keys), 1), ncols=3, size=2.6)
    for ax, key in zip(axes, keys, strict=False):
        xs, ys = _series(history, key)
        ax.plot(xs, ys, color="black" if key == "loss" else class_color(LOSS_KEYS.index(key)))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    return axes[0].figure


def plot_training_summary(history: Sequence[Mapping]) -> Figure:
    """One figure of a finished run: every loss on its own axes, the lr, and validation AP."""
    keys = [k for k in LOSS_KEYS if len(_series(history, k)[1])]
    fig, axes = make_grid(len(keys) + 2, ncols=4, size=2.6)
    plot_loss_components(history, axes[: len(keys)])
    plot_lr(history, ax=axes[len(keys)])
    plot_val_ap(history, ax=axes[len(keys) + 1])
    return fig


def plot_lr_schedule(cfg: Any, num_train_images: int, ax: Axes | None = None) -> Axes:
    """The learning rate the run will use at every step, before it starts (``optim.lr_factor``).

    ``num_train_images`` sets the steps per epoch (ceil(n / batch_size)); a ``max_iters`` cap
    is drawn as a dashed line where training will stop.
    """
    from seglib.optim import lr_factor

    if num_train_images < 1:
        raise ValueError(f"num_train_images must be >= 1, got {num_train_images}")
    per_epoch = math.ceil(num_train_images / cfg.batch_size)
    total = cfg.num_epochs * per_epoch
    steps = np.arange(total)
    lrs = [cfg.lr * lr_factor(int(i), cfg, per_epoch) for i in steps]
    ax = _new_ax(ax)
    ax.plot(steps, lrs, color="tab:purple")
    if cfg.max_iters is not None and cfg.max_iters < total:
        ax.axvline(cfg.max_iters, color="black", linestyle="--", label="max_iters")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"iteration ({per_epoch} per epoch)")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{cfg.lr_schedule} schedule, lr {cfg.lr:g}, warmup {cfg.warmup_iters} steps")
    return ax


def training_figure(size: float = 3.6) -> tuple[Figure, list[Axes]]:
    """A figure with loss (log scale), learning-rate and validation-AP axes, not registered
    with pyplot.

    For live redraws through a display handle: pyplot would show it a second time at the end
    of the notebook cell.
    """
    fig = Figure(figsize=(3.2 * size, size), layout="constrained")
    return fig, list(fig.subplots(1, 3))


def draw_training(
    history: Sequence[Mapping], axes: Sequence[Axes], evals: Sequence[Mapping] = ()
) -> Sequence[Axes]:
    """Losses (log scale) on ``axes[0]``, the lr on ``axes[1]`` and, when there is a third,
    validation mask AP from ``evals`` (rows with ``epoch`` and ``segm_AP``) on ``axes[2]``.
    Redraws in place."""
    plot_losses(history, ax=axes[0], logy=True)
    plot_lr(history, ax=axes[1])
    if len(axes) > 2:
        plot_val_ap(evals, ax=axes[2])
    return axes


def plot_metric(
    history: Sequence[Mapping], key: str, ax: Axes | None = None, *, x_key: str = "epoch"
) -> Axes:
    """Any logged value (e.g. a validation AP) against ``x_key``, from rows that have ``key``."""
    ax = _new_ax(ax)
    xs, ys = _series(history, key, x_key)
    ax.plot(xs, ys, marker="o", label=key)
    ax.set_xlabel(x_key)
    ax.set_ylabel(key)
    return ax


# --- bar charts -----------------------------------------------------------------------------
def _grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    fmt: str = "{:g}",
    colors: Sequence | None = None,
) -> Axes:
    """Bars of each series side by side per group; NaN (undefined) draws no bar, labelled "n/a"."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for j, (name, values) in enumerate(series.items()):
        heights = np.asarray(values, dtype=np.float64)
        bars = ax.bar(
            x + (j - (len(series) - 1) / 2) * width,
            np.nan_to_num(heights),
            width,
            label=name,
            color=colors[j] if colors else None,
        )
        ax.bar_label(
            bars, labels=["n/a" if np.isnan(v) else fmt.format(v) for v in heights], fontsize=7
        )
    ax.set_xticks(x, list(groups))
    if len(series) > 1:
        ax.legend(fontsize=8)
    return ax


def plot_category_counts(
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    ax: Axes | None = None,
    *,
    key: str = "instances",
) -> Axes:
    """Images or instances (``key``) per category, one bar per split: ``counts[split][category][key]``."""
    ax = _new_ax(ax)
    categories = list(dict.fromkeys(c for split in counts.values() for c in split))
    series = {
        split: [per_cat.get(c, {}).get(key, 0) for c in categories]
        for split, per_cat in counts.items()
    }
    _grouped_bars(ax, categories, series)
    ax.set_ylabel(key)
    ax.set_title(f"{key} per category")
    return ax


def plot_size_distribution(
    size_counts: Mapping[str, Mapping[str, int]], ax: Axes | None = None
) -> Axes:
    """Instances per COCO area range, per class: ``size_counts[name]["small"|"medium"|"large"]``."""
    ax = _new_ax(ax)
    names = list(size_counts)
    buckets = list(dict.fromkeys(b for per in size_counts.values() for b in per))
    _grouped_bars(ax, names, {b: [size_counts[n].get(b, 0) for n in names] for b in buckets})
    ax.set_ylabel("instances")
    ax.set_title("instance sizes (small < 32², large > 96² px)")
    return ax


def _pct(value: float | None) -> float:
    return float("nan") if value is None or value < 0 else 100.0 * value


def plot_ap_bars(metrics: Mapping, ax: Axes | None = None, *, key: str = "AP") -> Axes:
    """Per-class and overall AP (percent) for boxes and masks from an ``evaluate_results`` dict.

    Takes the whole dict (with its "bbox" and "segm" sections), not one section.

    Raises:
        ValueError: ``metrics`` has neither section, e.g. ``scores["bbox"]`` was passed (the
            chart would be empty).
    """
    types = [t for t in ("bbox", "segm") if t in metrics]
    if not types:
        hint = (
            " (this looks like one section: pass the whole dict)" if "per_class" in metrics else ""
        )
        raise ValueError(
            f"plot_ap_bars needs an evaluate_results dict with 'bbox' and/or 'segm', got keys "
            f"{sorted(metrics)[:8]}{hint}"
        )
    ax = _new_ax(ax)
    names = list(metrics[types[0]]["per_class"])
    series = {
        {"bbox": "box", "segm": "mask"}[t]: [
            _pct(metrics[t]["per_class"][n].get(key)) for n in names
        ]
        + [_pct(metrics[t].get(key))]
        for t in types
    }
    _grouped_bars(ax, [*names, "all"], series, fmt="{:.1f}")
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"{key} per class")
    return ax


def plot_ap_comparison(
    metrics_a: Mapping,
    metrics_b: Mapping,
    names: Sequence[str] = ("fine-tuned", "zero-shot"),
    ax: Axes | None = None,
    *,
    iou_type: str = "segm",
    key: str = "AP",
) -> Axes:
    """Per-class and overall AP (percent) of two runs on the same split, side by side."""
    ax = _new_ax(ax)
    classes = list(
        dict.fromkeys([*metrics_a[iou_type]["per_class"], *metrics_b[iou_type]["per_class"]])
    )
    series = {
        label: [_pct(m[iou_type]["per_class"].get(c, {}).get(key)) for c in classes]
        + [_pct(m[iou_type].get(key))]
        for label, m in zip(names, (metrics_a, metrics_b), strict=True)
    }
    _grouped_bars(ax, [*classes, "all"], series, fmt="{:.1f}")
    ax.set_ylabel(f"{iou_type} {key} (%)")
    ax.set_title(f"{iou_type} {key}: {names[0]} vs {names[1]}")
    return ax


def plot_grouped_scores(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    ax: Axes | None = None,
    *,
    ylabel: str = "AP (%)",
    title: str = "",
) -> Axes:
    """Bars of 0-1 scores in percent, one colour per series (a model), side by side per group.

    ``seglib.compare.ap_series`` and ``occlusion_series`` give ``groups`` and ``series``;
    a score of -1 or None (undefined) draws no bar, labelled "n/a".
    """
    ax = _new_ax(ax, (7.0, 4.0))
    values = {name: [_pct(v) for v in scores] for name, scores in series.items()}
    _grouped_bars(ax, groups, values, fmt="{:.1f}")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def plot_run_comparison(
    summaries: Sequence[Mapping], axes: Sequence[Axes] | None = None, *, smooth: int = 5
) -> Figure:
    """Several runs on one figure: total training loss (log scale) and validation mask AP50.

    ``summaries`` are ``seglib.runs.run_summary`` dicts (name, history, evals). Each run keeps
    one colour on both axes.
    """
    if axes is None:
        _, axes = make_grid(2, ncols=2, size=4.0)
    for i, summary in enumerate(summaries):
        color = colormaps["tab10"](i % 10)
        xs, ys = _series(summary["history"], "loss")
        if len(ys):
            ys = _smooth(ys, smooth)
            axes[0].plot(xs[len(xs) - len(ys) :], ys, color=color, label=summary["name"])
        xs, ys = _series(summary["evals"], "segm_AP50", "epoch")
        if len(ys):
            axes[1].plot(xs, 100 * ys, "-o", color=color, label=summary["name"])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("total loss")
    axes[0].set_title("training loss per run")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("val mask AP50 (%)")
    axes[1].set_title("validation mask AP50 per run")
    for ax in axes[:2]:
        if ax.lines:
            ax.legend(fontsize=8)
    return axes[0].figure


# --- evaluation plots -----------------------------------------------------------------------
def plot_pr_curves(curves: Mapping[str, Mapping], ax: Axes | None = None) -> Axes:
    """Precision against recall per class (``metrics.pr_curves``); "all" dashed black."""
    ax = _new_ax(ax, (5.0, 4.5))
    for name, c in curves.items():
        label = f"{name} (AP {100 * c['AP']:.1f})" if "AP" in c else name
        style = {"color": "black", "linestyle": "--"} if name == "all" else {}
        ax.plot(c["recall"], c["precision"], label=label, **style)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if ax.lines:
        ax.legend(fontsize=8)
    return ax


def plot_confusion(
    matrix: Any, labels: Sequence[str], ax: Axes | None = None, *, normalize: bool = False
) -> Axes:
    """Confusion matrix heat map (rows ground truth, columns prediction), counts in the cells.

    ``normalize`` divides each row by its total (rows without instances stay 0).
    """
    ax = _new_ax(ax, (5.0, 4.5))
    m = _numpy(matrix).astype(np.float64)
    if normalize:
        totals = m.sum(axis=1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    ax.imshow(m, cmap="Blues", vmin=0)
    high = m.max() / 2 if m.size and m.max() > 0 else 1.0
    for (i, j), v in np.ndenumerate(m):
        ax.text(
            j,
            i,
            f"{v:.2f}" if normalize else f"{int(v)}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if v > high else "black",
        )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("share of each ground-truth row" if normalize else "counts")
    return ax


# --- what a figure holds ---------------------------------------------------------------------
def _axes_content(ax: Axes) -> dict[str, Any]:
    """Counts of the data-bearing artists of one axes (see ``figure_content``)."""
    bars = [r for c in ax.containers if isinstance(c, BarContainer) for r in c.patches]
    tall = [r for r in bars if np.isfinite(r.get_height()) and r.get_height() != 0]
    # Lines in data coordinates only: axvline/axhline thresholds are references, not data.
    lines = [ln for ln in ax.lines if ln.get_transform() == ax.transData]
    line_points = []
    for ln in lines:
        x = np.asarray(ln.get_xdata(), dtype=np.float64)
        y = np.asarray(ln.get_ydata(), dtype=np.float64)
        line_points.append(int((np.isfinite(x) & np.isfinite(y) & (y != 0)).sum()))
    images = []
    for im in ax.images:
        arr = np.ma.masked_invalid(np.asarray(im.get_array(), dtype=np.float64))
        images.append(bool(arr.count() and arr.max() > arr.min()))
    scatter = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    counts = {
        "title": ax.get_title(),
        "bars": len(bars),
        "bars_with_height": len(tall),
        "lines": len(lines),
        "lines_with_points": sum(n > 0 for n in line_points),
        "points": int(sum(line_points)),
        "images": len(images),
        "images_with_content": int(sum(images)),
        "scatter_points": int(scatter),
    }
    counts["has_data"] = bool(
        counts["bars_with_height"]
        or counts["lines_with_points"]
        or counts["images_with_content"]
        or counts["scatter_points"]
    )
    # make_grid's spare panels: switched off and never drawn into.
    counts["hidden"] = bool(
        not ax.axison
        and not (bars or ax.lines or ax.images or ax.collections or ax.texts or ax.patches)
    )
    return counts


def figure_content(fig: Figure | Axes) -> dict[str, Any]:
    """What each axes of a figure shows, as JSON-able counts.

    An axes holds data when it has a bar of non-zero height, a line (in data coordinates)
    with a finite point off y = 0 (a precision-recall curve of a model at AP 0 lies on the x
    axis: it shows nothing), a non-constant image, or scatter points. Switched-off axes with
    nothing drawn (spare grid panels) are ``hidden`` and not held against the figure.

    Returns:
        ``{"axes": [{title, bars, bars_with_height, lines, lines_with_points, points, images,
        images_with_content, scatter_points, has_data, hidden}, ...], "empty_axes": [index,
        ...]}`` where ``empty_axes`` lists the visible axes without data.
    """
    fig = fig.figure if isinstance(fig, Axes) else fig
    axes = [_axes_content(ax) for ax in fig.axes]
    empty = [i for i, a in enumerate(axes) if not a["has_data"] and not a["hidden"]]
    return {"axes": axes, "empty_axes": empty}


def content_file(path: str | Path) -> Path:
    """The content record ``save_figure`` writes beside a figure: ``x.png`` -> ``x.content.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.content.json")


# --- files ----------------------------------------------------------------------------------
def save_figure(
    fig: Figure | Axes, path: str | Path, *, dpi: int = 150, close: bool = False
) -> Path:
    """Write a figure atomically (rendered in memory, then temp file + rename); format from the suffix.

    Beside it, ``<stem>.content.json`` records ``figure_content`` and the image's sha1, so a
    test can tell an empty chart from a full one without looking at pixels.

    Raises:
        ValueError: the suffix is not a format matplotlib can write (names the valid ones).
    """
    fig = fig.figure if isinstance(fig, Axes) else fig
    path = Path(path)
    formats = fig.canvas.get_supported_filetypes()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in formats:
        raise ValueError(
            f"cannot save {path}: suffix {path.suffix!r} is not one of {sorted(formats)}"
        )
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi)
    data = buffer.getvalue()
    content_file(path).unlink(missing_ok=True)
    write_bytes_atomic(path, data)
    record = {"file": path.name, "sha1": hashlib.sha1(data).hexdigest(), **figure_content(fig)}
    write_json_atomic(content_file(path), record)
    if close:
        plt.close(fig)
    return path


def check_figure_file(path: str | Path, *, min_std: float = 0.01) -> list[str]:
    """Problems with a saved figure: missing, blank, unrecorded, or an axes with no data.

    Reads the PNG (pixel standard deviation below ``min_std`` on a 0-1 scale = blank) and the
    content record ``save_figure`` wrote with it (which must describe this very file).

    Returns:
        One message per problem, each naming the file; empty when the figure is fine.
    """
    path = Path(path)
    if not path.is_file():
        return [f"{path} is missing: the notebook that declares it did not save it"]
    problems = []
    if path.suffix.lower() == ".png":
        pixels = plt.imread(path)[..., :3]
        if float(np.std(pixels)) < min_std:
            problems.append(f"{path} is blank (pixel std {float(np.std(pixels)):.4f})")
    record_path = content_file(path)
    if not record_path.is_file():
        return [*problems, f"{record_path} is missing: save figures with seglib.viz.save_figure"]
    record = json.loads(record_path.read_text())
    if record.get("sha1") != hashlib.sha1(path.read_bytes()).hexdigest():
        problems.append(f"{record_path} describes another version of {path.name}")
    for i in record.get("empty_axes", []):
        title = record["axes"][i].get("title") or "untitled"
        problems.append(
            f"{path}: axes {i} ({title!r}) holds no data (no bar with height, no line with "
            "points, no image)"
        )
    return problems


def notebook_figures(paths: Any, notebook: str) -> list[Path]:
    """The files ``NOTEBOOK_FIGURES`` declares for ``notebook`` (its stem), under ``paths``.

    Raises:
        KeyError: the notebook declares no figures (names where to declare them).
    """
    if notebook not in NOTEBOOK_FIGURES:
        raise KeyError(
            f"{notebook} declares no figures: add it to seglib.viz.NOTEBOOK_FIGURES "
            "(an empty tuple if it saves none)"
        )
    folder, names = NOTEBOOK_FIGURES[notebook]
    return [getattr(paths, folder) / name for name in names]


def close(fig: Figure | Axes) -> None:
    """Release a pyplot figure (after displaying or saving it elsewhere)."""
    plt.close(fig.figure if isinstance(fig, Axes) else fig)


# --- occlusion (seglib.occlusion, seglib.study; notebooks 02, 04, 06) ----------------------
#: One colour per bucket, the same in every figure (none calm, heavy alarming).
BUCKET_COLORS = {
    "all": (0.35, 0.35, 0.35),
    "none": (0.30, 0.60, 0.85),
    "partial": (0.95, 0.65, 0.20),
    "heavy": (0.85, 0.20, 0.20),
}


def _bucket_bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    """Grouped bars in percent; undefined values (< 0) draw no bar and read "n/a"."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for j, (name, values) in enumerate(series.items()):
        pct = [100 * v if v is not None and v >= 0 else np.nan for v in values]
        bars = ax.bar(
            x + (j - (len(series) - 1) / 2) * width,
            np.nan_to_num(pct),
            width,
            label=name,
            color=BUCKET_COLORS.get(name.split(" ")[0]),
        )
        labels = ["n/a" if np.isnan(v) else f"{v:.0f}" for v in pct]
        ax.bar_label(bars, labels=labels, fontsize=6)
    ax.set_xticks(x, list(groups), rotation=30 if len(groups) > 4 else 0, ha="right")
    ax.legend(fontsize=7)


def plot_occlusion_levels(
    levels: Mapping[int, float] | Sequence[float],
    ax: Axes | None = None,
    *,
    heavy_from: float = HEAVY_FROM,
    bins: int = 20,
) -> Axes:
    """Histogram of occlusion levels (``occlusion.occlusion_levels``), bars coloured by bucket.

    The title gives each bucket's share; the dashed line is the heavy edge.
    """
    ax = _new_ax(ax, (6.0, 4.0))
    values = np.asarray(
        list(levels.values()) if isinstance(levels, Mapping) else list(levels), dtype=np.float64
    )
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    none = int((values <= 0).sum())
    counts[0] -= none  # level 0 gets its own bar: "none" is a bucket, not a bin
    left = edges[:-1]
    colors = [BUCKET_COLORS[bucket_of(max(e, 1e-9), heavy_from)] for e in left]
    ax.bar(left, counts, width=np.diff(edges), align="edge", color=colors, edgecolor="white")
    ax.bar([-1.0 / bins], [none], width=1.0 / bins, align="edge", color=BUCKET_COLORS["none"])
    ax.axvline(heavy_from, color="black", linestyle="--", linewidth=1)
    shares = {b: int(sum(bucket_of(v, heavy_from) == b for v in values)) for b in BUCKETS}
    total = max(values.size, 1)
    ax.set_title(
        " · ".join(f"{b} {100 * n / total:.0f}%" for b, n in shares.items())
        + f" of {values.size} instances",
        fontsize=10,
    )
    ax.set_xlabel("occlusion level: largest share of the mask inside another instance's box")
    ax.set_ylabel("instances")
    return ax


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
        dataset: a ``seglib.dataset`` split (``coco``, ``ids``, ``class_names``; ``dataset[i]``
            gives the image).
        levels: annotation id -> level (``occlusion.occlusion_levels(dataset.coco)``).

    Raises:
        ValueError: no image ids (the split has no instance in the bucket asked for).
    """
    if not image_ids:
        raise ValueError("no images to draw: the split has no instance in that bucket")
    fig, axes = make_grid(len(image_ids), ncols=ncols, size=size)
    coco = dataset.coco
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
            labels=[a["category_id"] for a in anns],
            ax=ax,
            colors=[BUCKET_COLORS[b] for b in buckets],
            captions=[
                f"{dataset.class_names[a['category_id'] - 1]} {levels[a['id']]:.2f}" for a in anns
            ],
            title=f"image {image_id}: {buckets.count('heavy')} heavy",
        )
    return fig


def plot_bucket_metrics(table: Mapping[str, Mapping], ax: Axes | None = None) -> Axes:
    """Box AP, mask AP, recall and mean IoU (percent) per bucket, from ``occlusion.occlusion_ap``."""
    ax = _new_ax(ax, (6.5, 4.0))
    rows = [r for r in ROWS if r in table]
    series = {
        f"{row} (n={table[row]['instances']})": [
            table[row]["bbox"]["AP"],
            table[row]["segm"]["AP"],
            table[row]["recall"],
            table[row]["mean_iou"],
        ]
        for row in rows
    }
    _bucket_bars(ax, ["box AP", "mask AP", "recall", "mean IoU"], series)
    ax.set_ylabel("%")
    ax.set_title("by occlusion bucket")
    return ax


def plot_occlusion_study(
    study: Mapping[str, Any], ax: Axes | None = None, *, iou_type: str = "segm"
) -> Axes:
    """AP (percent) of every study variant, overall and per occlusion bucket (``run_study``)."""
    ax = _new_ax(ax, (max(7.0, 0.9 * len(study["variants"])), 4.0))
    names = [v["name"] for v in study["variants"]]
    counts = study["counts"]["test"]
    series = {
        (f"{row} (n={counts[row]})" if row in counts else row): [
            v["test"][row][iou_type]["AP"] for v in study["variants"]
        ]
        for row in ROWS
    }
    _bucket_bars(ax, names, series)
    ax.set_ylabel(f"{'mask' if iou_type == 'segm' else 'box'} AP on test (%)")
    ax.set_title("post-processing variants by occlusion bucket (tuned on val)")
    return ax


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
        fig, ax = plt.subplots(figsize=(6.0, 1.5), layout="constrained")
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
