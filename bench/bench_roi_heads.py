"""The ROI heads' cost in a CPU training step, once the model has learned enough to find objects.

From scratch, few proposals overlap an object, so the mask head sees few positive ROIs and a
step is cheap; a few dozen steps later every image fills its quota of positives (a quarter of
``box_batch_size_per_image``), and the mask head's four 3x3 convolutions over them become the
largest part of a step at 128 px. This script trains the profile for ``--warm-steps`` steps
(seeded, with its warmup and schedule), then times the same batches through copies of that
model under the profile's settings and under each ``--variant``, alternating rounds in one
process, and prints the medians, the profile's time over each, and the mask head's ROIs a
batch (the positives). The demo's settings before 2026-12-03, against today's:

    python bench/bench_roi_heads.py --variant box_batch_size_per_image=48,mask_pool_size=14 \\
        --variant box_batch_size_per_image=24,mask_pool_size=14 \\
        --variant box_batch_size_per_image=48,mask_pool_size=7

A variant is a comma-separated list of TrainConfig changes. Only settings that keep the
weights' shapes can be compared (ROI counts, the mask grid, RoIAlign), since every copy starts
from the same weights.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_demo import machine
from bench_learning import prepare_data
from bench_train import cycle

from seglib.core.config import TrainConfig
from seglib.core.overrides import parse_overrides
from seglib.core.runtime import amp_settings, seed_everything
from seglib.data.loaders import make_loaders
from seglib.engine.schedule import make_lr_scheduler, make_optimizer
from seglib.engine.trainer import train_one_epoch
from seglib.models.builder import build_model, build_model_structure

CPU = torch.device("cpu")


def batches_of(cfg: TrainConfig, data_dir: Path, n: int) -> list:
    """The first ``n`` training batches of epoch 1, augmented as training gets them."""
    loader, _ = make_loaders(cfg, data_dir, CPU)
    loader.batch_sampler.set_epoch(1, 0)
    return list(itertools.islice(loader, n))


def steps(
    model: torch.nn.Module, cfg: TrainConfig, batches: list, optimizer, lr_scheduler=None
) -> float:
    """Seconds for one pass of ``batches`` through seglib's training step."""
    amp_dtype, scaler = amp_settings(CPU, cfg.amp, cfg.cpu_amp)
    start = time.perf_counter()
    train_one_epoch(
        model,
        optimizer,
        batches,
        CPU,
        1,
        scaler=scaler,
        lr_scheduler=lr_scheduler,
        amp_dtype=amp_dtype,
        grad_clip_norm=cfg.grad_clip_norm,
        log_interval=len(batches),
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("demo", "smoke"), default="demo")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE,...")
    parser.add_argument("--warm-steps", type=int, default=72, help="steps trained first")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, variants alternating")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = TrainConfig.from_profile(args.profile)
    variants = {"profile": base}
    for text in args.variant:
        variants[text] = base.replace(**parse_overrides(text.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = prepare_data(base, args.profile, Path(tmp))
        seed_everything(base.seed)  # the initial weights training starts from
        warm = build_model(base.num_classes, base.weights, base.arch, base)
        optimizer = make_optimizer(warm, base)
        warm_batches = batches_of(base, data_dir, args.warm_steps)
        schedule = make_lr_scheduler(optimizer, base, len(warm_batches))  # warmup, as trained
        steps(warm, base, cycle(warm_batches, args.warm_steps), optimizer, schedule)
        batches = batches_of(base, data_dir, args.steps)
        models = {}
        for name, cfg in variants.items():
            model = build_model_structure(cfg)
            model.load_state_dict(warm.state_dict())
            opt = make_optimizer(model, cfg)
            models[name] = (model, opt)
            steps(model, cfg, batches[:1], opt)  # warms this shape's kernels
        times: dict[str, list[float]] = {name: [] for name in variants}
        mask_rois: dict[str, list[int]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, cfg in variants.items():
                model, opt = models[name]
                hook = model.roi_heads.mask_head.register_forward_hook(
                    lambda m, inputs, out, seen=mask_rois[name]: seen.append(len(inputs[0]))
                )
                times[name].append(steps(model, cfg, batches, opt) / len(batches))
                hook.remove()
    medians = {name: statistics.median(t) for name, t in times.items()}
    info = machine()
    print(
        f"bench_roi_heads: {args.profile} profile after {args.warm_steps} steps, {args.steps} "
        f"steps x {args.repeats} rounds | {info['cpu_model']}, {torch.get_num_threads()} threads, "
        f"torch {info['torch']}"
    )
    print(f"{'settings':<52} {'s/step':>8} {'vs profile':>11} {'mask ROIs/batch':>16}")
    for name, median in medians.items():
        rois = statistics.mean(mask_rois[name])
        print(f"{name:<52} {median:8.3f} {medians['profile'] / median:10.2f}x {rois:16.1f}")
    if args.json:
        result = {
            "machine": info,
            "args": vars(args) | {"json": str(args.json)},
            "s_per_step": times,
            "mask_rois_per_batch": mask_rois,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
