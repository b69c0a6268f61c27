"""Notebook 08's studies as contenders of ``study.run_study``: augmentation and data.

- ``augmentation_contenders``: the ablation of the seed's "more advanced augmentation":
  the baseline (the config with neither), + scale jitter, + Copy-Paste, + both.
- ``data_contenders``: the curve of AP against training-set size, one contender per size
  in ``cfg.study_sizes``, each the ablation's baseline recipe; each size other than
  ``num_train`` gets a subset folder of its own
  (``subset.build_subset`` with the same seed and val/test counts, so the same val and test
  images), and trains for about the same number of steps (epochs scaled by size), so the
  curve measures data, not training length.
- ``study_base`` and ``study_seeds``: the budget and seeds both studies share.

The third axis, post-processing, is notebook 06's (``occlusion_study``), and the model
family notebook 07's (``family_comparison``). Nothing here trains or prints.
"""

from __future__ import annotations

from pathlib import Path

from seglib.core.config import TrainConfig
from seglib.data.subset import build_subset
from seglib.studies.study import Contender

#: What the "+" rows switch on when the config has them off: the standard scale jitter
#: (0.8-1.25) and Copy-Paste on half the training images.
SCALE_JITTER = "standard"
COPY_PASTE_PROB = 0.5


def study_base(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` at the studies' budget: ``study_epochs`` epochs (``num_epochs`` when unset),
    validated once, at the end (the study scores each contender on test itself)."""
    epochs = cfg.study_epochs or cfg.num_epochs
    return cfg.replace(num_epochs=epochs, eval_interval=epochs)


def study_seeds(cfg: TrainConfig) -> tuple[int, ...]:
    """``cfg.seed`` and the ``study_seeds - 1`` seeds after it."""
    return tuple(range(cfg.seed, cfg.seed + cfg.study_seeds))


def _changes(cfg: TrainConfig, **wanted: object) -> dict[str, object]:
    """The fields of ``wanted`` whose values differ from ``cfg``'s."""
    return {k: v for k, v in wanted.items() if getattr(cfg, k) != v}


def augmentation_contenders(cfg: TrainConfig) -> list[Contender]:
    """Baseline, + scale jitter, + Copy-Paste, + both, as changes to ``cfg``.

    The baseline is ``cfg`` with scale jitter "none" and ``copy_paste_prob`` 0 (the seed
    recipe's flip and crop). A "+" row takes ``cfg``'s own setting when it is on (a slider
    or ``--set`` chose it), else ``SCALE_JITTER`` and ``COPY_PASTE_PROB``.
    """
    jitter = cfg.scale_jitter if cfg.scale_jitter != "none" else SCALE_JITTER
    paste = cfg.copy_paste_prob or COPY_PASTE_PROB
    paste_note = (
        f"Copy-Paste on {paste:.0%} of images, up to {cfg.copy_paste_max_instances} objects "
        f"scaled {cfg.copy_paste_scale[0]:g}-{cfg.copy_paste_scale[1]:g}"
    )
    return [
        Contender("baseline", _changes(cfg, scale_jitter="none", copy_paste_prob=0.0)),
        Contender(
            "scale-jitter",
            _changes(cfg, scale_jitter=jitter, copy_paste_prob=0.0),
            note=f"{jitter} scale jitter",
        ),
        Contender(
            "copy-paste",
            _changes(cfg, scale_jitter="none", copy_paste_prob=paste),
            note=paste_note,
        ),
        Contender(
            "both",
            _changes(cfg, scale_jitter=jitter, copy_paste_prob=paste),
            note=f"{jitter} scale jitter and {paste_note}",
        ),
    ]


def augmented(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as the "both" row trains it: scale jitter and Copy-Paste on (notebook 08's
    preview starts from it)."""
    return cfg.replace(**augmentation_contenders(cfg)[-1].changes)


def size_name(n: int) -> str:
    """The data curve's contender name for ``n`` training images."""
    return f"train-{n}"


def curve_x(cfg: TrainConfig) -> dict[str, int]:
    """The data curve's contender names and their training-set sizes."""
    return {size_name(n): n for n in cfg.study_sizes}


def _subset_for(cfg: TrainConfig, n: int, source: Path, folder: Path) -> Path:
    """``folder``, written with ``cfg``'s subset of ``n`` training images from ``source``
    (written again every time: it is cheap, and a cached one could outlive its source)."""
    build_subset(
        source,
        folder,
        categories=cfg.categories,
        num_train=n,
        num_val=cfg.num_val,
        num_test=cfg.num_test,
        seed=cfg.seed,
        download=cfg.data_source == "coco",
        progress=False,
    )
    return folder


def data_contenders(
    cfg: TrainConfig, source: str | Path, subsets_dir: str | Path
) -> tuple[list[Contender], dict[str, Path]]:
    """One contender per size of ``cfg.study_sizes``, and the subset folder of each size
    other than ``cfg.num_train`` (built under ``subsets_dir/train-<n>/`` from ``source``,
    the COCO root ``subset.prepare_source`` gives).

    Every size trains the augmentation study's baseline recipe (scale jitter and Copy-Paste
    off, whatever ``cfg`` sets), so the contender at ``cfg.num_train`` is that baseline,
    reused when it ran; the others change ``num_train`` and ``num_epochs`` too
    (``round(num_epochs * num_train / n)``, at least 1).

    Raises:
        SubsetError: a size larger than the source holds (the message says how many).
    """
    contenders, folders = [], {}
    baseline = augmentation_contenders(cfg)[0].changes  # the seed recipe's flip and crop
    for n in cfg.study_sizes:
        epochs = max(1, round(cfg.num_epochs * cfg.num_train / n))
        name = size_name(n)
        note = f"{n} training images, {epochs} epochs"
        changes = {**baseline, **_changes(cfg, num_train=n, num_epochs=epochs)}
        contenders.append(Contender(name, changes, note))
        if n != cfg.num_train:
            folders[name] = _subset_for(cfg, n, Path(source), Path(subsets_dir) / name)
    return contenders, folders
