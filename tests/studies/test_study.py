"""The study mechanism: contenders as config changes, seeds, reuse, and the summary."""

from __future__ import annotations

import json

import pytest

from seglib.core.config import TrainConfig
from seglib.models.checkpoint import load_checkpoint
from seglib.studies import study, study_report
from seglib.studies.study import Contender

FP32 = {"cpu_amp_eval": "off"}


def test_a_contender_is_the_base_config_with_its_changes_and_the_seed():
    base = TrainConfig.smoke()
    cfg = study.contender_config(base, Contender("cp", {"copy_paste_prob": 0.5}), seed=2)
    assert (cfg.copy_paste_prob, cfg.seed) == (0.5, 2)
    assert cfg.replace(copy_paste_prob=base.copy_paste_prob, seed=base.seed) == base
    with pytest.raises(ValueError, match="'bad'.*copy_paste_prob"):
        study.contender_config(base, Contender("bad", {"copy_paste_prob": 2.0}), seed=0)
    with pytest.raises(ValueError, match="'s'.*seed"):
        study.contender_config(base, Contender("s", {"seed": 3}), seed=0)
    with pytest.raises(ValueError, match=r"'more'.*\['num_train'\].*no subset folder of its own"):
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


@pytest.mark.slow
def test_each_contender_trains_once_per_seed_and_settings_apply_to_its_model(
    synthetic_subset, tmp_path
):
    base = TrainConfig.smoke(num_epochs=1, eval_interval=1, device="cpu", cpu_amp_eval="bf16")
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
        # the model alone is kept: no best.pt, no optimizer state
        assert not (base_run / "best.pt").exists()
        assert load_checkpoint(base_run / "last.pt")["optimizer"] is None
        assert json.loads((base_run / "config.json").read_text())["seed"] == seed
        soft = rows["soft-nms"]["seeds"][seed]
        assert soft["run"] == str(base_run) and not soft["trained"]  # applied, not trained
    assert not list((tmp_path / "study" / "soft-nms").rglob("*.pt"))  # results only
    assert study.runs_of(result, "soft-nms") == study.runs_of(result, "baseline")
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
        [*contenders, Contender("no-flip", {"hflip_prob": 0.0}), Contender("fp32", FP32)],
        synthetic_subset,
        tmp_path / "again",
        seeds=(0,),
        reusable=[tmp_path / "study" / "baseline" / "seed-0"],
    )
    trained = {n: c["seeds"][0]["trained"] for n, c in again["contenders"].items()}
    assert trained == {"baseline": False, "soft-nms": False, "no-flip": True, "fp32": False}
    # the precision prediction ran in is recorded per row; cpu_amp_eval changes no learning
    bf16 = again["contenders"]["baseline"]["seeds"][0]
    assert (
        bf16["precision"] == "bf16"
        and again["contenders"]["fp32"]["seeds"][0]["precision"] == "fp32"
    )
    assert again["contenders"]["fp32"]["seeds"][0]["run"] == bf16["run"]
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


def test_a_data_folder_must_score_the_same_images(synthetic_coco, synthetic_subset, tmp_path):
    from seglib.data.subset import build_subset

    other = tmp_path / "other"  # another test split: scores would not compare
    build_subset(synthetic_coco, other, num_train=6, num_val=6, num_test=5, progress=False)
    more = Contender("more", {"num_train": 6})
    with pytest.raises(ValueError, match=r"'more'.*other/test.json holds other images"):
        study.run_study(
            TrainConfig.smoke(), [more], synthetic_subset, tmp_path / "s", data_dirs={"more": other}
        )
    with pytest.raises(ValueError, match=r"data_dirs names no contender: \['less'\]"):
        study.run_study(
            TrainConfig.smoke(),
            [Contender("baseline")],
            synthetic_subset,
            tmp_path / "s",
            data_dirs={"less": other},
        )
    assert not (tmp_path / "s").exists()  # refused before anything ran


def test_a_zero_shot_row_is_built_and_scored_once_for_every_seed(
    synthetic_subset, tmp_path, monkeypatch, oracle_model
):
    from seglib.data.dataset import open_split

    test = open_split(synthetic_subset, "test")

    built = []
    monkeypatch.setattr(
        study, "build_zero_shot", lambda cfg, cats: built.append(cfg) or oracle_model(test)
    )
    result = study.run_study(
        TrainConfig.smoke(device="cpu"),
        [Contender("coco", {"weights": "coco", "norm": "bn"}, zero_shot=True)],
        synthetic_subset,
        tmp_path,
        seeds=(0, 1, 2),
    )
    assert [cfg.weights for cfg in built] == ["coco"]  # one COCO model, whatever the seed
    rows = result["contenders"]["coco"]
    assert rows["zero_shot"] and not rows["trains"]
    assert [r["run"] for r in rows["seeds"].values()] == [None] * 3
    assert all(r["metrics"]["segm"]["AP"] == pytest.approx(1.0) for r in rows["seeds"].values())
    assert (tmp_path / "coco" / "test_results.json").is_file()
    assert study_report.summarize(result)["coco"]["mask AP"]["std"] == 0.0
