"""Model families side by side: the same split, the same loop, the same evaluator (notebook 07).

``plan_comparison`` picks the contenders a config can run here and now: Mask R-CNN v1 and
v2 and Mask2Former, trained, plus the zero-shot COCO models when their weights are cached.
``compare_models`` trains every trained contender with ``engine.train`` from the same config
(the same data, augmentation, optimizer, schedule and number of iterations; only the
architecture differs), then evaluates each one on the same split with
``metrics.evaluate_results`` (box and mask AP, overall and per class) and
``occlusion.occlusion_ap`` (AP per occlusion bucket). It also records parameters, training
and inference time per image and, on CUDA, peak memory. ``comparison_tables`` lays the
result out as text; ``ap_series``, ``occlusion_series`` and ``load_results`` feed ``viz``.

What an equal budget shows, and what it does not: on the offline profiles both families
start from random weights and learn synthetic shapes for a few dozen iterations, and
Mask2Former is a ~1 M-parameter "tiny" random configuration, not the Swin-T COCO model. The
numbers then check that both families run through one loop and one evaluator; they say
nothing about which family is better on COCO. That needs the seed profile, the COCO weights
of both, and a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglib.config import TrainConfig
from seglib.io import write_json_atomic

#: Display names of the architectures.
ARCH_NAMES = {"v1": "mask-rcnn-v1", "v2": "mask-rcnn-v2", "mask2former": "mask2former"}
TINY_NOTE = (
    "TINY RANDOM CONFIG: Mask2Former here is the ~1 M-parameter 'tiny' preset trained from "
    "scratch, not the Swin-T COCO architecture or weights"
)
Callback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Contender:
    """One row of the comparison.

    Attributes:
        name: display name, also the folder of its run ("mask2former", "zero-shot-mask-rcnn-v1").
        cfg: the config it is built (and, when ``train``, trained) from.
        train: False for a zero-shot COCO baseline, evaluated as it is.
        note: what the reader must know about this row (stand-ins, tiny configs).
    """

    name: str
    cfg: TrainConfig
    train: bool = True
    note: str = ""


@dataclass
class Plan:
    """``plan_comparison``'s answer: the contenders, and why others were left out."""

    contenders: list[Contender]
    skipped: list[str] = field(default_factory=list)


def _maskrcnn_weights_cached(kind: str, arch: str) -> bool:
    from seglib.weights import weights_file

    return weights_file(kind, arch).is_file()


def plan_comparison(
    cfg: TrainConfig,
    archs: Sequence[str] = ("v1", "v2", "mask2former"),
    *,
    zero_shot: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """The contenders ``cfg`` allows with the weights and packages present, nothing fetched.

    Every trained contender is ``cfg`` with another ``arch``, so the budget and recipe are the
    same. Mask2Former takes ``cfg.weights`` "coco" as its own COCO checkpoint (Swin-T) and
    anything else as a random init of ``cfg.m2f_config`` (the offline profiles' "tiny").

    Args:
        archs: which of "v1", "v2", "mask2former" to consider.
        zero_shot: also the unmodified COCO models (Mask R-CNN by coco_id, Mask2Former by
            name) when their weights are cached; never stand-ins.
        overrides: per-arch field changes, e.g. ``{"mask2former": {"lr": 1e-4}}``; they
            make the budgets unequal, so the note says so.

    Returns:
        A ``Plan``: contenders in order, and a sentence per contender left out.
    """
    from seglib.mask2former import pretrained_available, require_transformers

    plan = Plan([])
    overrides = overrides or {}
    for arch in archs:
        if arch not in ARCH_NAMES:
            raise ValueError(f"arch must be one of {tuple(ARCH_NAMES)}, got {arch!r}")
        name = ARCH_NAMES[arch]
        changes = dict(overrides.get(arch, {}))
        note = f"overrides {changes}" if changes else ""
        if arch == "mask2former":
            try:
                require_transformers()
            except ImportError as e:
                plan.skipped.append(f"{name}: {e}")
                continue
            weights = "coco" if cfg.weights == "coco" else "none"
            preset = "swin-tiny" if weights == "coco" else cfg.m2f_config
            try:
                c = cfg.replace(arch=arch, weights=weights, m2f_config=preset, **changes)
            except ValueError as e:
                plan.skipped.append(f"{name}: {e}")
                continue
            if weights == "coco" and not pretrained_available(c.m2f_pretrained):
                plan.skipped.append(
                    f"{name}: {c.m2f_pretrained} is not in the Hugging Face cache "
                    "(`python -m seglib fetch-weights mask2former`)"
                )
                continue
            if c.m2f_config == "tiny":
                note = "; ".join(filter(None, [TINY_NOTE, note]))
        elif arch == "v2" and cfg.weights != "coco":
            plan.skipped.append(
                f"{name}: compared from its COCO weights only (this profile's weights are "
                f"{cfg.weights!r}; the offline recipe trains v1 from scratch)"
            )
            continue
        else:
            try:
                c = cfg.replace(arch=arch, **changes)
            except ValueError as e:
                plan.skipped.append(f"{name}: {e}")
                continue
            if c.weights in ("coco", "imagenet") and not _maskrcnn_weights_cached(c.weights, arch):
                plan.skipped.append(
                    f"{name}: its {c.weights} weights are not cached "
                    f"(`python -m seglib fetch-weights {c.weights} --arch {arch}`)"
                )
                continue
        plan.contenders.append(Contender(name, c, True, note))
        if not zero_shot:
            continue
        if arch == "mask2former" and pretrained_available(c.m2f_pretrained):
            zs = cfg.replace(arch=arch, weights="coco", m2f_config="swin-tiny")
            plan.contenders.append(
                Contender(f"zero-shot-{name}", zs, False, "COCO head restricted to the classes")
            )
        elif arch != "mask2former" and _maskrcnn_weights_cached("coco", arch):
            plan.contenders.append(
                Contender(f"zero-shot-{name}", cfg.replace(arch=arch), False, "COCO model")
            )
        else:
            plan.skipped.append(f"zero-shot-{name}: its COCO weights are not cached")
    return plan


# --- measuring ------------------------------------------------------------------------------
def count_parameters(model: nn.Module) -> int:
    """All parameters of ``model``, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _build_zero_shot(contender: Contender, categories: list[dict]) -> nn.Module:
    if contender.cfg.arch == "mask2former":
        from seglib.mask2former import build_zero_shot_mask2former

        return build_zero_shot_mask2former(categories, contender.cfg)
    from seglib.model import build_zero_shot_model

    return build_zero_shot_model(categories, contender.cfg.arch, contender.cfg)


def predict_timed(
    model: nn.Module, dataset: Any, device: torch.device
) -> tuple[list[dict], dict[str, float | None]]:
    """``inference.predict`` one image at a time, timed after one warm-up image.

    Returns:
        (COCO results, {"time_per_image": s, "peak_memory_mb": CUDA peak or None}). The time
        is end to end: the forward pass, post-processing and RLE encoding of every image.
    """
    from torch.utils.data import Subset

    from seglib.inference import predict

    predict(model, Subset(dataset, [0]), device, batch_size=1)  # warm-up (allocator, kernels)
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    results = predict(model, dataset, device, batch_size=1)
    _sync(device)
    elapsed = time.perf_counter() - start
    return results, {"time_per_image": elapsed / len(dataset), "peak_memory_mb": _peak_mb(device)}


def compare_models(
    plan: Plan | Sequence[Contender],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    num_epochs: int | None = None,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train each trained contender for the same budget, then evaluate every one on ``split``.

    Writes ``out_dir/<name>/`` (the run: config.json, metrics.jsonl, last.pt, ...),
    ``out_dir/<name>/<split>_results.json`` and ``out_dir/comparison.json``.

    Args:
        num_epochs: replaces every trained contender's ``num_epochs`` (the same budget;
            the schedule then spans it), e.g. ``cfg.compare_epochs``.
        callback: ``callback(event, payload)``: the engine's events with ``payload["model"]``
            added, and ("evaluated", {"model", "metrics"}) per contender.

    Returns:
        ``{"split", "num_images", "skipped", "models": {name: {"arch", "note", "train"
        (bool), "params", "iterations", "train_time_per_image" (s, data loading included),
        "train_peak_memory_mb", "time_per_image", "peak_memory_mb" (CUDA only, else None),
        "metrics" (evaluate_results), "occlusion" (occlusion_ap), "results" (path)}}}``.
    """
    from seglib.dataset import open_split
    from seglib.engine import resolve_device, train
    from seglib.metrics import evaluate_results
    from seglib.model import model_from_checkpoint
    from seglib.occlusion import occlusion_ap

    contenders = plan.contenders if isinstance(plan, Plan) else list(plan)
    skipped = list(plan.skipped) if isinstance(plan, Plan) else []
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = open_split(data_dir, split)
    models: dict[str, Any] = {}
    for contender in contenders:
        cfg = contender.cfg
        if contender.train and num_epochs is not None:
            cfg = cfg.replace(num_epochs=num_epochs)
        device = resolve_device(cfg.device)
        run_dir = out_dir / contender.name
        row: dict[str, Any] = {"arch": cfg.arch, "note": contender.note, "train": contender.train}
        if contender.train:

            def relay(event: str, payload: dict[str, Any], name: str = contender.name) -> None:
                if callback is not None:
                    callback(event, {**payload, "model": name})

            _reset_peak(device)
            start = time.perf_counter()
            summary = train(cfg, data_dir, run_dir, callback=relay)
            elapsed = time.perf_counter() - start
            evals = sum(1 for h in summary["history"] if "segm_AP" in h)
            train_time = sum(h["time"] for h in summary["history"])
            row.update(
                iterations=summary["iteration"],
                train_time_per_image=train_time / max(1, summary["iteration"] * cfg.batch_size),
                train_wall_s=elapsed,
                validations=evals,
                train_peak_memory_mb=_peak_mb(device),
            )
            model, _, _ = model_from_checkpoint(
                run_dir / "last.pt", device, categories=dataset.categories
            )
        else:
            model = _build_zero_shot(contender, dataset.categories).to(device)
            row.update(iterations=0, train_time_per_image=None, train_peak_memory_mb=None)
        row["params"] = count_parameters(model)
        results, timing = predict_timed(model, dataset, device)
        row.update(timing)
        row["metrics"] = evaluate_results(dataset.coco, results, score_thresh=cfg.score_thresh)
        row["occlusion"] = occlusion_ap(dataset.coco, results, score_thresh=cfg.score_thresh)
        row["results"] = str(
            write_json_atomic(run_dir / f"{split}_results.json", results, indent=None)
        )
        models[contender.name] = row
        if callback is not None:
            callback("evaluated", {"model": contender.name, "metrics": row["metrics"]})
        del model
    out = {"split": split, "num_images": len(dataset), "skipped": skipped, "models": models}
    write_json_atomic(out_dir / "comparison.json", out)
    return out


# --- reporting ------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None and value >= 0 else "-"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def comparison_tables(summary: Mapping[str, Any]) -> dict[str, str]:
    """Fixed-width text tables of ``compare_models``'s summary, in percent ("-" = undefined).

    Returns:
        ``{"overall": box/mask AP, AP50, params, times, memory; "per_class": mask AP per
        class; "occlusion": mask AP (and box AP) per occlusion bucket, with instance counts}``.
    """
    models = summary["models"]
    w = max([len(n) for n in models] + [5]) + 2
    head = (
        f"{'model':<{w}}{'box AP':>7}{'mask AP':>8}{'AP50':>6}{'params':>8}"
        f"{'train s/img':>12}{'infer s/img':>12}{'peak MB':>9}"
    )
    lines = [head]
    for name, m in models.items():
        lines.append(
            f"{name:<{w}}{_pct(m['metrics']['bbox']['AP']):>7}{_pct(m['metrics']['segm']['AP']):>8}"
            f"{_pct(m['metrics']['segm']['AP50']):>6}{m['params'] / 1e6:>7.1f}M"
            f"{_num(m['train_time_per_image'], '.3f'):>12}{_num(m['time_per_image'], '.3f'):>12}"
            f"{_num(m['peak_memory_mb'], '.0f'):>9}"
        )
    names = list(next(iter(models.values()))["metrics"]["segm"]["per_class"]) if models else []
    per_class = [f"{'mask AP':<{w}}" + "".join(f"{n[:9]:>10}" for n in names)]
    for name, m in models.items():
        pc = m["metrics"]["segm"]["per_class"]
        per_class.append(f"{name:<{w}}" + "".join(f"{_pct(pc[n]['AP']):>10}" for n in names))
    rows = list(next(iter(models.values()))["occlusion"]) if models else []
    occ = [
        f"{'mask AP (box AP)':<{w}}"
        + "".join(
            f"{r + ' n=' + str(next(iter(models.values()))['occlusion'][r]['instances']):>16}"
            for r in rows
        )
    ]
    for name, m in models.items():
        cells = [
            f"{_pct(m['occlusion'][r]['segm']['AP'])} ({_pct(m['occlusion'][r]['bbox']['AP'])})"
            for r in rows
        ]
        occ.append(f"{name:<{w}}" + "".join(f"{c:>16}" for c in cells))
    return {
        "overall": "\n".join(lines),
        "per_class": "\n".join(per_class),
        "occlusion": "\n".join(occ),
    }


def ap_series(
    summary: Mapping[str, Any], iou_type: str = "segm"
) -> tuple[list[str], dict[str, list[float]]]:
    """AP per class, then overall, of every model: ``(groups, {model: [0-1 or -1, ...]})``.

    For ``viz.plot_grouped_scores``.
    """
    models = summary["models"]
    classes = list(next(iter(models.values()))["metrics"][iou_type]["per_class"]) if models else []
    series = {
        name: [m["metrics"][iou_type]["per_class"][c]["AP"] for c in classes]
        + [m["metrics"][iou_type]["AP"]]
        for name, m in models.items()
    }
    return [*classes, "all"], series


def occlusion_series(
    summary: Mapping[str, Any], iou_type: str = "segm"
) -> tuple[list[str], dict[str, list[float]]]:
    """AP per occlusion bucket (``occlusion.ROWS``, with instance counts) of every model."""
    models = summary["models"]
    if not models:
        return [], {}
    first = next(iter(models.values()))["occlusion"]
    groups = [f"{row} (n={first[row]['instances']})" for row in first]
    series = {
        name: [m["occlusion"][row][iou_type]["AP"] for row in first] for name, m in models.items()
    }
    return groups, series


def most_occluded(dataset: Any, n: int = 3) -> list[int]:
    """``n`` image ids of ``dataset``, those with the most heavily occluded instances first.

    Falls back to partially occluded, then to any images, so it returns ``min(n, len)`` ids.
    """
    from seglib.occlusion import most_occluded_images

    ids: list[int] = []
    for bucket in ("heavy", "partial", "none"):
        ids += [i for i in most_occluded_images(dataset.coco, n=n, bucket=bucket) if i not in ids]
    ids += [i for i in dataset.ids if i not in ids]
    return ids[:n]


def load_results(summary: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Each model's COCO results on the split, read back from its results file."""
    import json

    return {
        name: json.loads(Path(m["results"]).read_text()) for name, m in summary["models"].items()
    }
