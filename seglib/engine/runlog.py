"""What a run logs: loss rows from the device, and the run folder's log files.

``LossMeter`` sums the losses of every step on the device and reads them back once per log
row, so steps queue their work without host syncs; a non-finite loss is latched there and
checked at each read, so at most ``log_interval - 1`` steps run on after a NaN (wasted work,
never a saved NaN model).

``out_dir/config.json`` holds the run's TrainConfig; ``metrics.jsonl`` one JSON row per log
interval (epoch, iteration, lr, loss and its components, time) and one per validation
(headline metrics plus the full ``val`` dict); ``eval/val_epoch{N}.json`` each validation's
metrics. Only rank 0 writes them. ``RunState`` is where a run stands: every checkpoint holds
it, and a resume continues from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from seglib.core.atomic import write_bytes_atomic, write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.distributed import any_rank
from seglib.core.paths import RunFolder


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass
class RunState:
    """Where a run stands; every checkpoint holds it and a resume continues from it.

    ``epoch`` is the one epoch counter: epochs completed. The epoch in progress is index
    ``epoch`` for the sampler and the seeds, and "epoch ``epoch + 1``" in logs and messages.
    Every epoch is ``iters_per_epoch`` optimizer steps, so the steps already done in the
    epoch in progress are ``iteration - epoch * iters_per_epoch``.
    """

    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps done, over the whole run
    best: float | None = None  # best val mask AP so far
    best_epoch: int | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # a row per epoch

    def steps_into_epoch(self, iters_per_epoch: int) -> int:
        return self.iteration - self.epoch * iters_per_epoch

    def checkpoint_fields(self, iters_per_epoch: int) -> dict[str, Any]:
        """The ``save_checkpoint`` arguments that record this state."""
        extra = {"history": self.history, "best_epoch": self.best_epoch}
        extra["iters_per_epoch"] = iters_per_epoch
        return dict(epoch=self.epoch, iteration=self.iteration, best_metric=self.best, extra=extra)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], iters_per_epoch: int) -> RunState:
        """The state in ``ckpt``; ValueError when the epochs have changed length since."""
        extra = ckpt.get("extra") or {}
        if extra.get("iters_per_epoch", iters_per_epoch) != iters_per_epoch:
            raise ValueError(
                f"cannot resume: the run had {extra['iters_per_epoch']} batches per epoch, the training split "
                f"now gives {iters_per_epoch}; resume with the same data and batch_size."
            )
        history, best_epoch = list(extra.get("history", [])), extra.get("best_epoch")
        return cls(ckpt["epoch"], ckpt["iteration"], ckpt["best_metric"], best_epoch, history)


# --- the loss meter ----------------------------------------------------------------------------
class LossMeter:
    """Loss sums kept on the device, read back once per log row, and a non-finite latch.

    Components are the keys of the model's first loss dict; ``loss`` is their sum. ``update``
    never syncs; ``row`` and ``check`` do, and raise if any step so far, on any DDP rank, had
    a non-finite loss, so every rank must call them at the same points.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.names: tuple[str, ...] = ()
        self.interval_steps = self.steps = 0
        self.data_time = 0.0  # s spent waiting for batches since the last row
        self._last_row = time.perf_counter()
        self._bad = torch.zeros((), dtype=torch.bool, device=device)

    def keys(self) -> tuple[str, ...]:
        return ("loss", *self.names)

    def update(self, losses: dict[str, torch.Tensor], iteration: int) -> torch.Tensor:
        """Add one step's losses (``iteration`` numbers this step); returns their sum."""
        if not self.names:
            self.names = tuple(losses)
            n = len(self.names) + 1
            self._interval = torch.zeros(n, device=self.device)
            self._total = torch.zeros(n, device=self.device)
            self._first_bad = torch.full((n + 1,), float("nan"), device=self.device)
        loss = sum(losses[k] for k in self.names)
        row = torch.stack([loss.detach(), *(losses[k].detach() for k in self.names)]).float()
        self._interval += row
        self._total += row
        newly_bad = ~torch.isfinite(row[0]) & ~self._bad
        step = torch.full((1,), float(iteration), device=self.device)
        self._first_bad.copy_(torch.where(newly_bad, torch.cat([step, row]), self._first_bad))
        self._bad |= newly_bad
        self.interval_steps += 1
        self.steps += 1
        return loss

    def check(self, epoch: int, iteration: int) -> None:
        """Raise NonFiniteLossError, naming the first bad step and its components."""
        if not any_rank(self._bad):
            return
        values = self._first_bad.tolist() if self.names else [float("nan")]
        where = iteration if math.isnan(values[0]) else int(values[0])  # NaN: another rank's
        parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.keys(), values[1:], strict=False))
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {epoch}, iteration {where} ({parts}). "
            f"Lower the learning rate (--lr), lengthen the warmup (warmup_iters), or clip gradients "
            f"(grad_clip_norm); check the data for degenerate boxes."
        )

    def row(self, epoch: int, iteration: int, lr: float) -> dict[str, Any]:
        """The log row of the interval since the last one (checked first), then a new interval."""
        self.check(epoch, iteration)
        steps, now = max(self.interval_steps, 1), time.perf_counter()
        means = (self._interval / steps).tolist()
        row = {"epoch": epoch, "iteration": iteration, "lr": lr}
        row.update(zip(self.keys(), means, strict=True))
        row.update(time=(now - self._last_row) / steps, data_time=self.data_time / steps)
        self._interval.zero_()
        self.interval_steps, self.data_time, self._last_row = 0, 0.0, now
        return row

    def epoch_means(self) -> dict[str, float]:
        """Means over every step so far; ``{"loss": nan}`` when no step ran."""
        means = (self._total / self.steps).tolist() if self.steps else [float("nan")]
        return dict(zip(self.keys(), means, strict=True))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` in order: training rows (``loss``, ``lr``, ...)
    every log interval and eval rows (``segm_AP``, ``bbox_AP``, ``val``) after each validation.

    Raises:
        FileNotFoundError: the run has no metrics.jsonl (names the file and what writes it).
    """
    path = RunFolder(Path(run_dir)).metrics
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: `python -m seglib train` (or notebook 03) writes it"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prepare_run_dir(cfg: TrainConfig, folder: RunFolder, resumed_at: int | None) -> None:
    """Save the config. A fresh run (``resumed_at`` None) empties metrics.jsonl and removes
    old checkpoints; a resumed one drops the rows logged after its checkpoint (and torn lines).
    """
    folder.root.mkdir(parents=True, exist_ok=True)
    cfg.save(folder.config)
    if resumed_at is None or not folder.metrics.exists():
        folder.metrics.write_text("")
        folder.last_checkpoint.unlink(missing_ok=True)
        folder.best_checkpoint.unlink(missing_ok=True)
        return
    kept = []
    for line in folder.metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash
        if row.get("iteration", 0) <= resumed_at:
            kept.append(line + "\n")
    write_bytes_atomic(folder.metrics, "".join(kept).encode())


def append_row(folder: RunFolder, row: dict[str, Any]) -> None:
    """Append one row to metrics.jsonl."""
    with open(folder.metrics, "a") as f:
        f.write(json.dumps(row) + "\n")


def val_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a validation that go into a metrics row and the run's history."""
    return {
        "segm_AP": metrics["segm"]["AP"],
        "segm_AP50": metrics["segm"]["AP50"],
        "bbox_AP": metrics["bbox"]["AP"],
        "bbox_AP50": metrics["bbox"]["AP50"],
        "best_match_iou": metrics["best_match_iou"],
    }


def record_eval(folder: RunFolder, metrics: dict[str, Any], epoch: int, iteration: int) -> None:
    """A validation's row in metrics.jsonl and its eval/val_epoch{epoch}.json."""
    append_row(
        folder, {"epoch": epoch, "iteration": iteration, **val_summary(metrics), "val": metrics}
    )
    write_json_atomic(folder.val_epoch(epoch), metrics)
