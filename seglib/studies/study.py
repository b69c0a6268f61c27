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
- every (contender, seed) is scored on one split: box and mask AP overall and per class
  (``coco_ap.evaluate_results``) and AP per occlusion bucket (``occlusion.occlusion_ap``).

``summarize`` turns the seeds into mean, spread (sample standard deviation), min and max of
each score, which ``study_table`` lays out as text and ``study_series`` hands to ``viz`` as
bars with error bars. Nothing here prints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import torch

from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.core.paths import RunFolder
from seglib.core.runtime import resolve_device
from seglib.data.dataset import open_split
from seglib.engine.trainer import Callback, train
from seglib.evaluation.coco_ap import evaluate_results
from seglib.evaluation.occlusion import ROWS, occlusion_ap
from seglib.evaluation.prediction import predict
from seglib.models.builder import model_from_checkpoint
from seglib.studies.finished_runs import NOT_LEARNED, finished_run_of

#: Fields that say which data a run trained on. Every contender trains on the study's one
#: subset folder, so a change to one of these would be recorded in its config and not done.
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
    """

    name: str
    changes: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def trains(self) -> bool:
        """False when it changes something and every change is ``NOT_LEARNED``: the row then
        applies settings to a model another row trains. The baseline (no change) trains."""
        return not self.changes or not set(self.changes) <= NOT_LEARNED


def contender_config(base: TrainConfig, contender: Contender, seed: int) -> TrainConfig:
    """``base`` with the contender's changes and ``seed``.

    Raises:
        ValueError: a change ``TrainConfig`` rejects, naming the contender, a change of
            ``seed`` (the study sets it), or of a ``DATA_FIELDS`` field (the study's data is
            one subset folder).
    """
    if "seed" in contender.changes:
        raise ValueError(f"contender {contender.name!r} changes seed; the study's seeds set it")
    data = sorted(DATA_FIELDS & set(contender.changes))
    if data:
        raise ValueError(
            f"contender {contender.name!r} changes {data}: every contender trains on the "
            "study's one subset folder, so a data change would not happen"
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


def _scores(model: torch.nn.Module, dataset: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The study's evaluator: COCO AP overall and per class, and AP per occlusion bucket."""
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    results = predict(model, dataset, device)
    infer_s = time.perf_counter() - start
    return {
        "metrics": evaluate_results(dataset.coco, results, score_thresh=cfg.score_thresh),
        "occlusion": occlusion_ap(dataset.coco, results, score_thresh=cfg.score_thresh),
        "infer_s_per_image": infer_s / max(1, len(dataset)),
    }


def run_study(
    base: TrainConfig,
    contenders: Sequence[Contender],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    split: str = "test",
    reusable: Sequence[str | Path] = (),
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train or apply every contender for every seed, and score each on ``split``.

    Runs go to ``out_dir/<contender>/seed-<seed>/``; a contender that trains nothing has no
    folder. The result is written to ``out_dir/study.json`` as well.

    Args:
        base: the config every contender changes; its ``seed`` is replaced by ``seeds``.
        data_dir: the subset folder (train, val and ``split``), the same for every row.
        reusable: finished run folders to reuse where one trained a contender's config
            already (notebook 03's runs); earlier contenders of this study are reused too.
        callback: ``callback(event, payload)``: the engine's events with ``contender`` and
            ``seed`` added, and ("scored", {"contender", "seed", "trained", "run"}).

    Returns:
        ``{"split", "num_images", "seeds", "base" (config dict), "contenders": {name:
        {"changes", "note", "trains", "seeds": {seed: {"run", "trained" (this call),
        "train_s", "metrics", "occlusion", "infer_s_per_image"}}}}}``.

    Raises:
        ValueError: a bad contender list or change (see ``contender_config``).
    """
    _check_names(contenders)
    if not seeds:
        raise ValueError("a study needs at least one seed")
    for contender in contenders:  # every change checked before anything trains
        contender_config(base, contender, seeds[0])
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    dataset = open_split(data_dir, split)
    rows: dict[str, Any] = {
        c.name: {"changes": dict(c.changes), "note": c.note, "trains": c.trains, "seeds": {}}
        for c in contenders
    }
    for seed in seeds:
        own_runs = [out_dir / c.name / f"seed-{seed}" for c in contenders if c.trains]
        for contender in contenders:
            cfg = contender_config(base, contender, seed)
            row = _train_or_reuse(
                cfg, contender, seed, data_dir, out_dir, [*map(Path, reusable), *own_runs], callback
            )
            model, _, _ = model_from_checkpoint(
                RunFolder(Path(row["run"])).last_checkpoint,
                resolve_device(cfg.device),
                categories=dataset.categories,
                config=cfg,
            )
            row.update(_scores(model, dataset, cfg))
            rows[contender.name]["seeds"][seed] = row
            if callback is not None:
                callback("scored", {"contender": contender.name, "seed": seed, **row})
            del model
    out = {
        "split": split,
        "num_images": len(dataset),
        "seeds": list(seeds),
        "base": base.to_dict(),
        "contenders": rows,
    }
    write_json_atomic(out_dir / STUDY_JSON, out)
    return out


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
    into ``out_dir/<contender>/seed-<seed>``. Returns ``{"run", "trained", "train_s"}``."""
    run = finished_run_of(cfg, candidates)
    if run is not None:
        return {"run": str(run), "trained": False, "train_s": 0.0}
    if not contender.trains:
        raise ValueError(
            f"contender {contender.name!r} changes only settings applied to a trained "
            f"model, and no run trained its model for seed {seed}: put the contender "
            "that trains it (the baseline) first"
        )
    run = out_dir / contender.name / f"seed-{seed}"
    start = time.perf_counter()
    train(cfg, data_dir, run, callback=_relay(callback, contender.name, seed))
    return {"run": str(run), "trained": True, "train_s": time.perf_counter() - start}


def _relay(callback: Callback | None, name: str, seed: int) -> Callback | None:
    if callback is None:
        return None
    return lambda event, payload: callback(event, {**payload, "contender": name, "seed": seed})


# --- summaries ----------------------------------------------------------------------------
def seed_scores(row: Mapping[str, Any]) -> dict[str, float]:
    """The scores of one (contender, seed), flat: ``{"mask AP", "mask AP50", "box AP",
    "mask AP <class>", "mask AP <bucket>", "heavy recall"}``; 0-1, -1 where undefined."""
    segm = row["metrics"]["segm"]
    out = {
        "mask AP": segm["AP"],
        "mask AP50": segm["AP50"],
        "box AP": row["metrics"]["bbox"]["AP"],
    }
    out.update({f"mask AP {name}": v["AP"] for name, v in segm["per_class"].items()})
    out.update({f"mask AP {bucket}": row["occlusion"][bucket]["segm"]["AP"] for bucket in ROWS[1:]})
    out["heavy recall"] = row["occlusion"]["heavy"]["recall"]
    return out


def _spread(values: list[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value), min, max and n of the defined values."""
    defined = [v for v in values if v is not None and v >= 0]
    if not defined:
        return {"mean": -1.0, "std": 0.0, "min": -1.0, "max": -1.0, "n": 0}
    return {
        "mean": mean(defined),
        "std": stdev(defined) if len(defined) > 1 else 0.0,
        "min": min(defined),
        "max": max(defined),
        "n": len(defined),
    }


def summarize(study: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{contender: {score: {"mean", "std", "min", "max", "n"}}}`` over the study's seeds.

    Scores are those of ``seed_scores``; a score undefined for a seed (no instance of that
    class or bucket in the split) is left out of its statistics, and ``n`` counts the rest.
    """
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for name, row in study["contenders"].items():
        per_seed = [seed_scores(r) for r in row["seeds"].values()]
        keys = list(per_seed[0]) if per_seed else []
        out[name] = {k: _spread([s[k] for s in per_seed]) for k in keys}
    return out


def study_series(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], scores: Sequence[str]
) -> tuple[list[str], dict[str, list[float]], dict[str, list[float]]]:
    """``(groups, means, spreads)`` of ``scores`` for every contender, for grouped bars with
    error bars (0-1; -1 mean where undefined)."""
    means = {n: [s[k]["mean"] for k in scores] for n, s in summary.items()}
    spreads = {n: [s[k]["std"] for k in scores] for n, s in summary.items()}
    return list(scores), means, spreads


def _cell(stat: Mapping[str, float]) -> str:
    if stat["n"] == 0 or stat["mean"] < 0:
        return "-"
    if stat["n"] == 1:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def study_table(
    study: Mapping[str, Any], scores: Sequence[str] | None = None, *, width: int = 14
) -> str:
    """The summary as a fixed-width table in percent: mean ± standard deviation over seeds.

    ``scores`` default to mask AP, mask AP50, box AP and mask AP per occlusion bucket.
    """
    summary = summarize(study)
    scores = list(scores or ["mask AP", "mask AP50", "box AP"] + [f"mask AP {b}" for b in ROWS[1:]])
    w = max([len(n) for n in summary] + [9]) + 2
    lines = [f"{'contender':<{w}}" + "".join(f"{s:>{width}}" for s in scores)]
    for name, stats in summary.items():
        lines.append(f"{name:<{w}}" + "".join(f"{_cell(stats[s]):>{width}}" for s in scores))
    n = len(study["seeds"])
    lines.append(
        f"{study['split']} split, {study['num_images']} images; {n} seed{'s' * (n != 1)} "
        f"{study['seeds']}" + ("; mean ± sample standard deviation" if n > 1 else "")
    )
    return "\n".join(lines)
