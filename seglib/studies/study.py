"""One study mechanism for every axis: named contenders, each a change to one config, over seeds.

A study is a base ``TrainConfig``, a list of ``Contender``s and the seeds to repeat them with.
``run_study`` gives every contender the same data, budget and evaluator:

- a contender whose changes touch what is learned (augmentation, optimizer, architecture,
  ...) is trained once per seed with ``trainer.train``, unless a finished run
  already trained exactly that config (``finished_runs.finished_run_of``: the notebook 03 run,
  or another contender of the same study), which is then reused;
- a contender whose changes are all ``finished_runs.NOT_LEARNED`` (post-processing,
  thresholds, flip TTA) trains nothing: it applies its settings to the model that its
  learned fields name, trained for the same seed;
- a ``zero_shot`` contender trains nothing either: it is the unmodified COCO model of its
  ``arch``, scored once and shown for every seed;
- a contender that changes the data (``DATA_FIELDS``: the data curve's ``num_train``) trains
  on its own subset folder (``run_study``'s ``data_dirs``), whose scored split must hold the
  same images as the study's;
- every (contender, seed) is scored by one evaluator, ``evaluate_model``: box and mask AP
  overall and per class (``coco_ap.evaluate_results``), AP per occlusion bucket
  (``occlusion.occlusion_ap``), parameters, inference time per image and, on CUDA, peak
  memory; its results file keeps COCO's category ids.

Notebook 07's model-family comparison (``family_comparison``) and notebook 08's augmentation
and data studies (``axes``) are uses of ``run_study``; notebook 06 tunes post-processing on
val and hands its test scores over in the same record (``occlusion_report.as_study``).

``seglib.studies.study_report`` turns the seeds into mean and spread of each score, as text
and as the series ``viz`` draws with error bars. Nothing here prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.paths import RunFolder
from seglib.core.runtime import resolve_device, synchronize
from seglib.data.dataset import open_split
from seglib.engine.runlog import read_metrics
from seglib.engine.trainer import Callback, train
from seglib.evaluation.coco_ap import evaluate_results
from seglib.evaluation.coco_results import write_results
from seglib.evaluation.occlusion import occlusion_ap
from seglib.evaluation.prediction import predict
from seglib.models.builder import model_from_checkpoint
from seglib.models.checkpoint import drop_training_state
from seglib.models.mask2former import build_zero_shot_mask2former
from seglib.models.precision import predicts_in
from seglib.models.zeroshot import build_zero_shot_model
from seglib.studies.finished_runs import NOT_LEARNED, finished_run_of

#: Fields that say which data a run trained on. A contender that changes one trains on a
#: subset folder of its own (``run_study``'s ``data_dirs``); without one, the change would be
#: recorded in its config and not done, so it is refused.
DATA_FIELDS = frozenset(
    {
        "data_source",
        "categories",
        "num_train",
        "num_val",
        "num_test",
        "synthetic_images",
        "synthetic_size",
        "synthetic_heavy_share",
    }
)
#: The file ``run_study`` writes in its output folder.
STUDY_JSON = "study.json"


@dataclass(frozen=True)
class Contender:
    """One row of a study: ``changes`` to the study's base config (none for the baseline).

    ``note`` is what a reader must know about the row ("post-processing only", ...).
    ``zero_shot``: the unmodified COCO model of the changed config's ``arch`` (its weights
    must be cached), evaluated as it is.
    """

    name: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    zero_shot: bool = False

    @property
    def trains(self) -> bool:
        """False for a zero-shot row, and when it changes something and every change is
        ``NOT_LEARNED``: the row then applies settings to a model another row trains. The
        baseline (no change) trains."""
        if self.zero_shot:
            return False
        return not self.changes or not set(self.changes) <= NOT_LEARNED


def contender_config(
    base: TrainConfig, contender: Contender, seed: int, *, own_data: bool = False
) -> TrainConfig:
    """``base`` with the contender's changes and ``seed``.

    Args:
        own_data: the contender trains on a subset folder of its own, so it may change
            ``DATA_FIELDS``.

    Raises:
        ValueError: a change ``TrainConfig`` rejects, naming the contender, a change of
            ``seed`` (the study sets it), or of a ``DATA_FIELDS`` field without ``own_data``.
    """
    if "seed" in contender.changes:
        raise ValueError(f"contender {contender.name!r} changes seed; the study's seeds set it")
    data = sorted(DATA_FIELDS & set(contender.changes))
    if data and not own_data:
        raise ValueError(
            f"contender {contender.name!r} changes {data} but has no subset folder of its "
            "own (run_study's data_dirs), so the change would not happen"
        )
    try:
        return base.replace(**contender.changes, seed=seed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"contender {contender.name!r}: {e}") from e


def _check_names(contenders: Sequence[Contender]) -> None:
    names = [c.name for c in contenders]
    if not names:
        raise ValueError("a study needs at least one contender")
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"contender names must differ; {doubled} repeat")
    bad = [n for n in names if not n or "/" in n or n.startswith(".")]
    if bad:
        raise ValueError(f"contender names name folders: {bad} cannot")


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


def predict_timed(
    model: nn.Module, dataset: Any, device: torch.device, cpu_amp: str = "off"
) -> tuple[list[dict], dict[str, Any]]:
    """``prediction.predict`` one image at a time (at ``cpu_amp``), timed after one warm-up.

    Returns:
        (COCO results, {"time_per_image": s, "peak_memory_mb": CUDA peak or None, "precision":
        "bf16" or "fp32", what the model ran in}). The time is end to end: the forward pass,
        post-processing and RLE encoding of every image.
    """
    predict(model, Subset(dataset, [0]), device, batch_size=1, cpu_amp=cpu_amp)  # warm-up
    _reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    results = predict(model, dataset, device, batch_size=1, cpu_amp=cpu_amp)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return results, {
        "time_per_image": elapsed / len(dataset),
        "peak_memory_mb": _peak_mb(device),
        "precision": predicts_in(model, device, cpu_amp),
    }


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    score_thresh: float,
    results_file: str | Path,
    cpu_amp: str = "off",
) -> dict[str, Any]:
    """Every study's evaluator: ``{"params", "time_per_image", "peak_memory_mb", "precision",
    "metrics" (box and mask AP overall, per class and size), "occlusion" (AP per occlusion
    bucket), "results" (path)}`` of ``model`` on ``dataset``; the results file has COCO's ids."""
    params = count_parameters(model)
    results, timing = predict_timed(model, dataset, device, cpu_amp)
    return {
        "params": params,
        **timing,
        **score_results(dataset.coco, results, score_thresh),
        "results": str(write_results(results_file, results, dataset.categories)),
    }


def score_results(gt: Any, results: list[dict], score_thresh: float) -> dict[str, Any]:
    """The evaluator's scores of in-memory ``results`` against ``gt`` (a COCO object):
    ``{"metrics": evaluate_results, "occlusion": occlusion_ap}``, both at ``score_thresh``
    where they report a thresholded measure (mean IoU, recall)."""
    return {
        "metrics": evaluate_results(gt, results, score_thresh=score_thresh),
        "occlusion": occlusion_ap(gt, results, score_thresh=score_thresh),
    }


def build_zero_shot(cfg: TrainConfig, categories: list[dict]) -> nn.Module:
    """The unmodified COCO model of ``cfg.arch``, reporting only ``categories``."""
    if cfg.arch == "mask2former":
        return build_zero_shot_mask2former(categories, cfg)
    return build_zero_shot_model(categories, cfg.arch, cfg)


def training_cost(run_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """What training ``run_dir`` cost, read from its log: ``{"iterations",
    "train_time_per_image" (s, data loading included), "validations"}``."""
    logged = read_metrics(run_dir)
    rows = [r for r in logged if "loss" in r]
    iterations = max((r["iteration"] for r in rows), default=0)
    return {
        "iterations": iterations,
        "train_time_per_image": sum(r["time"] for r in rows) / max(1, iterations * cfg.batch_size),
        "validations": sum(1 for r in logged if "segm_AP" in r),
    }


def _split_images(data_dir: Path, split: str) -> list[int]:
    path = data_dir / f"{split}.json"
    try:
        return sorted(image["id"] for image in json.loads(path.read_text())["images"])
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: the contender's subset is not built"
        ) from None


def _check_data_dirs(
    contenders: Sequence[Contender], data_dir: Path, data_dirs: Mapping[str, Path], split: str
) -> None:
    """Every folder of ``data_dirs`` belongs to a contender and scores the same ``split``."""
    unknown = sorted(set(data_dirs) - {c.name for c in contenders})
    if unknown:
        raise ValueError(f"data_dirs names no contender: {unknown}")
    wanted = _split_images(data_dir, split)
    for name, folder in data_dirs.items():
        if _split_images(folder, split) != wanted:
            raise ValueError(
                f"contender {name!r}: {folder / (split + '.json')} holds other images than "
                f"{data_dir / (split + '.json')}; every contender is scored on the same split"
            )


def run_study(
    base: TrainConfig,
    contenders: Sequence[Contender],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    split: str = "test",
    reusable: Sequence[str | Path] = (),
    data_dirs: Mapping[str, str | Path] | None = None,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train or apply every contender for every seed, and score each on ``split``.

    Runs and results go to ``out_dir/<contender>/seed-<seed>/`` (a zero-shot contender's
    results to ``out_dir/<contender>/``). The result is written to ``out_dir/study.json``.

    Args:
        base: the config every contender changes; its ``seed`` is replaced by ``seeds``.
        data_dir: the subset folder (train, val and ``split``), the same for every row.
        reusable: finished run folders to reuse where one trained a contender's config
            already (notebook 03's runs); earlier contenders of this study are reused too.
        data_dirs: a subset folder per contender that changes ``DATA_FIELDS``; its
            ``split`` must hold the same images as ``data_dir``'s.
        callback: ``callback(event, payload)``: the engine's events with ``contender`` and
            ``seed`` added, and ("scored", {"contender", "seed", **the row}).
    Returns:
        ``{"split", "num_images", "categories", "seeds", "base" (config dict), "contenders":
        {name: {"changes", "note", "trains", "zero_shot", "seeds": {seed: {"run" (None for
        zero-shot), "trained" (by this call), "train_s", "iterations",
        "train_time_per_image", "validations", "train_peak_memory_mb", and
        ``evaluate_model``'s keys}}}}}``.

    Raises:
        ValueError: a bad contender list, change or data folder (see ``contender_config``).
    """
    _check_names(contenders)
    if not seeds:
        raise ValueError("a study needs at least one seed")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    folders = {name: Path(p) for name, p in (data_dirs or {}).items()}
    for contender in contenders:  # every change checked before anything trains
        contender_config(base, contender, seeds[0], own_data=contender.name in folders)
    _check_data_dirs(contenders, data_dir, folders, split)
    dataset = open_split(data_dir, split)
    keys = ("note", "trains", "zero_shot")
    rows = {c.name: {"changes": dict(c.changes), "seeds": {}} for c in contenders}
    for c in contenders:
        rows[c.name].update({k: getattr(c, k) for k in keys})
    for seed in seeds:
        own_runs = [out_dir / c.name / f"seed-{seed}" for c in contenders if c.trains]
        for contender in contenders:
            cfg = contender_config(base, contender, seed, own_data=contender.name in folders)
            done = rows[contender.name]["seeds"]
            if contender.zero_shot and done:  # one COCO model, whatever the seed
                row = {**next(iter(done.values())), "trained": False}
            else:
                row = _score_contender(
                    cfg,
                    contender,
                    seed,
                    (split, dataset),
                    folders.get(contender.name, data_dir),
                    out_dir,
                    [*map(Path, reusable), *own_runs],
                    callback,
                )
            done[seed] = row
            if callback is not None:
                callback("scored", {"contender": contender.name, "seed": seed, **row})
    out = {
        "split": split,
        "num_images": len(dataset),
        "categories": dataset.categories,
        "seeds": list(seeds),
        "base": base.to_dict(),
        "contenders": rows,
    }
    write_json_atomic(out_dir / STUDY_JSON, out)
    return out


def _score_contender(
    cfg: TrainConfig,
    contender: Contender,
    seed: int,
    scored: tuple[str, Any],
    data_dir: Path,
    out_dir: Path,
    candidates: list[Path],
    callback: Callback | None,
) -> dict[str, Any]:
    """One (contender, seed): its model trained, reused, applied or built, then evaluated on
    ``scored`` (split name, dataset)."""
    split, dataset = scored
    device = resolve_device(cfg.device)
    if contender.zero_shot:
        model = build_zero_shot(cfg, dataset.categories).to(device)
        row: dict[str, Any] = {"run": None, "trained": False, "train_s": 0.0, "iterations": 0}
        row.update(train_time_per_image=None, validations=0, train_peak_memory_mb=None)
        results_dir = out_dir / contender.name
    else:
        row = _train_or_reuse(cfg, contender, seed, data_dir, out_dir, candidates, callback)
        model, _, _ = model_from_checkpoint(
            RunFolder(Path(row["run"])).last_checkpoint,
            device,
            categories=dataset.categories,
            config=cfg,
        )
        results_dir = out_dir / contender.name / f"seed-{seed}"
    row.update(
        evaluate_model(
            model,
            dataset,
            device,
            cfg.score_thresh,
            results_dir / f"{split}_results.json",
            cfg.cpu_amp_eval,
        )
    )
    return row


def _train_or_reuse(
    cfg: TrainConfig,
    contender: Contender,
    seed: int,
    data_dir: Path,
    out_dir: Path,
    candidates: list[Path],
    callback: Callback | None,
) -> dict[str, Any]:
    """The run that holds ``cfg``'s model: a finished one of ``candidates``, or one trained now
    into ``out_dir/<contender>/seed-<seed>`` (then kept as ``last.pt`` without the optimizer
    state, and no ``best.pt``: about 170 MB for Mask R-CNN R50-FPN, not 700). Returns ``{"run", "trained", "train_s",
    "train_peak_memory_mb", **training_cost}``."""
    run = finished_run_of(cfg, candidates)
    if run is not None:
        return {
            "run": str(run),
            "trained": False,
            "train_s": 0.0,
            "train_peak_memory_mb": None,
            **training_cost(run, cfg),
        }
    if not contender.trains:
        raise ValueError(
            f"contender {contender.name!r} changes only settings applied to a trained "
            f"model, and no run trained its model for seed {seed}: put the contender "
            "that trains it (the baseline) first"
        )
    run = out_dir / contender.name / f"seed-{seed}"
    device = resolve_device(cfg.device)
    _reset_peak(device)
    start = time.perf_counter()
    train(cfg, data_dir, run, callback=_relay(callback, contender.name, seed))
    # A study scores last.pt and never resumes: its model alone is kept (a third of the disk)
    RunFolder(run).best_checkpoint.unlink(missing_ok=True)
    drop_training_state(RunFolder(run).last_checkpoint)
    return {
        "run": str(run),
        "trained": True,
        "train_s": time.perf_counter() - start,
        "train_peak_memory_mb": _peak_mb(device),
        **training_cost(run, cfg),
    }


def _relay(callback: Callback | None, name: str, seed: int) -> Callback | None:
    if callback is None:
        return None
    return lambda event, payload: callback(event, {**payload, "contender": name, "seed": seed})


def runs_of(result: Mapping[str, Any], contender: str) -> list[Path]:
    """The run folders that hold ``contender``'s models in a ``run_study`` result, one per
    seed (to offer to another study as ``reusable``)."""
    seeds = result["contenders"][contender]["seeds"].values()
    return [Path(row["run"]) for row in seeds if row["run"] is not None]
