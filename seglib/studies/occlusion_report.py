"""The occlusion study's report: its table, its two files, and the images a variant changed.

``format_study`` lays out what ``seglib.studies.occlusion_study.run_study`` returns as a fixed-width table;
``save_study`` writes it with the study's JSON (predictions left out), atomically;
``changed_images`` picks the images where two prediction sets differ most, for notebook 06's
before/after overlays. Nothing here
prints.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seglib.core.atomic import write_bytes_atomic, write_json_atomic
from seglib.evaluation import occlusion
from seglib.evaluation.coco_results import load_ground_truth
from seglib.evaluation.iou_measures import best_ious

JSON_NAME, TABLE_NAME = "occlusion_study.json", "occlusion_study.txt"


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
        f"score >= {study['score_thresh']:g}; best on val: {study['best']}; "
        f"predicted in {study.get('precision', 'fp32')} on {study['device']}"
    )
    return "\n".join(lines)


def as_study(result: Mapping[str, Any]) -> dict[str, Any]:
    """``occlusion_study.run_study``'s test scores as a ``study.run_study`` record: one
    contender per variant (its rule, flip and tuned parameters as changes, applied to the
    checkpoint's model) and one seed, the checkpoint's. ``study_report`` then lays it out as
    the other studies, so 06's table reads like 07's and 08's."""
    contenders = {
        v["name"]: {
            "changes": {
                "postprocess": v["postprocess"],
                "tta_hflip": v["tta_hflip"],
                **v["params"],
            },
            "note": f"tuned on val: {v['params']}",
            "trains": False,
            "zero_shot": False,
            "seeds": {result["seed"]: {"metrics": v["metrics"], "occlusion": v["test"]}},
        }
        for v in result["variants"]
    }
    return {
        "split": "test",
        "num_images": result["num_images"],
        "seeds": [result["seed"]],
        "contenders": contenders,
    }


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
    (``iou_measures.best_ious``, predictions scoring >= ``score_thresh``); ranked by the absolute
    change from ``before`` to ``after``, largest first, then by image id. Unchanged images
    come last rather than not at all, so a gallery always has something to show.

    Returns:
        ``[(image_id, change), ...]``, change = after - before.
    """

    coco = load_ground_truth(copy.deepcopy(load_ground_truth(gt).dataset))
    a = best_ious(coco, before, score_thresh=score_thresh)
    b = best_ious(coco, after, score_thresh=score_thresh)
    per_image: dict[int, list[float]] = defaultdict(list)
    for ann_id in a:
        per_image[coco.anns[ann_id]["image_id"]].append(b[ann_id] - a[ann_id])
    changes = [(image_id, float(np.mean(v))) for image_id, v in per_image.items()]
    return sorted(changes, key=lambda c: (-abs(c[1]), c[0]))[:n]
