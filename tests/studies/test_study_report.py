"""The study's report: mean and spread over seeds, the table and the series."""

from __future__ import annotations

import pytest

from seglib.studies import study_report


def _row(ap: float, heavy: float, per_class: dict[str, float]) -> dict:
    bucket = lambda v: {"segm": {"AP": v, "AP50": 2 * v}, "recall": 0.5}  # noqa: E731
    return {
        "metrics": {
            "segm": {
                "AP": ap,
                "AP50": 2 * ap,
                "per_class": {k: {"AP": v} for k, v in per_class.items()},
            },
            "bbox": {"AP": ap + 0.1},
        },
        "occlusion": {
            "all": bucket(ap),
            "none": bucket(ap),
            "partial": bucket(ap),
            "heavy": bucket(heavy),
        },
    }


def test_summary_is_mean_and_sample_spread_over_seeds_leaving_out_undefined_scores():
    result = {
        "split": "test",
        "num_images": 4,
        "seeds": [0, 1, 2],
        "contenders": {
            "baseline": {
                "seeds": {
                    0: _row(0.2, 0.1, {"dog": 0.3, "cake": -1.0}),
                    1: _row(0.3, 0.2, {"dog": 0.5, "cake": -1.0}),
                    2: _row(0.4, 0.3, {"dog": 0.4, "cake": 0.6}),
                }
            },
            "+cp": {"seeds": {0: _row(0.5, 0.4, {"dog": 0.5, "cake": -1.0})}},
        },
    }
    summary = study_report.summarize(result)
    base = summary["baseline"]
    assert base["mask AP"]["mean"] == pytest.approx(0.3)
    assert base["mask AP"]["std"] == pytest.approx(0.1)  # sample standard deviation
    assert (base["mask AP"]["min"], base["mask AP"]["max"], base["mask AP"]["n"]) == (0.2, 0.4, 3)
    assert base["mask AP50"]["mean"] == pytest.approx(0.6) and base["box AP"][
        "mean"
    ] == pytest.approx(0.4)
    assert base["mask AP heavy"]["mean"] == pytest.approx(0.2)
    assert base["mask AP50 heavy"]["mean"] == pytest.approx(0.4)
    assert base["mask AP cake"] == {"mean": 0.6, "std": 0.0, "min": 0.6, "max": 0.6, "n": 1}
    assert summary["+cp"]["mask AP cake"]["n"] == 0 and summary["+cp"]["mask AP"]["std"] == 0.0
    groups, means, spreads = study_report.study_series(summary, ["mask AP", "mask AP heavy"])
    assert groups == ["mask AP", "mask AP heavy"]
    assert means["+cp"] == [0.5, 0.4] and spreads["baseline"][0] == pytest.approx(0.1)
    table = study_report.study_table(result)
    lines = table.splitlines()
    assert lines[0].split()[0] == "contender" and "heavy" in lines[0]
    assert "30.0 ± 10.0" in lines[1] and lines[2].split()[1] == "50.0"
    assert "3 seeds [0, 1, 2]" in lines[-1] and "standard deviation" in lines[-1]


def test_curve_series_orders_contenders_by_x():
    summary = {
        name: {"mask AP50": {"mean": m, "std": sd, "min": m, "max": m, "n": 3}}
        for name, m, sd in (("big", 0.6, 0.05), ("small", 0.2, 0.1), ("mid", 0.4, 0.0))
    }
    x = {"small": 10, "big": 40, "mid": 20}
    xs, means, spreads = study_report.curve_series(summary, x, ["mask AP50"])
    assert xs == [10, 20, 40]
    assert means == {"mask AP50": [0.2, 0.4, 0.6]} and spreads == {"mask AP50": [0.1, 0.0, 0.05]}
