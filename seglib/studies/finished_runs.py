"""Runs a study can reuse: a finished run that trained a contender's config already.

A study trains each contender for the same budget; when the notebook 03 run of the same
profile (or any finished run) already trained exactly that config, retraining it would spend
the slowest step twice for the same weights. ``finished_run_of`` finds such a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seglib.core.config import TrainConfig
from seglib.core.paths import RunFolder
from seglib.models.checkpoint import load_checkpoint

#: Fields that change how a run is run, logged or used at inference, not what it learns: a
#: finished run whose config differs from a contender's only in these is that contender,
#: trained already (same data, recipe, budget and seed), and is reused instead of retrained.
NOT_LEARNED = frozenset(
    {
        "device",
        "cpu_amp_eval",
        "num_workers",
        "log_interval",
        "eval_interval",
        "checkpoint_interval",
        "compare_epochs",
        "study_seeds",
        "study_epochs",
        "study_sizes",
        "score_thresh",
        "box_score_thresh",
        "box_nms_thresh",
        "detections_per_img",
        "rpn_pre_nms_top_n_test",
        "rpn_post_nms_top_n_test",
        "postprocess",
        "postprocess_pool",
        "tta_hflip",
        "soft_nms_sigma",
        "soft_nms_thresh",
        "soft_nms_score_floor",
        "matrix_nms_kernel",
        "matrix_nms_sigma",
        "matrix_nms_score_floor",
        "mask_nms_thresh",
    }
)


def finished_run_of(cfg: TrainConfig, candidates: Sequence[Path]) -> Path | None:
    """The first of ``candidates`` (run folders) that trained ``cfg`` to its end already.

    A match has ``config.json`` equal to ``cfg`` in every field but ``NOT_LEARNED`` and a
    ``last.pt`` written after the last of ``cfg.num_epochs`` epochs.
    """
    wanted = {k: v for k, v in cfg.to_dict().items() if k not in NOT_LEARNED}
    for run in map(RunFolder, candidates):
        if not (run.config.is_file() and run.last_checkpoint.is_file()):
            continue
        try:
            saved = TrainConfig.load(run.config).to_dict()
        except (ValueError, TypeError, KeyError):
            continue  # an older or foreign config: not this contender
        if {k: v for k, v in saved.items() if k not in NOT_LEARNED} != wanted:
            continue
        if load_checkpoint(run.last_checkpoint).get("epoch") == cfg.num_epochs:
            return run.root
    return None
