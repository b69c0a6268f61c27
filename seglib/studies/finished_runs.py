"""Runs a study can reuse: a finished run that trained a contender's config already.

A study trains each contender for the same budget; when the notebook 03 run of the same
profile (or any finished run) already trained exactly that config, retraining it would spend
the slowest step twice for the same weights. ``finished_run_of`` finds such a run and
``reused_contender`` loads it, with its training cost read from its log.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglib.core.config import TrainConfig
from seglib.core.paths import RunFolder
from seglib.engine.runlog import read_metrics
from seglib.models.builder import model_from_checkpoint
from seglib.models.checkpoint import load_checkpoint

#: Fields that change how a run is run, logged or used at inference, not what it learns: a
#: finished run whose config differs from a contender's only in these is that contender,
#: trained already (same data, recipe, budget and seed), and is reused instead of retrained.
NOT_LEARNED = frozenset(
    {
        "device",
        "num_workers",
        "log_interval",
        "eval_interval",
        "compare_epochs",
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


def reused_contender(
    run_dir: Path, cfg: TrainConfig, device: torch.device, categories: list[dict]
) -> tuple[nn.Module, dict[str, Any]]:
    """A finished run loaded as a contender, with its training cost read from its log."""
    logged = read_metrics(run_dir)
    rows = [r for r in logged if "loss" in r]
    iterations = max((r["iteration"] for r in rows), default=0)
    stats = {
        "iterations": iterations,
        "train_time_per_image": sum(r["time"] for r in rows) / max(1, iterations * cfg.batch_size),
        "validations": sum(1 for r in logged if "segm_AP" in r),
        "train_peak_memory_mb": None,
        "reused_from": str(run_dir),
    }
    model, _, _ = model_from_checkpoint(
        RunFolder(run_dir).last_checkpoint, device, categories=categories
    )
    return model, stats
