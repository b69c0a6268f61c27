"""Model-family benchmark: a training step, inference per image and peak memory per architecture.

    python bench/bench_compare.py [--archs v1 mask2former] [--device auto] [--size PX]
                                  [--iters N] [--warmup N] [--batch-size B] [--images N]
                                  [--m2f-config swin-tiny|tiny] [--profile seed|smoke]
                                  [--threads N] [--json FILE]

Each architecture runs in its own spawned process, on the same batches (built once from a
synthetic COCO subset, ``size * 4/3`` px on the longer side, and saved to a file), from the
same config with only ``arch`` changed, randomly initialised (``weights="none"``: every layer
trains; a COCO fine-tuning run freezes Mask R-CNN's first backbone stages and is a little
faster). Per architecture:

- training: ``seglib.engine.trainer.train_one_epoch`` as ``train`` configures it (AMP on CUDA, bf16
  where supported; gradient clipping; the LR schedule), ``--warmup`` untimed iterations, then
  ``--iters`` timed ones between torch.cuda.synchronize calls: seconds per iteration and per
  image;
- inference: the model in eval mode under torch.inference_mode, fp32 as ``prediction.predict``
  runs it, one image at a time, masks thresholded at 0.5 and copied to the host: seconds per
  image over ``--images`` images, after one warm-up image;
- memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed training and the
  timed inference (not nvidia-smi); on the CPU the process's peak resident set size
  (``ru_maxrss``) minus its size before the model was built, covering training and inference.

On a shared CPU machine wall time grows with the load of other processes; the table also gives
the process's CPU seconds (``time.process_time``) per iteration and per image, which that load
changes far less, and the JSON line records the load average. ``--threads 1`` makes CPU
seconds comparable across machines with different core counts.

Defaults: on CUDA the seed profile (2000/512 proposals/ROIs) at 800 px, Mask2Former Swin-T,
20 iterations; on the CPU the smoke profile at 128 px, Mask2Former "tiny", 5 iterations.
An architecture that fails (say, out of memory) is reported with its error; the others run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from seglib.core.config import ARCHS, M2F_PRESETS, TrainConfig
from seglib.core.runtime import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cycle, make_batches, sync  # noqa: E402  (one synthetic-batch recipe)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=["v1", "mask2former"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--size", type=int, help="min_size in px (default 800 on CUDA, 128 on CPU)")
    p.add_argument("--iters", type=int, help="timed training iterations (20 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training iterations first")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--images", type=int, default=8, help="images timed for inference")
    p.add_argument("--m2f-config", choices=M2F_PRESETS, help="default swin-tiny CUDA, tiny CPU")
    p.add_argument("--profile", choices=("seed", "smoke"), help="default seed CUDA, smoke CPU")
    p.add_argument("--threads", type=int, help="torch threads per process (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_cuda(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_cuda(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure(arch: str, cfg: TrainConfig, batches_file: str, opts: dict) -> dict:
    """Train and predict with one architecture; runs in a fresh process."""
    from seglib.core.runtime import amp_settings, images_to_device
    from seglib.engine.schedule import make_lr_scheduler, make_optimizer
    from seglib.engine.trainer import train_one_epoch
    from seglib.models.builder import build_model
    from seglib.studies.study import count_parameters

    device = torch.device(opts["device"])
    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    batches = torch.load(batches_file, weights_only=True)
    before = rss_mb()
    torch.manual_seed(0)
    cfg = cfg.replace(arch=arch)
    model = build_model(cfg.num_classes, cfg.weights, arch, cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    warmup, iters = opts["warmup"], opts["iters"]
    scheduler = make_lr_scheduler(optimizer, cfg, iters_per_epoch=warmup + iters)
    amp_dtype, scaler = amp_settings(device, cfg.amp, cfg.cpu_amp)
    rows: list[dict] = []
    kwargs = dict(
        scaler=scaler,
        lr_scheduler=scheduler,
        amp_dtype=amp_dtype,
        grad_clip_norm=cfg.grad_clip_norm,
        log_interval=max(1, iters),
        callback=lambda event, row: rows.append(row),
    )
    train_one_epoch(model, optimizer, cycle(batches, warmup), device, 0, **kwargs)
    sync(device)
    _reset_cuda(device)
    start, cpu = time.perf_counter(), time.process_time()
    train_one_epoch(model, optimizer, cycle(batches, iters), device, 1, start_iter=warmup, **kwargs)
    sync(device)
    train_s = (time.perf_counter() - start) / iters
    train_cpu = (time.process_time() - cpu) / iters
    train_peak = _peak_cuda(device)
    images = [img for imgs, _ in batches for img in imgs]
    images = [images[i % len(images)] for i in range(opts["images"] + 1)]
    model.eval()
    with torch.inference_mode():
        for n, image in enumerate(images):
            if n == 1:  # the first image warms up; time the rest
                sync(device)
                _reset_cuda(device)
                start, cpu = time.perf_counter(), time.process_time()
            out = model(images_to_device([image], device))[0]
            (out["masks"] > 0.5).cpu()
        sync(device)
    infer_s = (time.perf_counter() - start) / (len(images) - 1)
    infer_cpu = (time.process_time() - cpu) / (len(images) - 1)
    return {
        "arch": arch,
        "params": count_parameters(model),
        "train_s_per_iter": train_s,
        "train_s_per_image": train_s / opts["batch_size"],
        "last_loss": rows[-1]["loss"] if rows else None,
        "infer_s_per_image": infer_s,
        "train_cpu_s_per_iter": train_cpu,
        "infer_cpu_s_per_image": infer_cpu,
        "train_peak_mb": train_peak,
        "infer_peak_mb": _peak_cuda(device),
        "cpu_peak_rss_mb": peak_rss_mb() - before if device.type == "cpu" else None,
    }


def _child(arch: str, cfg: dict, batches_file: str, opts: dict, queue: mp.Queue) -> None:
    try:
        queue.put(measure(arch, TrainConfig.from_dict(cfg), batches_file, opts))
    except Exception as e:  # reported in the table; the other archs still run
        queue.put(
            {
                "arch": arch,
                "error": f"{type(e).__name__}: {e}"[:300],
                "trace": traceback.format_exc(),
            }
        )


def config_for(args: argparse.Namespace, device: torch.device) -> tuple[str, TrainConfig]:
    """The profile's config, random init with BatchNorm (v2 has no GroupNorm recipe here)."""
    cuda = device.type == "cuda"
    profile = args.profile or ("seed" if cuda else "smoke")
    size = args.size or (800 if cuda else 128)
    return profile, TrainConfig.from_profile(
        profile,
        weights="none",
        norm="bn",
        trainable_backbone_layers=5,
        m2f_config=args.m2f_config or ("swin-tiny" if cuda else "tiny"),
        min_size=size,
        max_size=round(size * 1333 / 800),
        batch_size=args.batch_size,
        device=str(device),
        num_workers=0,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict]) -> str:
    head = (
        f"{'arch':<12}{'params':>8}{'train s/iter':>13}{'train s/img':>12}{'infer s/img':>12}"
        f"{'train peak MB':>14}{'infer peak MB':>14}{'CPU peak RSS MB':>16}"
        f"{'train cpu-s/iter':>17}{'infer cpu-s/img':>16}"
    )
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['arch']:<12}  failed: {r['error']}")
            continue
        lines.append(
            f"{r['arch']:<12}{r['params'] / 1e6:>7.1f}M{r['train_s_per_iter']:>13.3f}"
            f"{r['train_s_per_image']:>12.3f}{r['infer_s_per_image']:>12.3f}"
            f"{_fmt(r['train_peak_mb'], '.0f'):>14}{_fmt(r['infer_peak_mb'], '.0f'):>14}"
            f"{_fmt(r['cpu_peak_rss_mb'], '.0f'):>16}"
            f"{r['train_cpu_s_per_iter']:>17.3f}{r['infer_cpu_s_per_image']:>16.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    profile, cfg = config_for(args, device)
    iters = args.iters or (20 if device.type == "cuda" else 5)
    opts = dict(
        device=str(device),
        warmup=args.warmup,
        iters=iters,
        images=args.images,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    n_batches = max(2, (args.images + args.batch_size - 1) // args.batch_size)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        batches = make_batches(Path(tmp), cfg.min_size, args.batch_size, n_batches)
        batches_file = str(Path(tmp) / "batches.pt")
        torch.save(batches, batches_file)
        ctx = mp.get_context("spawn")
        for arch in args.archs:
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(arch, cfg.to_dict(), batches_file, opts, queue))
            proc.start()
            result = queue.get()
            proc.join()
            results.append(result)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": args.threads or torch.get_num_threads(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    setup = {
        "profile": profile,
        "norm": cfg.norm,
        "size": [cfg.min_size, cfg.max_size],
        "image_px": [cfg.min_size, round(cfg.min_size * 4 / 3)],
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "iters": iters,
        "infer_images": args.images,
        "m2f_config": cfg.m2f_config,
        "amp": cfg.amp and device.type == "cuda",
    }
    print(json.dumps({"env": env, "setup": setup}))
    print(table(results))
    for r in results:
        if "trace" in r:
            print(r["trace"], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "setup": setup, "results": results}, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
