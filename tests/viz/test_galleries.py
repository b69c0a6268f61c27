"""viz.galleries: error gallery and model comparison over a synthetic split."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from seglib.viz import files, galleries


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def rectangles(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_error_gallery_colours_hits_false_alarms_and_misses(synthetic_subset, gt_results):
    from seglib.data.dataset import open_split

    ds = open_split(synthetic_subset, "test")
    results = gt_results(ds.coco)
    first = ds.ids[0]
    # Drop one instance of the first image (a miss) and relabel another (a false positive).
    mine = [r for r in results if r["image_id"] == first]
    assert len(mine) >= 2
    wrong = {**mine[1], "category_id": mine[1]["category_id"] % len(ds.categories) + 1}
    shown = [r for r in results if r not in mine[:2]] + [wrong]
    fig = galleries.error_gallery(ds, shown, [first, ds.ids[1]])
    assert len(fig.axes) == 4 and files.figure_content(fig)["empty_axes"] == []
    right = fig.axes[1]
    assert right.get_title().startswith(f"TP {len(mine) - 2} · FP 1 · missed 2")
    captions = [t.get_text() for t in right.texts]
    assert sum(c.startswith("FP ") for c in captions) == 1
    assert sum(c.startswith("missed ") for c in captions) == 2
    edge = {
        t.get_text().split()[0]: r.get_edgecolor()[:3]
        for t, r in zip(right.texts, rectangles(right), strict=True)
    }
    assert edge["FP"] == pytest.approx(galleries.OUTCOME_COLORS["fp"])
    assert edge["missed"] == pytest.approx(galleries.OUTCOME_COLORS["missed"])
    assert fig.axes[3].get_title().startswith("TP ")


def test_model_comparison_shows_ground_truth_and_each_model_on_the_same_images(
    synthetic_subset, gt_results
):
    from seglib.data.dataset import open_split

    ds = open_split(synthetic_subset, "val")
    results = gt_results(ds.coco)
    fig = galleries.draw_model_comparison(ds, ds.ids[:2], {"fine-tuned": results, "zero-shot": []})
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].endswith("ground truth") and titles[1].startswith("fine-tuned (")
    assert titles[2] == "zero-shot (0 with score >= 0.5)"
    assert len(rectangles(fig.axes[1])) == len(rectangles(fig.axes[0])) > 0


def test_occlusion_gallery_names_each_instance_by_its_class(synthetic_subset):
    """The split keeps COCO's ids (cake 61, dog 18): captions go through the label map."""
    from seglib.data.dataset import open_split
    from seglib.evaluation import occlusion

    ds = open_split(synthetic_subset, "test")
    levels = occlusion.occlusion_levels(ds.coco)
    ids = [
        i
        for i in ds.ids
        if any(a["category_id"] > len(ds.categories) for a in ds.coco.imgToAnns[i])
    ]
    assert ids, "the fixture should hold a category whose COCO id is above k"
    fig = galleries.draw_occlusion_gallery(ds, ids[:2], levels)
    names = {t.get_text().split()[0] for ax in fig.axes for t in ax.texts}
    assert names and names <= set(ds.class_names)
