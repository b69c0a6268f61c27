"""viz.training: loss, learning-rate and validation-AP curves, live and after a run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from seglib.viz import files, training


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


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
    ax = training.plot_losses(history, smooth=3)
    assert len(ax.lines) == 6 and len(ax.lines[0].get_xdata()) == 8
    training.plot_losses(history, ax=ax)  # redrawing replaces the lines
    assert len(ax.lines) == 6
    assert len(training.plot_lr(history).lines[0].get_xdata()) == 10
    assert list(training.plot_metric(history, "segm_AP").lines[0].get_ydata()) == [0.1]


def test_training_figure_redraws_in_place_and_is_not_registered_with_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig, axes = training.training_figure()
    assert plt.get_fignums() == before
    history = [
        {"iteration": i, "lr": 0.01 * i, "loss": 3.0 - i, "loss_mask": 1.0} for i in range(3)
    ]
    training.draw_training(history, axes)
    training.draw_training(history[:2], axes, [{"epoch": 1, "segm_AP": 0.2, "segm_AP50": 0.4}])
    assert len(axes[1].lines) == 1 and len(axes[1].lines[0].get_xdata()) == 2
    assert axes[0].get_yscale() == "log"  # components differ by orders of magnitude
    assert [list(line.get_ydata()) for line in axes[2].lines] == [[20.0], [40.0]]


def test_lr_schedule_plot_is_the_training_loops_schedule():
    from seglib.core.config import TrainConfig
    from seglib.engine.schedule import lr_factor

    cfg = TrainConfig.smoke(num_epochs=3, batch_size=2, warmup_iters=4, max_iters=10)
    ax = training.plot_lr_schedule(cfg, num_train_images=7)  # 4 steps per epoch, 12 in all
    xs, ys = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    assert list(xs) == list(range(12))
    assert list(ys) == pytest.approx([cfg.lr * lr_factor(i, cfg, 4) for i in range(12)])
    assert files.figure_content(ax.figure)["axes"][0]["lines_with_points"] == 1  # axvline: not data
    with pytest.raises(ValueError, match="num_train_images"):
        training.plot_lr_schedule(cfg, 0)


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
    fig = training.plot_training_summary(history)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == [
        "loss",
        "loss_mask",
        "loss_rpn_box_reg",
        "learning rate",
        "validation mask AP",
    ]
    assert files.figure_content(fig)["empty_axes"] == []


def test_run_comparison_draws_every_run_on_both_axes():
    summaries = [
        {
            "name": name,
            "history": [{"iteration": i, "loss": 3.0 / (i + k)} for i in range(1, 9)],
            "evals": [{"epoch": 1, "segm_AP50": 0.1 * k}, {"epoch": 2, "segm_AP50": 0.2 * k}],
        }
        for k, name in ((1, "a"), (2, "b"))
    ]
    fig = training.plot_run_comparison(summaries, smooth=3)
    loss_ax, ap_ax = fig.axes[:2]
    assert [line.get_label() for line in loss_ax.lines] == ["a", "b"]
    assert list(ap_ax.lines[1].get_ydata()) == pytest.approx([20.0, 40.0])
    assert loss_ax.get_yscale() == "log" and files.figure_content(fig)["empty_axes"] == []


def test_loss_plots_take_their_keys_from_the_history_mask2former_included():
    from seglib.models.mask2former import LOSS_NAMES  # the keys Mask2Former's training logs

    assert not set(LOSS_NAMES) <= set(training.LOSS_KEYS)  # not Mask R-CNN's: read from the rows
    history = [
        {"iteration": i, "epoch": 1, "lr": 0.01, "loss": 9.0 - i}
        | {name: 3.0 - 0.1 * i * (j + 1) for j, name in enumerate(LOSS_NAMES)}
        for i in range(5)
    ] + [{"epoch": 1, "iteration": 4, "segm_AP": 0.1, "segm_AP50": 0.3}]
    expected = ["loss", "loss_mask", "loss_cross_entropy", "loss_dice"]  # LOSS_KEYS', then sorted
    assert sorted(expected[1:]) == sorted(LOSS_NAMES)
    assert training.loss_keys(history) == expected
    assert training.loss_keys([{"loss_dice": 1.0, "loss_box_reg": None, "val_loss": 2.0}]) == [
        "loss_dice"
    ]

    fig = training.plot_loss_components(history)
    assert [ax.get_title() for ax in fig.axes if ax.lines] == expected  # one axes per loss
    colors = [ax.lines[0].get_color() for ax in fig.axes if ax.lines]
    assert len({str(c) for c in colors}) == len(expected)

    fig = training.plot_training_summary(history)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:6] == [*expected, "learning rate", "validation mask AP"]
    assert files.figure_content(fig)["empty_axes"] == []

    ax = training.plot_losses(history)
    assert [line.get_label() for line in ax.lines] == expected
