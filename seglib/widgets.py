"""ipywidgets forms over ``TrainConfig`` for the notebooks (the only module importing ipywidgets).

The pattern, which keeps headless runs honest: one cell builds and shows a form; the next,
plain cell reads it into a validated config (``form.to_config(base)``) and does the work.
Nothing trains inside a widget callback, and run headless the form's defaults are used.
Slider ranges come from ``TrainConfig`` field metadata, so they live next to their field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ipywidgets as W
from IPython.display import display

from seglib import metrics, viz
from seglib.config import WEIGHT_CHOICES, TrainConfig, slider_fields

_STYLE = {"description_width": "150px"}
_LAYOUT = W.Layout(width="460px")
_CHECKBOX = {
    "style": {"description_width": "initial"},
    "layout": W.Layout(width="460px", margin="0 0 0 150px"),
    "indent": False,
}


def _slider(name: str, value: float, description: str) -> W.Widget:
    rng = slider_fields()[name]
    if rng["log"]:
        return W.FloatLogSlider(
            value=value,
            base=10,
            min=math.log10(rng["min"]),
            max=math.log10(rng["max"]),
            step=rng["step"],
            description=description,
            readout_format=".1e",
            style=_STYLE,
            layout=_LAYOUT,
        )
    if float(rng["step"]).is_integer() and float(value).is_integer():
        return W.IntSlider(
            value=int(value),
            min=int(rng["min"]),
            max=int(rng["max"]),
            step=int(rng["step"]),
            description=description,
            style=_STYLE,
            layout=_LAYOUT,
        )
    return W.FloatSlider(
        value=value,
        min=rng["min"],
        max=rng["max"],
        step=rng["step"],
        description=description,
        style=_STYLE,
        layout=_LAYOUT,
    )


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
            ValueError: a value is invalid for TrainConfig (the message names the field).
        """
        values = self.values()
        if "min_size" in values:
            # One "image size" slider: keep the profile's longer-side/shorter-side ratio.
            values["max_size"] = max(
                values["min_size"], round(values["min_size"] * base.max_size / base.min_size)
            )
        return dataclasses.replace(base, **values)


def train_form(cfg: TrainConfig) -> ConfigForm:
    """Learning rate (log slider), epochs, batch size, image size, weights, AMP, and resume.

    ``form.extra["resume"].value`` says whether to continue from the run's last checkpoint.
    """
    weights = list(WEIGHT_CHOICES) + ([cfg.weights] if cfg.weights not in WEIGHT_CHOICES else [])
    controls = {
        "lr": _slider("lr", cfg.lr, "learning rate"),
        "num_epochs": _slider("num_epochs", cfg.num_epochs, "epochs"),
        "batch_size": _slider("batch_size", cfg.batch_size, "batch size"),
        "min_size": _slider("min_size", cfg.min_size, "image size (px)"),
        "weights": W.Dropdown(
            options=weights, value=cfg.weights, description="weights", style=_STYLE, layout=_LAYOUT
        ),
        "amp": W.Checkbox(value=cfg.amp, description="mixed precision (CUDA only)", **_CHECKBOX),
    }
    extra = {"resume": W.Checkbox(value=False, description="resume from last.pt", **_CHECKBOX)}
    return ConfigForm(controls, extra, title="Training hyperparameters")


def augmentation_form(cfg: TrainConfig) -> ConfigForm:
    """Augmentation strength (crop/scale/colour jitter) and horizontal-flip probability."""
    controls = {
        "aug_strength": _slider("aug_strength", cfg.aug_strength, "augmentation strength"),
        "hflip_prob": _slider("hflip_prob", cfg.hflip_prob, "flip probability"),
    }
    return ConfigForm(controls, title="Augmentation")


def threshold_form(score_thresh: float = 0.5, nms_thresh: float = 0.5) -> W.VBox:
    """Score and NMS-IoU threshold sliders for browsing cached predictions.

    Read it with ``thresholds(form)``; wire live redraws with ``W.interactive_output``.
    """
    return W.VBox(
        [
            W.FloatSlider(
                value=score_thresh,
                min=0.0,
                max=1.0,
                step=0.05,
                description="score threshold",
                style=_STYLE,
                layout=_LAYOUT,
            ),
            W.FloatSlider(
                value=nms_thresh,
                min=0.05,
                max=1.0,
                step=0.05,
                description="NMS IoU",
                style=_STYLE,
                layout=_LAYOUT,
            ),
        ]
    )


def thresholds(form: W.VBox) -> dict[str, float]:
    """``{"score_thresh": s, "nms_thresh": t}`` from a ``threshold_form``."""
    score, nms = form.children
    return {"score_thresh": float(score.value), "nms_thresh": float(nms.value)}


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
        kept = metrics.filter_predictions(results, **thresholds(form))
        with out:
            out.clear_output(wait=True)
            fig = viz.draw_instance_grid(
                viz.prediction_samples(dataset, kept, image_ids), dataset.class_names, ncols=ncols
            )
            display(fig)
            viz.close(fig)

    for slider in form.children:
        slider.observe(redraw, names="value")
    redraw()
    return W.VBox([form, out])


class LiveLossPlot:
    """A training callback that redraws loss components and the learning rate in place.

    Pass it as ``engine.train(..., callback=LiveLossPlot())``. It keeps the logged rows in
    ``history`` and redraws every ``every`` logged iterations and at each epoch end, through
    one display handle, so the notebook shows a single live figure.
    """

    def __init__(self, every: int = 5):
        self.every = every
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.fig, self.axes = viz.training_figure()
        self._handle = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "iter":  # a metrics.jsonl row: epoch, iteration, lr, loss, loss_*
            self.history.append(dict(payload))
            if len(self.history) % self.every == 0:
                self.redraw()
        elif event == "eval":
            self.evals.append(payload)
        elif event == "epoch_end":
            self.redraw()

    def redraw(self) -> None:
        """Draw the rows so far into the figure and refresh its display."""
        if not self.history:
            return
        viz.draw_training(self.history, self.axes)
        if self._handle is None:
            self._handle = display(self.fig, display_id=True)
        else:
            self._handle.update(self.fig)
