"""viz.overlay: draw_instances, ground truth vs prediction, grids and prediction samples."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from seglib.viz import common, overlay

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


def test_draw_instances_draws_instances_above_threshold():
    image = np.full((32, 48, 3), 10, dtype=np.uint8)
    inst = instances()
    ax = overlay.draw_instances(image, **inst, class_names=NAMES, score_thresh=0.5, title="t")
    assert isinstance(ax, Axes)
    assert len(rectangles(ax)) == 2
    assert [t.get_text() for t in ax.texts] == ["cake 0.90", "car 0.60"]
    assert rectangles(ax)[1].get_edgecolor()[:3] == pytest.approx(common.class_color(2))
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
    ax = overlay.draw_instances(
        image, masks=probs, labels=torch.tensor([1, 2, 4]), class_names=NAMES
    )
    shown = ax.images[0].get_array()
    assert shown.dtype == np.uint8 and shown.shape == (32, 48, 3)
    assert shown[5, 5].any() and not shown[20, 30].any()
    assert [t.get_text() for t in ax.texts] == ["cake", "person"]  # captions at mask corners


def test_draw_instances_rejects_mismatched_shapes():
    inst = instances()
    with pytest.raises(ValueError, match="masks must be"):
        overlay.draw_instances(np.zeros((16, 16, 3), dtype=np.uint8), masks=inst["masks"])
    with pytest.raises(ValueError, match="one entry per instance"):
        overlay.draw_instances(
            np.zeros((32, 48, 3), dtype=np.uint8), boxes=inst["boxes"], labels=[1]
        )


def test_draw_instances_takes_colours_and_captions_per_instance():
    inst = instances()
    red = (1.0, 0.0, 0.0)
    ax = overlay.draw_instances(
        np.zeros((32, 48, 3), dtype=np.uint8), **inst, colors=[red] * 3, captions=["a", "b", "c"]
    )
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    assert rectangles(ax)[0].get_edgecolor()[:3] == pytest.approx(red)
    with pytest.raises(ValueError, match="captions"):
        overlay.draw_instances(np.zeros((32, 48, 3), dtype=np.uint8), **inst, captions=["a"])


def test_prediction_vs_gt_and_grid():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    target = {k: v for k, v in instances().items() if k != "scores"}
    fig = overlay.draw_prediction_vs_gt(image, target, instances(), NAMES, score_thresh=0.5)
    assert isinstance(fig, Figure)
    left, right = fig.axes
    assert (len(rectangles(left)), len(rectangles(right))) == (3, 2)
    grid = overlay.draw_instance_grid([(image, target)] * 3, NAMES, ncols=2, titles=["a", "b", "c"])
    assert sum(ax.get_visible() and ax.axison is False and bool(ax.images) for ax in grid.axes) == 3
    assert len(grid.axes) == 4
    fig, axes = common.make_grid(5, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 6


def test_prediction_samples_pairs_images_with_their_decoded_results(synthetic_subset, gt_results):
    from seglib.data.dataset import open_split

    ds = open_split(synthetic_subset, "val")
    coco = ds.coco
    results = gt_results(coco, score=0.7)
    samples = overlay.prediction_samples(ds, results)
    assert len(samples) == len(ds)
    for (image, pred), image_id in zip(samples, ds.ids, strict=True):
        assert image.shape[1:] == (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"])
        assert len(pred["labels"]) == len(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
    last = ds.ids[-1]
    assert (
        len(overlay.prediction_samples(ds, results, [last], score_thresh=0.8)[0][1]["labels"]) == 0
    )
    with pytest.raises(KeyError, match="123456789"):
        overlay.prediction_samples(ds, results, [123456789])
