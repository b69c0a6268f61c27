import json

import pytest

from seglib.core.config import TrainConfig
from seglib.data.annotations import SubsetError
from seglib.studies import axes, study


def test_the_ablation_is_baseline_jitter_paste_and_both_over_the_config():
    cfg = TrainConfig.smoke()  # neither on: the seed recipe's flip and crop
    rows = axes.augmentation_contenders(cfg)
    assert [r.name for r in rows] == ["baseline", "scale-jitter", "copy-paste", "both"]
    assert rows[0].changes == {}  # the profile's own config: notebook 03's run, when it matches
    assert rows[1].changes == {"scale_jitter": axes.SCALE_JITTER}
    assert rows[2].changes == {"copy_paste_prob": axes.COPY_PASTE_PROB}
    assert rows[3].changes == {
        "scale_jitter": axes.SCALE_JITTER,
        "copy_paste_prob": axes.COPY_PASTE_PROB,
    }
    assert all(r.trains for r in rows)
    assert "50% of images" in rows[2].note and "standard" in rows[3].note
    # a config with them on: the baseline switches them off, the "+" rows take its values
    on = cfg.replace(scale_jitter="large", copy_paste_prob=0.8)
    rows = axes.augmentation_contenders(on)
    assert on.replace(**rows[0].changes) == cfg
    assert on.replace(**rows[3].changes) == on == axes.augmented(on)
    assert on.replace(**rows[2].changes).scale_jitter == "none"
    assert axes.augmented(cfg).copy_paste_prob == axes.COPY_PASTE_PROB


def test_the_budget_and_seeds_come_from_the_config():
    cfg = TrainConfig.smoke(study_epochs=2, study_seeds=3, seed=5)
    base = axes.study_base(cfg)
    assert (base.num_epochs, base.eval_interval) == (2, 2)
    assert axes.study_seeds(cfg) == (5, 6, 7)
    assert axes.study_base(cfg.replace(study_epochs=None)).num_epochs == cfg.num_epochs


def test_each_size_gets_its_subset_with_the_same_val_and_test_and_about_the_same_steps(
    synthetic_coco, tmp_path
):
    cfg = TrainConfig.smoke(num_train=12, num_val=6, num_test=4, num_epochs=4)
    cfg = cfg.replace(study_sizes=(3, 6, 12))
    contenders, folders = axes.data_contenders(cfg, synthetic_coco, tmp_path)
    assert [c.name for c in contenders] == ["train-3", "train-6", "train-12"]
    assert [c.changes for c in contenders] == [
        {"num_train": 3, "num_epochs": 16},
        {"num_train": 6, "num_epochs": 8},
        {},  # the subset's own size: the baseline itself
    ]
    assert set(folders) == {"train-3", "train-6"} and axes.curve_x(cfg)["train-6"] == 6
    # the baseline recipe at every size, whatever augmentation the base config sets
    on = cfg.replace(copy_paste_prob=0.5, scale_jitter="large")
    curve, _ = axes.data_contenders(on, synthetic_coco, tmp_path)
    baseline = axes.augmentation_contenders(on)[0]
    assert curve[-1].changes == baseline.changes
    assert on.replace(**curve[0].changes) == cfg.replace(num_train=3, num_epochs=16)
    for name, n in (("train-3", 3), ("train-6", 6)):
        assert folders[name] == tmp_path / name
        assert len(json.loads((folders[name] / "train.json").read_text())["images"]) == n
    # the same val and test images as the full subset: run_study checks it, and accepts them
    full = tmp_path / "full"
    axes._subset_for(cfg, 12, synthetic_coco, full)
    for split in ("val", "test"):
        ids = {name: study._split_images(folder, split) for name, folder in folders.items()}
        assert ids["train-3"] == ids["train-6"] == study._split_images(full, split)
    study._check_data_dirs(contenders, full, folders, "test")


def test_a_size_the_source_cannot_hold_is_refused_with_the_count(synthetic_coco, tmp_path):
    cfg = TrainConfig.smoke(num_train=12, num_val=6, num_test=4, study_sizes=(12, 500))
    with pytest.raises(SubsetError, match="500"):
        axes.data_contenders(cfg, synthetic_coco, tmp_path)
