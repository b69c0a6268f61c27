"""The operating point: the score / NMS threshold pair picked in notebook 05 and saved in the
run (``Paths.layout.operating_point``), which overlays, galleries and the confusion matrix use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from seglib.core.atomic import write_json_atomic
from seglib.evaluation.shown_results import filter_predictions


# --- operating point --------------------------------------------------------------------------
@dataclass(frozen=True)
class OperatingPoint:
    """The thresholds a user shows the model at: score, and optional extra mask NMS.

    ``chosen_in`` says where it came from ("config" until notebook 05 saves one).

    Raises:
        ValueError: a threshold outside [0, 1].
    """

    score_thresh: float
    nms_thresh: float | None = None
    chosen_in: str = "config"

    def __post_init__(self) -> None:
        for name in ("score_thresh", "nms_thresh"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"operating point {name} must be in [0, 1], got {value}")

    def apply(self, results: Sequence[Mapping]) -> list[dict]:
        """The cached results the model shows at this point (score, then per-class mask NMS)."""

        return filter_predictions(
            results, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh
        )

    def suppress(self, results: Sequence[Mapping]) -> list[dict]:
        """The extra NMS alone, every score kept: what AP (which sweeps all scores) is given."""

        return filter_predictions(results, nms_thresh=self.nms_thresh)

    def save(self, path: str | Path) -> Path:
        """Write it as JSON (``paths.layout.operating_point``)."""
        return write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path, default_score_thresh: float) -> OperatingPoint:
        """The saved point, or the config's ``score_thresh`` and no extra NMS when none is saved.

        Raises:
            ValueError: the file is not a valid operating point (names it).
        """
        path = Path(path)
        if not path.is_file():
            return cls(float(default_score_thresh))
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid operating point ({e}); delete it") from e

    def __str__(self) -> str:
        nms = "model NMS only" if self.nms_thresh is None else f"mask NMS IoU {self.nms_thresh:g}"
        return f"score >= {self.score_thresh:g}, {nms} (from {self.chosen_in})"
