"""Evaluation and data charts: bars per class or bucket, PR curves and confusion matrices.

Per-class AP bars (``plot_ap_bars``) and comparisons of two runs or several models
(``plot_ap_comparison``, ``plot_grouped_scores``), scores against training-set size
(``plot_score_curves``), precision-recall curves, confusion
matrices, the subset's category counts and instance sizes, and the occlusion charts
(``plot_occlusion_levels``, ``plot_bucket_metrics``, ``plot_occlusion_study``). Scores come in
0..1 and are drawn in percent; an undefined score (-1 or None) draws no bar, labelled "n/a".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from seglib.evaluation.occlusion import BUCKETS, HEAVY_FROM, ROWS, bucket_of
from seglib.viz.common import BUCKET_COLORS, _new_ax, _numpy, _pct


# --- bars per class, split or model -------------------------------------------------------
def _clipped_errors(values: np.ndarray, spread: Sequence[float]) -> np.ndarray:
    """(2, n) error bar lengths of ``values`` ± ``spread`` in percent, cut at 0 and 100 (a
    score cannot leave them); none where a value is undefined (NaN)."""
    spread = np.asarray(spread, dtype=np.float64)
    lower = np.minimum(spread, np.maximum(values, 0.0))
    upper = np.minimum(spread, np.maximum(100.0 - values, 0.0))
    return np.nan_to_num(np.stack([lower, upper]))


def _grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    fmt: str = "{:g}",
    colors: Sequence | None = None,
    errors: Mapping[str, Sequence[float]] | None = None,
) -> Axes:
    """Bars of each series side by side per group; NaN (undefined) draws no bar, labelled "n/a".

    ``errors`` (per series, in the bars' units) draws a symmetric error bar on each bar.
    """
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for j, (name, values) in enumerate(series.items()):
        heights = np.asarray(values, dtype=np.float64)
        yerr = None
        if errors is not None and name in errors:
            yerr = _clipped_errors(heights, errors[name])
        bars = ax.bar(
            x + (j - (len(series) - 1) / 2) * width,
            np.nan_to_num(heights),
            width,
            label=name,
            color=colors[j] if colors else None,
            yerr=yerr,
            capsize=3 if yerr is not None else 0,
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
    spreads: Mapping[str, Sequence[float]] | None = None,
) -> Axes:
    """Bars of 0-1 scores in percent, one colour per series (a model), side by side per group.

    ``seglib.studies.comparison_report.ap_series`` and ``occlusion_series`` give ``groups`` and ``series``;
    a score of -1 or None (undefined) draws no bar, labelled "n/a". ``spreads`` (0-1, per
    series, e.g. the standard deviation over seeds of ``seglib.studies.study_report.study_series``)
    draws error bars of plus and minus that much.
    """
    ax = _new_ax(ax, (7.0, 4.0))
    values = {name: [_pct(v) for v in scores] for name, scores in series.items()}
    errors = None
    if spreads is not None:
        errors = {name: [100 * float(e) for e in spread] for name, spread in spreads.items()}
    _grouped_bars(ax, groups, values, fmt="{:.1f}", errors=errors)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def plot_score_curves(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    ax: Axes | None = None,
    *,
    spreads: Mapping[str, Sequence[float]] | None = None,
    xlabel: str = "",
    ylabel: str = "AP (%)",
    title: str = "",
    log_x: bool = True,
) -> Axes:
    """0-1 scores in percent against ``x`` (training-set sizes), one line per series.

    ``seglib.studies.study_report.curve_series`` gives ``x``, ``series`` and ``spreads`` (the
    standard deviation over seeds, drawn as error bars). An undefined score (-1 or None)
    leaves a gap. ``log_x`` spaces sizes that double evenly, with the sizes as ticks.
    """
    ax = _new_ax(ax, (7.0, 4.0))
    xs = np.asarray(x, dtype=np.float64)
    for name, scores in series.items():
        y = np.asarray([_pct(v) for v in scores], dtype=np.float64)
        err = None
        if spreads is not None and name in spreads:
            err = _clipped_errors(y, 100 * np.asarray(spreads[name], dtype=np.float64))
        ax.errorbar(xs, y, yerr=err, marker="o", capsize=3, label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(xs, [f"{v:g}" for v in xs])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return ax


# --- curves and matrices ---------------------------------------------------------------------
def plot_pr_curves(curves: Mapping[str, Mapping], ax: Axes | None = None) -> Axes:
    """Precision against recall per class (``coco_ap.pr_curves``); "all" dashed black."""
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


# --- occlusion (seglib.evaluation.occlusion, seglib.studies.occlusion_study; notebooks 02, 04, 06) ----------------------
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
    rotate = len(groups) > 4  # long rows of labels slant, right-aligned to their tick
    ax.set_xticks(x, list(groups), rotation=30 if rotate else 0, ha="right" if rotate else "center")
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


def plot_bucket_metrics(table: Mapping[str, Mapping], ax: Axes | None = None) -> Axes:
    """Box AP, mask AP, recall and best-match IoU (percent) per bucket, from
    ``occlusion.occlusion_ap``."""
    ax = _new_ax(ax, (6.5, 4.0))
    rows = [r for r in ROWS if r in table]
    series = {
        f"{row} (n={table[row]['instances']})": [
            table[row]["bbox"]["AP"],
            table[row]["segm"]["AP"],
            table[row]["recall"],
            table[row]["best_match_iou"],
        ]
        for row in rows
    }
    _bucket_bars(ax, ["box AP", "mask AP", "recall", "best-match IoU"], series)
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
