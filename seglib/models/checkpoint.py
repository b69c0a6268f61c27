"""Checkpoints: what a run saves, how it is read back, and what a resume must agree with.

A checkpoint is one ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``:

- ``model``: the state dict (DistributedDataParallel unwrapped);
- ``optimizer``, ``lr_scheduler``, ``scaler``: their state dicts, or None (``best.pt``);
- ``epoch`` (epochs completed), ``iteration`` (optimizer steps done), ``best_metric``;
- ``rng``: python, numpy, torch and CUDA generator states, for a resume inside an epoch;
- ``config`` (``TrainConfig.to_dict()``), ``categories`` (the class map: the split's category
  dicts, COCO's ids, in label order), ``num_classes``, so a checkpoint rebuilds its own model
  (``seglib.models.builder.model_from_checkpoint``) and its labels turn into COCO's ids
  (``seglib.core.categories``). Checkpoints written before the subsets kept COCO's ids hold
  ``id`` 1..k plus ``coco_id``; ``load_checkpoint`` reads them into the current form;
- ``norm_eps``: every normalisation layer's ``eps``, which state dicts leave out (the legacy
  v1 COCO weights freeze BatchNorm with eps 0, and a rebuilt model must use what was trained);
- ``versions``, ``format`` and ``extra`` (the run loop's history and best epoch).

Files are written atomically (``seglib.core.atomic.atomic_file``): a crash leaves the old file.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

import seglib
from seglib.core.atomic import atomic_file
from seglib.core.categories import CategoryError, category_labels
from seglib.core.config import TrainConfig

CHECKPOINT_FORMAT = 1
_REQUIRED = ("format", "model", "config", "categories", "num_classes", "epoch", "iteration")
# Changing these between a run and its resume would silently contradict the restored
# model, optimizer or schedule, so a resume refuses.
RESUME_FIXED = (
    "categories",
    "arch",
    "weights",
    "trainable_backbone_layers",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "lr_milestones",
    "lr_gamma",
    "warmup_iters",
    "warmup_factor",
)


class CheckpointError(ValueError):
    """A checkpoint or state dict is unreadable, incomplete, or does not fit the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else ``model``."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def read_torch_file(path: str | Path, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with damaged files reported as CheckpointError.
    ``mmap`` maps the tensors' storage from the file instead of reading it (``torch.load``'s).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: truncated, corrupt, or holding more than tensors and plain types.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:  # zip, pickle and EOF errors: the file is damaged or not ours
        raise CheckpointError(
            f"{path} could not be read with torch.load(weights_only=True) ({type(e).__name__}: {e}); "
            f"the file is truncated, corrupt, or not a state dict / seglib checkpoint. "
            f"Delete it and download or train it again."
        ) from e


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict in a seglib checkpoint or in a plain state-dict file.

    Raises:
        CheckpointError: the file holds something else.
    """
    obj = read_torch_file(Path(path))
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or seglib checkpoint"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict"
) -> None:
    """Load ``state`` into ``model`` (unwrapping DDP), naming the first tensors that differ.

    Raises:
        CheckpointError: shapes differ (another class count?) or keys belong to another
            architecture; names ``source``.
    """
    model = unwrap(model)
    own = model.state_dict()
    clashes = [
        f"{k}: {list(v.shape)} in {source}, {list(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if clashes:
        raise CheckpointError(
            f"{source} does not fit this model ({'; '.join(clashes[:3])}): it was trained for "
            "another class count or architecture. Use the checkpoint's own config and categories."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"{source} does not fit this model (another arch?): {str(e)[:600]}"
        ) from e


# --- RNG state ------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain tuples."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        # Tensors and plain tuples only, so torch.load(weights_only=True) accepts them.
        "python": (version, torch.tensor(py_state, dtype=torch.int64), gauss),
        "numpy": (
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state`` (CUDA states only when the GPU count matches)."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in py_state.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --- save and load ----------------------------------------------------------------------------
def norm_eps(model: nn.Module) -> dict[str, float]:
    """``{module name: eps}`` of every layer with a float ``eps`` (BatchNorm, frozen or not,
    GroupNorm, LayerNorm): a setting the state dict does not carry."""
    return {
        name: float(module.eps)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "eps", None), float)
    }


def restore_norm_eps(model: nn.Module, eps: dict[str, float]) -> None:
    """Set each named layer's ``eps`` to the saved value (``norm_eps``), in place.

    Raises:
        CheckpointError: a saved name is not a layer with an ``eps`` in ``model``.
    """
    modules = dict(model.named_modules())
    for name, value in eps.items():
        if not isinstance(getattr(modules.get(name), "eps", None), float):
            raise CheckpointError(f"the checkpoint sets eps of {name!r}, which the model lacks")
        modules[name].eps = float(value)


def class_map(categories: list[dict], *, source: str = "checkpoint") -> list[dict]:
    """A checkpoint's categories in label order with COCO's ids, whichever seglib wrote them.

    Older checkpoints numbered them 1..k (the label) and kept COCO's id in ``coco_id``: sorted
    by that label, each takes its ``coco_id`` as ``id``, so their predictions still get COCO's ids.

    Raises:
        CheckpointError: a class map that is neither form (names ``source``; retrain).
    """
    categories = [dict(c) for c in categories]
    if any("coco_id" in c for c in categories):
        old = sorted(categories, key=lambda c: c.get("id", 0))
        if [c.get("id") for c in old] != list(range(1, len(old) + 1)) or not all(
            isinstance(c.get("coco_id"), int) for c in old
        ):
            raise CheckpointError(
                f"{source}: its class map {categories} numbers categories neither 1..k with "
                "'coco_id' (older seglib) nor by COCO's id; train the model again"
            )
        categories = [
            {"id": c["coco_id"], **{k: v for k, v in c.items() if k not in ("id", "coco_id")}}
            for c in old
        ]
    try:
        category_labels(categories, source=f"{source}'s class map")
    except CategoryError as e:
        raise CheckpointError(str(e)) from e
    return categories


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    cfg: TrainConfig,
    categories: list[dict],
    epoch: int,
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    scaler: Any = None,
    best_metric: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-contained checkpoint (see the module docstring) atomically.

    Args:
        categories: the training split's categories in label order (``dataset.categories``).
        epoch: epochs completed; iteration: optimizer steps done.
        extra: plain JSON-like values the run loop wants back on resume.

    Raises:
        CheckpointError: ``categories`` give no class map (see ``class_map``).
    """
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "best_metric": None if best_metric is None else float(best_metric),
        "rng": rng_state(),
        "config": cfg.to_dict(),
        "categories": class_map(categories, source=str(path)),
        "num_classes": len(categories) + 1,
        "norm_eps": norm_eps(unwrap(model)),
        "versions": {
            "seglib": str(seglib.__version__),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
        },
        "extra": extra or {},
    }
    with atomic_file(path) as f:
        torch.save(ckpt, f)
    return Path(path)


def drop_training_state(path: str | Path) -> Path:
    """Rewrite the checkpoint at ``path`` without its optimizer, schedule and scaler state
    (a third of an AdamW checkpoint's size): its model still loads, it can no longer resume.
    The file is replaced atomically."""
    ckpt = load_checkpoint(path)
    ckpt.update(optimizer=None, lr_scheduler=None, scaler=None)
    with atomic_file(path) as f:
        torch.save(ckpt, f)
    return Path(path)


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, its ``categories`` as ``class_map``
    gives them (an older seglib's 1..k class map turned into COCO's ids).

    Raises:
        FileNotFoundError: no file at ``path`` (says how to make one).
        CheckpointError: unreadable, not a seglib checkpoint (names the missing keys), or a
            class map in no known numbering.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; train one with `python -m seglib train --data DIR --out RUN_DIR` "
            f"(it writes RUN_DIR/last.pt and best.pt) or pass the path of an existing .pt file"
        )
    ckpt = read_torch_file(path, map_location, mmap=mmap)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a seglib checkpoint: it needs keys {list(_REQUIRED)}, has {have}"
        )
    ckpt["categories"] = class_map(ckpt["categories"], source=str(path))
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], source: str | Path) -> TrainConfig:
    """The TrainConfig stored in a loaded checkpoint.

    Raises:
        CheckpointError: the stored config is not valid for this seglib version.
    """
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{source}: stored config is invalid for this seglib version: {e}"
        ) from e


def check_class_map(
    checkpoint_categories: list[dict], data_categories: list[dict], *, source: str = "checkpoint"
) -> None:
    """Raise unless a model's labels mean the same categories as the data's.

    Labels 1..k are positions in a category list; a checkpoint trained on ``cake car dog
    person`` would silently score every class wrong on a split ordered otherwise.

    Raises:
        CheckpointError: the (id, name) pairs differ; the message lists both.
    """
    ours = [(int(c["id"]), c["name"]) for c in checkpoint_categories]
    theirs = [(int(c["id"]), c["name"]) for c in data_categories]
    if ours != theirs:
        raise CheckpointError(
            f"{source} was trained with labels {ours} but the data uses {theirs}; evaluate it on a "
            "subset built with the same --categories in the same order"
        )


def load_for_resume(path: Path, cfg: TrainConfig, *, mmap: bool = False) -> dict[str, Any]:
    """``last.pt`` of a run to continue, checked against the config it continues with;
    ``mmap`` maps its tensors instead of reading them (enough to see where the run stands).

    Raises:
        FileNotFoundError: no checkpoint (says to start a fresh run).
        ValueError: a field in ``RESUME_FIXED`` differs (or num_epochs, for a schedule that
            spans the run: cosine, or multistep milestones); names each field with both values.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {path} does not exist; start a fresh run (without --resume) or point --out at the run folder"
        )
    ckpt = load_checkpoint(path, mmap=mmap)
    saved = checkpoint_config(ckpt, path)
    # cosine and the milestones are fractions of the whole run: a new length moves them
    spans_run = cfg.lr_schedule == "cosine" or (
        cfg.lr_schedule == "multistep" and bool(cfg.lr_milestones)
    )
    fixed = RESUME_FIXED + (("num_epochs",) if spans_run else ())
    diffs = [
        f"{k}: saved {getattr(saved, k)!r}, given {getattr(cfg, k)!r}"
        for k in fixed
        if getattr(saved, k) != getattr(cfg, k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {path}: the config differs in fields that the saved model, optimizer or "
            f"schedule depend on ({'; '.join(diffs)}). Resume with the run's own config "
            f"(--config {path.parent / 'config.json'} --resume) or start a new run in another folder."
        )
    return ckpt
