"""viz.charts: bar charts, PR curves and confusion matrices draw what they claim."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from seglib.viz import charts, files


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rectangles(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_bar_charts():
    counts = {
        "train": {"cake": {"images": 3, "instances": 5}, "car": {"images": 2, "instances": 4}},
        "val": {"cake": {"images": 1, "instances": 1}, "car": {"images": 2, "instances": 2}},
    }
    ax = charts.plot_category_counts(counts)
    assert [p.get_height() for p in rectangles(ax)] == [5, 4, 1, 2]
    sizes = {
        "cake": {"small": 1, "medium": 2, "large": 0},
        "car": {"small": 0, "medium": 0, "large": 3},
    }
    assert len(rectangles(charts.plot_size_distribution(sizes))) == 6
    section = {"AP": 0.5, "per_class": {"cake": {"AP": 0.4}, "car": {"AP": -1.0}}}
    m = {"bbox": section, "segm": {**section, "AP": 0.25}}
    ax = charts.plot_ap_bars(m)
    assert [p.get_height() for p in rectangles(ax)] == [40.0, 0.0, 50.0, 40.0, 0.0, 25.0]
    assert "n/a" in [t.get_text() for t in ax.texts]  # undefined AP, not a zero
    assert len(rectangles(charts.plot_ap_comparison(m, m, ("a", "b")))) == 6


def test_ap_bars_refuse_one_section_the_bug_that_emptied_04s_chart():
    section = {"AP": 0.5, "AP50": 0.8, "per_class": {"cake": {"AP": 0.4, "AP50": 0.7}}}
    with pytest.raises(ValueError, match="pass the whole dict"):
        charts.plot_ap_bars(section)  # notebook 04 used to pass scores["bbox"] here
    ax = charts.plot_ap_bars({"bbox": section, "segm": section}, key="AP50")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cake", "all"]
    assert [a["bars_with_height"] for a in files.figure_content(ax.figure)["axes"]] == [4]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["box", "mask"]


def test_pr_curves_and_confusion():
    curves = {
        "cake": {"recall": [0, 0.5, 1], "precision": [1, 1, 0], "AP": 0.66},
        "all": {"recall": [0, 0.5, 1], "precision": [1, 0.5, 0], "AP": 0.5},
    }
    ax = charts.plot_pr_curves(curves)
    assert [line.get_label() for line in ax.lines] == ["cake (AP 66.0)", "all (AP 50.0)"]
    matrix = np.array([[0, 2, 0], [1, 3, 0], [0, 0, 0]], dtype=np.int64)
    ax = charts.plot_confusion(matrix, ["background", "cake", "car"])
    assert len(ax.texts) == 9 and ax.texts[4].get_text() == "3"
    ax = charts.plot_confusion(matrix, ["background", "cake", "car"], normalize=True)
    assert ax.texts[4].get_text() == "0.75" and ax.texts[8].get_text() == "0.00"


def test_grouped_scores_draw_error_bars_of_the_spread_around_each_mean():
    groups = ["mask AP", "mask AP heavy"]
    means = {"baseline": [0.30, 0.20], "+cp": [0.40, -1.0]}
    spreads = {"baseline": [0.05, 0.10], "+cp": [0.02, 0.0]}
    ax = charts.plot_grouped_scores(groups, means, spreads=spreads)
    heights = sorted(round(r.get_height(), 6) for r in rectangles(ax))
    assert heights == [0.0, 20.0, 30.0, 40.0]  # the undefined score draws no bar
    # one vertical segment per bar, from mean - spread to mean + spread (percent)
    spans = sorted(
        (round(float(seg[0][1]), 6), round(float(seg[1][1]), 6))
        for coll in ax.collections
        for seg in coll.get_segments()
    )
    assert spans == [(0.0, 0.0), (10.0, 30.0), (25.0, 35.0), (38.0, 42.0)]
    plain = charts.plot_grouped_scores(groups, means)
    assert not plain.collections  # no spreads, no error bars


def test_score_curves_draw_a_line_per_score_over_the_sizes_with_error_bars():
    sizes = [36, 72, 144]
    means = {"mask AP50": [0.2, 0.4, -1.0], "mask AP50 heavy": [0.1, 0.15, 0.3]}
    spreads = {"mask AP50": [0.05, 0.1, 0.0], "mask AP50 heavy": [0.0, 0.05, 0.1]}
    ax = charts.plot_score_curves(sizes, means, spreads=spreads, xlabel="training images")
    assert [c.get_label() for c in ax.containers] == list(means)  # one errorbar each
    lines = [c.lines[0] for c in ax.containers]
    y = np.asarray(lines[0].get_ydata(), dtype=float)
    assert list(y[:2]) == [20.0, 40.0] and np.isnan(y[2])  # undefined: a gap, not a 0
    assert list(lines[1].get_xdata()) == sizes and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["36", "72", "144"]
    spans = sorted(
        (round(float(seg[0][1]), 6), round(float(seg[1][1]), 6))
        for coll in ax.collections
        for seg in coll.get_segments()
        if len(seg) == 2  # the undefined point has none
    )
    assert (30.0, 50.0) in spans and (20.0, 40.0) in spans  # 40 ± 10 and 30 ± 10 (percent)
    assert (15.0, 25.0) in spans and (0.0, 20.0) not in spans
    # a spread wider than the score is cut at 0: AP cannot be negative
    low = charts.plot_score_curves([1, 2], {"AP": [0.05, 0.02]}, spreads={"AP": [0.1, 0.01]})
    segments = [seg for coll in low.collections for seg in coll.get_segments() if len(seg) == 2]
    assert sorted((round(a[1], 6), round(b[1], 6)) for a, b in segments) == [(0, 15), (1, 3)]
    content = files.figure_content(ax.figure)
    assert content["axes"][0]["lines"] >= 2
