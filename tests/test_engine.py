"""Training loop, resume, NaN stop, DDP, prediction and evaluation (CPU, synthetic data)."""

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

from seglib.config import TrainConfig
from seglib.dataset import open_split
from seglib.engine import (
    LOSS_NAMES,
    GroupedBatchSampler,
    NonFiniteLossError,
    amp_settings,
    lr_factor,
    make_lr_scheduler,
    make_optimizer,
    resolve_device,
    seed_everything,
    train,
    train_one_epoch,
)
from seglib.model import build_model, load_checkpoint, model_from_checkpoint

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


def test_cuda_oom_is_reraised_with_a_hint():
    opt = torch.optim.SGD(_Toy().parameters(), lr=0.01)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"--batch-size 1.*--min-size"):
        train_one_epoch(_Toy(oom=True), opt, _toy_batches(1), CPU, 1)


# --- real training (slow) -------------------------------------------------------------------
@pytest.mark.slow
def test_overfits_one_batch(synthetic_subset):
    cfg = TrainConfig.smoke(lr=0.02, warmup_iters=3)
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
        "momentum": [s["momentum_buffer"] for s in ckpt["optimizer"]["state"].values()],
    }


@pytest.mark.slow
def test_train_resume_matches_uninterrupted_run(tmp_path, synthetic_subset):
    data = tiny_subset(synthetic_subset, tmp_path / "data", n_train=2)
    # 2 iterations per epoch; a flat schedule so the run may be extended epoch by epoch
    cfg = TrainConfig.smoke(
        batch_size=1, num_epochs=2, eval_interval=2, log_interval=1, lr_schedule="constant"
    )
    events = []
    straight = train(cfg, data, tmp_path / "a", callback=lambda e, p: events.append(e))
    assert (
        straight["epochs"] == 2
        and straight["iteration"] == 4
        and straight["stopped_by"] == "num_epochs"
    )
    assert (
        events.count("iter") == 4 and events.count("epoch_end") == 2 and events.count("eval") == 1
    )
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

    # interrupted at an epoch boundary, then resumed with the full epoch count
    train(cfg.replace(num_epochs=1), data, tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(cfg, data, tmp_path / "b", resume=True)
    assert resumed["epochs"] == 2 and [h["epoch"] for h in resumed["history"]] == [1, 2]

    # stopped in the middle of epoch 2 by max_iters, then resumed
    capped = train(cfg.replace(max_iters=3), data, tmp_path / "c")
    assert (
        capped["stopped_by"] == "max_iters" and capped["epochs"] == 1 and capped["iteration"] == 3
    )
    train(cfg, data, tmp_path / "c", resume=True)

    reference = _final_state(tmp_path / "a")
    for run in ("b", "c"):
        state = _final_state(tmp_path / run)
        assert (state["epoch"], state["iteration"]) == (2, 4), run
        for key, value in reference["model"].items():
            assert torch.allclose(
                state["model"][key].float(), value.float(), rtol=1e-5, atol=1e-6
            ), (run, key)
        for m, ref in zip(state["momentum"], reference["momentum"], strict=True):
            assert torch.allclose(m, ref, rtol=1e-5, atol=1e-6), run
        rows = [r for r in _rows(tmp_path / run) if "loss" in r]
        assert [r["iteration"] for r in rows] == [1, 2, 3, 4], (
            run
        )  # rows after the checkpoint trimmed
        assert rows[-1]["loss"] == pytest.approx(train_rows[-1]["loss"], rel=1e-4), run

    model, cfg_back, categories = model_from_checkpoint(tmp_path / "a" / "best.pt")
    assert cfg_back == cfg and [c["name"] for c in categories] == list(cfg.categories)
    with pytest.raises(ValueError, match="lr: saved 0.01, given 0.02"):
        train(cfg.replace(lr=0.02), data, tmp_path / "a", resume=True)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(cfg, data, tmp_path / "nothing-here", resume=True)
    for run in ("a", "b", "c"):
        shutil.rmtree(tmp_path / run)  # ~1 GB of checkpoints


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
    cfg = TrainConfig.smoke(batch_size=1, num_epochs=3, log_interval=5)
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
from seglib.config import TrainConfig
from seglib.engine import train

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
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
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


def test_resume_refuses_a_new_length_for_a_cosine_schedule(tmp_path):
    from seglib.engine import _load_for_resume
    from seglib.model import build_model, save_checkpoint

    cfg = TrainConfig.smoke(lr_schedule="cosine", num_epochs=2)
    model = build_model(cfg.num_classes, "none", cfg.arch, cfg)
    categories = [{"id": i + 1, "name": n, "coco_id": i + 1} for i, n in enumerate(cfg.categories)]
    path = save_checkpoint(
        tmp_path / "last.pt", model=model, cfg=cfg, categories=categories, epoch=1, iteration=6
    )
    assert _load_for_resume(path, cfg)["epoch"] == 1
    with pytest.raises(ValueError, match="num_epochs"):
        _load_for_resume(path, cfg.replace(num_epochs=4))
    step = cfg.replace(lr_schedule="multistep", lr_milestones=(0.5,))
    save_checkpoint(path, model=model, cfg=step, categories=categories, epoch=1, iteration=6)
    with pytest.raises(ValueError, match="num_epochs"):  # the milestone would move
        _load_for_resume(path, step.replace(num_epochs=4))
    flat = cfg.replace(lr_schedule="multistep", lr_milestones=())
    save_checkpoint(path, model=model, cfg=flat, categories=categories, epoch=1, iteration=6)
    assert _load_for_resume(path, flat.replace(num_epochs=4))["epoch"] == 1  # nothing moves
