"""Training loop, resume, NaN stop, DDP and the model interface (CPU, synthetic data)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from seglib.core import config
from seglib.core.config import TrainConfig
from seglib.core.runtime import amp_settings, resolve_device, seed_everything
from seglib.data.dataset import open_split
from seglib.data.loaders import GroupedBatchSampler, sample_seed
from seglib.engine import trainer
from seglib.engine.runlog import LossMeter, NonFiniteLossError
from seglib.engine.schedule import lr_factor, make_lr_scheduler, make_optimizer
from seglib.engine.trainer import train, train_one_epoch
from seglib.models import builder
from seglib.models.builder import build_model, model_from_checkpoint
from seglib.models.checkpoint import load_checkpoint

# What torchvision's Mask R-CNN returns in training; the engine itself knows no loss names.
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
CPU = torch.device("cpu")


def tiny_subset(src: Path, dst: Path, n_train: int, n_val: int = 2) -> Path:
    """A copy of a subset folder whose train/val splits keep their first n images."""
    dst.mkdir(parents=True)
    (dst / "images").symlink_to(src / "images", target_is_directory=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", 2)):
        data = json.loads((src / f"{split}.json").read_text())
        data["images"] = data["images"][:n]
        ids = {im["id"] for im in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        (dst / f"{split}.json").write_text(json.dumps(data))
    return dst


# --- device, precision, sampler, schedule -----------------------------------------------
def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="'auto', 'cpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="CPU"):
        assert resolve_device("auto") == CPU
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="--device cpu"):
        resolve_device("cuda:1")


def test_amp_is_off_on_cpu():
    assert amp_settings(CPU, True) == (None, None)


@pytest.mark.filterwarnings(
    "ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available"
)
@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_uses_native_bf16_only_else_fp16_with_a_scaler(monkeypatch, native_bf16, expected):
    # torch reports bf16 as supported on pre-Ampere GPUs too (emulated, slower than fp16)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native_bf16 or including_emulation,
    )
    dtype, scaler = amp_settings(torch.device("cuda"), True)
    assert dtype is expected
    assert (scaler is not None) == (expected is torch.float16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_dtype_follows_bf16_support():
    dtype, scaler = amp_settings(torch.device("cuda"), True)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        assert dtype is torch.bfloat16 and scaler is None
    else:
        assert dtype is torch.float16 and isinstance(scaler, torch.amp.GradScaler)
    assert amp_settings(torch.device("cuda"), False) == (None, None)


class _ListSampler(list):
    def set_epoch(self, epoch):
        self.epoch = epoch


def test_grouped_batch_sampler_groups_keeps_every_index_and_skips():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0]
    sampler = _ListSampler(range(10))
    batches = list(GroupedBatchSampler(sampler, groups, 3))
    assert len(batches) == len(GroupedBatchSampler(sampler, groups, 3)) == 4
    assert sorted(i for b in batches for i in b) == list(range(10))
    full = [b for b in batches if len(b) == 3]
    assert len(full) == 3 and all(len({groups[i] for i in b}) == 1 for b in full)
    skipping = GroupedBatchSampler(sampler, groups, 3)
    skipping.set_epoch(5, skip=1)
    assert sampler.epoch == 5
    assert list(skipping) == batches[1:]
    assert list(skipping) == batches  # the skip applies to one pass only
    assert list(GroupedBatchSampler(sampler, None, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_grouped_batch_sampler_seeds_each_sample_from_seed_epoch_index_and_rank():
    seeded = GroupedBatchSampler(_ListSampler(range(6)), None, 2, seed=7, rank=1)
    seeded.set_epoch(3)
    batches = list(seeded)
    assert [[i for i, _ in b] for b in batches] == [[0, 1], [2, 3], [4, 5]]
    assert batches[1] == [(2, sample_seed(7, 3, 2, 1)), (3, sample_seed(7, 3, 3, 1))]
    assert list(seeded) == batches  # a function of (seed, epoch, index, rank), nothing else
    seeded.set_epoch(3, skip=2)
    assert list(seeded) == batches[2:]  # a resumed pass gets the same seeds
    seeds = {sample_seed(7, e, 2, r) for e in (3, 4) for r in (0, 1)} | {sample_seed(8, 3, 2, 1)}
    assert len(seeds) == 5  # another epoch, rank or run seed: another augmentation


def test_lr_factor_warmup_and_schedules():
    cfg = TrainConfig.smoke(
        warmup_iters=10,
        warmup_factor=0.001,
        lr_schedule="multistep",
        lr_milestones=(0.5,),
        lr_gamma=0.1,
        num_epochs=4,
    )
    assert lr_factor(0, cfg, 10) == pytest.approx(0.001)
    assert lr_factor(5, cfg, 10) == pytest.approx(0.5 * 0.001 + 0.5)
    assert lr_factor(10, cfg, 10) == 1.0 and lr_factor(19, cfg, 10) == 1.0
    assert lr_factor(20, cfg, 10) == pytest.approx(0.1)
    cosine = cfg.replace(lr_schedule="cosine", warmup_iters=0)
    assert lr_factor(0, cosine, 10) == 1.0
    assert lr_factor(20, cosine, 10) == pytest.approx(0.5)
    assert lr_factor(40, cosine, 10) == pytest.approx(0.0)
    assert lr_factor(25, cfg.replace(lr_schedule="constant"), 10) == 1.0


def test_lr_schedule_keeps_its_shape_when_the_run_length_changes():
    cfg = TrainConfig.smoke(
        warmup_iters=0, lr_schedule="multistep", lr_milestones=(0.5,), lr_gamma=0.1, num_epochs=8
    )
    assert lr_factor(39, cfg, 10) == 1.0 and lr_factor(40, cfg, 10) == pytest.approx(0.1)
    short = cfg.replace(num_epochs=2)  # the epochs slider: the decay moves to half of 20 steps
    assert lr_factor(9, short, 10) == 1.0 and lr_factor(10, short, 10) == pytest.approx(0.1)
    cosine = cfg.replace(lr_schedule="cosine", num_epochs=3)
    assert lr_factor(15, cosine, 10) == pytest.approx(0.5)
    assert lr_factor(30, cosine, 10) == pytest.approx(0.0)


# --- train_one_epoch with a toy model -------------------------------------------------------
class _Toy(nn.Module):
    """Returns the five Mask R-CNN loss keys; NaN on call ``bad_at``; OOM when asked."""

    def __init__(self, bad_at: int | None = None, oom: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.calls, self.bad_at, self.oom = 0, bad_at, oom

    def forward(self, images, targets):
        self.calls += 1
        if self.oom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        base = (self.w**2).sum()
        if self.calls == self.bad_at:
            base = base * float("nan")
        return {k: base * (i + 1) for i, k in enumerate(LOSS_NAMES)}


def _toy_batches(n: int):
    return [([torch.zeros(3, 4, 4)], [{"labels": torch.ones(1, dtype=torch.int64)}])] * n


def test_train_one_epoch_logs_at_interval_and_honours_max_iters():
    model = _Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rows = []
    stats = train_one_epoch(
        model,
        opt,
        _toy_batches(6),
        CPU,
        1,
        log_interval=4,
        callback=lambda e, r: rows.append((e, r)),
    )
    assert [r["iteration"] for _, r in rows] == [4, 6] and {e for e, _ in rows} == {"iter"}
    assert set(rows[0][1]) == {"epoch", "iteration", "lr", "loss", *LOSS_NAMES, "time", "data_time"}
    assert rows[0][1]["loss"] == pytest.approx(sum(rows[0][1][k] for k in LOSS_NAMES))
    assert stats["iteration"] == 6 and stats["iterations"] == 6 and not stats["stopped"]
    assert model.w.item() < 1.0  # it did optimise
    stats = train_one_epoch(model, opt, _toy_batches(6), CPU, 2, start_iter=6, max_iters=8)
    assert stats["iteration"] == 8 and stats["iterations"] == 2 and stats["stopped"]


def test_nonfinite_loss_is_caught_even_between_log_points():
    model = _Toy(bad_at=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(NonFiniteLossError) as info:
        train_one_epoch(model, opt, _toy_batches(5), CPU, 3, log_interval=100, start_iter=10)
    msg = str(info.value)
    assert "epoch 3, iteration 12" in msg and "loss_mask=nan" in msg and "--lr" in msg
    assert isinstance(info.value, FloatingPointError)


class _OtherFamily(nn.Module):
    """Losses named unlike Mask R-CNN's, as a Mask2Former returns them."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_cross_entropy": self.w.sum() ** 2, "loss_dice": 2 * self.w.sum() ** 2}


def test_train_one_epoch_logs_whatever_losses_the_model_returns():
    model = _OtherFamily()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rows = []
    stats = train_one_epoch(
        model, opt, _toy_batches(3), CPU, 1, log_interval=2, callback=lambda e, r: rows.append(r)
    )
    losses = {"loss", "loss_cross_entropy", "loss_dice"}
    assert set(rows[0]) == {"epoch", "iteration", "lr", *losses, "time", "data_time"}
    assert rows[0]["loss"] == pytest.approx(rows[0]["loss_cross_entropy"] + rows[0]["loss_dice"])
    assert stats["loss_dice"] == pytest.approx(2 * stats["loss_cross_entropy"])


def test_train_one_epoch_takes_uint8_images_and_makes_them_float_on_the_device():
    seen = []

    class Probe(_Toy):
        def forward(self, images, targets):
            seen.extend(img.dtype for img in images)
            assert all(0.0 <= float(img.max()) <= 1.0 for img in images)
            return super().forward(images, targets)

    model = Probe()
    batch = ([torch.full((3, 4, 4), 255, dtype=torch.uint8)], [{"labels": torch.ones(1)}])
    train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.01), [batch], CPU, 1)
    assert seen == [torch.float32]


def test_loss_meter_reads_back_only_when_asked_and_latches_the_first_bad_step():
    meter = LossMeter(CPU)
    one = torch.tensor(1.0)
    meter.update({"a": one, "b": 2 * one}, iteration=1)
    meter.update({"a": one * float("inf"), "b": one}, iteration=2)
    meter.update({"a": one * float("nan"), "b": one}, iteration=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 5, iteration 2 \(loss=inf, a=inf, b=1\)"):
        meter.row(epoch=5, iteration=3, lr=0.1)


def test_cuda_oom_is_reraised_with_a_hint():
    opt = torch.optim.SGD(_Toy().parameters(), lr=0.01)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"--set batch_size=1.*--set min_size"):
        train_one_epoch(_Toy(oom=True), opt, _toy_batches(1), CPU, 1)


# --- real training (slow) -------------------------------------------------------------------
@pytest.mark.slow
def test_overfits_one_batch(synthetic_subset):
    cfg = TrainConfig.smoke(optimizer="sgd", lr=0.02, weight_decay=1e-4, warmup_iters=3)
    seed_everything(0)
    dataset = open_split(synthetic_subset, "train")
    batch = ([dataset[0][0]], [dataset[0][1]])
    model = build_model(cfg.num_classes, "none", cfg=cfg)
    optimizer = make_optimizer(model, cfg)
    rows = []
    train_one_epoch(
        model,
        optimizer,
        [batch] * 25,
        CPU,
        1,
        lr_scheduler=make_lr_scheduler(optimizer, cfg, 25),
        grad_clip_norm=cfg.grad_clip_norm,
        log_interval=1,
        callback=lambda e, r: rows.append(r),
    )
    assert len(rows) == 25 and all(math.isfinite(r["loss"]) for r in rows)

    def tail(key: str) -> float:
        return float(np.mean([r[key] for r in rows[-5:]]))

    # Measured tail/first ratios under ATEN_CPU_CAPABILITY default, avx2 and avx512 with 1 or 2
    # threads: loss 0.10-0.13, classifier 0.16-0.23, objectness 0.05-0.06 (docs/benchmarks.md,
    # "Thresholds"): each bound below is over twice the worst path's value.
    assert tail("loss") < 0.5 * rows[0]["loss"]
    assert tail("loss_classifier") < 0.5 * rows[0]["loss_classifier"]
    assert tail("loss_objectness") < 0.8 * rows[0]["loss_objectness"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _final_state(run: Path) -> dict:
    ckpt = load_checkpoint(run / "last.pt")
    return {
        "epoch": ckpt["epoch"],
        "iteration": ckpt["iteration"],
        "model": ckpt["model"],
        # every tensor of the optimizer's state: SGD's momentum, AdamW's moments and step
        "optimizer": [t for s in ckpt["optimizer"]["state"].values() for _, t in sorted(s.items())],
    }


class _Interrupt(Exception):
    pass


def _never(*args, **kwargs):
    raise AssertionError("called")


def _interrupt_at(iteration: int):
    def callback(event: str, payload: dict) -> None:
        if event == "iter" and payload["iteration"] == iteration:
            raise _Interrupt  # a crash in the middle of an epoch, after the step was taken

    return callback


@pytest.mark.slow
def test_resume_with_dataloader_workers_matches_an_uninterrupted_run_bitwise(
    tmp_path, synthetic_subset, monkeypatch
):
    data = tiny_subset(synthetic_subset, tmp_path / "data", n_train=4)
    # 2 epochs of 2 steps; 2 persistent workers draw the augmentations (flip, crop, jitter)
    cfg = TrainConfig.smoke(batch_size=2, num_epochs=2, eval_interval=2, num_workers=2)
    cfg = cfg.replace(cpu_amp_eval="bf16", checkpoint_interval=1)
    assert cfg.aug_strength > 0 and cfg.log_interval == 1
    events, ends = [], []

    def record(event: str, payload: dict) -> None:
        events.append(event)
        if event == "epoch_end":
            ends.append(payload["validating"])

    straight = train(cfg, data, tmp_path / "a", callback=record)
    assert straight["precision"].endswith("; validation predicts in bf16")
    assert (straight["epochs"], straight["iteration"], straight["stopped_by"]) == (
        2,
        4,
        "num_epochs",
    )
    assert (events.count("iter"), events.count("epoch_end"), events.count("eval")) == (4, 2, 1)
    # eval_interval=2: only the second epoch's end announces the validation that follows it
    assert ends == [False, True]
    assert events[events.index("eval") - 1] == "epoch_end"
    assert "checkpoint" in events and straight["best"] is not None
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "best.pt",
        "config.json",
        "eval",
        "last.pt",
        "metrics.jsonl",
    ]
    assert TrainConfig.load(tmp_path / "a" / "config.json") == cfg
    rows_a = _rows(tmp_path / "a")
    train_rows = [r for r in rows_a if "loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r[k]) for r in train_rows for k in ("loss", *LOSS_NAMES))
    assert [r["epoch"] for r in rows_a if "val" in r] == [2] and "segm" in rows_a[-1]["val"]
    # a finished run resumes to nothing: no model is built and no weights are read
    with monkeypatch.context() as m:
        m.setattr(trainer, "build_model_structure", _never)
        m.setattr(trainer, "load_model_state", _never)
        done = train(cfg, data, tmp_path / "a", resume=True, callback=record)
    keys = ("epochs", "iteration", "stopped_by", "history", "best", "best_epoch", "precision")
    assert {k: done[k] for k in keys} == {k: straight[k] for k in keys}
    assert done["final"] is None and events[-1] == "start"
    assert _rows(tmp_path / "a") == rows_a and _final_state(tmp_path / "a")["iteration"] == 4

    # stopped by max_iters in the middle of epoch 2 (last.pt holds the RNG state), resumed
    capped = train(cfg.replace(max_iters=3), data, tmp_path / "b")
    assert (capped["stopped_by"], capped["epochs"], capped["iteration"]) == ("max_iters", 1, 3)
    train(cfg, data, tmp_path / "b", resume=True)
    # killed in the middle of epoch 2 (last.pt is from the end of epoch 1), resumed
    with pytest.raises(_Interrupt):
        train(cfg, data, tmp_path / "c", callback=_interrupt_at(3))
    assert load_checkpoint(tmp_path / "c" / "last.pt")["iteration"] == 2
    train(cfg, data, tmp_path / "c", resume=True)
    # checkpoint_interval=2: killed in epoch 2, nothing to resume from; run whole, one last.pt
    sparse = cfg.replace(checkpoint_interval=2)
    with pytest.raises(_Interrupt):
        train(sparse, data, tmp_path / "d", callback=_interrupt_at(3))
    assert not (tmp_path / "d" / "last.pt").exists()
    saves = []
    train(
        sparse,
        data,
        tmp_path / "e",
        callback=lambda e, p: saves.append(p) if e == "checkpoint" else None,
    )
    assert [(p["epoch"], p["kind"]) for p in saves] == [(2, "last"), (2, "best")]

    reference = _final_state(tmp_path / "a")
    for run in ("b", "c", "e"):
        state = _final_state(tmp_path / run)
        assert (state["epoch"], state["iteration"]) == (2, 4), run
        for key, value in reference["model"].items():
            assert torch.equal(state["model"][key], value), (run, key)
        assert reference["optimizer"], "the optimizer saved no state"
        for m, ref in zip(state["optimizer"], reference["optimizer"], strict=True):
            assert torch.equal(m, ref), run
        rows = [r for r in _rows(tmp_path / run) if "loss" in r]
        assert [r["iteration"] for r in rows] == [1, 2, 3, 4], (
            run
        )  # rows after the checkpoint trimmed
        assert rows[-1]["loss"] == train_rows[-1]["loss"], run

    model, cfg_back, categories = model_from_checkpoint(tmp_path / "a" / "best.pt")
    assert cfg_back == cfg and [c["name"] for c in categories] == list(cfg.categories)
    with pytest.raises(ValueError, match=f"lr: saved {cfg.lr}, given {cfg.lr / 2}"):
        train(cfg.replace(lr=cfg.lr / 2), data, tmp_path / "a", resume=True)
    with pytest.raises(ValueError, match="batches per epoch"):
        more = tiny_subset(synthetic_subset, tmp_path / "data6", n_train=6)
        train(cfg, more, tmp_path / "a", resume=True)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(cfg, data, tmp_path / "nothing-here", resume=True)
    for run in ("a", "b", "c", "d", "e"):
        shutil.rmtree(tmp_path / run)  # ~1.5 GB of checkpoints


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, synthetic_subset, monkeypatch):
    data = tiny_subset(synthetic_subset, tmp_path / "data", n_train=2)
    real_loss = torchvision.models.detection.roi_heads.maskrcnn_loss
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) >= 3 else loss  # from iteration 3 (epoch 2) on

    monkeypatch.setattr(torchvision.models.detection.roi_heads, "maskrcnn_loss", poisoned)
    cfg = TrainConfig.smoke(batch_size=1, num_epochs=3, log_interval=5, checkpoint_interval=1)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, data, tmp_path / "run")
    msg = str(info.value)
    assert "epoch 2, iteration 3" in msg and "loss_mask=nan" in msg
    assert str(tmp_path / "run" / "last.pt") in msg and "intact" in msg
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["iteration"]) == (1, 2)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    shutil.rmtree(tmp_path / "run")


DDP_SCRIPT = """
import json, sys
from seglib.core.config import TrainConfig
from seglib.engine.trainer import train

cfg = TrainConfig.smoke(batch_size=1, num_epochs=1, log_interval=1)
summary = train(cfg, sys.argv[1], sys.argv[2])
# one file per rank: two processes printing to one pipe can interleave within a line
with open(f"{sys.argv[3]}/summary{summary['rank']}.json", "w") as f:
    json.dump({k: summary[k] for k in ("rank", "world_size", "iteration", "epochs")}, f)
"""


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path, synthetic_subset):
    data = tiny_subset(synthetic_subset, tmp_path / "data", n_train=4)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(data),
            str(out),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in (0, 1)]
    # 4 images over 2 ranks at batch 1: 2 iterations per rank per epoch
    assert summaries == [{"rank": r, "world_size": 2, "iteration": 2, "epochs": 1} for r in (0, 1)]
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.json",
        "eval",
        "last.pt",
        "metrics.jsonl",
    ]
    rows = _rows(out)
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2]  # written once, by rank 0
    assert len([r for r in rows if "val" in r]) == 1
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    shutil.rmtree(out)


# --- a second model family through the architecture table --------------------------------------
class _ToyFamily(nn.Module):
    """A model family that is not Mask R-CNN: the interface of seglib.models.builder and nothing else."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.logit = nn.Parameter(torch.zeros(()))

    def forward(self, images, targets=None):
        if self.training:
            fit = [((img.mean() - 0.5) * self.logit - 1.0) ** 2 for img in images]
            return {"loss_fit": torch.stack(fit).mean(), "loss_reg": 1e-3 * self.logit**2}
        outputs = []
        for img in images:
            h, w = img.shape[1:]
            outputs.append(
                {
                    "boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]),
                    "labels": torch.tensor([1]),
                    "scores": torch.sigmoid(self.logit)[None],
                    "masks": torch.ones(1, 1, h, w),
                }
            )
        return outputs


def _build_toy(cfg, *, arch, num_classes, weights, load):
    return _ToyFamily(num_classes)


def test_a_registered_family_trains_validates_and_reloads_with_no_engine_change(
    tmp_path, synthetic_subset, monkeypatch
):
    monkeypatch.setattr(config, "ARCHS", (*config.ARCHS, "toy"))
    monkeypatch.setitem(builder.BUILDERS, "toy", _build_toy)
    data = tiny_subset(synthetic_subset, tmp_path / "data", n_train=4)
    cfg = TrainConfig.smoke(arch="toy", norm="bn", batch_size=2, num_epochs=1, num_workers=0)
    summary = train(cfg, data, tmp_path / "run")
    assert summary["iteration"] == 2 and summary["final"]["num_images"] == 2
    rows = [r for r in _rows(tmp_path / "run") if "loss" in r]
    assert set(rows[0]) >= {"loss", "loss_fit", "loss_reg"}
    model, cfg_back, _ = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert isinstance(model, _ToyFamily) and cfg_back.arch == "toy"
    assert isinstance(model, builder.SegmentationModel)
    assert model.logit.item() == load_checkpoint(tmp_path / "run" / "last.pt")["model"]["logit"]
