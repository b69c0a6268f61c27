"""Plotting helpers render headless (Agg), return axes/figures and draw what they claim."""

from __future__ import annotations

import json

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
    assert sorted(p.name for p in out.parent.iterdir()) == ["overlay.content.json", "overlay.png"]
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
    viz.draw_training(history[:2], axes, [{"epoch": 1, "segm_AP": 0.2, "segm_AP50": 0.4}])
    assert len(axes[1].lines) == 1 and len(axes[1].lines[0].get_xdata()) == 2
    assert axes[0].get_yscale() == "log"  # components differ by orders of magnitude
    assert [list(line.get_ydata()) for line in axes[2].lines] == [[20.0], [40.0]]


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


# --- figures checked by content ----------------------------------------------------------------
def coco_results(ds, score=0.9):
    """Results equal to the ground truth of ``ds`` (every non-crowd instance, one score)."""
    import pycocotools.mask as mask_utils

    coco = ds.coco
    results = []
    for ann in coco.loadAnns(coco.getAnnIds(iscrowd=False)):
        rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": score,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    return results


def test_figure_content_tells_full_axes_from_empty_ones():
    fig, axes = viz.make_grid(7, ncols=4)
    axes[0].bar([0, 1], [0.0, 2.0])
    axes[1].bar([0, 1], [0.0, 0.0])  # bars without height: an empty chart
    axes[2].plot([0, 1, 2], [0.5, 0.4, 0.3])
    axes[3].plot([0, 1, 2], [0.0, 0.0, 0.0])  # a PR curve of a model at AP 0
    axes[3].axvline(0.5)  # reference lines are not data
    axes[4].imshow(np.random.default_rng(0).random((4, 4)))
    axes[5].imshow(np.zeros((4, 4)))  # a constant image shows nothing
    axes[6].set_title("nothing drawn")
    content = viz.figure_content(fig)
    assert [a["has_data"] for a in content["axes"][:7]] == [1, 0, 1, 0, 1, 0, 0]
    assert content["axes"][7]["hidden"]  # make_grid's spare panel is not held against it
    assert content["empty_axes"] == [1, 3, 5, 6]
    assert content["axes"][0]["bars_with_height"] == 1 and content["axes"][2]["points"] == 3
    assert content["axes"][6]["title"] == "nothing drawn"


def test_ap_bars_refuse_one_section_the_bug_that_emptied_04s_chart():
    section = {"AP": 0.5, "AP50": 0.8, "per_class": {"cake": {"AP": 0.4, "AP50": 0.7}}}
    with pytest.raises(ValueError, match="pass the whole dict"):
        viz.plot_ap_bars(section)  # notebook 04 used to pass scores["bbox"] here
    ax = viz.plot_ap_bars({"bbox": section, "segm": section}, key="AP50")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cake", "all"]
    assert [a["bars_with_height"] for a in viz.figure_content(ax.figure)["axes"]] == [4]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["box", "mask"]


def test_saved_figures_are_checked_for_presence_blankness_and_empty_axes(tmp_path):
    fig, axes = viz.make_grid(2, ncols=2)
    axes[0].plot([0, 1], [1, 2])
    axes[1].bar([0], [3.0])
    good = viz.save_figure(fig, tmp_path / "good.png", dpi=40)
    assert viz.check_figure_file(good) == []
    record = json.loads(viz.content_file(good).read_text())
    assert record["file"] == "good.png" and record["empty_axes"] == []

    fig, axes = viz.make_grid(2, ncols=2)
    axes[0].plot([0, 1], [1, 2])
    axes[1].set_title("AP per class")
    problems = viz.check_figure_file(viz.save_figure(fig, tmp_path / "half.png", dpi=40))
    assert len(problems) == 1 and "'AP per class'" in problems[0] and "no data" in problems[0]

    blank = Figure(figsize=(2, 2))
    problems = viz.check_figure_file(viz.save_figure(blank, tmp_path / "blank.png", dpi=40))
    assert any("blank" in p for p in problems)

    assert "missing" in viz.check_figure_file(tmp_path / "absent.png")[0]
    (tmp_path / "good.png").write_bytes(blank_png := (tmp_path / "blank.png").read_bytes())
    assert blank_png and any("another version" in p for p in viz.check_figure_file(good))
    viz.content_file(good).unlink()
    assert any("content.json is missing" in p for p in viz.check_figure_file(good))


def test_every_notebook_declares_its_figures_in_its_own_folder(tmp_path):
    from seglib.paths import Paths, get_paths

    assert list(viz.NOTEBOOK_FIGURES)[:5] == [
        "01_data_subset",
        "02_data_augmentations",
        "03_train",
        "04_evaluate",
        "05_inference_viz",
    ]
    for notebook, (folder, names) in viz.NOTEBOOK_FIGURES.items():
        assert all(name.startswith(notebook[:3]) and name.endswith(".png") for name in names)
        assert isinstance(getattr(Paths, folder), property), f"{notebook}: no Paths.{folder}"
    paths = get_paths("smoke", tmp_path, run="r1")
    assert viz.notebook_figures(paths, "01_data_subset")[0].parent == paths.subset / "figures"
    assert viz.notebook_figures(paths, "04_evaluate")[0].parent == paths.run_dir("r1") / "figures"
    with pytest.raises(KeyError, match="NOTEBOOK_FIGURES"):
        viz.notebook_figures(paths, "99_unknown")


def test_lr_schedule_plot_is_the_training_loops_schedule():
    from seglib.config import TrainConfig
    from seglib.optim import lr_factor

    cfg = TrainConfig.smoke(num_epochs=3, batch_size=2, warmup_iters=4, max_iters=10)
    ax = viz.plot_lr_schedule(cfg, num_train_images=7)  # 4 steps per epoch, 12 in all
    xs, ys = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    assert list(xs) == list(range(12))
    assert list(ys) == pytest.approx([cfg.lr * lr_factor(i, cfg, 4) for i in range(12)])
    assert viz.figure_content(ax.figure)["axes"][0]["lines_with_points"] == 1  # axvline: not data
    with pytest.raises(ValueError, match="num_train_images"):
        viz.plot_lr_schedule(cfg, 0)


def test_training_summary_puts_each_loss_on_its_own_axes():
    history = [
        {
            "iteration": i,
            "epoch": 1,
            "lr": 0.01,
            "loss": 20.0 - i,
            "loss_mask": 17.0 - i,
            "loss_rpn_box_reg": 0.05,
        }
        for i in range(5)
    ] + [{"epoch": 1, "iteration": 4, "segm_AP": 0.1, "segm_AP50": 0.3}]
    fig = viz.plot_training_summary(history)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [
        "loss",
        "loss_mask",
        "loss_rpn_box_reg",
        "learning rate",
        "validation mask AP",
    ]
    assert viz.figure_content(fig)["empty_axes"] == []


def test_run_comparison_draws_every_run_on_both_axes():
    summaries = [
        {
            "name": name,
            "history": [{"iteration": i, "loss": 3.0 / (i + k)} for i in range(1, 9)],
            "evals": [{"epoch": 1, "segm_AP50": 0.1 * k}, {"epoch": 2, "segm_AP50": 0.2 * k}],
        }
        for k, name in ((1, "a"), (2, "b"))
    ]
    fig = viz.plot_run_comparison(summaries, smooth=3)
    loss_ax, ap_ax = fig.axes[:2]
    assert [line.get_label() for line in loss_ax.lines] == ["a", "b"]
    assert list(ap_ax.lines[1].get_ydata()) == pytest.approx([20.0, 40.0])
    assert loss_ax.get_yscale() == "log" and viz.figure_content(fig)["empty_axes"] == []


def test_draw_instances_takes_colours_and_captions_per_instance():
    inst = instances()
    red = (1.0, 0.0, 0.0)
    ax = viz.draw_instances(
        np.zeros((32, 48, 3), dtype=np.uint8), **inst, colors=[red] * 3, captions=["a", "b", "c"]
    )
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
    assert rectangles(ax)[0].get_edgecolor()[:3] == pytest.approx(red)
    with pytest.raises(ValueError, match="captions"):
        viz.draw_instances(np.zeros((32, 48, 3), dtype=np.uint8), **inst, captions=["a"])


def test_error_gallery_colours_hits_false_alarms_and_misses(synthetic_subset):
    from seglib.dataset import open_split

    ds = open_split(synthetic_subset, "test")
    results = coco_results(ds)
    first = ds.ids[0]
    # Drop one instance of the first image (a miss) and relabel another (a false positive).
    mine = [r for r in results if r["image_id"] == first]
    assert len(mine) >= 2
    wrong = {**mine[1], "category_id": mine[1]["category_id"] % len(ds.categories) + 1}
    shown = [r for r in results if r not in mine[:2]] + [wrong]
    fig = viz.error_gallery(ds, shown, [first, ds.ids[1]])
    assert len(fig.axes) == 4 and viz.figure_content(fig)["empty_axes"] == []
    right = fig.axes[1]
    assert right.get_title().startswith(f"TP {len(mine) - 2} · FP 1 · missed 2")
    captions = [t.get_text() for t in right.texts]
    assert sum(c.startswith("FP ") for c in captions) == 1
    assert sum(c.startswith("missed ") for c in captions) == 2
    edge = {
        t.get_text().split()[0]: r.get_edgecolor()[:3]
        for t, r in zip(right.texts, rectangles(right), strict=True)
    }
    assert edge["FP"] == pytest.approx(viz.OUTCOME_COLORS["fp"])
    assert edge["missed"] == pytest.approx(viz.OUTCOME_COLORS["missed"])
    assert fig.axes[3].get_title().startswith("TP ")


def test_model_comparison_shows_ground_truth_and_each_model_on_the_same_images(synthetic_subset):
    from seglib.dataset import open_split

    ds = open_split(synthetic_subset, "val")
    results = coco_results(ds)
    fig = viz.draw_model_comparison(ds, ds.ids[:2], {"fine-tuned": results, "zero-shot": []})
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].endswith("ground truth") and titles[1].startswith("fine-tuned (")
    assert titles[2] == "zero-shot (0 with score >= 0.5)"
    assert len(rectangles(fig.axes[1])) == len(rectangles(fig.axes[0])) > 0


def test_only_viz_imports_matplotlib_and_only_widgets_imports_ipywidgets():
    import ast
    from pathlib import Path

    import seglib

    owners = {"matplotlib": "viz.py", "ipywidgets": "widgets.py"}
    for path in Path(seglib.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in owners:
                    assert path.name == owners[top], f"{path.name} imports {name}"
