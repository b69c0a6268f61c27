import json

import pytest

from seglib.app import forms
from seglib.app.forms import (
    augmentation_form,
    copy_paste_form,
    study_form,
    threshold_form,
    thresholds,
    train_form,
)
from seglib.core.config import TrainConfig
from seglib.core.paths import get_paths
from seglib.viz import overlay


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
    form.controls["amp"].value = True
    form.controls["aug_strength"].value = 1.5
    form.controls["hflip_prob"].value = 0.0
    cfg = form.to_config(base)
    assert cfg.lr == pytest.approx(0.02)
    assert (cfg.num_epochs, cfg.batch_size, cfg.amp) == (3, 4, True)
    assert cfg.min_size == 160 and cfg.max_size == 160  # smoke keeps a square 1:1 ratio
    assert (cfg.aug_strength, cfg.hflip_prob) == (1.5, 0.0)  # augmentation reaches training
    assert form.extra["resume"].value is False and form.extra["overwrite"].value is False
    request = form.request(base)
    assert request.cfg == cfg and not request.resume and not request.overwrite


def test_a_form_fails_with_the_message_seglib_set_gives(monkeypatch):
    import ipywidgets as W

    from seglib.core.overrides import apply_overrides, env_overrides

    base = TrainConfig.smoke()
    for field, value, named in (
        ("weights", "imagenet.bin", "weights must be one of ('coco', 'imagenet', 'none') or"),
        ("epochs", "3", "'epochs' is not a TrainConfig field (did you mean 'num_epochs'?)"),
    ):
        form = forms.ConfigForm({field: W.Text(value=value)})  # a bad value, or a bad name
        monkeypatch.setenv("SEGLIB_SET", json.dumps({field: value}))
        with pytest.raises(ValueError) as from_form:
            form.to_config(base)
        with pytest.raises(ValueError) as from_env:
            apply_overrides(base, env_overrides())
        assert str(from_form.value) == str(from_env.value) and named in str(from_form.value)


def test_copy_paste_and_study_forms_feed_the_config():
    base = TrainConfig.smoke()
    form = copy_paste_form(base)
    assert set(form.controls) == {"scale_jitter", "copy_paste_prob", "copy_paste_max_instances"}
    form.controls["scale_jitter"].value = "large"
    form.controls["copy_paste_prob"].value = 0.75
    form.controls["copy_paste_max_instances"].value = 3
    cfg = form.to_config(base)
    assert (cfg.scale_jitter, cfg.copy_paste_prob, cfg.copy_paste_max_instances) == (
        "large",
        0.75,
        3,
    )
    assert set(form.controls) <= set(train_form(base).controls)  # 03 trains with them
    budget = study_form(base.replace(study_epochs=None))
    assert budget.controls["study_epochs"].value == base.num_epochs  # unset: num_epochs
    budget.controls["study_seeds"].value = 4
    assert budget.to_config(base).study_seeds == 4


def test_sliders_are_labelled_with_their_field_names():
    base = TrainConfig.smoke()
    for form in (train_form(base), augmentation_form(base), copy_paste_form(base)):
        for name, widget in form.controls.items():
            if hasattr(widget, "min"):  # sliders
                assert widget.description == name and widget.tooltip
    assert [w.description for w in threshold_form().children] == ["score_thresh", "nms_thresh"]


def test_the_run_name_comes_from_paths_or_a_timestamp_and_is_validated(tmp_path, monkeypatch):
    import re

    base = TrainConfig.smoke()
    monkeypatch.delenv("SEGLIB_RUN", raising=False)
    monkeypatch.delenv("SEGLIB_OVERWRITE", raising=False)
    form = train_form(base, get_paths("smoke", tmp_path))
    assert re.fullmatch(r"\d{8}-\d{6}", form.extra["run_name"].value)
    form = train_form(base, get_paths("smoke", tmp_path, run="lr-high"))
    assert form.request(base).name == "lr-high"
    form.extra["run_name"].value = "../escape"
    with pytest.raises(ValueError, match="run name"):
        form.request(base)
    form.extra["run_name"].value = "ok"
    form.extra["resume"].value = form.extra["overwrite"].value = True
    with pytest.raises(ValueError, match="not both"):
        form.request(base)
    monkeypatch.setenv("SEGLIB_OVERWRITE", "1")  # python -m seglib run --overwrite
    assert train_form(base, get_paths("smoke", tmp_path)).extra["overwrite"].value is True


def test_image_size_keeps_the_seed_aspect_cap():
    base = TrainConfig.seed_recipe()
    form = train_form(base)
    form.controls["min_size"].value = 512
    form.controls["weights"].value = "imagenet"
    cfg = form.to_config(base)
    assert (cfg.min_size, cfg.max_size) == (512, round(512 * 1333 / 800))
    assert cfg.weights == "imagenet"


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


def test_threshold_form_reads_back_as_an_operating_point():
    from seglib.app.forms import operating_point

    form = threshold_form(0.3, 0.6)
    assert thresholds(form) == pytest.approx({"score_thresh": 0.3, "nms_thresh": 0.6})
    op = operating_point(form)
    assert (op.score_thresh, op.nms_thresh, op.chosen_in) == (0.3, 0.6, "notebook 05")
    form = threshold_form(0.5)  # no extra NMS: the slider sits at 1.0, which removes nothing
    assert form.children[1].value == 1.0 and thresholds(form)["nms_thresh"] is None


def test_run_picker_defaults_to_the_selected_or_latest_run(tmp_path):
    from seglib.app.forms import RunPicker

    paths = get_paths("smoke", tmp_path)
    with pytest.raises(FileNotFoundError, match="03_train"):
        RunPicker(paths)
    for name, created in (
        ("b-old", "2025-01-01T00:00:00+00:00"),
        ("a-new", "2025-02-01T00:00:00+00:00"),
    ):
        (paths.runs / name).mkdir(parents=True)
        (paths.runs / name / "run_info.json").write_text(f'{{"created": "{created}"}}')
    picker = RunPicker(paths, compare=True)
    assert picker.run.options == ("b-old", "a-new") and picker.run.value == "a-new"
    assert picker.compared() == ["b-old", "a-new"]
    picker.run.value = "b-old"
    picker.compare.value = ("a-new",)
    assert picker.selected().run == paths.runs / "b-old" and picker.compared() == ["a-new"]
    assert RunPicker(paths.with_run("b-old")).run.value == "b-old"


def test_live_loss_plot_collects_iterations_and_redraws(capsys):
    from seglib.app.forms import LiveLossPlot

    live = LiveLossPlot(every=2)
    for i in range(4):
        live(
            "iter",
            {"epoch": 0, "iteration": i, "lr": 0.001, "loss": 2.0 - 0.1 * i, "loss_mask": 0.5},
        )
    live("eval", {"epoch": 1, "iteration": 3, "metrics": {"segm": {"AP": 0.1, "AP50": 0.3}}})
    live("epoch_end", {"epoch": 0})
    assert [row["iteration"] for row in live.history] == [0, 1, 2, 3]
    assert (
        live.history[2]["loss"] == pytest.approx(1.8)
        and live.evals[0]["metrics"]["segm"]["AP"] == 0.1
    )
    loss_ax, _, ap_ax = live.axes
    assert any(len(line.get_xdata()) == 4 for line in loss_ax.lines)
    assert loss_ax.get_yscale() == "log"
    # validation AP appears as soon as it is measured
    assert [list(line.get_ydata()) for line in ap_ax.lines] == [[10.0], [30.0]]


def test_threshold_explorer_redraws_from_cached_predictions(
    synthetic_subset, monkeypatch, gt_results
):
    from seglib.data.dataset import open_split

    ds = open_split(synthetic_subset, "test")
    coco = ds.coco
    results = gt_results(coco, coco.loadAnns(coco.getAnnIds(imgIds=ds.ids[:2], iscrowd=False)))
    drawn = []
    real_grid = overlay.draw_instance_grid

    def recording_grid(samples, *args, **kwargs):
        drawn.append(sum(len(inst["labels"]) for _, inst in samples))
        return real_grid(samples, *args, **kwargs)

    monkeypatch.setattr(overlay, "draw_instance_grid", recording_grid)
    form = threshold_form(0.5, 0.5)
    forms.threshold_explorer(form, ds, results, indices=range(2), ncols=2)
    assert drawn == [len(results)] and len(results) > 0
    form.children[0].value = 0.95  # above every score: the view redraws with nothing kept
    assert drawn == [len(results), 0]


def _shown_mime_types(monkeypatch) -> list[list[str]]:
    """Record what ``seglib.app.forms`` displays, as the mime types Jupyter would receive.

    A fresh ``DisplayFormatter`` has no figure hook: it formats as a kernel under
    ``MPLBACKEND=Agg`` does, where ``display(fig)`` gave only ``<Figure size ... Axes>``.
    """
    from IPython.core.formatters import DisplayFormatter

    formatter, shown = DisplayFormatter(), []

    def display(obj, display_id=None):
        shown.append(sorted(formatter.format(obj)[0]))
        return _Handle(lambda new: shown.append(sorted(formatter.format(new)[0])))

    monkeypatch.setattr(forms, "display", display)
    return shown


class _Handle:
    def __init__(self, update):
        self.update = update


def test_live_views_display_png_images_under_the_agg_backend(
    synthetic_subset, monkeypatch, gt_results
):
    import matplotlib

    from seglib.data.dataset import open_split

    matplotlib.use("Agg")
    shown = _shown_mime_types(monkeypatch)
    ds = open_split(synthetic_subset, "test")
    form = threshold_form(0.5)
    forms.threshold_explorer(form, ds, gt_results(ds.coco), indices=range(2), ncols=2)
    form.children[0].value = 0.95
    live = forms.LiveLossPlot(every=1)
    live("iter", {"epoch": 0, "iteration": 0, "lr": 0.01, "loss": 1.0, "loss_mask": 0.5})
    live("epoch_end", {"epoch": 0})
    # two explorer redraws, then the live plot shown once and updated once
    assert shown == [["image/png", "text/plain"]] * 4


def test_live_loss_plot_redraws_an_epoch_end_only_when_no_validation_follows(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    shown = _shown_mime_types(monkeypatch)
    live = forms.LiveLossPlot(every=100)
    live("iter", {"epoch": 0, "iteration": 0, "lr": 0.01, "loss": 1.0, "loss_mask": 0.5})
    live("epoch_end", {"epoch": 0, "validating": False})
    assert len(shown) == 1  # the epoch's rows, shown as it ends
    live("iter", {"epoch": 1, "iteration": 1, "lr": 0.01, "loss": 0.9, "loss_mask": 0.4})
    live("epoch_end", {"epoch": 1, "validating": True})
    assert len(shown) == 1  # the validation's redraw, a moment later, shows the same rows
    live("eval", {"epoch": 1, "iteration": 1, "metrics": {"segm": {"AP": 0.1, "AP50": 0.3}}})
    assert len(shown) == 2
    assert [len(line.get_xdata()) for line in live.axes[0].lines][0] == 2
