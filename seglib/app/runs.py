"""A training run over its life: started on purpose, and summed up from its files.

* ``start_run`` begins a named run and refuses to replace an existing one unless asked
  (``overwrite``, which also clears the old evaluation, predictions and figures) or told to
  continue it (``resume``). It records the overrides and form changes in ``run_info.json``.
* ``run_summary`` and ``headline_ap`` read a finished run back for notebook 04 and the CLI.

The run folder's layout is ``seglib.core.paths.RunFolder``; a run's cached predictions are in
``seglib.app.prediction_cache`` and its operating point in ``seglib.app.operating_point``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from seglib.app.provenance import checkpoint_fingerprint, source_file
from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.paths import RUN_INFO, Paths, RunFolder, check_run_name
from seglib.engine.runlog import read_metrics

#: Set to 1 by ``python -m seglib run --overwrite``: notebook 03's overwrite box starts ticked.
OVERWRITE_ENV = "SEGLIB_OVERWRITE"


class RunExistsError(FileExistsError):
    """A run of that name exists and neither overwrite nor resume was chosen."""


def new_run_name(now: datetime | None = None) -> str:
    """A timestamp name such as ``20250131-142501`` (local time), for unnamed runs."""
    return (now or datetime.now()).strftime("%Y%m%d-%H%M%S")


def env_overwrite() -> bool:
    """Whether ``$SEGLIB_OVERWRITE`` asks to replace an existing run (1/true/yes)."""
    return os.environ.get(OVERWRITE_ENV, "").strip().lower() in ("1", "true", "yes")


def run_exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (config, metrics or a checkpoint)."""
    return any(marker.exists() for marker in RunFolder(Path(run_dir)).markers)


def check_can_start(paths: Paths, name: str, *, overwrite: bool = False) -> Path:
    """The run folder for a new run ``name``, if starting it is allowed.

    Raises:
        RunExistsError: the run exists and ``overwrite`` is False (names the run, the choices).
    """
    run_dir = paths.run_dir(name)
    if run_exists(run_dir) and not overwrite:
        when = _describe(run_dir)
        raise RunExistsError(
            f"run {name!r} already exists ({run_dir}{when}). Pick another run name, tick "
            "'overwrite' in the form (`--overwrite` on the command line) to replace it and its "
            "evaluation, or tick 'resume' to continue it."
        )
    return run_dir


@dataclass(frozen=True)
class RunRequest:
    """What notebook 03's form asks for: a run name, its config, and what to do if it exists."""

    name: str
    cfg: TrainConfig
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_run_name(self.name)
        if self.resume and self.overwrite:
            raise ValueError("choose resume (continue the run) or overwrite (replace it), not both")


def start_run(
    paths: Paths, request: RunRequest, *, overrides: Mapping[str, Any] | None = None
) -> Paths:
    """Prepare ``runs/<profile>/<request.name>/`` for training; return ``paths`` selecting it.

    A fresh run writes ``run_info.json``: name, profile, start time, the ``overrides`` it was
    given (``--set`` / ``$SEGLIB_SET``) and every field that differs from the profile.
    ``overwrite`` first deletes the old run's files (checkpoints, metrics, eval/,
    predictions/, figures/, operating point), keeping only ``notebooks/`` (executed copies
    that ``python -m seglib run`` is writing). ``resume`` changes nothing on disk.

    Raises:
        RunExistsError: the run exists and neither ``overwrite`` nor ``resume`` is set.
        FileNotFoundError: ``resume`` without ``last.pt`` in the run.
    """
    name, run_dir = request.name, paths.run_dir(request.name)
    if request.resume:
        paths.require(
            RunFolder(run_dir).last_checkpoint, "a run of that name (untick 'resume' to start one)"
        )
        return paths.with_run(name)
    check_can_start(paths, name, overwrite=request.overwrite)
    if request.overwrite:
        clear_run(run_dir)
    defaults = TrainConfig.from_profile(paths.profile).to_dict()
    changed = {k: v for k, v in request.cfg.to_dict().items() if v != defaults.get(k)}
    write_json_atomic(
        RunFolder(run_dir).info,
        {
            "name": name,
            "profile": paths.profile,
            "created": datetime.now(timezone.utc).isoformat(),
            "overrides": dict(overrides or {}),
            "changed_from_profile": changed,
        },
    )
    return paths.with_run(name)


def clear_run(run_dir: str | Path) -> None:
    """Delete everything in ``run_dir`` except ``notebooks/``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry == RunFolder(run_dir).notebooks_out:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run_info.json`` of a run, or ``{}`` for runs started by ``python -m seglib train``."""
    path = Path(run_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def _describe(run_dir: Path) -> str:
    info = read_run_info(run_dir)
    if info.get("created"):
        return f", started {info['created'][:19].replace('T', ' ')} UTC"
    return ""


# --- comparing runs ---------------------------------------------------------------------------
def run_summary(paths: Paths, name: str) -> dict[str, Any]:
    """What notebook 04 compares across runs, read from files only.

    Returns:
        ``{"name", "history": metrics.jsonl rows, "evals": the validation rows, "best":
        the best validation row by mask AP (or None), "test": eval/test_metrics.json or None}``.
    """
    run = RunFolder(paths.run_dir(name))
    rows = read_metrics(run.root) if run.metrics.is_file() else []
    evals = [r for r in rows if "segm_AP" in r]
    best = max(evals, key=lambda r: r["segm_AP"]) if evals else None
    test_file = run.eval_dir / "test_metrics.json"
    test = json.loads(test_file.read_text()) if test_file.is_file() else None
    return {"name": name, "history": rows, "evals": evals, "best": best, "test": test}


def headline_ap(paths: Paths) -> dict[str, float]:
    """The selected run's validation mask AP and AP50 (0-1): from notebook 04's file if its
    checkpoint is still ``best.pt``, else from the best validation row of training.

    Raises:
        FileNotFoundError: the run has neither.
    """
    file, record = (
        paths.layout.eval_dir / "val_metrics.json",
        source_file(paths.layout.eval_dir / "val_metrics.json"),
    )
    if file.is_file() and record.is_file() and paths.layout.best_checkpoint.is_file():
        recorded = json.loads(record.read_text()).get("checkpoint") or {}
        if recorded.get("sha1") == checkpoint_fingerprint(paths.layout.best_checkpoint)["sha1"]:
            scores = json.loads(file.read_text())
            return {"segm_AP": scores["segm"]["AP"], "segm_AP50": scores["segm"]["AP50"]}
    best = run_summary(paths, paths.run.name)["best"]
    if best is None:
        raise FileNotFoundError(
            f"{paths.run} has no validation results yet: train it (notebook 03) first"
        )
    return {"segm_AP": best["segm_AP"], "segm_AP50": best["segm_AP50"]}
