"""Inference time per image of each post-processing variant against torchvision's own NMS.

    python bench/bench_postprocess.py [--device auto] [--size PX] [--images N]
        [--variants flip,matrix] [--rule-times | --no-rule-times] [--json FILE]

One randomly initialised Mask R-CNN R50-FPN (4 classes + background, the seed profile's
sizes and thresholds: 1000 proposals, score > 0.05, 100 detections, a pool of 300) runs on
``--images`` random images of ``size`` x ``4/3 size`` px. A random model scores every class
of every proposal near 1/5, so the candidate pool is always full: the worst case for the
rules, which see ``postprocess_pool`` candidates per view.

It prints the machine (the GPU, or the CPU model from ``lscpu``) and the torch version, then
for each variant, per image (median):

- ``end_to_end_ms``: the whole call (``seglib.models.postprocess.PostProcessed``; for the baseline,
  the model itself), which includes the mask head on what the rule keeps, the pasting of the
  final masks and, with TTA, a second forward pass;
- ``extra_ms``: end_to_end_ms minus the baseline's; ``x_model``: end_to_end_ms over it;
- ``rule_ms`` (``--rule-times``, the default on CUDA): ``PostProcessed.select`` on the cached
  candidates of the whole pool, from the box step to the pasted masks.

Variants are timed round-robin, one image at a time, the order rotated by one each image,
after a warm-up round on a small image, so a change of machine load affects them all alike; CUDA is synchronised around every call.
``--variants`` keeps those whose name contains one of the given words (the baseline always
runs): on a CPU one forward at 800 px takes seconds, so ``--variants flip --images 1`` is the
short run. Weights do not matter for the timing except through the number of candidates,
which is maximal here. Needs no data, no weights and no pycocotools.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seglib.core.config import POSTPROCESS_METHODS, TrainConfig  # noqa: E402
from seglib.models.postprocess import PostProcessed
from seglib.models.suppression import Settings  # noqa: E402


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


def _machine(device: torch.device) -> str:
    """The GPU's name, or the CPU model as lscpu gives it (platform's guess without lscpu)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "cpu"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", platform.processor() or "cpu").strip()
    return (
        f"{name}, {fields.get('CPU(s)', '?').strip()} CPUs, torch threads {torch.get_num_threads()}"
    )


def _model(cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
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
    return model.to(device).eval()


def _variants(model, cfg: TrainConfig, words: list[str] | None) -> dict[str, PostProcessed | None]:
    variants: dict[str, PostProcessed | None] = {"baseline": None}
    for tta in (False, True):
        for method in POSTPROCESS_METHODS:
            name = f"{method} + flip" if tta else method
            if words is None or any(w in name for w in words):
                settings = Settings.from_config(cfg, postprocess=method, tta_hflip=tta)
                variants[name] = PostProcessed(model, settings)
    return variants


def _time_all(device, model, variants, images, rule_times: bool):
    """Per variant, the end-to-end times and (if asked) the rule-alone times, in ms."""
    calls = {name: (model if wrapped is None else wrapped) for name, wrapped in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    rule: dict[str, list[float]] = {name: [] for name in variants if name != "baseline"}
    n_candidates = 0
    small = torch.rand(3, 96, 128, device=device)
    with torch.inference_mode():
        for call in calls.values():  # warm-up round, on a small image: every code path once
            call([small])
        names = list(calls)
        for i, image in enumerate(images):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # each image rotated
                times[name].append(_timed(device, calls[name], [image]))
            if not rule_times or not rule:
                continue
            (cand,) = next(v for v in variants.values() if v).candidates([image], tta_hflip=True)
            n_candidates = int(cand.det["scores"].numel())
            for name, wrapped in variants.items():
                if wrapped is not None:
                    rule[name].append(
                        _timed(device, PostProcessed.select, cand, wrapped.settings, {})
                    )
    return times, rule, n_candidates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=None, help="shorter side, px (800 on CUDA)")
    parser.add_argument("--images", type=int, default=None, help="timed images (10 on CUDA)")
    parser.add_argument("--variants", default=None, help="comma-separated words to keep")
    parser.add_argument("--rule-times", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda" if cuda else "cpu")
    size = args.size or (800 if cuda else 128)
    n_images = args.images or (10 if cuda else 2)
    rule_times = cuda if args.rule_times is None else args.rule_times
    words = [w.strip() for w in args.variants.split(",")] if args.variants else None

    cfg = TrainConfig(min_size=size, max_size=round(size * 1333 / 800))
    model = _model(cfg, device)
    variants = _variants(model, cfg, words)
    gen = torch.Generator().manual_seed(1)
    width = round(size * 4 / 3)
    images = [torch.rand(3, size, width, generator=gen).to(device) for _ in range(n_images)]
    times, rule, n_candidates = _time_all(device, model, variants, images, rule_times)
    base = statistics.median(times["baseline"])
    rows = {
        name: {
            "end_to_end_ms": statistics.median(t),
            "extra_ms": statistics.median(t) - base,
            "x_model": statistics.median(t) / base,
            "rule_ms": statistics.median(rule[name]) if rule.get(name) else None,
        }
        for name, t in times.items()
    }
    result = {
        "device": _machine(device),
        "torch": torch.__version__,
        "image_px": [size, width],
        "images": n_images,
        "candidates_with_flip": n_candidates if rule_times else None,
        "postprocess_pool": cfg.postprocess_pool,
        "variants": rows,
    }
    print(f"{result['device']}; torch {torch.__version__}")
    print(f"{size}x{width} px, {n_images} images, median ms per image")
    print(f"{'variant':<26}{'end to end':>11}{'extra':>9}{'x model':>9}{'rule':>9}")
    for name, r in rows.items():
        rule_ms = "-" if r["rule_ms"] is None else f"{r['rule_ms']:.1f}"
        print(
            f"{name:<26}{r['end_to_end_ms']:>11.1f}{r['extra_ms']:>+9.1f}"
            f"{r['x_model']:>9.2f}{rule_ms:>9}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
