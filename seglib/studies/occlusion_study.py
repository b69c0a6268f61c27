"""The occlusion study: does better post-processing help where objects overlap?

``run_study`` takes a trained checkpoint and its subset and compares, on the test split, the
seed's suppression (box NMS at the trained ``box_nms_thresh``) with every rule of
``seglib.models.postprocess``, each with and without horizontal-flip TTA:

1. The model runs **once** per image and view with its own NMS off
   (``PostProcessed.candidates``); every rule and parameter is applied to those candidates.
   Box NMS without flip (``Settings.passthrough``: the baseline and the "nms" grid) is the
   model's own rule, so it is the model's own predictions, with the ROI heads run once per
   threshold over one backbone pass, which the pool's unflipped view shares: the baseline
   *is* the model whatever ``postprocess_pool`` (NMS over the pool's best candidates loses
   what the model keeps beyond them when the pool is tight).
2. Each variant's parameter is **tuned on val** (``GRIDS``, mask AP), never on test.
3. On **test**, each variant gets box and mask AP overall and per occlusion bucket, with
   recall and best-match IoU (``seglib.evaluation.occlusion.occlusion_ap``).
4. **Time**: each variant runs end to end (``PostProcessed``) on a few test images, one at a
   time, round-robin with the baseline after a warm-up round; ``extra_ms`` is its median per
   image minus the baseline's (``bench/bench_postprocess.py`` does the same at COCO size).
5. The zero-shot COCO models (v1, v2) get a row each (their own predictions) when their
   weights are cached, and a stated reason otherwise.

``save_study`` writes ``occlusion_study.json`` and ``occlusion_study.txt`` (``format_study``)
atomically; they and ``changed_images`` live in ``seglib.studies.occlusion_report``. The library prints nothing; the CLI and notebook 06 show the table.

The study is for torchvision's Mask R-CNN (arch "v1", "v2"): a Mask2Former checkpoint has no
NMS to replace, and is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import product
from pathlib import Path
from statistics import median
from typing import Any

import torch
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from seglib.core.config import POSTPROCESS_METHODS, TrainConfig, postprocess_applies
from seglib.core.runtime import images_to_device, prediction_dtype, synchronize
from seglib.data.dataset import collate_fn, open_split
from seglib.evaluation import occlusion
from seglib.evaluation.coco_ap import load_detections, mean_valid
from seglib.evaluation.coco_results import prepare, quiet, to_coco_results
from seglib.evaluation.prediction import predict
from seglib.models import builder, weights, zeroshot
from seglib.models.one_pass import box_nms_at, on_one_backbone_pass
from seglib.models.postprocess import PostProcessed, wrap
from seglib.models.precision import autocast_parts, predicts_in
from seglib.models.suppression import Settings
from seglib.studies.study import score_results

#: The parameter each rule is tuned over on val; the middle values are the published defaults.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "nms": {"box_nms_thresh": (0.4, 0.5, 0.6, 0.7)},
    "soft-nms-gaussian": {"soft_nms_sigma": (0.25, 0.5, 1.0)},
    "soft-nms-linear": {"soft_nms_thresh": (0.3, 0.5, 0.7)},
    "matrix-nms": {"matrix_nms_sigma": (1.0, 2.0, 4.0)},
    "mask-nms": {"mask_nms_thresh": (0.3, 0.5, 0.7)},
}
BASELINE = "baseline"


def variant_name(method: str, tta_hflip: bool) -> str:
    """``soft-nms-gaussian`` or ``soft-nms-gaussian + flip``."""
    return f"{method} + flip" if tta_hflip else method


def _grid(method: str, grids: Mapping[str, Mapping[str, Sequence[float]]]) -> list[dict]:
    names = list(grids[method])
    return [dict(zip(names, values, strict=True)) for values in product(*grids[method].values())]


# --- results ---------------------------------------------------------------------------------
def _loader(dataset: Any, batch_size: int) -> DataLoader:

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def sweep(
    model: torch.nn.Module,
    dataset: Any,
    settings: Mapping[str, Settings],
    device: torch.device | str,
    *,
    batch_size: int = 2,
    cpu_amp: str = "off",
) -> dict[str, list[dict[str, Any]]]:
    """COCO results of every named ``settings`` on ``dataset`` by a bare Mask R-CNN ``model``,
    at the precision ``cpu_amp`` asks for (``prediction.predict``'s argument).

    ``passthrough`` settings (box NMS, no flip) are the model's own output with its NMS at
    their ``box_nms_thresh``; the others come from the candidate pool of each view
    (``PostProcessed.candidates``, then ``select``). The thresholds and the pool's unflipped
    view share one backbone pass and box branch per batch (``one_pass.on_one_backbone_pass``).

    Returns:
        ``{name: results}`` in the format of ``seglib.evaluation.prediction.predict``, in ``settings``' order.
    """
    device = torch.device(device)
    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(f"sweep needs a bare torchvision Mask R-CNN, not {type(model).__name__}")
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    by_nms: dict[float, list[str]] = {}  # the passthrough settings, by box NMS threshold
    for name, s in settings.items():
        if s.passthrough:
            by_nms.setdefault(s.box_nms_thresh, []).append(name)
    pooled = {name: s for name, s in settings.items() if not s.passthrough}
    pool = PostProcessed(model, next(iter(pooled.values()))) if pooled else None
    flip = any(s.tta_hflip for s in pooled.values())
    heads: dict[Any, Callable] = {t: partial(box_nms_at, model, t) for t in by_nms}
    if pool is not None:
        heads["pool"] = pool.hooked  # its unflipped view, on the thresholds' backbone pass
    model.eval()
    with torch.inference_mode(), autocast_parts(model, prediction_dtype(device, cpu_amp)):
        for images, targets in _loader(dataset, batch_size):
            images = images_to_device(images, device)
            ids = [int(t["image_id"]) for t in targets]  # an int or a 0-d tensor
            outputs = on_one_backbone_pass(model, images, heads)
            for thresh, names in by_nms.items():
                found = [
                    r
                    for i, o in zip(ids, outputs[thresh], strict=True)
                    for r in to_coco_results(i, o, 0.0)
                ]
                for name in names:
                    out[name].extend(found)
            if pool is None:
                continue
            candidates = pool.candidates(images, tta_hflip=flip, unflipped=outputs["pool"])
            for image_id, cand in zip(ids, candidates, strict=True):
                cache: dict = {}
                for name, s in pooled.items():
                    out[name].extend(
                        to_coco_results(image_id, PostProcessed.select(cand, s, cache), 0.0)
                    )
    return out


def _segm_ap(gt: Any, results: list[dict]) -> float:
    """Mask AP (COCO, 0-1) of ``results`` over all of ``gt``; -1 without ground truth.

    Only the mask COCOeval that tuning needs (``coco_ap.evaluate_results`` also runs the box
    one and the IoU measures, on every grid point).
    """

    coco, dets = prepare(gt, results)
    if not dets:
        return 0.0 if coco.getAnnIds(iscrowd=False) else -1.0
    with quiet():
        evaluator = COCOeval(coco, load_detections(coco, dets, "segm"), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
    return mean_valid(evaluator.eval["precision"][:, :, :, 0, -1])


# --- timing ----------------------------------------------------------------------------------
def time_per_image(
    models: Mapping[str, torch.nn.Module],
    dataset: Any,
    device: torch.device | str,
    *,
    images: int = 4,
) -> dict[str, float]:
    """Median wall time in ms per image of each model, over the first ``images`` of ``dataset``.

    Round-robin: every model sees image 1, then every model image 2, and so on, after one
    warm-up round, so a change of machine load hits them all alike; CUDA is synchronised
    around each call. On a shared CPU the figures still move with the load: compare them
    within one run only.

    Returns:
        ``{name: ms}``; NaN for every model when the dataset is empty.
    """

    device = torch.device(device)
    picks = [dataset[i][0] for i in range(min(images, len(dataset)))]
    if not picks:
        return dict.fromkeys(models, float("nan"))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(images_to_device(picks[:1], device))
        for image in picks:
            batch = images_to_device([image], device)
            for name, model in models.items():
                synchronize(device)
                start = time.perf_counter()
                model(batch)
                synchronize(device)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: float(median(t)) for name, t in times.items()}


# --- the study -------------------------------------------------------------------------------
def _zero_shot_rows(
    archs: Sequence[str],
    categories: list[dict],
    test_ds: Any,
    device: torch.device,
    cpu_amp: str,
    **kw: Any,
) -> list[dict[str, Any]]:

    rows = []
    for arch in archs:
        name = f"zero-shot {arch}"
        path = weights.weights_file("coco", arch)
        if not path.is_file():
            rows.append(
                {
                    "name": name,
                    "skipped": f"COCO weights for {arch} are not cached ({path}); "
                    f"`python -m seglib fetch-weights coco --arch {arch}` fetches them",
                }
            )
            continue
        net = zeroshot.build_zero_shot_model(categories, arch=arch).to(device)
        results = predict(net, test_ds, device, cpu_amp=cpu_amp)  # its own output, as in 04
        rows.append({"name": name, "test": occlusion.occlusion_ap(test_ds.coco, results, **kw)})
    return rows


def _load(
    checkpoint: str | Path, subset_dir: str | Path, device: torch.device
) -> tuple[torch.nn.Module, TrainConfig, list[dict], Any, Any]:
    """The bare model of ``checkpoint`` and its config, both with the seed's suppression (box
    NMS, no flip) whatever rule the run stored; its categories; the val and test splits.

    Raises:
        ValueError: a Mask2Former checkpoint (no NMS for the variants to replace).
    """

    val_ds, test_ds = open_split(subset_dir, "val"), open_split(subset_dir, "test")
    net, cfg, categories = builder.model_from_checkpoint(
        checkpoint, device, categories=val_ds.categories
    )
    if not postprocess_applies(cfg.arch, tta_hflip=True):
        raise ValueError(
            f"{checkpoint} is a {cfg.arch} checkpoint: the occlusion study compares "
            "post-processing variants, and they cannot apply to it (it has no NMS to replace; "
            "seglib.core.config.postprocess_applies). Study a Mask R-CNN run (arch 'v1' or 'v2')"
        )
    base_cfg = cfg.replace(postprocess="nms", tta_hflip=False)
    return wrap(net, base_cfg), base_cfg, categories, val_ds, test_ds


def _variant_grids(
    base_cfg: TrainConfig,
    methods: Sequence[str],
    tta: Sequence[bool],
    grids: Mapping[str, Mapping[str, Sequence[float]]],
) -> dict[tuple[str, bool], dict[str, Settings]]:
    """Per variant ``(method, flip)``: ``{"<variant> <params>": Settings}`` of its grid points."""
    return {
        (m, f): {
            f"{variant_name(m, f)} {p}": Settings.from_config(
                base_cfg, postprocess=m, tta_hflip=f, **p
            )
            for p in _grid(m, grids)
        }
        for m in methods
        for f in tta
    }


def _tune_on_val(
    net: torch.nn.Module,
    val_ds: Any,
    base_cfg: TrainConfig,
    variant_grids: Mapping[tuple[str, bool], Mapping[str, Settings]],
    grids: Mapping[str, Mapping[str, Sequence[float]]],
    device: torch.device,
    batch_size: int,
) -> tuple[dict[str, Settings], dict[str, dict[str, Any]]]:
    """Every grid point of every variant on val (``sweep``); each variant's best.

    Returns:
        ``(chosen, rows)``, both keyed by variant name, baseline first: the Settings with the
        best val mask AP, and ``{"params", "val_grid", "val_mask_AP"}``.
    """
    chosen: dict[str, Settings] = {BASELINE: Settings.from_config(base_cfg)}
    flat = {BASELINE: chosen[BASELINE]}
    flat.update({key: s for grid in variant_grids.values() for key, s in grid.items()})
    val_results = sweep(
        net, val_ds, flat, device, batch_size=batch_size, cpu_amp=base_cfg.cpu_amp_eval
    )
    val_ap = {key: _segm_ap(val_ds.coco, res) for key, res in val_results.items()}
    rows: dict[str, dict[str, Any]] = {
        BASELINE: {
            "params": {"box_nms_thresh": base_cfg.box_nms_thresh},
            "val_grid": [],
            "val_mask_AP": val_ap[BASELINE],
        }
    }
    for (m, f), grid in variant_grids.items():
        best_key = max(grid, key=lambda k: val_ap[k])
        name, params = variant_name(m, f), _grid(m, grids)
        chosen[name] = grid[best_key]
        rows[name] = {
            "params": params[list(grid).index(best_key)],
            "val_grid": [
                {"params": p, "val_mask_AP": val_ap[k]} for p, k in zip(params, grid, strict=True)
            ],
            "val_mask_AP": val_ap[best_key],
        }
    return chosen, rows


def _test_variants(
    chosen: Mapping[str, Settings],
    rows: Mapping[str, Mapping[str, Any]],
    gt: Any,
    predictions: Mapping[str, list[dict]],
    score_thresh: float,
) -> list[dict[str, Any]]:
    """One row per variant: its settings, its val tuning, and on test the studies' scores
    (``study.score_results``): ``metrics`` and ``test`` (``occlusion_ap``)."""
    out = []
    for name, s in chosen.items():
        scored = score_results(gt, predictions[name], score_thresh)
        row = {"name": name, "postprocess": s.postprocess, "tta_hflip": s.tta_hflip, **rows[name]}
        out.append({**row, "metrics": scored["metrics"], "test": scored["occlusion"]})
    return out


def _time_variants(
    net: torch.nn.Module,
    chosen: Mapping[str, Settings],
    test_ds: Any,
    device: torch.device,
    images: int,
) -> dict[str, dict[str, float]]:
    """Per variant, end to end: ``{"ms_per_image", "extra_ms"}`` (over the baseline)."""
    models = {
        name: net if name == BASELINE else PostProcessed(net, s) for name, s in chosen.items()
    }
    ms = time_per_image(models, test_ds, device, images=images)
    return {name: {"ms_per_image": t, "extra_ms": t - ms[BASELINE]} for name, t in ms.items()}


def _best_on_val(variants: Sequence[Mapping[str, Any]]) -> str:
    """The name of the variant with the best val mask AP; the baseline when it is alone."""
    candidates = [v for v in variants if v["name"] != BASELINE]
    return max(candidates, key=lambda v: v["val_mask_AP"])["name"] if candidates else BASELINE


def run_study(
    checkpoint: str | Path,
    subset_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    methods: Sequence[str] = POSTPROCESS_METHODS,
    tta: Sequence[bool] = (False, True),
    grids: Mapping[str, Mapping[str, Sequence[float]]] = GRIDS,
    timing_images: int = 4,
    zero_shot_archs: Sequence[str] = ("v1", "v2"),
    batch_size: int = 2,
) -> dict[str, Any]:
    """Compare post-processing variants on the test split of ``subset_dir`` (module docstring).

    Args:
        checkpoint: a seglib checkpoint (``best.pt``); its config gives the baseline.
        subset_dir: the subset folder holding ``val.json`` and ``test.json``.
        methods, tta: the rules (``POSTPROCESS_METHODS``) and flip settings to try.
        grids: per rule, the values tried on val (``GRIDS``).
        timing_images: test images timed per variant (0 skips timing).
        zero_shot_archs: zero-shot COCO models to add as rows when their weights are cached.

    Returns:
        A JSON-able dict: ``checkpoint``, ``device``, ``heavy_from``, ``counts`` (per split
        and bucket), ``grids``, ``variants`` (list of ``{name, postprocess, tta_hflip,
        params, val_mask_AP, val_grid, test: occlusion_ap(...), ms_per_image, extra_ms}``,
        baseline first), ``best`` (the variant with the best val mask AP) and
        ``zero_shot``; plus ``predictions`` ``{variant name: test results}``, which
        ``save_study`` leaves out of the JSON.

    Raises:
        FileNotFoundError: the checkpoint or a split is missing.
        ValueError: an unknown method, a grid value TrainConfig rejects, or a Mask2Former
            checkpoint.
    """
    unknown = sorted(set(methods) - set(POSTPROCESS_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {POSTPROCESS_METHODS}")
    device = torch.device(device)
    net, base_cfg, categories, val_ds, test_ds = _load(checkpoint, subset_dir, device)
    variant_grids = _variant_grids(base_cfg, methods, tta, grids)
    chosen, rows = _tune_on_val(net, val_ds, base_cfg, variant_grids, grids, device, batch_size)
    amp = base_cfg.cpu_amp_eval
    predictions = sweep(net, test_ds, chosen, device, batch_size=batch_size, cpu_amp=amp)
    variants = _test_variants(chosen, rows, test_ds.coco, predictions, base_cfg.score_thresh)
    if timing_images > 0:
        timing = _time_variants(net, chosen, test_ds, device, timing_images)
        variants = [{**v, **timing[v["name"]]} for v in variants]
    zero_shot = _zero_shot_rows(
        zero_shot_archs, categories, test_ds, device, amp, score_thresh=base_cfg.score_thresh
    )
    return {
        "checkpoint": str(checkpoint),
        "seed": base_cfg.seed,
        "num_images": len(test_ds),
        "subset": str(subset_dir),
        "device": str(device),
        "precision": predicts_in(net, device, amp),
        "score_thresh": base_cfg.score_thresh,
        "heavy_from": occlusion.HEAVY_FROM,
        "counts": {
            "val": occlusion.bucket_counts(val_ds.coco),
            "test": occlusion.bucket_counts(test_ds.coco),
        },
        "grids": {m: {k: list(v) for k, v in grids[m].items()} for m in methods},
        "timing_images": timing_images,
        "variants": variants,
        "best": _best_on_val(variants),
        "zero_shot": zero_shot,
        "predictions": predictions,
    }
