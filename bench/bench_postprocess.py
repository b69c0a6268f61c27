"""Inference time per image of each post-processing variant against torchvision's own NMS.

    python bench/bench_postprocess.py [--device auto] [--size PX] [--images N] [--json FILE]

One randomly initialised Mask R-CNN R50-FPN (4 classes + background, the seed profile's
sizes and thresholds: 1000 proposals, score > 0.05, 100 detections, a pool of 300) runs on
``--images`` random images of ``size`` x ``4/3 size`` px. A random model scores every class
of every proposal near 1/5, so the candidate pool is always full: the worst case for the
rules, which see ``postprocess_pool`` candidates (twice as many with flip TTA).

For each variant the script reports, per image (median):

- ``end_to_end_ms``: the whole call (``seglib.postprocess.PostProcessed``; for the baseline,
  the model itself), which includes the larger mask-head batch and mask pasting of the pool
  and, with TTA, a second forward pass;
- ``extra_ms``: end_to_end_ms minus the baseline's;
- ``rule_ms``: the suppression alone (``PostProcessed.select`` on the cached candidates,
  mask IoU included).

Variants are timed round-robin, one image at a time, after a warm-up round, so a change of
machine load affects them all alike; CUDA is synchronised around every call. Weights do not
matter for the timing except through the number of candidates, which is maximal here.
Needs no data, no weights and no pycocotools.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seglib.config import POSTPROCESS_METHODS, TrainConfig  # noqa: E402
from seglib.postprocess import PostProcessed, Settings  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn, *args) -> float:
    """Wall time in ms of ``fn(*args)``, CUDA synchronised on both sides."""
    _sync(device)
    start = time.perf_counter()
    fn(*args)
    _sync(device)
    return 1000 * (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="shorter side, px (800 on CUDA)")
    parser.add_argument("--images", type=int, default=None, help="timed images (10 on CUDA)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda" if cuda else "cpu")
    size = args.size or (800 if cuda else 128)
    n_images = args.images or (10 if cuda else 2)

    cfg = TrainConfig(min_size=size, max_size=round(size * 1333 / 800))
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=cfg.num_classes,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img,
    )
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(1)
    images = [
        torch.rand(3, size, round(size * 4 / 3), generator=gen).to(device) for _ in range(n_images)
    ]
    variants = {"baseline": None}
    for tta in (False, True):
        for method in POSTPROCESS_METHODS:
            name = f"{method} + flip" if tta else method
            variants[name] = PostProcessed(
                model, Settings.from_config(cfg, postprocess=method, tta_hflip=tta)
            )
    calls = {name: (model if wrapped is None else wrapped) for name, wrapped in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    rule: dict[str, list[float]] = {name: [] for name in variants if name != "baseline"}
    with torch.inference_mode():
        for call in calls.values():  # warm-up round
            call(images[:1])
        for image in images:
            for name, call in calls.items():
                times[name].append(_timed(device, call, [image]))
            (cand,) = variants["nms + flip"].candidates([image], tta_hflip=True)
            for name, wrapped in variants.items():
                if wrapped is not None:
                    rule[name].append(
                        _timed(device, PostProcessed.select, cand, wrapped.settings, {})
                    )
        n_candidates = int(cand["scores"].numel())
    base = statistics.median(times["baseline"])
    rows = {
        name: {
            "end_to_end_ms": statistics.median(t),
            "extra_ms": statistics.median(t) - base,
            "rule_ms": statistics.median(rule[name]) if name in rule else 0.0,
        }
        for name, t in times.items()
    }
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "image_px": [size, round(size * 4 / 3)],
        "images": n_images,
        "candidates_with_flip": n_candidates,
        "postprocess_pool": cfg.postprocess_pool,
        "variants": rows,
    }
    print(f"{result['device']}, {size}x{round(size * 4 / 3)} px, {n_images} images, median ms")
    print(f"{'variant':<26}{'end to end':>11}{'extra':>9}{'rule':>9}")
    for name, r in rows.items():
        print(f"{name:<26}{r['end_to_end_ms']:>11.1f}{r['extra_ms']:>+9.1f}{r['rule_ms']:>9.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
