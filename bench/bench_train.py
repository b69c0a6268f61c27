"""Training-step benchmark: seglib's loop against a plain fp32 torchvision loop.

    python bench/bench_train.py [--size PX] [--iters N] [--batch-size B] [--device auto]
                                [--profile seed|smoke] [--warmup N] [--weights coco|none] [--json FILE]

Both loops train the same Mask R-CNN (same config, same initial weights) on the same batches
in the same process, one after the other:

(a) seglib: ``seglib.engine.trainer.train_one_epoch`` as ``train`` configures it: AMP on CUDA (bf16
    where supported, else fp16 + GradScaler), bf16 autocast on CPUs with native bf16 (AMX or
    AVX512-BF16; ``cpu_amp``), gradient clipping, per-iteration LR schedule,
    pinned host tensors copied with non_blocking=True, losses read back once per log interval;
(b) plain: ``model.train(); loss = sum(model(images, targets).values()); zero_grad;
    backward; step`` in fp32 with blocking copies of float images (made float on the host,
    as a dataset returning float tensors gives them), torchvision's RoIAlign and no clipping.

Both loops print their time per iteration and, on CUDA, their peak memory
(``torch.cuda.max_memory_allocated``), then the ratios seglib/plain of both.

Batches are built once in host memory from a synthetic COCO subset (images ``size * 4/3`` px
on the longer side, so the model sees about size x 4/3*size, like COCO at 800x1333), so image
decoding is not timed (``bench_data.py`` measures that). Each loop gets ``--warmup``
untimed iterations, then ``--iters`` timed ones, bracketed by torch.cuda.synchronize on GPUs.
Defaults: on CUDA the seed profile at 800 px, 20 iterations; on the CPU the smoke profile
(100 proposals, 64 ROIs) at 128 px, 5 iterations.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import seglib
from seglib.core.config import TrainConfig
from seglib.core.overrides import parse_overrides
from seglib.core.runtime import amp_settings, resolve_device
from seglib.data.dataset import open_split
from seglib.data.subset import build_subset
from seglib.data.synthetic import make_synthetic_coco
from seglib.engine.schedule import make_lr_scheduler, make_optimizer
from seglib.engine.trainer import train_one_epoch
from seglib.models.builder import build_model, build_model_structure
from seglib.models.roi_align import MultiScaleRoIAlign
from seglib.models.weights import weights_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size", type=int, help="model min_size in px (default 800 on CUDA, 128 on CPU)"
    )
    p.add_argument(
        "--iters", type=int, help="timed iterations per loop (default 20 on CUDA, 5 on CPU)"
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed iterations per loop first (default 2)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed rounds, loops alternating; medians reported (default 3)",
    )
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--profile",
        choices=("seed", "smoke"),
        help="ROI/proposal counts (default seed on CUDA, smoke on CPU)",
    )
    p.add_argument(
        "--weights",
        choices=("coco", "none"),
        default="coco",
        help="coco: the fine-tuning structure (frozen BN, 3 trainable stages), with the COCO file's "
        "values when cached, random values otherwise; none: random init, all layers trainable",
    )
    p.add_argument(
        "--work", type=Path, help="folder for the synthetic data (default: a temporary one)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TrainConfig change for seglib's loop, e.g. optimizer_impl=for-loop (repeatable)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def make_batches(work: Path, size: int, batch_size: int, n_batches: int) -> list[tuple[list, list]]:
    """``n_batches`` distinct batches of (images, targets) from a synthetic subset, in host memory."""
    n_images = n_batches * batch_size
    longer = round(size * 4 / 3)
    make_synthetic_coco(work / "coco", images_per_split=max(n_images + 4, 8), size=longer, seed=0)
    build_subset(
        work / "coco",
        work / "subset",
        num_train=n_images,
        num_val=2,
        num_test=2,
        seed=0,
        progress=False,
    )
    dataset = open_split(work / "subset", "train")
    items = [dataset[i] for i in range(n_images)]
    return [
        ([img for img, _ in items[b : b + batch_size]], [t for _, t in items[b : b + batch_size]])
        for b in range(0, n_images, batch_size)
    ]


def calibrated_structure(cfg: TrainConfig, batches: list) -> torch.nn.Module:
    """The COCO fine-tuning structure with random weights but sane frozen BatchNorm statistics.

    Random convolutions behind identity FrozenBatchNorm blow activations up to inf within a
    few layers, so a random model of that structure is no stand-in. Instead a BatchNorm2d
    twin measures its batch statistics on the benchmark batches, and those are frozen in.
    """
    donor = build_model(cfg.num_classes, "none", cfg.arch, cfg)
    for m in donor.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    donor.train()
    with torch.no_grad():
        for images, _ in batches:
            donor.backbone(donor.transform(_float(images))[0].tensors)
    model = build_model_structure(cfg)
    model.load_state_dict(donor.state_dict())  # FrozenBatchNorm2d drops num_batches_tracked
    return model


def cycle(batches: list, n: int) -> list:
    return [batches[i % len(batches)] for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _float(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Float 0..1 images on the host, from the dataset's uint8 (or float) ones."""
    return [img.float().div(255.0) if img.dtype == torch.uint8 else img for img in images]


def run_seglib(model, cfg, batches, device, warmup: int, iters: int) -> tuple[float, float]:
    optimizer = make_optimizer(model, cfg)
    scheduler = make_lr_scheduler(optimizer, cfg, iters_per_epoch=max(1, warmup + iters))
    amp_dtype, scaler = amp_settings(device, cfg.amp, cfg.cpu_amp)
    if device.type == "cuda":  # what pin_memory=True gives the DataLoader's batches
        batches = [
            (
                [i.pin_memory() for i in imgs],
                [
                    {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in t.items()}
                    for t in tgts
                ],
            )
            for imgs, tgts in batches
        ]
    rows: list[dict] = []
    kwargs = dict(
        scaler=scaler,
        lr_scheduler=scheduler,
        amp_dtype=amp_dtype,
        grad_clip_norm=cfg.grad_clip_norm,
        log_interval=cfg.log_interval,
        callback=lambda event, row: rows.append(row),
    )
    train_one_epoch(model, optimizer, cycle(batches, warmup), device, 0, **kwargs)
    sync(device)
    start = time.perf_counter()
    train_one_epoch(model, optimizer, cycle(batches, iters), device, 1, start_iter=warmup, **kwargs)
    sync(device)
    return time.perf_counter() - start, rows[-1]["loss"]


def run_plain(model, cfg, batches, device, warmup: int, iters: int) -> tuple[float, float]:
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )

    def steps(n: int) -> torch.Tensor | None:
        loss = None
        model.train()
        for images, targets in cycle(batches, n):
            images = [img.to(device) for img in _float(images)]
            targets = [
                {k: v.to(device) for k, v in t.items() if torch.is_tensor(v)} for t in targets
            ]
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss

    pools = {m: m.sparse for m in model.modules() if isinstance(m, MultiScaleRoIAlign)}
    for pool in pools:  # torchvision's own RoIAlign, as a stock model pools
        pool.sparse = False
    try:
        steps(warmup)
        sync(device)
        start = time.perf_counter()
        loss = steps(iters)
        sync(device)
    finally:
        for pool, sparse in pools.items():
            pool.sparse = sparse
    return time.perf_counter() - start, loss.item()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def make_config(args: argparse.Namespace, cuda: bool) -> tuple[TrainConfig, str]:
    """The benchmark's config (and profile name) from the arguments and the device."""
    size = args.size or (800 if cuda else 128)
    profile = args.profile or ("seed" if cuda else "smoke")
    coco = args.weights == "coco"
    cfg = TrainConfig.from_profile(
        profile,
        min_size=size,
        max_size=max(size, round(size * 1333 / 800)),
        batch_size=args.batch_size,
        weights=args.weights,
        norm="bn" if coco else TrainConfig.from_profile(profile).norm,
        amp=True,
        trainable_backbone_layers=3 if coco else 5,
        warmup_iters=0,
        lr=0.001,  # the seed recipe's lr: the unclipped plain loop must stay finite
        optimizer="sgd",  # the plain loop's (the offline profiles train with AdamW)
        weight_decay=TrainConfig().weight_decay,
    )
    return cfg.replace(**parse_overrides(args.set)), profile


def make_model(cfg: TrainConfig, weights: str, batches: list) -> tuple[torch.nn.Module, str]:
    """The model both loops start from, and how its weights were obtained."""
    torch.manual_seed(0)
    if weights == "coco" and weights_file("coco", cfg.arch).is_file():
        return build_model(cfg.num_classes, "coco", cfg.arch, cfg), " (cached COCO file)"
    if weights == "coco":
        note = " (not cached: its structure, random weights, calibrated frozen BN)"
        return calibrated_structure(cfg, batches), note
    return build_model(cfg.num_classes, "none", cfg.arch, cfg), ""


def measure(model, cfg, batches, device, args, iters: int) -> dict[str, dict]:
    """Median seconds, peak memory and last loss of each loop over alternating rounds."""
    cuda = device.type == "cuda"
    initial = copy.deepcopy(model.state_dict())
    loops = {"seglib train_one_epoch": run_seglib, "plain fp32 torchvision": run_plain}
    rounds: dict[str, list[tuple[float, float | None, float]]] = {name: [] for name in loops}
    for _ in range(args.repeats):  # alternate, so drift (thermal, other load) hits both loops
        for name, fn in loops.items():
            model.load_state_dict(initial)
            model.to(device)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds, last_loss = fn(model, cfg, batches, device, args.warmup, iters)
            if not math.isfinite(last_loss):  # a diverged model runs different (degenerate) work
                raise SystemExit(
                    f"{name}: the loss became {last_loss}; timings would be meaningless"
                )
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            rounds[name].append((seconds, peak, last_loss))
    results = {}
    for name, runs in rounds.items():
        seconds = statistics.median(r[0] for r in runs)
        peaks = [r[1] for r in runs if r[1] is not None]
        results[name] = {
            "images_per_s": iters * args.batch_size / seconds,
            "s_per_iter": seconds / iters,
            "peak_gib": max(peaks) if peaks else None,
            "last_loss": runs[-1][2],
            "rounds_s": [round(r[0], 3) for r in runs],
        }
    return results


def report(results: dict[str, dict], repeats: int) -> dict[str, float | None]:
    """Print the table and the seglib/plain ratios; return the ratios."""
    print(f"\nmedian of {repeats} alternating rounds")
    print(
        f"{'loop':<24} {'images/s':>9} {'s/iter':>8} {'peak GPU mem':>13} {'last loss':>10}  rounds (s)"
    )
    for name, r in results.items():
        peak = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "n/a"
        print(
            f"{name:<24} {r['images_per_s']:>9.2f} {r['s_per_iter']:>8.3f} {peak:>13} {r['last_loss']:>10.3f}  {r['rounds_s']}"
        )
    ours, plain = results.values()
    ratios = {"speedup": ours["images_per_s"] / plain["images_per_s"], "peak_memory_ratio": None}
    print(f"speed-up    {ratios['speedup']:.2f}x (seglib images/s over plain)")
    if ours["peak_gib"] is not None and plain["peak_gib"]:
        ratios["peak_memory_ratio"] = ours["peak_gib"] / plain["peak_gib"]
        print(f"peak memory {ratios['peak_memory_ratio']:.2f}x (seglib over plain)")
    return ratios


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cfg, profile = make_config(args, cuda)
    iters = args.iters or (20 if cuda else 5)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        n_batches = min(8, iters + args.warmup)
        batches = make_batches(work, cfg.min_size, args.batch_size, n_batches=n_batches)
    model, origin = make_model(cfg, args.weights, batches)
    amp_dtype, _ = amp_settings(device, cfg.amp, cfg.cpu_amp)
    print(f"device      {device_name(device)}")
    print(
        f"versions    python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, seglib {seglib.__version__}"
    )
    print(
        f"model       Mask R-CNN R50-FPN {cfg.arch}, weights {args.weights}{origin}, "
        f"min_size {cfg.min_size}, max_size {cfg.max_size}, profile {profile} "
        f"(RPN post-NMS {cfg.rpn_post_nms_top_n_train}, ROIs/img {cfg.box_batch_size_per_image})"
    )
    shapes = sorted({tuple(img.shape[1:]) for imgs, _ in batches for img in imgs})
    print(
        f"data        {len(batches)} distinct batches of {args.batch_size} synthetic images {shapes} "
        f"({batches[0][0][0].dtype}), {args.warmup} warmup + {iters} timed iterations per loop"
    )
    print(
        f"seglib loop AMP {amp_dtype or 'off (CPU)'}, grad clip {cfg.grad_clip_norm}, log interval {cfg.log_interval}"
    )
    results = measure(model, cfg, batches, device, args, iters)
    ratios = report(results, args.repeats)
    if args.json:
        summary = {"device": device_name(device), "size": cfg.min_size, "iters": iters}
        summary.update(batch_size=args.batch_size, profile=profile, results=results, **ratios)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
