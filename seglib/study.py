"""The occlusion study: does better post-processing help where objects overlap?

``run_study`` takes a trained checkpoint and its subset and compares, on the test split, the
seed's suppression (box NMS at the trained ``box_nms_thresh``) with every rule of
``seglib.postprocess``, each with and without horizontal-flip TTA:

1. The model runs **once** per image and view, with its own NMS off
   (``PostProcessed.candidates``); every rule and parameter is then applied to those same
   candidates, so the grid costs post-processing time, not model time.
2. Each variant's parameter is **tuned on val** (``GRIDS``, mask AP), never on test.
3. On **test**, each variant gets box and mask AP overall and per occlusion bucket, with
   recall and best-match IoU (``seglib.occlusion.occlusion_ap``).
4. **Time**: each variant runs end to end (``PostProcessed``) on a few test images, one at a
   time, round-robin with the baseline after a warm-up round; ``extra_ms`` is its median per
   image minus the baseline's (``bench/bench_postprocess.py`` does the same at COCO size).
5. The zero-shot COCO models (v1, v2) get a row each when their weights are cached, and a
   stated reason otherwise.

``save_study`` writes ``occlusion_study.json`` and ``occlusion_study.txt`` (``format_study``)
atomically. The library prints nothing; the CLI and notebook 06 show the table.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader

from seglib import occlusion
from seglib.config import POSTPROCESS_METHODS, TrainConfig
from seglib.io import write_bytes_atomic, write_json_atomic
from seglib.postprocess import PostProcessed, Settings

#: The parameter each rule is tuned over on val; the middle values are the published defaults.
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "nms": {"box_nms_thresh": (0.4, 0.5, 0.6, 0.7)},
    "soft-nms-gaussian": {"soft_nms_sigma": (0.25, 0.5, 1.0)},
    "soft-nms-linear": {"soft_nms_thresh": (0.3, 0.5, 0.7)},
    "matrix-nms": {"matrix_nms_sigma": (1.0, 2.0, 4.0)},
    "mask-nms": {"mask_nms_thresh": (0.3, 0.5, 0.7)},
}
BASELINE = "baseline"
JSON_NAME, TABLE_NAME = "occlusion_study.json", "occlusion_study.txt"


def variant_name(method: str, tta_hflip: bool) -> str:
    """``soft-nms-gaussian`` or ``soft-nms-gaussian + flip``."""
    return f"{method} + flip" if tta_hflip else method


def _grid(method: str, grids: Mapping[str, Mapping[str, Sequence[float]]]) -> list[dict]:
    names = list(grids[method])
    return [dict(zip(names, values, strict=True)) for values in product(*grids[method].values())]


# --- results ---------------------------------------------------------------------------------
def _image_id(target: Any) -> int:
    value = target["image_id"]
    return int(value.item() if torch.is_tensor(value) else value)


def to_results(image_id: int, det: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One image's detections as COCO results (every score; masks thresholded at 0.5).

    Args:
        det: ``boxes`` [N,4] XYXY px, ``labels`` [N] (the split's category ids), ``scores``
            [N], ``masks`` float [N,1,H,W].
    """
    from seglib.inference import masks_to_host

    if det["scores"].numel() == 0:
        return []
    boxes = det["boxes"]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rles = mask_utils.encode(np.asfortranarray(masks_to_host(det["masks"]).transpose(1, 2, 0)))
    return [
        {
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [float(v) for v in box],
            "score": float(score),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        }
        for box, label, score, rle in zip(
            xywh, det["labels"].tolist(), det["scores"].tolist(), rles, strict=True
        )
    ]


def _loader(dataset: Any, batch_size: int) -> DataLoader:
    from seglib.dataset import collate_fn

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def sweep(
    model: torch.nn.Module,
    dataset: Any,
    settings: Mapping[str, Settings],
    device: torch.device | str,
    *,
    batch_size: int = 2,
) -> dict[str, list[dict[str, Any]]]:
    """COCO results of every named ``settings`` on ``dataset``, from one model pass per view.

    Returns:
        ``{name: results}`` in the format of ``seglib.inference.predict``.
    """
    from seglib.inference import images_to_device

    device = torch.device(device)
    flip = any(s.tta_hflip for s in settings.values())
    first = next(iter(settings.values()))
    pooled = PostProcessed(model, first)
    model.eval()
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    with torch.inference_mode():
        for images, targets in _loader(dataset, batch_size):
            candidates = pooled.candidates(images_to_device(images, device), tta_hflip=flip)
            for target, cand in zip(targets, candidates, strict=True):
                image_id, cache = _image_id(target), {}
                for name, s in settings.items():
                    out[name].extend(to_results(image_id, PostProcessed.select(cand, s, cache)))
    return out


def _segm_ap(gt: Any, results: list[dict]) -> float:
    """Mask AP (COCO, 0-1) of ``results`` over all of ``gt``; -1 without ground truth.

    Only the mask COCOeval that tuning needs (``metrics.evaluate_results`` also runs the box
    one and the IoU measures, on every grid point).
    """
    from seglib.metrics import load_ground_truth, load_results

    coco = load_ground_truth(copy.deepcopy(load_ground_truth(gt).dataset))
    dets = [{k: v for k, v in r.items() if k != "bbox"} for r in load_results(results, coco)]
    if not dets:
        return 0.0 if coco.getAnnIds(iscrowd=False) else -1.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(dets), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


# --- timing ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    from seglib.inference import images_to_device

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
                _sync(device)
                start = time.perf_counter()
                model(batch)
                _sync(device)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: float(median(t)) for name, t in times.items()}


# --- the study -------------------------------------------------------------------------------
def _zero_shot_rows(
    archs: Sequence[str], categories: list[dict], test_ds: Any, device: torch.device, **kw: Any
) -> list[dict[str, Any]]:
    from seglib import model as models

    rows = []
    for arch in archs:
        name = f"zero-shot {arch}"
        path = models.weights_file("coco", arch)
        if not path.is_file():
            rows.append(
                {
                    "name": name,
                    "skipped": f"COCO weights for {arch} are not cached ({path}); "
                    f"`python -m seglib fetch-weights coco --arch {arch}` fetches them",
                }
            )
            continue
        net = models.build_zero_shot_model(categories, arch=arch).to(device)
        settings = Settings.from_config(TrainConfig(arch=arch))
        results = sweep(net, test_ds, {name: settings}, device)[name]
        rows.append({"name": name, "test": occlusion.occlusion_ap(test_ds.coco, results, **kw)})
    return rows


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
        ValueError: an unknown method, or a grid value TrainConfig rejects.
    """
    from seglib.dataset import open_split
    from seglib.model import model_from_checkpoint
    from seglib.postprocess import wrap

    unknown = sorted(set(methods) - set(POSTPROCESS_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {POSTPROCESS_METHODS}")
    device = torch.device(device)
    val_ds, test_ds = open_split(subset_dir, "val"), open_split(subset_dir, "test")
    net, cfg, categories = model_from_checkpoint(checkpoint, device, categories=val_ds.categories)
    base_cfg = cfg.replace(postprocess="nms", tta_hflip=False)
    net = wrap(net, base_cfg)  # the bare model, whatever rule the run's config stored
    metric_kw = {"score_thresh": cfg.score_thresh}

    # 1-2. Every grid point on val, from one pass; pick each variant's best.
    specs = {
        (m, f): {
            f"{variant_name(m, f)} {p}": Settings.from_config(
                base_cfg, postprocess=m, tta_hflip=f, **p
            )
            for p in _grid(m, grids)
        }
        for m in methods
        for f in tta
    }
    chosen: dict[str, Settings] = {BASELINE: Settings.from_config(base_cfg)}
    flat = {BASELINE: chosen[BASELINE]}
    flat.update({key: s for grid in specs.values() for key, s in grid.items()})
    val_results = sweep(net, val_ds, flat, device, batch_size=batch_size)
    val_ap = {key: _segm_ap(val_ds.coco, res) for key, res in val_results.items()}
    rows: dict[str, dict[str, Any]] = {
        BASELINE: {"params": {"box_nms_thresh": cfg.box_nms_thresh}, "val_grid": []}
    }
    for (m, f), grid in specs.items():
        best_key = max(grid, key=lambda k: val_ap[k])
        name = variant_name(m, f)
        chosen[name] = grid[best_key]
        params = _grid(m, grids)
        rows[name] = {
            "params": params[list(grid).index(best_key)],
            "val_grid": [
                {"params": p, "val_mask_AP": val_ap[k]} for p, k in zip(params, grid, strict=True)
            ],
        }
    rows[BASELINE]["val_mask_AP"] = val_ap[BASELINE]
    for name in chosen:
        if name != BASELINE:
            rows[name]["val_mask_AP"] = max(g["val_mask_AP"] for g in rows[name]["val_grid"])

    # 3. Test, each variant at its chosen parameters.
    predictions = sweep(net, test_ds, chosen, device, batch_size=batch_size)
    variants = []
    for name, s in chosen.items():
        variants.append(
            {
                "name": name,
                "postprocess": s.postprocess,
                "tta_hflip": s.tta_hflip,
                **rows[name],
                "test": occlusion.occlusion_ap(test_ds.coco, predictions[name], **metric_kw),
            }
        )

    # 4. Time per image, end to end, against the baseline.
    if timing_images > 0:
        models = {
            name: net if name == BASELINE else PostProcessed(net, s) for name, s in chosen.items()
        }
        ms = time_per_image(models, test_ds, device, images=timing_images)
        for row in variants:
            row["ms_per_image"] = ms[row["name"]]
            row["extra_ms"] = ms[row["name"]] - ms[BASELINE]
    candidates = [v for v in variants if v["name"] != BASELINE]
    best = max(candidates, key=lambda v: v["val_mask_AP"])["name"] if candidates else BASELINE

    return {
        "checkpoint": str(checkpoint),
        "subset": str(subset_dir),
        "device": str(device),
        "score_thresh": cfg.score_thresh,
        "heavy_from": occlusion.HEAVY_FROM,
        "counts": {
            "val": occlusion.bucket_counts(val_ds.coco),
            "test": occlusion.bucket_counts(test_ds.coco),
        },
        "grids": {m: {k: list(v) for k, v in grids[m].items()} for m in methods},
        "timing_images": timing_images,
        "variants": variants,
        "best": best,
        "zero_shot": _zero_shot_rows(zero_shot_archs, categories, test_ds, device, **metric_kw),
        "predictions": predictions,
    }


# --- reporting -------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return f"{100 * value:6.1f}" if value is not None and value >= 0 else "     -"


def format_study(study: Mapping[str, Any]) -> str:
    """The study as a fixed-width table (percent; '-' where a bucket has no instance).

    Columns: box and mask AP overall, mask AP per bucket, recall of heavy instances, the
    tuned parameter, and extra time per image against the baseline.
    """
    counts = study["counts"]["test"]
    head = (
        f"{'variant':<26}{'box AP':>7}{'mask AP':>8}"
        + "".join(f"{b[:7]:>8}" for b in occlusion.BUCKETS)
        + f"{'heavy R':>8}{'+ms/img':>9}  tuned on val"
    )
    sub = (
        f"{'':<26}{'':>7}{'':>8}"
        + "".join(f"{'n=' + str(counts[b]):>8}" for b in occlusion.BUCKETS)
        + f"{'':>8}{'':>9}"
    )
    lines = [head, sub]
    for row in study["variants"]:
        t = row["test"]
        extra = row.get("extra_ms")
        params = ", ".join(f"{k}={v:g}" for k, v in row["params"].items())
        lines.append(
            f"{row['name'][:26]:<26}{_pct(t['all']['bbox']['AP']):>7} {_pct(t['all']['segm']['AP']):>7}"
            + "".join(f"  {_pct(t[b]['segm']['AP'])}" for b in occlusion.BUCKETS)
            + f"  {_pct(t['heavy']['recall'])}"
            + (f"{extra:>+9.1f}" if extra is not None else f"{'-':>9}")
            + f"  {params}"
        )
    for row in study.get("zero_shot", []):
        if "skipped" in row:
            lines.append(f"{row['name']:<26}skipped: {row['skipped']}")
        else:
            t = row["test"]
            lines.append(
                f"{row['name'][:26]:<26}{_pct(t['all']['bbox']['AP']):>7} {_pct(t['all']['segm']['AP']):>7}"
                + "".join(f"  {_pct(t[b]['segm']['AP'])}" for b in occlusion.BUCKETS)
                + f"  {_pct(t['heavy']['recall'])}"
            )
    lines.append(
        f"mask AP per bucket: COCO's area-range rule with occlusion buckets "
        f"(heavy: level >= {study['heavy_from']:g}); heavy R: recall at mask IoU 0.5, "
        f"score >= {study['score_thresh']:g}; best on val: {study['best']}"
    )
    return "\n".join(lines)


def save_study(study: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``occlusion_study.json`` (without predictions) and ``occlusion_study.txt`` atomically."""
    out_dir = Path(out_dir)
    data = {k: v for k, v in study.items() if k != "predictions"}
    return {
        "json": write_json_atomic(out_dir / JSON_NAME, data),
        "table": write_bytes_atomic(out_dir / TABLE_NAME, (format_study(study) + "\n").encode()),
    }


def changed_images(
    gt: Any,
    before: list[dict],
    after: list[dict],
    *,
    score_thresh: float = 0.5,
    n: int = 4,
) -> list[tuple[int, float]]:
    """Images where two prediction sets differ most, by the change of per-image best-match IoU.

    Per image, the mean over its non-crowd instances of the best-match mask IoU
    (``metrics.best_ious``, predictions scoring >= ``score_thresh``); ranked by the absolute
    change from ``before`` to ``after``, largest first, then by image id. Unchanged images
    come last rather than not at all, so a gallery always has something to show.

    Returns:
        ``[(image_id, change), ...]``, change = after - before.
    """
    from seglib.metrics import best_ious, load_ground_truth

    coco = load_ground_truth(copy.deepcopy(load_ground_truth(gt).dataset))
    a = best_ious(coco, before, score_thresh=score_thresh)
    b = best_ious(coco, after, score_thresh=score_thresh)
    per_image: dict[int, list[float]] = defaultdict(list)
    for ann_id in a:
        per_image[coco.anns[ann_id]["image_id"]].append(b[ann_id] - a[ann_id])
    changes = [(image_id, float(np.mean(v))) for image_id, v in per_image.items()]
    return sorted(changes, key=lambda c: (-abs(c[1]), c[0]))[:n]
