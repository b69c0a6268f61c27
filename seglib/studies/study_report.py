"""A study's report: mean and spread over seeds, as a text table and as series for ``viz``.

``seed_scores`` flattens one (contender, seed) of ``study.run_study``'s result;
``summarize`` turns the seeds into mean, spread (sample standard deviation), min and max of
each score, which ``study_table`` lays out as text, ``study_series`` hands to ``viz`` as bars
with error bars and ``curve_series`` as curves over training-set size. Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import mean, stdev
from typing import Any

from seglib.evaluation.occlusion import ROWS


def seed_scores(row: Mapping[str, Any]) -> dict[str, float]:
    """The scores of one (contender, seed), flat: ``{"mask AP", "mask AP50", "box AP",
    "mask AP <class>", "mask AP <bucket>", "mask AP50 <bucket>", "heavy recall"}``; 0-1, -1
    where undefined."""
    segm = row["metrics"]["segm"]
    out = {
        "mask AP": segm["AP"],
        "mask AP50": segm["AP50"],
        "box AP": row["metrics"]["bbox"]["AP"],
    }
    out.update({f"mask AP {name}": v["AP"] for name, v in segm["per_class"].items()})
    occ = row["occlusion"]
    out.update({f"mask AP {bucket}": occ[bucket]["segm"]["AP"] for bucket in ROWS[1:]})
    out.update({f"mask AP50 {bucket}": occ[bucket]["segm"]["AP50"] for bucket in ROWS[1:]})
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


def curve_series(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    x: Mapping[str, float],
    scores: Sequence[str],
) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """``(x, means, spreads)`` with one series per score over the contenders named in ``x``
    (contender -> its x, e.g. training-set size), in increasing x; for a curve with error
    bars (``viz.charts.plot_score_curves``)."""
    names = sorted(x, key=x.__getitem__)
    means = {k: [summary[n][k]["mean"] for n in names] for k in scores}
    spreads = {k: [summary[n][k]["std"] for n in names] for k in scores}
    return [x[n] for n in names], means, spreads


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
    widths = [max(width, len(s) + 2) for s in scores]
    lines = [
        f"{'contender':<{w}}" + "".join(f"{s:>{n}}" for s, n in zip(scores, widths, strict=True))
    ]
    for name, stats in summary.items():
        cells = (f"{_cell(stats[s]):>{n}}" for s, n in zip(scores, widths, strict=True))
        lines.append(f"{name:<{w}}" + "".join(cells))
    n = len(study["seeds"])
    lines.append(
        f"{study['split']} split, {study['num_images']} images; {n} seed{'s' * (n != 1)} "
        f"{study['seeds']}" + ("; mean ± sample standard deviation" if n > 1 else "")
    )
    return "\n".join(lines)
