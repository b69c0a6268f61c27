import pytest

from seglib.config import TrainConfig
from seglib.widgets import augmentation_form, threshold_form, thresholds, train_form


def test_untouched_form_gives_back_the_base_config():
    for cfg in (TrainConfig.seed_recipe(), TrainConfig.smoke()):
        assert train_form(cfg).to_config(cfg) == cfg
        assert augmentation_form(cfg).to_config(cfg) == cfg


def test_changing_the_form_changes_the_config_the_training_cell_uses():
    base = TrainConfig.smoke()
    form = train_form(base)
    form.controls["lr"].value = 0.02
    form.controls["num_epochs"].value = 3
    form.controls["batch_size"].value = 4
    form.controls["min_size"].value = 160
    form.controls["weights"].value = "imagenet"
    form.controls["amp"].value = True
    cfg = form.to_config(base)
    assert cfg.lr == pytest.approx(0.02)
    assert (cfg.num_epochs, cfg.batch_size, cfg.weights, cfg.amp) == (3, 4, "imagenet", True)
    assert cfg.min_size == 160 and cfg.max_size == 160  # smoke keeps a square 1:1 ratio
    assert form.extra["resume"].value is False


def test_image_size_keeps_the_seed_aspect_cap():
    base = TrainConfig.seed_recipe()
    form = train_form(base)
    form.controls["min_size"].value = 512
    cfg = form.to_config(base)
    assert (cfg.min_size, cfg.max_size) == (512, round(512 * 1333 / 800))


def test_learning_rate_slider_is_logarithmic_over_the_config_range():
    form = train_form(TrainConfig.seed_recipe())
    lr = form.controls["lr"]
    assert type(lr).__name__ == "FloatLogSlider"
    assert (lr.min, lr.max) == (-5, -1)


def test_augmentation_form_feeds_the_config():
    base = TrainConfig.smoke()
    form = augmentation_form(base)
    form.controls["aug_strength"].value = 1.5
    form.controls["hflip_prob"].value = 0.0
    cfg = form.to_config(base)
    assert (cfg.aug_strength, cfg.hflip_prob) == (1.5, 0.0)


def test_threshold_form_reads_back():
    form = threshold_form(0.3, 0.6)
    assert thresholds(form) == pytest.approx({"score_thresh": 0.3, "nms_thresh": 0.6})


def test_live_loss_plot_collects_iterations_and_redraws(capsys):
    from seglib.widgets import LiveLossPlot

    live = LiveLossPlot(every=2)
    for i in range(4):
        live(
            "iter",
            {"epoch": 0, "iteration": i, "lr": 0.001, "loss": 2.0 - 0.1 * i, "loss_mask": 0.5},
        )
    live("eval", {"epoch": 0, "iteration": 3, "metrics": {"segm": {"AP": 0.1}}})
    live("epoch_end", {"epoch": 0})
    assert [row["iteration"] for row in live.history] == [0, 1, 2, 3]
    assert (
        live.history[2]["loss"] == pytest.approx(1.8)
        and live.evals[0]["metrics"]["segm"]["AP"] == 0.1
    )
    loss_ax = live.axes[0]
    assert any(len(line.get_xdata()) == 4 for line in loss_ax.lines)


def test_threshold_explorer_redraws_from_cached_predictions(synthetic_subset, monkeypatch):
    import numpy as np
    import pycocotools.mask as mask_utils

    from seglib import widgets
    from seglib.dataset import open_split

    ds = open_split(synthetic_subset, "test")
    coco = ds.coco
    results = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=ds.ids[:2], iscrowd=False)):
        rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": 0.9,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    drawn = []
    real_grid = widgets.viz.draw_instance_grid

    def recording_grid(samples, *args, **kwargs):
        drawn.append(sum(len(inst["labels"]) for _, inst in samples))
        return real_grid(samples, *args, **kwargs)

    monkeypatch.setattr(widgets.viz, "draw_instance_grid", recording_grid)
    form = threshold_form(0.5, 0.5)
    widgets.threshold_explorer(form, ds, results, indices=range(2), ncols=2)
    assert drawn == [len(results)] and len(results) > 0
    form.children[0].value = 0.95  # above every score: the view redraws with nothing kept
    assert drawn == [len(results), 0]
