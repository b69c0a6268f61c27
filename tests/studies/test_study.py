"""The study mechanism: contenders as config changes, seeds, reuse, and the summary."""

from __future__ import annotations

import json

import pytest

from seglib.core.config import TrainConfig
from seglib.studies import study
from seglib.studies.study import Contender


def test_a_contender_is_the_base_config_with_its_changes_and_the_seed():
    base = TrainConfig.smoke()
    cfg = study.contender_config(base, Contender("cp", {"copy_paste_prob": 0.5}), seed=2)
    assert (cfg.copy_paste_prob, cfg.seed) == (0.5, 2)
    assert cfg.replace(copy_paste_prob=base.copy_paste_prob, seed=base.seed) == base
    with pytest.raises(ValueError, match="'bad'.*copy_paste_prob"):
        study.contender_config(base, Contender("bad", {"copy_paste_prob": 2.0}), seed=0)
    with pytest.raises(ValueError, match="'s'.*seed"):
        study.contender_config(base, Contender("s", {"seed": 3}), seed=0)
    with pytest.raises(ValueError, match=r"'more'.*\['num_train'\].*one subset folder"):
        study.contender_config(base, Contender("more", {"num_train": 48}), seed=0)


def test_which_contenders_train():
    assert Contender("baseline").trains
    assert Contender("+cp", {"copy_paste_prob": 0.5}).trains
    assert Contender("m2f", {"arch": "mask2former", "lr": 1e-4}).trains
    assert not Contender("soft", {"postprocess": "soft-nms-gaussian"}).trains
    assert not Contender("flip", {"tta_hflip": True, "score_thresh": 0.3}).trains
    assert Contender("mixed", {"tta_hflip": True, "hflip_prob": 0.0}).trains


@pytest.mark.parametrize(
    ("names", "message"),
    [([], "at least one"), (["a", "b", "a"], r"\['a'\] repeat"), (["a/b"], "folders")],
)
def test_bad_contender_lists_are_refused(names, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        study.run_study(TrainConfig.smoke(), [Contender(n) for n in names], tmp_path, tmp_path)


def _row(ap: float, heavy: float, per_class: dict[str, float]) -> dict:
    bucket = lambda v: {"segm": {"AP": v}, "recall": 0.5}  # noqa: E731
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
    summary = study.summarize(result)
    base = summary["baseline"]
    assert base["mask AP"]["mean"] == pytest.approx(0.3)
    assert base["mask AP"]["std"] == pytest.approx(0.1)  # sample standard deviation
    assert (base["mask AP"]["min"], base["mask AP"]["max"], base["mask AP"]["n"]) == (0.2, 0.4, 3)
    assert base["mask AP50"]["mean"] == pytest.approx(0.6) and base["box AP"][
        "mean"
    ] == pytest.approx(0.4)
    assert base["mask AP heavy"]["mean"] == pytest.approx(0.2)
    assert base["mask AP cake"] == {"mean": 0.6, "std": 0.0, "min": 0.6, "max": 0.6, "n": 1}
    assert summary["+cp"]["mask AP cake"]["n"] == 0 and summary["+cp"]["mask AP"]["std"] == 0.0
    groups, means, spreads = study.study_series(summary, ["mask AP", "mask AP heavy"])
    assert groups == ["mask AP", "mask AP heavy"]
    assert means["+cp"] == [0.5, 0.4] and spreads["baseline"][0] == pytest.approx(0.1)
    table = study.study_table(result)
    lines = table.splitlines()
    assert lines[0].split()[0] == "contender" and "heavy" in lines[0]
    assert "30.0 ± 10.0" in lines[1] and lines[2].split()[1] == "50.0"
    assert "3 seeds [0, 1, 2]" in lines[-1] and "standard deviation" in lines[-1]


@pytest.mark.slow
def test_each_contender_trains_once_per_seed_and_settings_apply_to_its_model(
    synthetic_subset, tmp_path
):
    base = TrainConfig.smoke(num_epochs=1, eval_interval=1, device="cpu")
    contenders = [
        Contender("baseline"),
        Contender("soft-nms", {"postprocess": "soft-nms-gaussian"}, note="post-processing"),
    ]
    events = []
    result = study.run_study(
        base,
        contenders,
        synthetic_subset,
        tmp_path / "study",
        seeds=(0, 1),
        callback=lambda event, payload: events.append(
            (event, payload.get("contender"), payload.get("seed"))
        ),
    )
    rows = result["contenders"]
    assert list(rows) == ["baseline", "soft-nms"] and result["num_images"] == 4
    for seed in (0, 1):
        base_run = tmp_path / "study" / "baseline" / f"seed-{seed}"
        assert rows["baseline"]["seeds"][seed]["trained"] and (base_run / "last.pt").is_file()
        assert json.loads((base_run / "config.json").read_text())["seed"] == seed
        soft = rows["soft-nms"]["seeds"][seed]
        assert soft["run"] == str(base_run) and not soft["trained"]  # applied, not trained
    assert not (tmp_path / "study" / "soft-nms").exists()
    # the same model, another suppression rule: the scores may differ, the run does not
    for name in rows:
        for row in rows[name]["seeds"].values():
            assert 0 <= row["metrics"]["segm"]["AP"] <= 1
            assert set(row["occlusion"]) == {"all", "none", "partial", "heavy"}
    assert ("scored", "soft-nms", 1) in events and ("iter", "baseline", 1) in events
    assert json.loads((tmp_path / "study" / study.STUDY_JSON).read_text())["seeds"] == [0, 1]

    # again, with the first study's runs offered: only what changes learning trains
    again = study.run_study(
        base,
        [*contenders, Contender("no-flip", {"hflip_prob": 0.0})],
        synthetic_subset,
        tmp_path / "again",
        seeds=(0,),
        reusable=[tmp_path / "study" / "baseline" / "seed-0"],
    )
    trained = {n: c["seeds"][0]["trained"] for n, c in again["contenders"].items()}
    assert trained == {"baseline": False, "soft-nms": False, "no-flip": True}
    assert (
        again["contenders"]["baseline"]["seeds"][0]["metrics"]
        == rows["baseline"]["seeds"][0]["metrics"]
    )


def test_a_settings_only_contender_without_its_model_is_refused(synthetic_subset, tmp_path):
    with pytest.raises(ValueError, match="'soft'.*put the contender that trains it"):
        study.run_study(
            TrainConfig.smoke(),
            [Contender("soft", {"postprocess": "soft-nms-gaussian"})],
            synthetic_subset,
            tmp_path,
        )
