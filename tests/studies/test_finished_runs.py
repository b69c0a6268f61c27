"""seglib.studies.finished_runs: a finished run of the same config is reused, never retrained."""

import pytest

from seglib.core.config import TrainConfig
from seglib.engine.trainer import train
from seglib.studies import family_comparison
from seglib.studies.finished_runs import finished_run_of


@pytest.fixture(scope="module")
def finished(synthetic_subset, tmp_path_factory):
    """A one-epoch Mask R-CNN run on the synthetic subset: (its config, its folder)."""
    cfg = TrainConfig.smoke(num_epochs=1, eval_interval=1)
    run = tmp_path_factory.mktemp("runs") / "r1"
    train(cfg, synthetic_subset, run)
    return cfg, run


@pytest.mark.slow
def test_only_a_run_of_the_same_data_recipe_budget_and_seed_matches(finished, tmp_path):
    cfg, run = finished
    assert finished_run_of(cfg, [tmp_path / "nothing", run]) == run
    # how it is run, logged or used at inference does not change what it learned
    same = cfg.replace(device="auto", eval_interval=3, log_interval=7, score_thresh=0.9)
    assert finished_run_of(same.replace(postprocess="mask-nms", tta_hflip=True), [run]) == run
    for changed in (
        {"lr": 0.01},
        {"seed": 1},
        {"num_epochs": 2},
        {"norm": "bn"},
        {"box_batch_size_per_image": 32},
    ):
        assert finished_run_of(cfg.replace(**changed), [run]) is None, changed


@pytest.mark.slow
def test_a_run_stopped_before_its_last_epoch_is_not_reused(synthetic_subset, tmp_path):
    cfg = TrainConfig.smoke(num_epochs=2, max_iters=3)
    train(cfg, synthetic_subset, tmp_path / "cut")
    assert finished_run_of(cfg, [tmp_path / "cut"]) is None


@pytest.mark.slow
def test_the_comparison_evaluates_the_finished_run_and_says_so(
    finished, synthetic_subset, tmp_path, monkeypatch
):
    cfg, run = finished

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(family_comparison.study, "train", no_training)
    contender = family_comparison.Contender("mask-rcnn-v1", cfg.replace(device="cpu"))
    summary = family_comparison.compare_models(
        [contender], synthetic_subset, tmp_path, reusable=[run]
    )
    row = summary["models"]["mask-rcnn-v1"]
    assert row["reused_from"] == str(run) and row["iterations"] == 6  # 12 images, batch 2
    assert row["train_time_per_image"] > 0 and 0 <= row["metrics"]["segm"]["AP"] <= 1
    with pytest.raises(AssertionError, match="trained again"):  # without the run: it trains
        family_comparison.compare_models([contender], synthetic_subset, tmp_path / "b")
