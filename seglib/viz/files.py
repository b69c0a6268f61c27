"""Figure files: what each notebook saves, what a figure holds, and writing and checking files.

Figures are checked by what they hold, not by existing: ``figure_content`` lists each axes'
bars with height, lines with points and images; ``save_figure`` writes that record beside the
image (``<name>.content.json``), and ``check_figure_file`` fails a missing or blank image or
an axes with no data. ``NOTEBOOK_FIGURES`` declares the figures each notebook saves and
``notebook_figures`` resolves them to paths; a notebook whose figures depend on what can run
here (07: no comparison without a second model) records the ones it draws with
``record_figures``. ``close`` releases a pyplot figure.
"""

from __future__ import annotations

import hashlib
import io
import json
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from seglib.core.atomic import write_bytes_atomic, write_json_atomic


class FigureSet(NamedTuple):
    """The figures one notebook saves, and the ``Paths`` attribute of their folder."""

    folder: str  # "data_figures" (the subset's: 01, 02), "layout.figures" (the selected run's)
    names: tuple[str, ...]


#: Every figure each notebook saves; checked by content after every notebook test run.
NOTEBOOK_FIGURES: dict[str, FigureSet] = {
    "01_data_subset": FigureSet("data_figures", ("01_counts.png", "01_samples.png")),
    "02_data_augmentations": FigureSet(
        "data_figures", ("02_augmentations.png", "02_sizes.png", "02_overlap.png")
    ),
    "03_train": FigureSet("layout.figures", ("03_lr_schedule.png", "03_training.png")),
    "04_evaluate": FigureSet(
        "layout.figures",
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
        "layout.figures", ("05_test_predictions.png", "05_gt_vs_prediction.png", "05_errors.png")
    ),
    "06_occlusion_study": FigureSet(
        "layout.figures",
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
    "08_augmentation_and_data": FigureSet(
        "studies_figures", ("08_preview.png", "08_ablation.png", "08_data_curve.png")
    ),
}


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


def _declared(notebook: str) -> FigureSet:
    if notebook not in NOTEBOOK_FIGURES:
        raise KeyError(
            f"{notebook} declares no figures: add it to seglib.viz.NOTEBOOK_FIGURES "
            "(an empty tuple if it saves none)"
        )
    return NOTEBOOK_FIGURES[notebook]


def figures_record(paths: Any, notebook: str) -> Path:
    """Where ``record_figures`` writes: ``<notebook's figure folder>/<notebook>.figures.json``."""
    return attrgetter(_declared(notebook).folder)(paths) / f"{notebook}.figures.json"


def record_figures(paths: Any, notebook: str, names: Any, *, reason: str = "") -> tuple[str, ...]:
    """Record which of ``notebook``'s declared figures this run draws, before drawing them.

    For a notebook whose figures depend on what can run here, decided from what ran, never
    from the scores: the checks then expect exactly these, so a drawn chart of zeros still
    fails. Each run rewrites the record. ``reason`` says why the others are left out.

    Returns:
        The recorded names, for the notebook's ``if "NN_name.png" in figures:`` guards.

    Raises:
        KeyError: the notebook declares no figures.
        ValueError: a name it does not declare in ``NOTEBOOK_FIGURES``.
    """
    declared, names = _declared(notebook).names, tuple(names)
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ValueError(f"{notebook} does not declare {unknown}; it declares {list(declared)}")
    left_out = [n for n in declared if n not in names]
    record = {"notebook": notebook, "figures": list(names), "left_out": left_out}
    write_json_atomic(figures_record(paths, notebook), {**record, "reason": reason})
    return names


def notebook_figures(paths: Any, notebook: str) -> list[Path]:
    """The files ``NOTEBOOK_FIGURES`` declares for ``notebook`` (its stem), under ``paths``;
    only those its last run recorded drawing when it keeps a ``record_figures`` record.

    Raises:
        KeyError: the notebook declares no figures (names where to declare them).
    """
    folder, names = _declared(notebook)
    record = figures_record(paths, notebook)
    if record.is_file():
        drawn = json.loads(record.read_text())["figures"]
        names = tuple(n for n in names if n in drawn)
    return [attrgetter(folder)(paths) / name for name in names]


def close(fig: Figure | Axes) -> None:
    """Release a pyplot figure (after displaying or saving it elsewhere)."""
    plt.close(fig.figure if isinstance(fig, Axes) else fig)
