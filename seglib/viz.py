"""Figures: instance overlays, training curves and evaluation plots. The only matplotlib user.

Every function draws into ``ax`` (or ``axes``) when given, else into a new pyplot figure, and
returns the axes or figure; none calls ``plt.show()``. New figures come from pyplot so a
notebook displays them; scripts that draw many should pass ``close=True`` to ``save_figure``.
Colours are fixed per class label (``class_color``), so a class looks the same everywhere.
Inputs may be numpy arrays or torch tensors (read through ``.detach().cpu().numpy()``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from seglib.io import write_bytes_atomic
from seglib.metrics import OVERLAP_THRESH, results_to_instances

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
) -> Axes:
    """Overlay instance masks, boxes and "name score" captions on an image.

    Args:
        image: uint8 [H,W,3] or float [3,H,W] in 0..1 (numpy or torch).
        boxes: float [N,4] XYXY pixels. masks: [N,H,W] uint8/bool, or float probabilities
            [N,H,W] / [N,1,H,W] thresholded at 0.5. labels: int [N], 1..k. scores: float [N].
        class_names: names of labels 1..k (index 0 = label 1); labels shown as numbers otherwise.
        score_thresh: instances with a score below it are not drawn.

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
    labels_ = arrays["labels"] if arrays["labels"] is not None else np.arange(1, n + 1)
    keep = np.ones(n, dtype=bool) if arrays["scores"] is None else arrays["scores"] >= score_thresh
    overlay = img.astype(np.float64)
    if arrays["masks"] is not None:
        for i in np.flatnonzero(keep):
            overlay[arrays["masks"][i]] = (1 - alpha) * overlay[
                arrays["masks"][i]
            ] + alpha * 255 * np.array(class_color(labels_[i]))
    ax = _new_ax(ax, (6.0, 6.0 * h / max(w, 1)))
    ax.imshow(overlay.astype(np.uint8))
    for i in np.flatnonzero(keep):
        color = class_color(labels_[i])
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
        caption = _name(int(labels_[i]), class_names) if arrays["labels"] is not None else f"#{i}"
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


def training_figure(size: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A figure with loss and learning-rate axes, not registered with pyplot.

    For live redraws through a display handle: pyplot would show it a second time at the end
    of the notebook cell.
    """
    fig = Figure(figsize=(2.5 * size, size), layout="constrained")
    return fig, list(fig.subplots(1, 2))


def draw_training(history: Sequence[Mapping], axes: Sequence[Axes]) -> Sequence[Axes]:
    """Loss components on ``axes[0]`` and the learning rate on ``axes[1]`` (redraws in place)."""
    plot_losses(history, ax=axes[0])
    plot_lr(history, ax=axes[1])
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
    """Per-class and overall AP (percent) for boxes and masks from an ``evaluate_results`` dict."""
    ax = _new_ax(ax)
    types = [t for t in ("bbox", "segm") if t in metrics]
    names = list(metrics[types[0]]["per_class"]) if types else []
    series = {
        t: [_pct(metrics[t]["per_class"][n].get(key)) for n in names] + [_pct(metrics[t].get(key))]
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


def plot_occlusion(breakdown: Mapping[str, Mapping], ax: Axes | None = None) -> Axes:
    """Recall and mean IoU (percent) of occluded against isolated instances (``occlusion_breakdown``)."""
    ax = _new_ax(ax)
    series = {
        f"{bucket} (n={stats['instances']})": [_pct(stats["recall"]), _pct(stats["mean_iou"])]
        for bucket, stats in breakdown.items()
    }
    _grouped_bars(ax, ["recall", "mean IoU"], series, fmt="{:.1f}")
    ax.set_ylabel("%")
    ax.set_title("occluded vs isolated instances")
    return ax


def plot_overlap_histogram(
    overlaps: Mapping[int, float] | Sequence[float],
    ax: Axes | None = None,
    *,
    overlap_thresh: float = OVERLAP_THRESH,
    bins: int = 20,
) -> Axes:
    """Histogram of each instance's largest box IoU with another (``instance_overlap``)."""
    ax = _new_ax(ax)
    values = np.asarray(
        list(overlaps.values()) if isinstance(overlaps, Mapping) else list(overlaps),
        dtype=np.float64,
    )
    ax.hist(values, bins=bins, range=(0.0, 1.0), color="tab:blue")
    ax.axvline(overlap_thresh, color="black", linestyle="--")
    share = float((values >= overlap_thresh).mean()) if values.size else 0.0
    ax.set_xlabel("max box IoU with another instance")
    ax.set_ylabel("instances")
    ax.set_title(
        f"{100 * share:.0f}% of {values.size} instances overlap another (IoU >= {overlap_thresh:g})"
    )
    return ax


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
    return ax


# --- files ----------------------------------------------------------------------------------
def save_figure(
    fig: Figure | Axes, path: str | Path, *, dpi: int = 150, close: bool = False
) -> Path:
    """Write a figure atomically (rendered in memory, then temp file + rename); format from the suffix.

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
    write_bytes_atomic(path, buffer.getvalue())
    if close:
        plt.close(fig)
    return path


def close(fig: Figure | Axes) -> None:
    """Release a pyplot figure (after displaying or saving it elsewhere)."""
    plt.close(fig.figure if isinstance(fig, Axes) else fig)
