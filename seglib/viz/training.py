"""Training curves: losses, learning rate and validation AP from metrics.jsonl rows.

``plot_losses`` / ``plot_loss_components`` draw every loss the history holds (``loss_keys``:
Mask R-CNN's ``LOSS_KEYS`` first, then any other ``loss*`` key, e.g. Mask2Former's
``loss_cross_entropy`` and ``loss_dice``); ``plot_lr``, ``plot_val_ap``, ``plot_metric`` and
``plot_lr_schedule`` (the schedule before a run starts) draw one value each;
``training_figure`` / ``draw_training`` are the live view, ``plot_training_summary`` a finished
run and ``plot_run_comparison`` several runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from seglib.engine.schedule import lr_factor
from seglib.viz.common import _new_ax, class_color, make_grid

#: Mask R-CNN's losses (torchvision's names), in the order the plots show them.
LOSS_KEYS = (
    "loss",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_objectness",
    "loss_rpn_box_reg",
)


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


def loss_keys(history: Sequence[Mapping]) -> list[str]:
    """Every key starting with ``loss`` that some row of ``history`` holds a value for.

    ``LOSS_KEYS`` (Mask R-CNN's) first, in their order, then the others (another
    architecture's, e.g. Mask2Former's ``loss_cross_entropy``, ``loss_dice``) sorted.
    """
    present = {
        key
        for row in history
        for key, value in row.items()
        if key.startswith("loss") and value is not None
    }
    return [k for k in LOSS_KEYS if k in present] + sorted(present - set(LOSS_KEYS))


def _loss_color(key: str, keys: Sequence[str]) -> Any:
    """Black for the total, a fixed colour per ``LOSS_KEYS`` entry, then colours after those."""
    if key == "loss":
        return "black"
    if key in LOSS_KEYS:
        return class_color(LOSS_KEYS.index(key))
    others = [k for k in keys if k not in LOSS_KEYS]
    return class_color(len(LOSS_KEYS) + others.index(key))


def plot_losses(
    history: Sequence[Mapping], ax: Axes | None = None, *, smooth: int = 1, logy: bool = False
) -> Axes:
    """One line per loss component and a bold total, against iteration.

    ``history`` holds metrics.jsonl rows; every loss in it is drawn (``loss_keys``), and rows
    without a loss key (e.g. eval rows) are skipped for that key. ``smooth`` is a moving-average window in logged points. The axes are
    cleared first, so a live callback can redraw into the same axes.
    """
    ax = _new_ax(ax)
    ax.clear()
    for key in loss_keys(history):
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
    """Each loss of ``history`` (``loss_keys``) on its own axes, with its own scale.

    For Mask R-CNN: total, classifier, box, mask, RPN objectness and RPN box; for Mask2Former:
    total, mask, cross-entropy and dice. Components differ by orders of magnitude (the mask
    loss of a random init starts near 17, the RPN box loss near 0.05), so one shared linear
    axis would flatten all but one.
    """
    keys = loss_keys(history)
    if axes is None:
        _, axes = make_grid(max(len(keys), 1), ncols=3, size=2.6)
    for ax, key in zip(axes, keys, strict=False):
        xs, ys = _series(history, key)
        ax.plot(xs, ys, color=_loss_color(key, keys))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    return axes[0].figure


def plot_training_summary(history: Sequence[Mapping]) -> Figure:
    """One figure of a finished run: every loss on its own axes, the lr, and validation AP."""
    keys = loss_keys(history)
    fig, axes = make_grid(len(keys) + 2, ncols=4, size=2.6)
    plot_loss_components(history, axes[: len(keys)])
    plot_lr(history, ax=axes[len(keys)])
    plot_val_ap(history, ax=axes[len(keys) + 1])
    return fig


def plot_lr_schedule(cfg: Any, num_train_images: int, ax: Axes | None = None) -> Axes:
    """The learning rate the run will use at every step, before it starts (``schedule.lr_factor``).

    ``num_train_images`` sets the steps per epoch (ceil(n / batch_size)); a ``max_iters`` cap
    is drawn as a dashed line where training will stop.
    """

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


def plot_run_comparison(
    summaries: Sequence[Mapping], axes: Sequence[Axes] | None = None, *, smooth: int = 5
) -> Figure:
    """Several runs on one figure: total training loss (log scale) and validation mask AP50.

    ``summaries`` are ``seglib.app.runs.run_summary`` dicts (name, history, evals). Each run keeps
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
