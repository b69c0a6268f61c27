"""The training run, in the spirit of torchvision's references/detection engine.py.

- ``train_one_epoch(model, optimizer, loader, device, epoch, ...)``: one pass, every input an
  argument, with no host sync between log rows (``seglib.engine.runlog.LossMeter``).
- ``train(cfg, data_dir, out_dir)``: the whole run, resume and torchrun/DDP included.
  ``seglib.engine.runlog.RunState`` is where it stands; every checkpoint holds it.

The model follows ``seglib.models.builder.SegmentationModel``: the loop sums and logs whatever
losses it returns. Nothing prints: results come back as return values and through ``callback``.

Exact resume: augmentation is seeded per (seed, epoch, index, rank) by the batch sampler, the
model's randomness per (seed, epoch, rank) or from the checkpoint, and validation runs under
``torch.random.fork_rng``: a run stopped anywhere and resumed ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from seglib.core.config import TrainConfig
from seglib.core.distributed import DistInfo, init_distributed
from seglib.core.paths import RunFolder
from seglib.core.runtime import (
    amp_settings,
    batch_to_device,
    derived_seed,
    precision_note,
    resolve_device,
    seed_everything,
)
from seglib.data.loaders import make_loaders
from seglib.engine.runlog import (
    LossMeter,
    NonFiniteLossError,
    RunState,
    append_row,
    prepare_run_dir,
    record_eval,
    val_summary,
)
from seglib.engine.schedule import make_lr_scheduler, make_optimizer, optimizer_step
from seglib.evaluation.prediction import evaluate
from seglib.models.builder import build_model, build_model_structure, predicts_in_arch
from seglib.models.checkpoint import (
    load_for_resume,
    load_model_state,
    restore_norm_eps,
    restore_rng_state,
    save_checkpoint,
)
from seglib.models.precision import predicts_in

Callback = Callable[[str, dict[str, Any]], None]


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
        loader: yields ``(images, targets)``: lists of [3,H,W] images (float in 0..1, or
            uint8, made float on the device) and torchvision target dicts.
        epoch: 1-based, for logs and errors only. start_iter: steps done before this call.
        lr_scheduler: stepped once per iteration (warmup lives in it).
        callback: gets ``("iter", row)`` every ``log_interval`` steps and at the end: epoch,
            iteration, lr, loss (the sum), each loss the model returned, time, data_time (s/it).

    Returns:
        epoch, iteration (global, after the epoch), iterations (this call), stopped (max_iters
        was reached), time (s), loss and components (epoch means; loss NaN when no step ran).

    Raises:
        NonFiniteLossError: a loss was NaN/inf; names epoch, iteration and the components.
        torch.cuda.OutOfMemoryError: re-raised with a hint (smaller batch or images).
    """
    model.train()
    meter, iteration, start = LossMeter(device), start_iter, time.perf_counter()
    stopped = max_iters is not None and iteration >= max_iters
    bar = _progress_bar(loader, epoch) if progress else None

    def log() -> None:
        row = meter.row(epoch, iteration, optimizer.param_groups[0]["lr"])
        if bar is not None:
            bar.set_postfix({k.removeprefix("loss_"): f"{row[k]:.3f}" for k in meter.keys()})
        if callback is not None:
            callback("iter", row)

    try:
        tick = time.perf_counter()
        for images, targets in [] if stopped else loader:
            meter.data_time += time.perf_counter() - tick
            images, targets = batch_to_device(images, targets, device)
            try:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = model(images, targets)
                loss = meter.update(losses, iteration + 1)
                optimizer_step(loss, model, optimizer, scaler, grad_clip_norm)
            except torch.cuda.OutOfMemoryError as e:
                raise torch.cuda.OutOfMemoryError(
                    _oom_message(epoch, iteration + 1, len(images), device) + f" ({e})"
                ) from e
            if lr_scheduler is not None:
                lr_scheduler.step()
            iteration += 1
            if bar is not None:
                bar.update(1)
            if meter.steps % log_interval == 0:
                log()
            if max_iters is not None and iteration >= max_iters:
                stopped = True
                break
            tick = time.perf_counter()
        if meter.interval_steps:
            log()
        meter.check(epoch, iteration)  # also when nothing was left to log
    finally:
        if bar is not None:
            bar.close()
    out = {"epoch": epoch, "iteration": iteration, "iterations": meter.steps, "stopped": stopped}
    return {**out, "time": time.perf_counter() - start, **meter.epoch_means()}


def _progress_bar(loader: Iterable, epoch: int) -> Any:
    from tqdm.auto import tqdm

    total = len(loader) if hasattr(loader, "__len__") else None
    return tqdm(total=total, desc=f"epoch {epoch}", leave=True)


def _oom_message(epoch: int, iteration: int, batch: int, device: torch.device) -> str:
    return (
        f"CUDA out of memory at epoch {epoch}, iteration {iteration} (batch of {batch} images on {device}). "
        f"Lower batch_size (--set batch_size=1) or the image size (--set min_size=640 --set max_size=1066); "
        f"measure with torch.cuda.max_memory_allocated(), not nvidia-smi."
    )


# --- the run ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Parts:
    """What a run trains with (built by ``_assemble``)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler | None
    train_loader: DataLoader
    val_loader: DataLoader
    step_options: dict[str, Any]  # train_one_epoch's keyword arguments that never change

    def resumable(self) -> dict[str, Any]:  # what last.pt keeps besides the model
        return dict(optimizer=self.optimizer, lr_scheduler=self.lr_scheduler, scaler=self.scaler)


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    callback: Callback | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``cfg.arch`` on the subset in ``data_dir``; write the run into ``out_dir``.

    Writes config.json, metrics.jsonl and eval/ (``seglib.engine.runlog``), last.pt every
    ``checkpoint_interval`` epochs and at the end, best.pt at the best val mask AP, atomically.
    Under torchrun it joins the process group and wraps the model in DistributedDataParallel;
    every rank validates its share of val, and only rank 0 writes and calls ``callback``.

    Args:
        resume: continue from out_dir/last.pt (model, optimizer, scheduler, scaler, RunState,
            RNG). Bit-identical to an uninterrupted run on the CPU, DataLoader workers or not.
        callback: ``callback(event, payload)`` for "start" ({"device", "precision"}: where
            and at which precision training runs, and why), "iter" (a metrics row),
            "epoch_end" (the epoch's row; "validating": an "eval" follows), "eval" ({"epoch",
            "iteration", "metrics"}) and "checkpoint" ({"path", "kind", ...}).
        progress: show tqdm.auto bars with the loss components (the CLI passes True).

    Returns:
        rank, world_size, device, epochs (completed), iteration, stopped_by ("num_epochs" or
        "max_iters"), history (one row per epoch with headline val metrics), best (val segm
        AP), best_epoch, final (last val metrics), precision (the "start" note), paths.

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
    device, main, folder = resolve_device(cfg.device), info.rank == 0, RunFolder(Path(out_dir))

    def notify(event: str, payload: dict[str, Any]) -> None:
        if main and callback is not None:
            callback(event, payload)

    def on_iter(event: str, row: dict[str, Any]) -> None:
        append_row(folder, row)
        notify(event, row)

    # last.pt is first read lazily (mmap): a finished run resumes to nothing without reading
    # its weights and optimizer state or building a model (1.9 s of notebook 03's last cell).
    ckpt = load_for_resume(folder.last_checkpoint, cfg, mmap=True) if resume else None
    batches = len(make_loaders(cfg, data_dir, device)[0]) if resume else 0
    if ckpt is not None and _finished(cfg, state := RunState.from_checkpoint(ckpt, batches)):
        validation = predicts_in_arch(cfg.arch, device, cfg.cpu_amp_eval)
        precision = precision_note(device, cfg.amp, cfg.cpu_amp, validation)
        notify("start", {"device": str(device), "precision": precision})
        if main:
            prepare_run_dir(cfg, folder, state.iteration)
        return _summary(info, device, cfg, state, None, precision, folder)
    ckpt = load_for_resume(folder.last_checkpoint, cfg) if resume else None
    parts = _assemble(cfg, data_dir, device, ckpt, folder.last_checkpoint, ddp=info.enabled)
    validation = predicts_in(parts.model, device, cfg.cpu_amp_eval)  # Mask R-CNN's only
    precision = precision_note(device, cfg.amp, cfg.cpu_amp, validation)
    notify("start", {"device": str(device), "precision": precision})
    parts.step_options["progress"] = progress and main
    iters_per_epoch = len(parts.train_loader)
    state = RunState.from_checkpoint(ckpt, iters_per_epoch) if ckpt else RunState()
    if main:
        prepare_run_dir(cfg, folder, state.iteration if ckpt else None)
    rng, final = ckpt["rng"] if ckpt else None, None
    while not _finished(cfg, state):
        number = state.epoch + 1
        _start_epoch(parts, cfg, state, rng, info.rank)
        rng = None  # only the first epoch of a resumed run continues a saved RNG state
        stats = _run_epoch(parts, device, state, on_iter if main else None, folder.last_checkpoint)
        state.iteration = stats["iteration"]
        if state.steps_into_epoch(iters_per_epoch) == iters_per_epoch:
            state.epoch += 1
        row = {k: v for k, v in stats.items() if k not in ("iterations", "stopped")}
        row["complete"], validating = state.epoch == number, _validation_due(cfg, state, number)
        notify("epoch_end", {**row, "validating": validating})
        improved = False
        if validating:
            final, improved = _evaluate_and_keep_best(parts, device, cfg, state, number)
            row.update(val_summary(final))
            if main:
                record_eval(folder, final, number, state.iteration)
                notify("eval", {"epoch": number, "iteration": state.iteration, "metrics": final})
        state.history.append(row)
        saved = {"last": folder.last_checkpoint, "best": folder.best_checkpoint}
        kinds = ("last",) if _checkpoint_due(cfg, state, number) else ()
        for kind in kinds + (("best",) if improved else ()):
            if main:
                _save(saved[kind], kind, parts, cfg, state, iters_per_epoch)
                where = {"epoch": number, "iteration": state.iteration}
                notify("checkpoint", {"path": str(saved[kind]), "kind": kind, **where})
        if info.enabled:
            dist.barrier()  # nobody races ahead while rank 0 writes
    return _summary(info, device, cfg, state, final, precision, folder)


def _summary(
    info: DistInfo,
    device: torch.device,
    cfg: TrainConfig,
    state: RunState,
    final: dict[str, Any] | None,
    precision: str,
    folder: RunFolder,
) -> dict[str, Any]:
    """What ``train`` returns (see its docstring)."""
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "device": str(device),
        "epochs": state.epoch,
        "iteration": state.iteration,
        "stopped_by": "max_iters" if _capped(cfg, state) else "num_epochs",
        "history": state.history,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "final": final,
        "precision": precision,
        "paths": {
            "config": str(folder.config),
            "metrics": str(folder.metrics),
            "last": str(folder.last_checkpoint),
            "best": str(folder.best_checkpoint),
        },
    }


def _assemble(
    cfg: TrainConfig,
    data_dir: Path,
    device: torch.device,
    ckpt: dict[str, Any] | None,
    source: Path,
    *,
    ddp: bool,
) -> _Parts:
    """Loaders, model (fresh, or restored from ``ckpt``), optimizer, schedule and AMP."""
    seed_everything(cfg.seed)  # the model's initial weights
    train_loader, val_loader = make_loaders(cfg, data_dir, device)
    if ckpt is None:
        model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
    else:
        model = build_model_structure(cfg)
        load_model_state(model, ckpt["model"], source=str(source))
        restore_norm_eps(model, ckpt.get("norm_eps", {}))
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    lr_scheduler = make_lr_scheduler(optimizer, cfg, len(train_loader))
    amp_dtype, scaler = amp_settings(device, cfg.amp, cfg.cpu_amp)
    if ddp:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    options = dict(scaler=scaler, lr_scheduler=lr_scheduler, amp_dtype=amp_dtype)
    options.update(grad_clip_norm=cfg.grad_clip_norm, log_interval=cfg.log_interval)
    options["max_iters"] = cfg.max_iters
    parts = _Parts(model, optimizer, lr_scheduler, scaler, train_loader, val_loader, options)
    for name, obj in parts.resumable().items():
        if ckpt is not None and obj is not None and ckpt.get(name) is not None:
            obj.load_state_dict(ckpt[name])
    return parts


def _run_epoch(
    parts: _Parts,
    device: torch.device,
    state: RunState,
    callback: Callback | None,
    last: Path,
) -> dict[str, Any]:
    """``train_one_epoch`` for the epoch in progress; a NaN error says what last.pt holds."""
    try:
        return train_one_epoch(
            parts.model,
            parts.optimizer,
            parts.train_loader,
            device,
            state.epoch + 1,
            start_iter=state.iteration,
            callback=callback,
            **parts.step_options,
        )
    except NonFiniteLossError as e:
        if not last.exists():
            raise NonFiniteLossError(f"{e} No checkpoint had been written yet.") from e
        where = f"epoch {state.epoch}, iteration {state.iteration}"
        raise NonFiniteLossError(f"{e} The last good checkpoint {last} ({where}) is intact.") from e


def _start_epoch(
    parts: _Parts, cfg: TrainConfig, state: RunState, rng: dict | None, rank: int
) -> None:
    """Seed the model's randomness and point the sampler at the epoch in progress.

    The randomness of an epoch is a function of (seed, epoch, rank), so a resume at an epoch
    boundary needs no RNG state; inside an epoch the checkpoint's ``rng`` takes over.
    """
    skip = state.steps_into_epoch(len(parts.train_loader))
    if skip and rng is not None:
        restore_rng_state(rng)
    else:
        seed_everything(derived_seed(cfg.seed, state.epoch, rank))
    parts.train_loader.batch_sampler.set_epoch(state.epoch, skip)


def _capped(cfg: TrainConfig, state: RunState) -> bool:
    return cfg.max_iters is not None and state.iteration >= cfg.max_iters


def _finished(cfg: TrainConfig, state: RunState) -> bool:
    return state.epoch >= cfg.num_epochs or _capped(cfg, state)


def _validation_due(cfg: TrainConfig, state: RunState, number: int) -> bool:
    """After every eval_interval-th complete epoch, the last epoch, and a max_iters stop."""
    complete = state.epoch == number
    every = complete and number % cfg.eval_interval == 0
    return every or number == cfg.num_epochs or _capped(cfg, state)


def _checkpoint_due(cfg: TrainConfig, state: RunState, number: int) -> bool:
    """After every checkpoint_interval-th epoch and when the run ends (num_epochs or max_iters)."""
    return number % cfg.checkpoint_interval == 0 or _finished(cfg, state)


def _evaluate_and_keep_best(
    parts: _Parts, device: torch.device, cfg: TrainConfig, state: RunState, number: int
) -> tuple[dict[str, Any], bool]:
    """Val metrics (every rank predicts its share) and whether they set a new best mask AP.

    Runs under fork_rng, so validating does not move the training RNG stream.
    """
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        kw = dict(score_thresh=cfg.score_thresh, cpu_amp=cfg.cpu_amp_eval)
        metrics = evaluate(parts.model, parts.val_loader, device, **kw)
    improved = state.best is None or metrics["segm"]["AP"] > state.best
    if improved:
        state.best, state.best_epoch = metrics["segm"]["AP"], number
    return metrics, improved


def _save(
    path: Path, kind: str, parts: _Parts, cfg: TrainConfig, state: RunState, iters_per_epoch: int
) -> None:
    # best.pt is for evaluate/predict: without the optimizer state it is half the size.
    save_checkpoint(
        path,
        model=parts.model,
        cfg=cfg,
        categories=parts.train_loader.dataset.categories,
        **(parts.resumable() if kind == "last" else {}),
        **state.checkpoint_fields(iters_per_epoch),
    )
