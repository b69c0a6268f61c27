"""Shared helpers of ``seglib.viz``: fixed colours, array conversion, new axes and grids.

Every other ``viz`` submodule imports from here (and never from the package itself), so the
import graph stays acyclic. ``class_color``, ``BACKGROUND_COLOR``, ``BUCKET_COLORS`` and
``make_grid`` are public; the underscored helpers are for the other ``viz`` submodules only.
Every new figure comes from ``_subplots``, which lets a Jupyter kernel show it whatever the
backend (``viz.jupyter``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from seglib.viz.jupyter import show_in_kernel

BACKGROUND_COLOR = (0.6, 0.6, 0.6)
#: One colour per occlusion bucket, the same in every figure (none calm, heavy alarming).
BUCKET_COLORS = {
    "all": (0.35, 0.35, 0.35),
    "none": (0.30, 0.60, 0.85),
    "partial": (0.95, 0.65, 0.20),
    "heavy": (0.85, 0.20, 0.20),
}


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


def _subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots``, after making sure a Jupyter kernel shows the figure whatever the
    backend (``viz.jupyter.show_in_kernel``). Every new ``viz`` figure comes from here."""
    show_in_kernel()
    return plt.subplots(*args, **kwargs)


def _new_ax(ax: Axes | None, figsize: tuple[float, float] = (6.0, 4.0)) -> Axes:
    if ax is None:
        _, ax = _subplots(figsize=figsize, layout="constrained")
    return ax


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return str(label)


def _pct(value: float | None) -> float:
    return float("nan") if value is None or value < 0 else 100.0 * value


def make_grid(n: int, ncols: int = 4, size: float = 3.0) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` square panels, ``ncols`` per row; spare panels are hidden."""
    if n < 1 or ncols < 1:
        raise ValueError(f"need n >= 1 and ncols >= 1, got n={n}, ncols={ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = _subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]
