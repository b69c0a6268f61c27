"""Where every file lives: the one helper that spells out locations.

Notebooks, the CLI and the tests all call ``get_paths`` so they agree on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from seglib.config import PROFILES


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


@dataclass(frozen=True)
class Paths:
    """Every file location of one profile. Nothing is created until a step writes there.

    Layout under ``root`` (default ``data/``)::

        coco/                 real COCO 2017 root (annotations/, train2017/, val2017/)
        synthetic-coco/       generated offline stand-in with the same layout
        subset/<profile>/     train.json val.json test.json manifest.json images/
        runs/<profile>/       config.json metrics.jsonl last.pt best.pt eval/ predictions/ figures/
    """

    root: Path
    profile: str

    @property
    def coco_root(self) -> Path:
        """Source COCO root for this profile: real for ``seed``, synthetic for ``smoke``."""
        if self.profile == "seed":
            return self.root / "coco"
        return self.root / "synthetic-coco" / self.profile

    @property
    def subset(self) -> Path:
        return self.root / "subset" / self.profile

    @property
    def run(self) -> Path:
        return self.root / "runs" / self.profile

    @property
    def last_checkpoint(self) -> Path:
        return self.run / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.run / "best.pt"

    @property
    def eval_dir(self) -> Path:
        return self.run / "eval"

    @property
    def predictions(self) -> Path:
        return self.run / "predictions"

    @property
    def figures(self) -> Path:
        return self.run / "figures"

    @property
    def notebooks_out(self) -> Path:
        """Executed copies of the notebooks written by ``python -m seglib run``."""
        return self.run / "notebooks"

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


def get_paths(profile: str | None = None, root: str | Path | None = None) -> Paths:
    """Paths for ``profile`` (default ``$SEGLIB_PROFILE`` or seed) under ``root`` (default data/)."""
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    return Paths(Path(root).resolve() if root else default_data_root(), profile)
