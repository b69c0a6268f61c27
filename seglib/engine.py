"""The training loop (the spirit of torchvision references/detection engine.py).

Every function takes its inputs as arguments and reports through return values and an
optional ``callback(event, payload)``; nothing prints. ``train`` is the whole run: loaders,
model, optimizer, warmup + schedule, AMP, validation, atomic checkpoints, resume, and
torchrun/DDP when launched that way.

Host syncs: a step queues its work without reading anything back. Losses are summed on the
device and read once per ``log_interval``; a non-finite loss is latched on the device and
checked at each log point and before every checkpoint, so at most ``log_interval - 1`` steps
run on after a NaN (wasted work, never a saved NaN model).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from seglib.config import TrainConfig
from seglib.dataset import collate_fn, open_split
from seglib.inference import evaluate
from seglib.io import write_json_atomic
from seglib.model import (
    build_model,
    build_model_structure,
    load_checkpoint,
    load_model_state,
    restore_rng_state,
    save_checkpoint,
)
from seglib.transforms import train_transforms

Callback = Callable[[str, dict[str, Any]], None]
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
# Changing these between a run and its resume would silently contradict the restored
# model/optimizer/scheduler state, so resume refuses.
RESUME_FIXED = (
    "categories",
    "arch",
    "weights",
    "trainable_backbone_layers",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "lr_milestones",
    "lr_gamma",
    "warmup_iters",
    "warmup_factor",
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


# --- device, seeds, precision -----------------------------------------------------------
def resolve_device(requested: str = "auto") -> torch.device:
    """ "auto" -> CUDA if present else the CPU (with a RuntimeWarning); "cpu", "cuda", "cuda:N".

    Under torchrun, "auto"/"cuda" mean this process's GPU, cuda:LOCAL_RANK.

    Raises:
        RuntimeError: CUDA was asked for but is not available.
        ValueError: an unknown device string.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if requested not in ("auto", "cuda") and not requested.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    if torch.cuda.is_available():
        if requested in ("auto", "cuda"):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device(requested)
    if requested == "auto":
        warnings.warn(
            "CUDA is not available: training runs on the CPU, which takes seconds per image "
            "(the smoke profile is for checking the plumbing, not for results).",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch.device("cpu")
    raise RuntimeError(
        f"device {requested!r} was requested but CUDA is not available (torch {torch.__version__}, "
        f"built for CUDA {torch.version.cuda}); use --device cpu or auto, or check the driver with nvidia-smi."
    )


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def amp_settings(
    device: torch.device, enabled: bool = True
) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype and GradScaler for ``device``.

    Returns:
        (None, None) on the CPU or when disabled; (bfloat16, None) on GPUs that support
        bf16; (float16, GradScaler) otherwise, since fp16 gradients need loss scaling.
    """
    if not enabled or device.type != "cuda":
        return None, None
    # Native bf16 only (Ampere and newer): emulated bf16 on older GPUs is slower than fp16.
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


# --- data ---------------------------------------------------------------------------------
class GroupedBatchSampler(Sampler[list[int]]):
    """Batches drawn from ``sampler`` with, where possible, one aspect group per batch.

    Groups fill as indices arrive and a batch is yielded when its group holds ``batch_size``;
    leftovers are batched together at the end, so no image is dropped and the length is
    always ceil(len(sampler) / batch_size) (equal on every DDP rank).

    ``set_epoch`` reshuffles (forwarded to the sampler); ``skip`` batches are left out of the
    next pass only, which is how a resumed run continues in the middle of an epoch.
    """

    def __init__(
        self, sampler: Sampler[int], group_ids: Sequence[int] | None, batch_size: int
    ) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.skip = skip

    def _batches(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for idx in self.sampler:
            group = self.group_ids[idx] if self.group_ids is not None else 0
            bucket = buckets.setdefault(group, [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[group] = []
        rest = [i for bucket in buckets.values() for i in bucket]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start : start + self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for n, batch in enumerate(self._batches()):
            if n >= skip:
                yield batch

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def aspect_groups(dataset: Any) -> list[int]:
    """0 for landscape or square images, 1 for portrait, from ``get_height_and_width``."""
    return [int(h > w) for h, w in (dataset.get_height_and_width(i) for i in range(len(dataset)))]


def make_loaders(
    cfg: TrainConfig, data_dir: str | Path, device: torch.device, distributed: bool = False
) -> tuple[DataLoader, DataLoader]:
    """Train loader (augmented, shuffled per epoch, aspect-grouped) and val loader (batch 2).

    The train loader's ``batch_sampler`` is a GroupedBatchSampler: call
    ``loader.batch_sampler.set_epoch(epoch)`` before each epoch. With ``distributed`` each
    rank gets its DistributedSampler shard.
    """
    train_ds = open_split(
        data_dir, "train", train_transforms(cfg.aug_strength, cfg.hflip_prob), cfg.min_box_size
    )
    val_ds = open_split(data_dir, "val")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    # DistributedSampler with one replica is a seeded per-epoch shuffle: the same order
    # after a resume, with no generator state to save.
    sampler = DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    groups = aspect_groups(train_ds) if cfg.aspect_ratio_grouping else None
    common = dict(
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator(),  # worker seeds come from here, not the global RNG
    )
    train_loader = DataLoader(
        train_ds, batch_sampler=GroupedBatchSampler(sampler, groups, cfg.batch_size), **common
    )
    val_loader = DataLoader(val_ds, batch_size=2, shuffle=False, **common)
    return train_loader, val_loader


# --- optimisation ---------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters (frozen backbone stages excluded)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(iteration: int, cfg: TrainConfig, iters_per_epoch: int) -> float:
    """Multiplier of cfg.lr at a 0-based optimizer step: linear warmup times the schedule.

    Warmup ramps from cfg.warmup_factor to 1 over cfg.warmup_iters steps. The schedule runs
    over the whole run, ``num_epochs * iters_per_epoch`` steps: "multistep" multiplies by
    lr_gamma at each fraction of it in lr_milestones, "cosine" decays to 0 at its end,
    "constant" stays at 1. max_iters stops a run early without changing the schedule, so a
    run stopped there and resumed matches an uninterrupted one.
    """
    warm = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    total = max(1, cfg.num_epochs * iters_per_epoch)
    if cfg.lr_schedule == "multistep":
        passed = sum(iteration >= m * total for m in cfg.lr_milestones)
        return warm * cfg.lr_gamma**passed
    if cfg.lr_schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(iteration, total) / total))
    return warm


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over ``lr_factor``, stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, cfg, iters_per_epoch)
    )


def _to_device(
    images: list[torch.Tensor], targets: list[dict], device: torch.device
) -> tuple[list, list]:
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _oom_message(epoch: int, iteration: int, batch: int, device: torch.device) -> str:
    return (
        f"CUDA out of memory at epoch {epoch}, iteration {iteration} (batch of {batch} images on {device}). "
        f"Lower batch_size (--batch-size 1) or the image size (--min-size 640 --max-size 1066); "
        f"measure with torch.cuda.max_memory_allocated(), not nvidia-smi."
    )


def _nonfinite_message(epoch: int, iteration: int, losses: dict[str, float]) -> str:
    parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
    return (
        f"non-finite training loss at epoch {epoch}, iteration {iteration} ({parts}). "
        f"Lower the learning rate (--lr), lengthen the warmup (warmup_iters), or clip gradients "
        f"(grad_clip_norm); check the data for degenerate boxes."
    )


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    epoch: int,
    *,
    scaler: torch.amp.GradScaler | None = None,
    lr_scheduler: Any = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip_norm: float | None = None,
    log_interval: int = 20,
    start_iter: int = 0,
    callback: Callback | None = None,
    max_iters: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """One pass over ``loader`` (or until ``max_iters`` optimizer steps in total).

    Args:
        loader: yields ``(images, targets)``: lists of float [3,H,W] tensors in 0..1 and
            torchvision target dicts (boxes float32 [N,4] XYXY, labels int64, masks uint8 [N,H,W]).
        epoch: 1-based, for logs and errors only.
        lr_scheduler: stepped once per iteration (warmup lives in it).
        start_iter: optimizer steps done before this epoch (global iteration counter).
        callback: gets ``("iter", row)`` every ``log_interval`` steps and at the end; row has
            epoch, iteration, lr, loss, the five loss components, time and data_time (s/iter).

    Returns:
        epoch, iteration (global, after the epoch), iterations (this call), stopped (max_iters
        was reached), time (s), loss and components (epoch means; NaN when no step ran).

    Raises:
        NonFiniteLossError: a loss was NaN/inf; names epoch, iteration and the components.
        torch.cuda.OutOfMemoryError: re-raised with a hint (smaller batch or images).
    """
    model.train()
    iteration = start_iter
    if max_iters is not None and iteration >= max_iters:
        nothing = dict.fromkeys(("loss", *LOSS_NAMES), float("nan"))
        return {
            "epoch": epoch,
            "iteration": iteration,
            "iterations": 0,
            "stopped": True,
            "time": 0.0,
            **nothing,
        }
    distributed = dist.is_available() and dist.is_initialized()
    n = len(LOSS_NAMES) + 1
    interval_sum = torch.zeros(n, device=device)
    epoch_sum = torch.zeros(n, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    first_bad = torch.full((n + 1,), float("nan"), device=device)  # [iteration, total, components]
    interval_steps = done = 0
    start = tick = last_log = time.perf_counter()
    data_time = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(loader) if hasattr(loader, "__len__") else None,
            desc=f"epoch {epoch}",
            leave=True,
        )

    def check() -> None:
        flag = bad.to(torch.int32)
        if distributed:  # every rank must stop together, or the others hang in all-reduce
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            values = first_bad.tolist()
            where = int(values[0]) if not math.isnan(values[0]) else iteration
            raise NonFiniteLossError(
                _nonfinite_message(
                    epoch, where, dict(zip(("loss", *LOSS_NAMES), values[1:], strict=True))
                )
            )

    def log() -> None:
        nonlocal interval_steps, data_time, last_log
        check()
        means = (interval_sum / max(interval_steps, 1)).tolist()
        now = time.perf_counter()
        row = {"epoch": epoch, "iteration": iteration, "lr": optimizer.param_groups[0]["lr"]}
        row.update(dict(zip(("loss", *LOSS_NAMES), means, strict=True)))
        row.update(
            time=(now - last_log) / max(interval_steps, 1),
            data_time=data_time / max(interval_steps, 1),
        )
        interval_sum.zero_()
        interval_steps, data_time, last_log = 0, 0.0, now
        if bar is not None:
            bar.set_postfix(
                {"loss": f"{row['loss']:.3f}", **{k[5:]: f"{row[k]:.3f}" for k in LOSS_NAMES}}
            )
        if callback is not None:
            callback("iter", row)

    stopped = False
    try:
        for images, targets in loader:
            data_time += time.perf_counter() - tick
            images, targets = _to_device(images, targets, device)
            try:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss_dict = model(images, targets)
                values = torch.stack([loss_dict[k].detach().float() for k in LOSS_NAMES])
                loss = sum(loss_dict[k] for k in LOSS_NAMES)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if grad_clip_norm is not None:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if grad_clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
                    optimizer.step()
            except torch.cuda.OutOfMemoryError as e:
                raise torch.cuda.OutOfMemoryError(
                    _oom_message(epoch, iteration + 1, len(images), device) + f" ({e})"
                ) from e
            if lr_scheduler is not None:
                lr_scheduler.step()
            iteration += 1
            done += 1
            interval_steps += 1
            total = values.sum()
            row = torch.cat([total[None], values])
            interval_sum += row
            epoch_sum += row
            finite = torch.isfinite(total)
            newly_bad = ~finite & ~bad
            first_bad.copy_(
                torch.where(
                    newly_bad,
                    torch.cat([torch.full((1,), float(iteration), device=device), row]),
                    first_bad,
                )
            )
            bad |= ~finite
            if bar is not None:
                bar.update(1)
            if done % log_interval == 0:
                log()
            if max_iters is not None and iteration >= max_iters:
                stopped = True
                break
            tick = time.perf_counter()
        if interval_steps:
            log()
        check()  # also when nothing was left to log: never return with an unchecked NaN
    finally:
        if bar is not None:
            bar.close()
    means = (epoch_sum / max(done, 1)).tolist()
    out = {
        "epoch": epoch,
        "iteration": iteration,
        "iterations": done,
        "stopped": stopped,
        "time": time.perf_counter() - start,
    }
    out.update(dict(zip(("loss", *LOSS_NAMES), means, strict=True)))
    return out


# --- distributed ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that torchrun's RANK/WORLD_SIZE/LOCAL_RANK describe, if any.

    NCCL when CUDA is used, gloo on the CPU. A group that already exists is reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    use_nccl = device != "cpu" and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


# --- the run ----------------------------------------------------------------------------------
def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        "segm_AP": metrics["segm"]["AP"],
        "segm_AP50": metrics["segm"]["AP50"],
        "bbox_AP": metrics["bbox"]["AP"],
        "bbox_AP50": metrics["bbox"]["AP50"],
        "best_match_iou": metrics["best_match_iou"],
    }


def _load_for_resume(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {path} does not exist; start a fresh run (without --resume) or point --out at the run folder"
        )
    ckpt = load_checkpoint(path)
    saved = TrainConfig.from_dict(ckpt["config"])
    # cosine and the milestones are fractions of the whole run: a new length moves them
    spans_run = cfg.lr_schedule == "cosine" or (
        cfg.lr_schedule == "multistep" and cfg.lr_milestones
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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` in order: training rows (``loss``, ``lr``, ...)
    every log interval and eval rows (``segm_AP``, ``bbox_AP``, ``val``) after each validation.

    Raises:
        FileNotFoundError: the run has no metrics.jsonl (names the file and what writes it).
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: `python -m seglib train` (or notebook 03) writes it"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trim_metrics(path: Path, iteration: int | None) -> None:
    """Fresh run: empty the file. Resume: drop rows logged after the checkpoint (and torn lines)."""
    if iteration is None or not path.exists():
        path.write_text("")
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("iteration", 0) <= iteration:
            kept.append(line + "\n")
    from seglib.io import write_bytes_atomic

    write_bytes_atomic(path, "".join(kept).encode())


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    callback: Callback | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train Mask R-CNN on the subset in ``data_dir``; write the run into ``out_dir``.

    Writes config.json, metrics.jsonl (one JSON row per log interval, plus eval rows with a
    "val" key), eval/val_epoch{N}.json, last.pt (every epoch) and best.pt (best val mask AP),
    checkpoints atomically. Under torchrun it joins the process group and wraps the model in
    DistributedDataParallel; only rank 0 evaluates, writes and calls ``callback``.

    Args:
        resume: continue from out_dir/last.pt (model, optimizer, scheduler, scaler, epoch,
            iteration, RNG). Bit-identical to an uninterrupted run with num_workers=0.
        callback: ``callback(event, payload)`` for "iter" (a metrics row), "epoch_end",
            "eval" ({"epoch", "iteration", "metrics"}) and "checkpoint" ({"path", "kind", ...}).
        progress: show tqdm.auto bars with the loss components (the CLI passes True).

    Returns:
        rank, world_size, device, epochs (completed), iteration, stopped_by ("num_epochs" or
        "max_iters"), history (one row per epoch with headline val metrics), best (val segm
        AP), best_epoch, final (last val metrics), paths.

    Raises:
        NonFiniteLossError: the loss diverged (last.pt from before is intact).
        FileNotFoundError, ValueError: missing data, no last.pt to resume, mismatching config.
    """
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, Path(data_dir), Path(out_dir), info, resume, callback, progress)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    info: DistInfo,
    resume: bool,
    callback: Callback | None,
    progress: bool,
) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    main = info.rank == 0
    paths = {
        "out_dir": out_dir,
        "config": out_dir / "config.json",
        "metrics": out_dir / "metrics.jsonl",
        "last": out_dir / "last.pt",
        "best": out_dir / "best.pt",
    }

    def notify(event: str, payload: dict[str, Any]) -> None:
        if main and callback is not None:
            callback(event, payload)

    def write_row(row: dict[str, Any]) -> None:
        with open(paths["metrics"], "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_iter(event: str, row: dict[str, Any]) -> None:
        write_row(row)
        notify(event, row)

    seed_everything(cfg.seed)
    train_loader, val_loader = make_loaders(cfg, data_dir, device, distributed=info.enabled)
    categories = train_loader.dataset.categories
    if tuple(train_loader.dataset.class_names) != cfg.categories:
        raise ValueError(
            f"{data_dir / 'train.json'} has categories {train_loader.dataset.class_names} but the config "
            f"has {list(cfg.categories)}; build the subset with the same categories in the same order."
        )
    ckpt = _load_for_resume(paths["last"], cfg) if resume else None
    model = (
        build_model_structure(cfg)
        if ckpt
        else build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
    )
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    iters_per_epoch = len(train_loader)
    lr_scheduler = make_lr_scheduler(optimizer, cfg, iters_per_epoch)
    amp_dtype, scaler = amp_settings(device, cfg.amp)
    epochs_done, iteration, epoch_iter, best, best_epoch, history, rng = (
        0,
        0,
        0,
        None,
        None,
        [],
        None,
    )
    if ckpt is not None:
        load_model_state(model, ckpt["model"], source=str(paths["last"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        extra = ckpt.get("extra") or {}
        epochs_done, iteration, best, rng = (
            ckpt["epoch"],
            ckpt["iteration"],
            ckpt["best_metric"],
            ckpt["rng"],
        )
        epoch_iter, best_epoch, history = (
            extra.get("epoch_iter", 0),
            extra.get("best_epoch"),
            list(extra.get("history", [])),
        )
    if info.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(paths["config"])
        _trim_metrics(paths["metrics"], iteration if ckpt else None)
        if ckpt is None:  # a fresh run must not leave another run's checkpoints beside its config
            paths["last"].unlink(missing_ok=True)
            paths["best"].unlink(missing_ok=True)

    def save(kind: str, epoch: int) -> None:
        # best.pt is for evaluate/predict: without the optimizer state it is half the size.
        state = (
            dict(optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler)
            if kind == "last"
            else {}
        )
        path = save_checkpoint(
            paths[kind],
            model=model,
            cfg=cfg,
            categories=categories,
            epoch=epochs_done,
            iteration=iteration,
            best_metric=best,
            extra={"history": history, "epoch_iter": epoch_iter, "best_epoch": best_epoch},
            **state,
        )
        notify(
            "checkpoint", {"path": str(path), "kind": kind, "epoch": epoch, "iteration": iteration}
        )

    stopped_by, final = "num_epochs", None
    for epoch_idx in range(epochs_done, cfg.num_epochs):
        if cfg.max_iters is not None and iteration >= cfg.max_iters:
            stopped_by = "max_iters"
            break
        epoch, skip = epoch_idx + 1, epoch_iter
        # Each epoch's randomness is a function of (seed, epoch, rank), so a resume at an epoch
        # boundary needs no RNG state; inside an epoch the saved state takes over.
        if skip and rng is not None:
            restore_rng_state(rng)
        else:
            seed_everything(_epoch_seed(cfg.seed, epoch, info.rank))
        rng = None
        train_loader.generator.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))
        train_loader.batch_sampler.set_epoch(epoch_idx, skip)
        try:
            stats = train_one_epoch(
                model,
                optimizer,
                train_loader,
                device,
                epoch,
                scaler=scaler,
                lr_scheduler=lr_scheduler,
                amp_dtype=amp_dtype,
                grad_clip_norm=cfg.grad_clip_norm,
                log_interval=cfg.log_interval,
                start_iter=iteration,
                callback=on_iter if main else None,
                max_iters=cfg.max_iters,
                progress=progress and main,
            )
        except NonFiniteLossError as e:
            kept = (
                f" The last good checkpoint {paths['last']} (epoch {epochs_done}, iteration {iteration}) is intact."
                if paths["last"].exists()
                else " No checkpoint had been written yet."
            )
            raise NonFiniteLossError(str(e) + kept) from e
        iteration = stats["iteration"]
        epoch_iter = skip + stats["iterations"]
        complete = epoch_iter >= iters_per_epoch
        if complete:
            epochs_done, epoch_iter = epoch, 0
        hit_cap = cfg.max_iters is not None and iteration >= cfg.max_iters
        row = {k: stats[k] for k in ("epoch", "iteration", "time", "loss", *LOSS_NAMES)}
        row["complete"] = complete
        notify("epoch_end", dict(row))
        improved = False
        if main and (
            (complete and epoch % cfg.eval_interval == 0) or epoch == cfg.num_epochs or hit_cap
        ):
            # fork_rng: evaluating must not move the training RNG stream (exact resume).
            with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
                final = evaluate(model, val_loader, device, score_thresh=cfg.score_thresh)
            row.update(_headline(final))
            write_row({"epoch": epoch, "iteration": iteration, **_headline(final), "val": final})
            write_json_atomic(out_dir / "eval" / f"val_epoch{epoch}.json", final)
            notify("eval", {"epoch": epoch, "iteration": iteration, "metrics": final})
            improved = best is None or final["segm"]["AP"] > best
            if improved:
                best, best_epoch = final["segm"]["AP"], epoch
        history.append(row)
        if main:
            save("last", epoch)
            if improved:
                save("best", epoch)
        if info.enabled:
            dist.barrier()  # nobody races ahead while rank 0 evaluates and writes
        if hit_cap:
            stopped_by = "max_iters"
            break
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "device": str(device),
        "epochs": epochs_done,
        "iteration": iteration,
        "stopped_by": stopped_by,
        "history": history,
        "best": best,
        "best_epoch": best_epoch,
        "final": final,
        "paths": {k: str(v) for k, v in paths.items()},
    }
