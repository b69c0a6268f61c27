"""viz.files: figures saved atomically with a content record, and checked by what they hold."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json  # noqa: E402
from operator import attrgetter  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from seglib.viz import charts, common, files, overlay, training


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_save_figure_is_atomic_png(tmp_path):
    ax = overlay.draw_instances(np.zeros((8, 8, 3), dtype=np.uint8))
    out = files.save_figure(ax, tmp_path / "sub" / "overlay.png", dpi=50, close=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["overlay.content.json", "overlay.png"]
    assert not plt.fignum_exists(ax.figure.number)
    fig = training.plot_lr([])
    with pytest.raises(ValueError, match=r"'\.xyz' is not one of"):
        files.save_figure(fig, tmp_path / "x.xyz")
    assert not (tmp_path / "x.xyz").exists()


def test_figure_content_tells_full_axes_from_empty_ones():
    fig, axes = common.make_grid(7, ncols=4)
    axes[0].bar([0, 1], [0.0, 2.0])
    axes[1].bar([0, 1], [0.0, 0.0])  # bars without height: an empty chart
    axes[2].plot([0, 1, 2], [0.5, 0.4, 0.3])
    axes[3].plot([0, 1, 2], [0.0, 0.0, 0.0])  # a PR curve of a model at AP 0
    axes[3].axvline(0.5)  # reference lines are not data
    axes[4].imshow(np.random.default_rng(0).random((4, 4)))
    axes[5].imshow(np.zeros((4, 4)))  # a constant image shows nothing
    axes[6].set_title("nothing drawn")
    content = files.figure_content(fig)
    assert [a["has_data"] for a in content["axes"][:7]] == [1, 0, 1, 0, 1, 0, 0]
    assert content["axes"][7]["hidden"]  # make_grid's spare panel is not held against it
    assert content["empty_axes"] == [1, 3, 5, 6]
    assert content["axes"][0]["bars_with_height"] == 1 and content["axes"][2]["points"] == 3
    assert content["axes"][6]["title"] == "nothing drawn"


def test_saved_figures_are_checked_for_presence_blankness_and_empty_axes(tmp_path):
    fig, axes = common.make_grid(2, ncols=2)
    axes[0].plot([0, 1], [1, 2])
    axes[1].bar([0], [3.0])
    good = files.save_figure(fig, tmp_path / "good.png", dpi=40)
    assert files.check_figure_file(good) == []
    record = json.loads(files.content_file(good).read_text())
    assert record["file"] == "good.png" and record["empty_axes"] == []

    fig, axes = common.make_grid(2, ncols=2)
    axes[0].plot([0, 1], [1, 2])
    axes[1].set_title("AP per class")
    problems = files.check_figure_file(files.save_figure(fig, tmp_path / "half.png", dpi=40))
    assert len(problems) == 1 and "'AP per class'" in problems[0] and "no data" in problems[0]

    blank = Figure(figsize=(2, 2))
    problems = files.check_figure_file(files.save_figure(blank, tmp_path / "blank.png", dpi=40))
    assert any("blank" in p for p in problems)

    assert "missing" in files.check_figure_file(tmp_path / "absent.png")[0]
    (tmp_path / "good.png").write_bytes(blank_png := (tmp_path / "blank.png").read_bytes())
    assert blank_png and any("another version" in p for p in files.check_figure_file(good))
    files.content_file(good).unlink()
    assert any("content.json is missing" in p for p in files.check_figure_file(good))


def test_every_notebook_declares_its_figures_in_its_own_folder(tmp_path):
    from seglib.core.paths import Paths, RunFolder, get_paths

    assert list(files.NOTEBOOK_FIGURES)[:5] == [
        "01_data_subset",
        "02_data_augmentations",
        "03_train",
        "04_evaluate",
        "05_inference_viz",
    ]
    for notebook, (folder, names) in files.NOTEBOOK_FIGURES.items():
        assert all(name.startswith(notebook[:3]) and name.endswith(".png") for name in names)
        owner, _, attr = folder.rpartition(".")
        cls = RunFolder if owner == "layout" else Paths
        assert isinstance(getattr(cls, attr), property), f"{notebook}: no Paths.{folder}"
    paths = get_paths("smoke", tmp_path, run="r1")
    assert files.notebook_figures(paths, "01_data_subset")[0].parent == paths.subset / "figures"
    assert files.notebook_figures(paths, "04_evaluate")[0].parent == paths.run_dir("r1") / "figures"
    with pytest.raises(KeyError, match="NOTEBOOK_FIGURES"):
        files.notebook_figures(paths, "99_unknown")


def test_a_comparison_chart_of_zeros_or_undefined_scores_holds_no_data(tmp_path):
    """07's charts: a model at AP 0 everywhere (or a bucket without instances) shows nothing."""
    groups = ["cake", "dog", "all"]
    zeros = charts.plot_grouped_scores(groups, {"mask-rcnn-v1": [0.0, 0.0, 0.0]}, title="zeros")
    undefined = charts.plot_grouped_scores(groups, {"m": [-1.0, None, -1.0]}, title="n/a")
    full = charts.plot_grouped_scores(groups, {"a": [0.0, 0.0, 0.0], "b": [0.0, 0.02, 0.01]})
    for ax, name in ((zeros, "zeros"), (undefined, "undefined")):
        (problem,) = files.check_figure_file(
            files.save_figure(ax, tmp_path / f"{name}.png", dpi=40)
        )
        assert "holds no data" in problem
    assert files.check_figure_file(files.save_figure(full, tmp_path / "full.png", dpi=40)) == []


def test_a_recorded_notebook_is_checked_for_the_figures_it_could_draw(tmp_path):
    from seglib.core.paths import get_paths

    paths = get_paths("smoke", tmp_path)
    notebook, (folder, declared) = (
        "07_detr_comparison",
        files.NOTEBOOK_FIGURES["07_detr_comparison"],
    )
    everything = [attrgetter(folder)(paths) / name for name in declared]
    assert files.notebook_figures(paths, notebook) == everything  # no record: all of them
    assert files.record_figures(paths, notebook, (), reason="nothing to compare") == ()
    record = json.loads(files.figures_record(paths, notebook).read_text())
    assert record["left_out"] == list(declared) and record["reason"] == "nothing to compare"
    assert files.notebook_figures(paths, notebook) == []
    files.record_figures(paths, notebook, declared[:1])  # each run rewrites the record
    assert files.notebook_figures(paths, notebook) == everything[:1]
    with pytest.raises(ValueError, match="does not declare"):
        files.record_figures(paths, notebook, ["07_new_chart.png"])
    with pytest.raises(KeyError, match="NOTEBOOK_FIGURES"):
        files.record_figures(paths, "99_unknown", ())
