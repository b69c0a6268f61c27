"""RoIAlign on the CPU: seglib's sparse product against torchvision's op.

    python bench/bench_roi_align.py [--threads N] [--repeats R] [--json FILE]

Both poolers (``torchvision.ops.MultiScaleRoIAlign`` and ``seglib.models.roi_align``'s) pool
the same random FPN features (256 channels, 2 images, levels at strides 4-32) for the same
boxes, in the shapes a Mask R-CNN step pools: the box head's 7 x 7 and the mask head's
14 x 14, at the demo's 128 px (48 sampled ROIs an image, a quarter of them positive for
the mask head; 100 proposals and 50 detections an image at inference) and at 480 x 640
with the seed profile's counts. ``train`` rows time forward and backward through the two
poolers; ``predict`` rows the forward alone under ``torch.inference_mode``, where seglib's
pooler hands over to torchvision's, so its product (``pool_sparse``) is timed
directly, level mapping included: the reason prediction keeps torchvision's op. The two
alternate, ``--repeats`` calls each after a warm-up call; the median and the ratio are
printed. Needs no data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

from seglib.models.roi_align import MultiScaleRoIAlign

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo import machine  # noqa: E402  (one lscpu reader)

NAMES = ["0", "1", "2", "3"]
#: (name, image size, ROIs an image, output size, sampling ratio, mode)
CASES = [
    ("demo box head", (128, 128), 48, 7, 1, "train"),
    ("demo mask head", (128, 128), 12, 14, 1, "train"),
    ("demo box head", (128, 128), 100, 7, 1, "predict"),
    ("demo mask head", (128, 128), 50, 14, 1, "predict"),
    ("seed box head", (480, 640), 512, 7, 2, "train"),
    ("seed mask head", (480, 640), 128, 14, 2, "train"),
    ("seed box head", (480, 640), 1000, 7, 2, "predict"),
    ("seed mask head", (480, 640), 100, 14, 2, "predict"),
]


def inputs(size: tuple[int, int], per_image: int) -> tuple[dict, list]:
    generator = torch.Generator().manual_seed(0)
    h, w = size
    features = {
        name: torch.randn(2, 256, h // 4 >> i, w // 4 >> i, generator=generator)
        for i, name in enumerate(NAMES)
    }
    boxes = []
    for _ in range(2):
        corner = torch.rand(per_image, 2, generator=generator) * torch.tensor([w, h]) * 0.8
        extent = torch.rand(per_image, 2, generator=generator) * torch.tensor([w, h]) * 0.5 + 2
        boxes.append(torch.cat([corner, (corner + extent).minimum(torch.tensor([w, h]))], 1))
    return features, boxes


def call_ms(pool, features: dict, boxes: list, size, mode: str) -> float:
    start = time.perf_counter()
    if mode == "train":
        leaves = {k: v.requires_grad_(True) for k, v in features.items()}
        out = pool(leaves, boxes, [size] * 2)
        torch.autograd.grad(out, list(leaves.values()), torch.ones_like(out))
    elif isinstance(pool, MultiScaleRoIAlign):  # its product, which prediction does not use
        with torch.inference_mode():
            pool.pool_sparse(list(features.values()), boxes, [size] * 2)
    else:
        with torch.inference_mode():
            pool(features, boxes, [size] * 2)
    return 1000 * (time.perf_counter() - start)


def run(repeats: int) -> list[dict]:
    rows = []
    for name, size, per_image, out, ratio, mode in CASES:
        features, boxes = inputs(size, per_image)
        pools = {
            "torchvision": torchvision.ops.MultiScaleRoIAlign(NAMES, out, ratio),
            "seglib": MultiScaleRoIAlign(NAMES, out, ratio),
        }
        times: dict[str, list[float]] = {k: [] for k in pools}
        for pool in pools.values():  # warm-up
            call_ms(pool, features, boxes, size, mode)
        for _ in range(repeats):
            for k, pool in pools.items():
                times[k].append(call_ms(pool, features, boxes, size, mode))
        tv, ours = (statistics.median(times[k]) for k in pools)
        rows.append(
            {
                "case": f"{name} {size[0]}x{size[1]}, {2 * per_image} ROIs, {mode}",
                "torchvision_ms": round(tv, 2),
                "seglib_ms": round(ours, 2),
                "speedup": round(tv / ours, 2),
            }
        )
        print(f"{rows[-1]['case']:<52} {tv:9.1f} {ours:9.1f} {tv / ours:7.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(
        f"CPU: {info['cpu_model']}, {info['cpus']} CPUs, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    print(f"{'case (2 images)':<52} {'tv ms':>9} {'ours ms':>9} {'ratio':>8}")
    rows = run(args.repeats)
    if args.json:
        info["torch_threads"] = torch.get_num_threads()
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
