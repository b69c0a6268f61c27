"""ipywidgets forms over ``TrainConfig`` for the notebooks (the only module importing ipywidgets).

The pattern, which keeps headless runs honest: one cell builds and shows a form; the next,
plain cell reads it into a validated config (``form.to_config(base)``) and does the work.
Nothing trains inside a widget callback, and run headless the form's defaults are used.
Slider ranges come from ``TrainConfig`` field metadata, so they live next to their field, and
each slider is labelled with its field name (what ``--set NAME=VALUE`` takes), its meaning in
the tooltip. Live views display their figures as PNG pictures (``jupyter.png_bytes``), so they
show as images whatever matplotlib's backend (``MPLBACKEND=Agg`` included).
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as W
from IPython.display import Image, display

from seglib.app import runs
from seglib.app.operating_point import OperatingPoint
from seglib.core.config import SCALE_JITTERS, WEIGHT_CHOICES, TrainConfig
from seglib.core.overrides import apply_overrides, slider_fields
from seglib.core.paths import Paths
from seglib.evaluation import shown_results
from seglib.viz import files, jupyter, overlay, training

_STYLE = {"description_width": "150px"}
_LAYOUT = W.Layout(width="460px")
_CHECKBOX = {
    "style": {"description_width": "initial"},
    "layout": W.Layout(width="460px", margin="0 0 0 150px"),
    "indent": False,
}


def _picture(fig: Any, *, tight: bool = True) -> Image:
    """``fig`` as a PNG picture: shown as an image whatever matplotlib's backend.

    ``display(fig)`` relies on the inline backend's display hook; under ``MPLBACKEND=Agg`` it
    shows the text ``<Figure size 600x300 with 2 Axes>`` instead. ``tight`` as for
    ``jupyter.png_bytes``.
    """
    return Image(data=jupyter.png_bytes(fig, tight=tight), format="png")


def _slider(name: str, value: float, description: str) -> W.Widget:
    """A slider over the field's range, labelled ``name``, explained by ``description``."""
    rng = slider_fields()[name]
    common = dict(description=name, tooltip=description, style=_STYLE, layout=_LAYOUT)
    if rng["log"]:
        return W.FloatLogSlider(
            value=value,
            base=10,
            min=math.log10(rng["min"]),
            max=math.log10(rng["max"]),
            step=rng["step"],
            readout_format=".1e",
            **common,
        )
    if float(rng["step"]).is_integer() and float(value).is_integer():
        return W.IntSlider(
            value=int(value),
            min=int(rng["min"]),
            max=int(rng["max"]),
            step=int(rng["step"]),
            **common,
        )
    return W.FloatSlider(value=value, min=rng["min"], max=rng["max"], step=rng["step"], **common)


def _augmentation_controls(cfg: TrainConfig) -> dict[str, W.Widget]:
    return {
        "aug_strength": _slider(
            "aug_strength", cfg.aug_strength, "augmentation strength: crop/scale/colour jitter"
        ),
        "hflip_prob": _slider("hflip_prob", cfg.hflip_prob, "horizontal-flip probability"),
    }


def _copy_paste_controls(cfg: TrainConfig) -> dict[str, W.Widget]:
    return {
        "scale_jitter": W.Dropdown(
            options=list(SCALE_JITTERS),
            value=cfg.scale_jitter,
            description="scale_jitter",
            tooltip="resize range: standard 0.8-1.25, large (LSJ) 0.1-2.0",
            style=_STYLE,
            layout=_LAYOUT,
        ),
        "copy_paste_prob": _slider(
            "copy_paste_prob", cfg.copy_paste_prob, "Copy-Paste: chance per training image"
        ),
        "copy_paste_max_instances": _slider(
            "copy_paste_max_instances",
            cfg.copy_paste_max_instances,
            "Copy-Paste: most objects pasted at once",
        ),
    }


class ConfigForm(W.VBox):
    """A form whose controls map one-to-one onto TrainConfig fields.

    ``controls`` maps a field name to its widget; ``to_config(base)`` returns ``base`` with
    those fields replaced by the widgets' values, validated by ``TrainConfig``.
    """

    def __init__(
        self,
        controls: dict[str, W.Widget],
        extra: dict[str, W.Widget] | None = None,
        title: str = "",
    ):
        self.controls = controls
        self.extra = extra or {}
        header = [W.HTML(f"<b>{title}</b>")] if title else []
        super().__init__(header + list(controls.values()) + list(self.extra.values()))

    def values(self) -> dict[str, Any]:
        """Field name -> current widget value (config fields only)."""
        return {name: w.value for name, w in self.controls.items()}

    def to_config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with the form's values applied.

        Raises:
            ValueError: a value is invalid for TrainConfig: the message ``--set`` and
                ``$SEGLIB_SET`` give for it (``seglib.core.overrides.apply_overrides``).
        """
        values = self.values()
        if "min_size" in values:
            # One "image size" slider: keep the profile's longer-side/shorter-side ratio.
            values["max_size"] = max(
                values["min_size"], round(values["min_size"] * base.max_size / base.min_size)
            )
        return apply_overrides(base, values)


class TrainForm(ConfigForm):
    """``ConfigForm`` plus the run: its name, and resume / overwrite for an existing one."""

    def request(self, base: TrainConfig) -> runs.RunRequest:
        """The form read into a validated run request (config, name, resume, overwrite).

        Raises:
            ValueError: an invalid value (names the field), an invalid run name, or both
                resume and overwrite ticked.
        """
        return runs.RunRequest(
            name=self.extra["run_name"].value.strip(),
            cfg=self.to_config(base),
            resume=bool(self.extra["resume"].value),
            overwrite=bool(self.extra["overwrite"].value),
        )


def train_form(cfg: TrainConfig, paths: Paths | None = None) -> TrainForm:
    """lr (log slider), num_epochs, batch_size, min_size, augmentation (Copy-Paste and scale
    jitter included), weights, AMP, and the run.

    The run name starts as ``paths.run_name`` (``--run`` / ``$SEGLIB_RUN``) or a timestamp;
    "overwrite" starts ticked only under ``python -m seglib run --overwrite``. Read it with
    ``form.request(cfg)``.
    """
    weights = list(WEIGHT_CHOICES) + ([cfg.weights] if cfg.weights not in WEIGHT_CHOICES else [])
    controls = {
        "lr": _slider("lr", cfg.lr, f"learning rate ({cfg.optimizer}, for this batch size)"),
        "num_epochs": _slider("num_epochs", cfg.num_epochs, "epochs"),
        "batch_size": _slider("batch_size", cfg.batch_size, "images per step"),
        "min_size": _slider("min_size", cfg.min_size, "image size: shorter side in px"),
        **_augmentation_controls(cfg),
        **_copy_paste_controls(cfg),
        "weights": W.Dropdown(
            options=weights, value=cfg.weights, description="weights", style=_STYLE, layout=_LAYOUT
        ),
        "amp": W.Checkbox(value=cfg.amp, description="mixed precision (CUDA only)", **_CHECKBOX),
    }
    name = (paths.run_name if paths is not None else None) or runs.new_run_name()
    extra = {
        "run_name": W.Text(value=name, description="run name", style=_STYLE, layout=_LAYOUT),
        "resume": W.Checkbox(value=False, description="resume this run from last.pt", **_CHECKBOX),
        "overwrite": W.Checkbox(
            value=runs.env_overwrite(),
            description="overwrite this run if it exists (deletes its checkpoints and eval)",
            **_CHECKBOX,
        ),
    }
    return TrainForm(controls, extra, title="Training hyperparameters")


def augmentation_form(cfg: TrainConfig) -> ConfigForm:
    """aug_strength (crop/scale/colour jitter) and hflip_prob: the same sliders as 03's form."""
    return ConfigForm(_augmentation_controls(cfg), title="Augmentation (preview)")


def copy_paste_form(cfg: TrainConfig) -> ConfigForm:
    """scale_jitter, copy_paste_prob and copy_paste_max_instances: the same controls as 03's
    form, starting from ``cfg`` (notebook 08 previews them, then its "+" rows use them)."""
    return ConfigForm(_copy_paste_controls(cfg), title="Copy-Paste and scale jitter")


def study_form(cfg: TrainConfig) -> ConfigForm:
    """study_seeds and study_epochs: how often and how long every study contender trains."""
    controls = {
        "study_seeds": _slider("study_seeds", cfg.study_seeds, "seeds per contender"),
        "study_epochs": _slider(
            "study_epochs", cfg.study_epochs or cfg.num_epochs, "epochs per contender"
        ),
    }
    return ConfigForm(controls, title="Study budget")


def threshold_form(score_thresh: float = 0.5, nms_thresh: float | None = None) -> W.VBox:
    """score_thresh and nms_thresh sliders for browsing cached predictions.

    ``nms_thresh`` is an extra per-class mask NMS on top of the model's own box NMS; 1.0 (the
    default, for None) removes nothing. Read it with ``operating_point(form)``; wire live
    redraws with ``threshold_explorer``.
    """
    return W.VBox(
        [
            _slider("score_thresh", score_thresh, "predictions scoring below this are not shown"),
            W.FloatSlider(
                value=1.0 if nms_thresh is None else nms_thresh,
                min=0.05,
                max=1.0,
                step=0.05,
                description="nms_thresh",
                tooltip="extra mask NMS: a prediction overlapping a better one of its class by "
                "more than this IoU is dropped (1.0: none)",
                style=_STYLE,
                layout=_LAYOUT,
            ),
        ]
    )


def thresholds(form: W.VBox) -> dict[str, float | None]:
    """``{"score_thresh": s, "nms_thresh": t}`` from a ``threshold_form`` (t None at 1.0)."""
    score, nms = form.children
    return {
        "score_thresh": float(score.value),
        "nms_thresh": None if float(nms.value) >= 1.0 else float(nms.value),
    }


def operating_point(form: W.VBox, chosen_in: str = "notebook 05") -> OperatingPoint:
    """The sliders of a ``threshold_form`` as an ``OperatingPoint`` to save with the run."""
    return OperatingPoint(**thresholds(form), chosen_in=chosen_in)


def threshold_explorer(
    form: W.VBox, dataset: Any, results: list[dict], indices: Any, ncols: int = 4
) -> W.VBox:
    """``form`` above overlays of cached ``results`` that redraw whenever a slider moves.

    Errors inside a redraw land in the output area (ipywidgets
    swallows them), so the notebook re-applies the same thresholds in a plain cell.
    """
    image_ids = [dataset.ids[i] for i in indices]
    out = W.Output()

    def redraw(_change: Any = None) -> None:
        kept = shown_results.filter_predictions(results, **thresholds(form))
        with out:
            out.clear_output(wait=True)
            fig = overlay.draw_instance_grid(
                overlay.prediction_samples(dataset, kept, image_ids),
                dataset.class_names,
                ncols=ncols,
            )
            display(_picture(fig))
            files.close(fig)

    for slider in form.children:
        slider.observe(redraw, names="value")
    redraw()
    return W.VBox([form, out])


class RunPicker(W.VBox):
    """Which run to look at (a dropdown, default ``paths.run_name`` or the latest run) and,
    with ``compare=True``, which runs to compare (all of them by default).

    Raises:
        FileNotFoundError: the profile has no run yet (names notebook 03).
    """

    def __init__(self, paths: Paths, *, compare: bool = False):
        names = paths.list_runs()
        default = paths.run.name  # raises, naming notebook 03, when there is no run
        if default not in names:
            names.append(default)
        self.paths = paths
        self.run = W.Dropdown(
            options=names, value=default, description="run", style=_STYLE, layout=_LAYOUT
        )
        self.compare = W.SelectMultiple(
            options=names,
            value=tuple(names),
            description="compare",
            rows=min(len(names), 6),
            style=_STYLE,
            layout=_LAYOUT,
        )
        super().__init__([self.run, self.compare] if compare else [self.run])

    def selected(self) -> Paths:
        """``paths`` with the picked run selected."""
        return self.paths.with_run(self.run.value)

    def compared(self) -> list[str]:
        """The runs ticked for comparison, oldest first."""
        return [name for name in self.run.options if name in self.compare.value]


class LiveLossPlot:
    """A training callback that redraws losses (log scale), the lr and validation AP in place.

    Pass it as ``trainer.train(..., callback=LiveLossPlot())``. It keeps the logged rows in
    ``history`` and the validation events in ``evals``, and redraws every ``every`` logged
    iterations, after each validation, and at each epoch end that no validation follows,
    through one display handle, so the notebook shows a single live figure.
    """

    def __init__(self, every: int = 5):
        self.every = every
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.fig, self.axes = training.training_figure()
        self._handle = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "iter":  # a metrics.jsonl row: epoch, iteration, lr, loss, loss_*
            self.history.append(dict(payload))
            if len(self.history) % self.every == 0:
                self.redraw()
        elif event == "eval":  # {"epoch", "iteration", "metrics": evaluate_results dict}
            self.evals.append(payload)
            self.redraw()
        elif event == "epoch_end" and not payload.get("validating"):
            self.redraw()  # else the "eval" event that follows redraws

    def eval_rows(self) -> list[dict[str, Any]]:
        """``{"epoch", "segm_AP", "segm_AP50"}`` per validation so far."""
        return [
            {
                "epoch": e["epoch"],
                "segm_AP": e["metrics"]["segm"]["AP"],
                "segm_AP50": e["metrics"]["segm"].get("AP50"),
            }
            for e in self.evals
        ]

    def redraw(self) -> None:
        """Draw the rows so far into the figure and refresh its display."""
        if not self.history:
            return
        training.draw_training(self.history, self.axes, self.eval_rows())
        picture = _picture(self.fig, tight=False)  # constrained layout fills it; drawn once
        if self._handle is None:
            self._handle = display(picture, display_id=True)
        else:
            self._handle.update(picture)
