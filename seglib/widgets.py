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

from seglib.config import WEIGHT_CHOICES, TrainConfig, slider_fields

_STYLE = {"description_width": "150px"}
_LAYOUT = W.Layout(width="460px")


def _slider(name: str, value: float, description: str) -> W.Widget:
    rng = slider_fields()[name]
    if rng["log"]:
        return W.FloatLogSlider(
            value=value, base=10, min=math.log10(rng["min"]), max=math.log10(rng["max"]),
            step=rng["step"], description=description, readout_format=".1e", style=_STYLE, layout=_LAYOUT,
        )
    if float(rng["step"]).is_integer() and float(value).is_integer():
        return W.IntSlider(
            value=int(value), min=int(rng["min"]), max=int(rng["max"]), step=int(rng["step"]),
            description=description, style=_STYLE, layout=_LAYOUT,
        )
    return W.FloatSlider(
        value=value, min=rng["min"], max=rng["max"], step=rng["step"],
        description=description, style=_STYLE, layout=_LAYOUT,
    )


class ConfigForm(W.VBox):
    """A form whose controls map one-to-one onto TrainConfig fields.

    ``controls`` maps a field name to its widget; ``to_config(base)`` returns ``base`` with
    those fields replaced by the widgets' values, validated by ``TrainConfig``.
    """

    def __init__(self, controls: dict[str, W.Widget], extra: dict[str, W.Widget] | None = None, title: str = ""):
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
            values["max_size"] = max(values["min_size"], round(values["min_size"] * base.max_size / base.min_size))
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
        "weights": W.Dropdown(options=weights, value=cfg.weights, description="weights", style=_STYLE, layout=_LAYOUT),
        "amp": W.Checkbox(value=cfg.amp, description="mixed precision (CUDA only)", style=_STYLE),
    }
    extra = {"resume": W.Checkbox(value=False, description="resume from last.pt", style=_STYLE)}
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
            W.FloatSlider(value=score_thresh, min=0.0, max=1.0, step=0.05, description="score threshold", style=_STYLE, layout=_LAYOUT),
            W.FloatSlider(value=nms_thresh, min=0.05, max=1.0, step=0.05, description="NMS IoU", style=_STYLE, layout=_LAYOUT),
        ]
    )


def thresholds(form: W.VBox) -> dict[str, float]:
    """``{"score_thresh": s, "nms_thresh": t}`` from a ``threshold_form``."""
    score, nms = form.children
    return {"score_thresh": float(score.value), "nms_thresh": float(nms.value)}
