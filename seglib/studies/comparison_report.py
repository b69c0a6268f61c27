"""A comparison's report: text tables, the series ``viz`` plots, and the results read back.

``comparison_tables`` lays ``seglib.studies.family_comparison.compare_models``'s summary out as text;
``ap_series`` and ``occlusion_series`` feed ``charts.plot_grouped_scores``, and
``models_without_scores`` names the models whose bars there would all be empty;
``most_occluded`` picks the images to draw; ``read_contender_results`` reads each model's results file
back in the split's labels. Nothing here
prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seglib.evaluation.coco_results import read_results
from seglib.evaluation.occlusion import most_occluded_images


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None and value >= 0 else "-"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def comparison_tables(summary: Mapping[str, Any]) -> dict[str, str]:
    """Fixed-width text tables of ``compare_models``'s summary, in percent ("-" = undefined).

    Returns:
        ``{"overall": box/mask AP, AP50, params, times, memory; "per_class": mask AP per
        class; "occlusion": mask AP (and box AP) per occlusion bucket, with instance counts}``;
        with no model compared, each says so (the summary's ``skipped`` says why).
    """
    models = summary["models"]
    if not models:
        return dict.fromkeys(("overall", "per_class", "occlusion"), "no model compared")
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

    For ``charts.plot_grouped_scores``.
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


def models_without_scores(summary: Mapping[str, Any], iou_type: str = "segm") -> list[str]:
    """The models whose every score in ``ap_series`` and ``occlusion_series`` is 0 or undefined.

    Their bars in the comparison's charts have no height: a model that learned nothing in its
    budget shows nothing, however full the other models' bars are.
    """
    scores: dict[str, list[float]] = {name: [] for name in summary["models"]}
    for series in (ap_series, occlusion_series):
        for name, values in series(summary, iou_type)[1].items():
            scores[name] += [v for v in values if v is not None]
    return [name for name, values in scores.items() if not any(v > 0 for v in values)]


def most_occluded(dataset: Any, n: int = 3) -> list[int]:
    """``n`` image ids of ``dataset``, those with the most heavily occluded instances first.

    Falls back to partially occluded, then to any images, so it returns ``min(n, len)`` ids.
    """

    ids: list[int] = []
    for bucket in ("heavy", "partial", "none"):
        ids += [i for i in most_occluded_images(dataset.coco, n=n, bucket=bucket) if i not in ids]
    ids += [i for i in dataset.ids if i not in ids]
    return ids[:n]


def read_contender_results(summary: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Each model's COCO results on the split, read back from its results file.

    The files carry COCO's category ids; they come back in the split's labels 1..k (as
    ``prediction.predict`` returns them and ``viz`` draws them), through the summary's
    ``categories``. A summary without ``categories`` comes from before the files carried
    COCO's ids, so its files are read as they are.

    Raises:
        ValueError: a file's category ids are not the COCO ids of the split's categories.
    """

    categories = summary.get("categories")
    if categories is None:
        return {
            name: json.loads(Path(m["results"]).read_text())
            for name, m in summary["models"].items()
        }
    gt = {"images": [], "annotations": [], "categories": list(categories)}
    return {name: read_results(m["results"], gt) for name, m in summary["models"].items()}
