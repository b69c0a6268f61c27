"""Where every file lives: the one helper that spells out locations.

Notebooks, the CLI and the tests all call ``get_paths`` so they agree on them. Training runs
are named folders, ``runs/<profile>/<name>/``, so a new run never lands on top of an old one;
``Paths.run`` is the selected run (``get_paths(run=...)``, ``$SEGLIB_RUN``, else the latest).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from seglib.core.profiles import PROFILES

#: Environment variable naming the run notebooks 03-05 use (set by ``python -m seglib run``).
RUN_ENV = "SEGLIB_RUN"
#: The file that marks a folder under runs/<profile>/ as a run (written when a run starts).
RUN_INFO = "run_info.json"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class RunFolder:
    """The layout of one run folder, written once: every file a training run and the notebooks
    after it keep there. ``python -m seglib train --out DIR`` and a named run alike::

        run_info.json config.json metrics.jsonl last.pt best.pt operating_point.json
        eval/ predictions/ figures/ notebooks/
    """

    root: Path

    #: Sub-folders of a run: a run named like one would be confusing in listings.
    FOLDERS = ("eval", "predictions", "figures", "notebooks")

    @property
    def info(self) -> Path:
        """How the run was started (``python -m seglib run`` or notebook 03)."""
        return self.root / RUN_INFO

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        """Training and validation rows, one JSON object per line."""
        return self.root / "metrics.jsonl"

    @property
    def last_checkpoint(self) -> Path:
        return self.root / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.root / "best.pt"

    @property
    def operating_point(self) -> Path:
        """The score/NMS thresholds picked in notebook 05 for overlays and the confusion matrix."""
        return self.root / "operating_point.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def val_epoch(self, epoch: int) -> Path:
        """The full validation metrics of one epoch."""
        return self.eval_dir / f"val_epoch{epoch}.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def figures(self) -> Path:
        """Figures of the run (notebooks 03-05)."""
        return self.root / "figures"

    @property
    def notebooks_out(self) -> Path:
        """Executed copies of the notebooks written by ``python -m seglib run``."""
        return self.root / "notebooks"

    @property
    def markers(self) -> tuple[Path, ...]:
        """Files whose presence makes a folder an existing run."""
        return (self.info, self.config, self.metrics, self.last_checkpoint, self.best_checkpoint)


def project_root(start: str | Path | None = None) -> Path:
    """The project checkout that holds ``start`` (default: the working directory).

    Walks up from ``start`` to the first folder holding ``pyproject.toml`` or ``data/``, so a
    notebook run from ``notebooks/`` and a command run from the checkout agree. Where no such
    folder exists, ``start`` itself is the root. Never the installed package's folder.
    """
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() or (folder / "data").is_dir():
            return folder
    return start


def default_data_root() -> Path:
    """``$SEGLIB_DATA`` if set, else ``data/`` in the project checkout (``project_root``)."""
    env = os.environ.get("SEGLIB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return project_root() / "data"


def default_profile() -> str:
    """``$SEGLIB_PROFILE`` if set (validated), else ``seed``."""
    profile = os.environ.get("SEGLIB_PROFILE", "seed")
    if profile not in PROFILES:
        raise ValueError(f"SEGLIB_PROFILE={profile!r} is not a profile; choose one of {PROFILES}")
    return profile


def check_run_name(name: str) -> str:
    """Return ``name`` if it can name a run folder.

    Raises:
        ValueError: not 1-64 letters, digits, ``.``, ``_`` or ``-`` starting with a letter or
            digit, or one of the folder names used inside a run.
    """
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or name in RunFolder.FOLDERS:
        raise ValueError(
            f"run name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, and not one of {sorted(RunFolder.FOLDERS)} "
            "(for example 'lr-0.002' or '20250101-120000')"
        )
    return name


@dataclass(frozen=True)
class Paths:
    """Every file location of one profile (and one selected run). Nothing is created here.

    Layout under ``root`` (default ``data/``)::

        coco/                   real COCO 2017 root (annotations/, train2017/, val2017/)
        synthetic-coco/<p>/     generated offline stand-in with the same layout
        subset/<p>/             train.json val.json test.json manifest.json images/ figures/
        runs/<p>/<run>/         one run folder (``RunFolder``)
        compare/<p>/            notebook 07's model-family comparison
        studies/<p>/            notebook 08's augmentation and data studies

    The selected run's files are ``paths.layout.<file>`` (``paths.layout.best_checkpoint``).
    """

    root: Path
    profile: str
    run_name: str | None = None

    @property
    def coco_root(self) -> Path:
        """Source COCO root for this profile: real for ``seed``, synthetic otherwise."""
        if self.profile == "seed":
            return self.root / "coco"
        return self.root / "synthetic-coco" / self.profile

    @property
    def subset(self) -> Path:
        return self.root / "subset" / self.profile

    @property
    def data_figures(self) -> Path:
        """Figures about the subset itself (notebooks 01 and 02), shared by every run."""
        return self.subset / "figures"

    @property
    def comparison(self) -> Path:
        """``compare/<profile>/``: notebook 07's model-family comparison, one run folder per
        model plus comparison.json; outside ``runs/`` so it is never taken for a run."""
        return self.root / "compare" / self.profile

    @property
    def comparison_figures(self) -> Path:
        """Figures of the model-family comparison (notebook 07)."""
        return self.comparison / "figures"

    @property
    def studies(self) -> Path:
        """``studies/<profile>/``: notebook 08's studies, ``<study>/<contender>/seed-<n>/``
        plus study.json each; outside ``runs/`` so they are never taken for runs, and shared
        by the profile's runs so that a finished contender is not trained again."""
        return self.root / "studies" / self.profile

    @property
    def studies_figures(self) -> Path:
        """Figures of the augmentation and data studies (notebook 08)."""
        return self.studies / "figures"

    # --- runs -----------------------------------------------------------------------------
    @property
    def runs(self) -> Path:
        """``runs/<profile>/``: one folder per named run."""
        return self.root / "runs" / self.profile

    def run_dir(self, name: str) -> Path:
        """``runs/<profile>/<name>/`` (the name is checked by ``check_run_name``)."""
        return self.runs / check_run_name(name)

    def list_runs(self) -> list[str]:
        """Names of the runs of this profile, oldest first (by when each started).

        A run is a folder under ``runs/<profile>/`` holding ``run_info.json`` or ``config.json``.
        """
        if not self.runs.is_dir():
            return []
        found = []
        for folder in self.runs.iterdir():
            if not folder.is_dir() or not _RUN_NAME.fullmatch(folder.name):
                continue
            run = RunFolder(folder)
            marker = next((f for f in (run.info, run.config) if f.is_file()), None)
            if marker is not None:
                found.append((_started(folder, marker), folder.name))
        return [name for _, name in sorted(found)]

    def run_dirs(self) -> list[Path]:
        """The folders of ``list_runs``, oldest first: what a study may reuse."""
        return [self.run_dir(name) for name in self.list_runs()]

    def latest_run(self) -> str | None:
        """The run started last, or None when there is none."""
        names = self.list_runs()
        return names[-1] if names else None

    def with_run(self, name: str | None) -> Paths:
        """The same paths with ``name`` selected as ``run`` (None: the latest)."""
        return replace(self, run_name=None if name is None else check_run_name(name))

    @property
    def run(self) -> Path:
        """The selected run's folder: ``run_name`` if set, else the latest run.

        Raises:
            FileNotFoundError: no run is selected and this profile has none yet.
        """
        name = self.run_name or self.latest_run()
        if name is None:
            raise FileNotFoundError(
                f"no training run under {self.runs} yet: run notebooks/03_train.ipynb (or "
                f"`python -m seglib train --profile {self.profile}`) first"
            )
        return self.run_dir(name)

    @property
    def layout(self) -> RunFolder:
        """The selected run's files (``RunFolder``)."""
        return RunFolder(self.run)

    def split_json(self, split: str) -> Path:
        """``subset/<profile>/<split>.json`` for split in train/val/test."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; choose train, val or test")
        return self.subset / f"{split}.json"

    def require(self, path: Path, made_by: str) -> Path:
        """Return ``path`` if it exists, else raise FileNotFoundError naming the step that makes it."""
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist yet: run {made_by} first (profile {self.profile!r})."
            )
        return path


def _started(folder: Path, marker: Path) -> float:
    """Sort key of a run: the start time in run_info.json, else the marker's mtime (epoch s)."""
    if marker.name == RUN_INFO:
        try:
            from datetime import datetime

            return datetime.fromisoformat(json.loads(marker.read_text())["created"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a torn or hand-edited file: fall back to the mtime
    return marker.stat().st_mtime


def get_paths(
    profile: str | None = None, root: str | Path | None = None, run: str | None = None
) -> Paths:
    """Paths for ``profile`` (default ``$SEGLIB_PROFILE`` or seed) under ``root`` (default data/).

    ``run`` selects the run folder (default ``$SEGLIB_RUN``; unset: the latest run).

    Raises:
        ValueError: unknown profile or invalid run name.
    """
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    run = run or os.environ.get(RUN_ENV) or None
    return Paths(
        Path(root).resolve() if root else default_data_root(),
        profile,
        None if run is None else check_run_name(run),
    )
