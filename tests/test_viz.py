"""Plotting helpers render headless (Agg), return axes/figures and draw what they claim."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from seglib import viz  # noqa: E402

NAMES = ["cake", "car", "dog", "person"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def instances():
    masks = np.zeros((3, 32, 48), dtype=np.uint8)
    masks[0, 2:10, 2:10] = 1
    masks[1, 15:25, 20:40] = 1
    masks[2, 0:5, 40:48] = 1
    return {
        "boxes": np.array([[2, 2, 10, 10], [20, 15, 40, 25], [40, 0, 48, 5]], dtype=np.float32),
        "masks": masks,
        "labels": np.array([1, 2, 4]),
        "scores": np.array([0.9, 0.6, 0.2], dtype=np.float32),
    }


def rectangles(ax: Axes) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_class_colors_are_fixed_and_distinct():
    assert viz.class_color(1) == viz.class_color(1)
    assert len({viz.class_color(i) for i in range(1, 5)}) == 4
    assert viz.class_color(0) == viz.BACKGROUND_COLOR


def test_draw_instances_draws_instances_above_threshold():
    image = np.full((32, 48, 3), 10, dtype=np.uint8)
    inst = instances()
    ax = viz.draw_instances(image, **inst, class_names=NAMES, score_thresh=0.5, title="t")
    assert isinstance(ax, Axes)
    assert len(rectangles(ax)) == 2
    assert [t.get_text() for t in ax.texts] == ["cake 0.90", "car 0.60"]
    assert rectangles(ax)[1].get_edgecolor()[:3] == pytest.approx(viz.class_color(2))
    shown = ax.images[0].get_array()
    assert (shown[inst["masks"][0] == 1] != 10).all()  # overlaid
    assert (shown[inst["masks"][2] == 1] == 10).all()  # score 0.2: not drawn
    assert (shown[0, 20] == 10).all()  # background untouched
    ax.figure.canvas.draw()
    assert np.asarray(ax.figure.canvas.buffer_rgba()).std() > 0


def test_draw_instances_accepts_tensors_and_probabilities():
    torch = pytest.importorskip("torch")
    inst = instances()
    image = torch.zeros(3, 32, 48)
    probs = torch.from_numpy(inst["masks"]).float()[:, None] * 0.7  # [N,1,H,W] above 0.5
    probs[1] = 0.3  # below 0.5: an empty mask
    ax = viz.draw_instances(image, masks=probs, labels=torch.tensor([1, 2, 4]), class_names=NAMES)
    shown = ax.images[0].get_array()
    assert shown.dtype == np.uint8 and shown.shape == (32, 48, 3)
    assert shown[5, 5].any() and not shown[20, 30].any()
    assert [t.get_text() for t in ax.texts] == ["cake", "person"]  # captions at mask corners


def test_draw_instances_rejects_mismatched_shapes():
    inst = instances()
    with pytest.raises(ValueError, match="masks must be"):
        viz.draw_instances(np.zeros((16, 16, 3), dtype=np.uint8), masks=inst["masks"])
    with pytest.raises(ValueError, match="one entry per instance"):
        viz.draw_instances(np.zeros((32, 48, 3), dtype=np.uint8), boxes=inst["boxes"], labels=[1])


def test_prediction_vs_gt_and_grid():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    target = {k: v for k, v in instances().items() if k != "scores"}
    fig = viz.draw_prediction_vs_gt(image, target, instances(), NAMES, score_thresh=0.5)
    assert isinstance(fig, Figure)
    left, right = fig.axes
    assert (len(rectangles(left)), len(rectangles(right))) == (3, 2)
    grid = viz.draw_instance_grid([(image, target)] * 3, NAMES, ncols=2, titles=["a", "b", "c"])
    assert sum(ax.get_visible() and ax.axison is False and bool(ax.images) for ax in grid.axes) == 3
    assert len(grid.axes) == 4
    fig, axes = viz.make_grid(5, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 6


def test_plot_losses_and_lr():
    history = [
        {
            "iteration": i,
            "epoch": 0,
            "lr": 0.001 * i,
            "loss": 3.0 - i * 0.1,
            "loss_classifier": 1.0,
            "loss_box_reg": 0.5,
            "loss_mask": 0.7,
            "loss_objectness": 0.3,
            "loss_rpn_box_reg": 0.1,
        }
        for i in range(10)
    ]
    history.append({"epoch": 0, "segm_AP": 0.1})
    ax = viz.plot_losses(history, smooth=3)
    assert len(ax.lines) == 6 and len(ax.lines[0].get_xdata()) == 8
    viz.plot_losses(history, ax=ax)  # redrawing replaces the lines
    assert len(ax.lines) == 6
    assert len(viz.plot_lr(history).lines[0].get_xdata()) == 10
    assert list(viz.plot_metric(history, "segm_AP").lines[0].get_ydata()) == [0.1]


def test_bar_charts():
    counts = {
        "train": {"cake": {"images": 3, "instances": 5}, "car": {"images": 2, "instances": 4}},
        "val": {"cake": {"images": 1, "instances": 1}, "car": {"images": 2, "instances": 2}},
    }
    ax = viz.plot_category_counts(counts)
    assert [p.get_height() for p in rectangles(ax)] == [5, 4, 1, 2]
    sizes = {
        "cake": {"small": 1, "medium": 2, "large": 0},
        "car": {"small": 0, "medium": 0, "large": 3},
    }
    assert len(rectangles(viz.plot_size_distribution(sizes))) == 6
    section = {"AP": 0.5, "per_class": {"cake": {"AP": 0.4}, "car": {"AP": -1.0}}}
    m = {"bbox": section, "segm": {**section, "AP": 0.25}}
    ax = viz.plot_ap_bars(m)
    assert [p.get_height() for p in rectangles(ax)] == [40.0, 0.0, 50.0, 40.0, 0.0, 25.0]
    assert "n/a" in [t.get_text() for t in ax.texts]  # undefined AP, not a zero
    assert len(rectangles(viz.plot_ap_comparison(m, m, ("a", "b")))) == 6
    breakdown = {
        "occluded": {"instances": 2, "recall": 0.5, "mean_iou": 0.4},
        "isolated": {"instances": 3, "recall": 1.0, "mean_iou": 0.9},
    }
    assert [p.get_height() for p in rectangles(viz.plot_occlusion(breakdown))] == [
        50.0,
        40.0,
        100.0,
        90.0,
    ]
    ax = viz.plot_overlap_histogram({1: 0.0, 2: 0.3, 3: 0.5}, overlap_thresh=0.1)
    assert "67%" in ax.get_title()


def test_pr_curves_and_confusion():
    curves = {
        "cake": {"recall": [0, 0.5, 1], "precision": [1, 1, 0], "AP": 0.66},
        "all": {"recall": [0, 0.5, 1], "precision": [1, 0.5, 0], "AP": 0.5},
    }
    ax = viz.plot_pr_curves(curves)
    assert [line.get_label() for line in ax.lines] == ["cake (AP 66.0)", "all (AP 50.0)"]
    matrix = np.array([[0, 2, 0], [1, 3, 0], [0, 0, 0]], dtype=np.int64)
    ax = viz.plot_confusion(matrix, ["background", "cake", "car"])
    assert len(ax.texts) == 9 and ax.texts[4].get_text() == "3"
    ax = viz.plot_confusion(matrix, ["background", "cake", "car"], normalize=True)
    assert ax.texts[4].get_text() == "0.75" and ax.texts[8].get_text() == "0.00"


def test_save_figure_is_atomic_png(tmp_path):
    ax = viz.draw_instances(np.zeros((8, 8, 3), dtype=np.uint8))
    out = viz.save_figure(ax, tmp_path / "sub" / "overlay.png", dpi=50, close=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]
    assert not plt.fignum_exists(ax.figure.number)
    fig = viz.plot_lr([])
    with pytest.raises(ValueError, match=r"'\.xyz' is not one of"):
        viz.save_figure(fig, tmp_path / "x.xyz")
    assert not (tmp_path / "x.xyz").exists()


def test_training_figure_redraws_in_place_and_is_not_registered_with_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig, axes = viz.training_figure()
    assert plt.get_fignums() == before
    history = [
        {"iteration": i, "lr": 0.01 * i, "loss": 3.0 - i, "loss_mask": 1.0} for i in range(3)
    ]
    viz.draw_training(history, axes)
    viz.draw_training(history[:2], axes)
    assert len(axes[1].lines) == 1 and len(axes[1].lines[0].get_xdata()) == 2


def test_prediction_samples_pairs_images_with_their_decoded_results(synthetic_subset):
    import pycocotools.mask as mask_utils

    from seglib.dataset import open_split

    ds = open_split(synthetic_subset, "val")
    coco = ds.coco
    results = []
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False)):
        rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": 0.7,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    samples = viz.prediction_samples(ds, results)
    assert len(samples) == len(ds)
    for (image, pred), image_id in zip(samples, ds.ids, strict=True):
        assert image.shape[1:] == (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"])
        assert len(pred["labels"]) == len(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
    last = ds.ids[-1]
    assert len(viz.prediction_samples(ds, results, [last], score_thresh=0.8)[0][1]["labels"]) == 0
    with pytest.raises(KeyError, match="123456789"):
        viz.prediction_samples(ds, results, [123456789])
