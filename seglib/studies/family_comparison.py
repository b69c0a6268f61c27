"""Model families side by side: the same split, the same loop, the same evaluator (notebook 07).

``plan_comparison`` picks the contenders a config can run here and now: Mask R-CNN v1 and
v2 and Mask2Former, trained, plus the zero-shot COCO models when their weights are cached.
A comparison needs two of them: with one (the base install offline, where Mask2Former needs
the ``detr`` extra and only Mask R-CNN v1 can run) it plans nothing, and says why.
``compare_models`` trains every trained contender with ``trainer.train`` from the same config
(the same data, augmentation, optimizer, schedule and number of iterations; only the
architecture differs), then evaluates each one on the same split with
``coco_ap.evaluate_results`` (box and mask AP, overall and per class) and
``occlusion.occlusion_ap`` (AP per occlusion bucket). It also records parameters, training
and inference time per image and, on CUDA, peak memory. ``comparison_tables`` lays the
result out as text; ``ap_series``, ``occlusion_series`` and ``read_contender_results`` feed ``viz``
(they live in ``seglib.studies.comparison_report``).

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

from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.paths import RunFolder
from seglib.core.runtime import resolve_device, synchronize
from seglib.data.dataset import open_split
from seglib.engine.trainer import train
from seglib.evaluation.coco_ap import evaluate_results
from seglib.evaluation.coco_results import write_results
from seglib.evaluation.occlusion import occlusion_ap
from seglib.evaluation.prediction import check_postprocess, predict
from seglib.models import mask2former_weights
from seglib.models.builder import model_from_checkpoint
from seglib.models.mask2former import build_zero_shot_mask2former
from seglib.models.weights import weights_file
from seglib.models.zeroshot import build_zero_shot_model
from seglib.studies.finished_runs import finished_run_of, reused_contender

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
    """``plan_comparison``'s answer: the contenders, and why others were left out.

    ``needs_detr_extra`` is True when Mask2Former was left out because ``transformers`` (the
    optional ``detr`` extra) is not installed.
    """

    contenders: list[Contender]
    skipped: list[str] = field(default_factory=list)
    needs_detr_extra: bool = False


def _maskrcnn_weights_cached(kind: str, arch: str) -> bool:

    return weights_file(kind, arch).is_file()


def _mask2former_config(cfg: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig | str:
    """The trained Mask2Former contender's config, or why it is left out.

    ``cfg.weights`` "coco" becomes its own COCO checkpoint (Swin-T); anything else a random
    init of ``cfg.m2f_config``.
    """

    try:
        mask2former_weights.require_transformers()
    except ImportError as e:
        return str(e)
    weights = "coco" if cfg.weights == "coco" else "none"
    preset = "swin-tiny" if weights == "coco" else cfg.m2f_config
    try:
        c = cfg.replace(arch="mask2former", weights=weights, m2f_config=preset, **changes)
        check_postprocess(c.arch, c.postprocess, c.tta_hflip)
    except ValueError as e:
        return str(e)
    if weights == "coco" and not mask2former_weights.pretrained_available(c.m2f_pretrained):
        return (
            f"{c.m2f_pretrained} is not in the Hugging Face cache "
            "(`python -m seglib fetch-weights mask2former`)"
        )
    return c


def _maskrcnn_config(cfg: TrainConfig, arch: str, changes: Mapping[str, Any]) -> TrainConfig | str:
    """The trained Mask R-CNN contender's config (``arch`` "v1" or "v2"), or why it is left out."""
    if arch == "v2" and cfg.weights != "coco":
        return (
            f"compared from its COCO weights only (this profile's weights are "
            f"{cfg.weights!r}; the offline recipe trains v1 from scratch)"
        )
    try:
        c = cfg.replace(arch=arch, **changes)
    except ValueError as e:
        return str(e)
    if c.weights in ("coco", "imagenet") and not _maskrcnn_weights_cached(c.weights, arch):
        return (
            f"its {c.weights} weights are not cached "
            f"(`python -m seglib fetch-weights {c.weights} --arch {arch}`)"
        )
    return c


def _trained_contender(cfg: TrainConfig, arch: str, changes: Mapping[str, Any]) -> Contender | str:
    """``cfg`` trained as ``arch`` with ``changes``, or why it is left out (a sentence)."""
    name = ARCH_NAMES[arch]
    if arch == "mask2former":
        c = _mask2former_config(cfg, changes)
    else:
        c = _maskrcnn_config(cfg, arch, changes)
    if isinstance(c, str):
        return f"{name}: {c}"
    note = f"overrides {dict(changes)}" if changes else ""
    if c.arch == "mask2former" and c.m2f_config == "tiny":
        note = "; ".join(filter(None, [TINY_NOTE, note]))
    return Contender(name, c, True, note)


def _zero_shot_contender(cfg: TrainConfig, trained: Contender) -> Contender | str:
    """The unmodified COCO model of ``trained``'s arch, or why it is left out (a sentence)."""

    arch = trained.cfg.arch
    name = f"zero-shot-{trained.name}"
    if arch == "mask2former" and mask2former_weights.pretrained_available(
        trained.cfg.m2f_pretrained
    ):
        zs = cfg.replace(arch=arch, weights="coco", m2f_config="swin-tiny")
        return Contender(name, zs, False, "COCO head restricted to the classes")
    if arch != "mask2former" and _maskrcnn_weights_cached("coco", arch):
        return Contender(name, cfg.replace(arch=arch), False, "COCO model")
    return f"{name}: its COCO weights are not cached"


def plan_comparison(
    cfg: TrainConfig,
    archs: Sequence[str] = ("v1", "v2", "mask2former"),
    *,
    zero_shot: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    min_contenders: int = 2,
) -> Plan:
    """The contenders ``cfg`` allows with the weights and packages present, nothing fetched.

    Every trained contender is ``cfg`` with another ``arch``, so the budget and recipe are the
    same. Mask2Former takes ``cfg.weights`` "coco" as its own COCO checkpoint (Swin-T) and
    anything else as a random init of ``cfg.m2f_config`` (the offline profiles' "tiny"). It
    is left out when ``cfg`` asks for post-processing (``postprocess`` other than "nms", or
    ``tta_hflip``): it has no NMS to replace.

    Args:
        archs: which of "v1", "v2", "mask2former" to consider.
        zero_shot: also the unmodified COCO models (Mask R-CNN by coco_id, Mask2Former by
            name) when their weights are cached; never stand-ins.
        overrides: per-arch field changes, e.g. ``{"mask2former": {"lr": 1e-4}}``; they
            make the budgets unequal, so the note says so.
        min_contenders: fewer contenders than this compare nothing, so none is kept (each
            goes to ``skipped`` with the reason): training one model alone for a comparison
            would spend the slow step on a table of one row.

    Returns:
        A ``Plan``: contenders in order, and a sentence per contender left out.
    """

    plan = Plan([])
    overrides = overrides or {}
    for arch in archs:
        if arch not in ARCH_NAMES:
            raise ValueError(f"arch must be one of {tuple(ARCH_NAMES)}, got {arch!r}")
        trained = _trained_contender(cfg, arch, dict(overrides.get(arch, {})))
        if isinstance(trained, str):
            plan.skipped.append(trained)
            continue
        plan.contenders.append(trained)
        if zero_shot:
            zs = _zero_shot_contender(cfg, trained)
            (plan.skipped if isinstance(zs, str) else plan.contenders).append(zs)
    if "mask2former" in archs:
        try:
            mask2former_weights.require_transformers()
        except ImportError:
            plan.needs_detr_extra = True
    if len(plan.contenders) < min_contenders:
        plan.skipped += [
            f"{c.name}: nothing to compare it with here (a comparison needs {min_contenders} "
            "contenders), so it is not trained"
            for c in plan.contenders
        ]
        plan.contenders = []
    return plan


# --- measuring ------------------------------------------------------------------------------
def count_parameters(model: nn.Module) -> int:
    """All parameters of ``model``, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _build_zero_shot(contender: Contender, categories: list[dict]) -> nn.Module:
    if contender.cfg.arch == "mask2former":
        return build_zero_shot_mask2former(categories, contender.cfg)

    return build_zero_shot_model(categories, contender.cfg.arch, contender.cfg)


def predict_timed(
    model: nn.Module, dataset: Any, device: torch.device
) -> tuple[list[dict], dict[str, float | None]]:
    """``prediction.predict`` one image at a time, timed after one warm-up image.

    Returns:
        (COCO results, {"time_per_image": s, "peak_memory_mb": CUDA peak or None}). The time
        is end to end: the forward pass, post-processing and RLE encoding of every image.
    """
    from torch.utils.data import Subset

    predict(model, Subset(dataset, [0]), device, batch_size=1)  # warm-up (allocator, kernels)
    _reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    results = predict(model, dataset, device, batch_size=1)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return results, {"time_per_image": elapsed / len(dataset), "peak_memory_mb": _peak_mb(device)}


def _train_contender(
    cfg: TrainConfig,
    name: str,
    data_dir: Path,
    run_dir: Path,
    device: torch.device,
    categories: list[dict],
    callback: Callback | None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``cfg`` into ``run_dir`` and load its ``last.pt``.

    Returns:
        ``(model, {"iterations", "train_time_per_image", "train_wall_s", "validations",
        "train_peak_memory_mb"})``.
    """

    def relay(event: str, payload: dict[str, Any]) -> None:
        if callback is not None:
            callback(event, {**payload, "model": name})

    _reset_peak(device)
    start = time.perf_counter()
    summary = train(cfg, data_dir, run_dir, callback=relay)
    elapsed = time.perf_counter() - start
    train_time = sum(h["time"] for h in summary["history"])
    stats = {
        "iterations": summary["iteration"],
        "train_time_per_image": train_time / max(1, summary["iteration"] * cfg.batch_size),
        "train_wall_s": elapsed,
        "validations": sum(1 for h in summary["history"] if "segm_AP" in h),
        "train_peak_memory_mb": _peak_mb(device),
    }
    model, _, _ = model_from_checkpoint(
        RunFolder(run_dir).last_checkpoint, device, categories=categories
    )
    return model, stats


def _evaluate_contender(
    model: nn.Module, dataset: Any, device: torch.device, score_thresh: float, results_file: Path
) -> dict[str, Any]:
    """Parameters, inference time and memory, metrics and AP per occlusion bucket of ``model``
    on ``dataset``; its results go to ``results_file`` with COCO's category ids."""

    params = count_parameters(model)
    results, timing = predict_timed(model, dataset, device)
    return {
        "params": params,
        **timing,
        "metrics": evaluate_results(dataset.coco, results, score_thresh=score_thresh),
        "occlusion": occlusion_ap(dataset.coco, results, score_thresh=score_thresh),
        "results": str(write_results(results_file, results, dataset.categories)),
    }


def compare_models(
    plan: Plan | Sequence[Contender],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    num_epochs: int | None = None,
    reusable: Sequence[str | Path] = (),
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train each trained contender for the same budget, then evaluate every one on ``split``.

    A trained contender that one of the ``reusable`` run folders trained already
    (``finished_run_of``: the notebook 03 run of the same profile, typically) is not trained
    again: its ``last.pt`` is evaluated, and its row says so (``reused_from``).

    Writes ``out_dir/<name>/`` (the run: config.json, metrics.jsonl, last.pt, ...),
    ``out_dir/<name>/<split>_results.json`` (COCO's category ids, as
    ``prediction.write_results`` writes them; ``comparison_report.read_contender_results`` reads them back) and
    ``out_dir/comparison.json``.

    Args:
        num_epochs: replaces every trained contender's ``num_epochs`` (the same budget;
            the schedule then spans it), e.g. ``cfg.compare_epochs``.
        callback: ``callback(event, payload)``: the engine's events with ``payload["model"]``
            added, and ("evaluated", {"model", "metrics"}) per contender.

    Returns:
        ``{"split", "num_images", "categories" (the split's), "skipped", "models": {name:
        {"arch", "note", "train" (bool), "params", "iterations", "train_time_per_image" (s,
        data loading included), "train_peak_memory_mb", "time_per_image", "peak_memory_mb"
        (CUDA only, else None), "metrics" (evaluate_results), "occlusion" (occlusion_ap),
        "results" (path), and "reused_from" (a run folder) for a contender not retrained}}}``.

    Raises:
    """

    contenders = plan.contenders if isinstance(plan, Plan) else list(plan)
    skipped = list(plan.skipped) if isinstance(plan, Plan) else []
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = open_split(data_dir, split)
    models: dict[str, Any] = {}
    for contender in contenders:
        cfg, name = contender.cfg, contender.name
        if contender.train and num_epochs is not None:
            cfg = cfg.replace(num_epochs=num_epochs)
        device = resolve_device(cfg.device)
        run_dir = out_dir / name
        row: dict[str, Any] = {"arch": cfg.arch, "note": contender.note, "train": contender.train}
        done = finished_run_of(cfg, [Path(r) for r in reusable]) if contender.train else None
        if done is not None:
            model, stats = reused_contender(done, cfg, device, dataset.categories)
        elif contender.train:
            args = (cfg, name, data_dir, run_dir, device, dataset.categories, callback)
            model, stats = _train_contender(*args)
        else:
            model = _build_zero_shot(contender, dataset.categories).to(device)
            stats = {"iterations": 0, "train_time_per_image": None, "train_peak_memory_mb": None}
        row.update(stats)
        results_file = run_dir / f"{split}_results.json"
        row.update(_evaluate_contender(model, dataset, device, cfg.score_thresh, results_file))
        models[name] = row
        if callback is not None:
            callback("evaluated", {"model": name, "metrics": row["metrics"]})
        del model
    out = {
        "split": split,
        "num_images": len(dataset),
        "categories": dataset.categories,
        "skipped": skipped,
        "models": models,
    }
    write_json_atomic(out_dir / "comparison.json", out)
    return out
