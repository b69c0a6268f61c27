"""seglib.studies.family_comparison: who is compared, the same budget for each, and the tables and series."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from seglib.core.config import TrainConfig
from seglib.models import mask2former_weights
from seglib.studies import comparison_report, family_comparison

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed (pip install -r requirements-detr.txt)",
)


@pytest.fixture
def weights_present(monkeypatch):
    """Pretend which weights are cached: ``weights_present(maskrcnn=..., m2f=...)``."""

    def set_(maskrcnn: bool, m2f_cached: bool, transformers: bool = True) -> None:
        monkeypatch.setattr(
            family_comparison, "_maskrcnn_weights_cached", lambda kind, arch: maskrcnn
        )
        monkeypatch.setattr(
            mask2former_weights, "pretrained_available", lambda source=None: m2f_cached
        )
        if not transformers:

            def missing():
                raise mask2former_weights.MissingDependencyError(
                    f"needs transformers: {mask2former_weights.INSTALL_HINT}"
                )

            monkeypatch.setattr(mask2former_weights, "require_transformers", missing)

    return set_


# --- planning --------------------------------------------------------------------------------
def test_offline_plan_trains_v1_and_tiny_mask2former_on_one_recipe(weights_present):
    weights_present(maskrcnn=False, m2f_cached=False)
    cfg = TrainConfig.smoke()
    plan = family_comparison.plan_comparison(cfg)
    assert [c.name for c in plan.contenders] == ["mask-rcnn-v1", "mask2former"]
    v1, m2f = (c.cfg for c in plan.contenders)
    assert (v1.arch, m2f.arch, m2f.weights, m2f.m2f_config) == ("v1", "mask2former", "none", "tiny")
    # only the architecture differs: same data, schedule, optimizer and budget
    same = {k: v for k, v in v1.to_dict().items() if k != "arch"}
    assert same == {k: v for k, v in m2f.to_dict().items() if k != "arch"}
    assert "TINY RANDOM CONFIG" in plan.contenders[1].note
    skipped = " ".join(plan.skipped)
    assert "mask-rcnn-v2" in skipped and "zero-shot-mask-rcnn-v1" in skipped
    assert "zero-shot-mask2former" in skipped


def test_seed_plan_adds_v2_and_zero_shot_baselines_when_cached(weights_present):
    weights_present(maskrcnn=True, m2f_cached=True)
    plan = family_comparison.plan_comparison(TrainConfig())
    names = [c.name for c in plan.contenders]
    assert names == [
        "mask-rcnn-v1",
        "zero-shot-mask-rcnn-v1",
        "mask-rcnn-v2",
        "zero-shot-mask-rcnn-v2",
        "mask2former",
        "zero-shot-mask2former",
    ]
    m2f = plan.contenders[4]
    assert (m2f.cfg.weights, m2f.cfg.m2f_config, m2f.train) == ("coco", "swin-tiny", True)
    assert not plan.contenders[5].train and not plan.skipped


def test_missing_pieces_are_left_out_with_the_fix(weights_present):
    weights_present(maskrcnn=True, m2f_cached=False)
    plan = family_comparison.plan_comparison(TrainConfig(), archs=("mask2former",))
    assert plan.contenders == []
    assert "fetch-weights mask2former" in plan.skipped[0]
    weights_present(maskrcnn=False, m2f_cached=True, transformers=False)
    plan = family_comparison.plan_comparison(TrainConfig(), archs=("v1", "mask2former"))
    assert plan.contenders == []
    text = " ".join(plan.skipped)
    assert "fetch-weights coco --arch v1" in text and "requirements-detr.txt" in text
    with pytest.raises(ValueError, match="arch must be one of"):
        family_comparison.plan_comparison(TrainConfig(), archs=("v3",))


def test_overrides_are_applied_and_noted(weights_present):
    weights_present(maskrcnn=False, m2f_cached=False)
    plan = family_comparison.plan_comparison(
        TrainConfig.smoke(),
        archs=("mask2former",),
        overrides={"mask2former": {"lr": 0.005}},
        min_contenders=1,
    )
    (m2f,) = plan.contenders
    assert m2f.cfg.lr == 0.005 and "overrides" in m2f.note


# --- the base install: no transformers ------------------------------------------------------
@pytest.fixture
def without_transformers(monkeypatch):
    """The base install, whatever this environment holds: ``import transformers`` raises
    ImportError (a None entry in sys.modules makes the import statement fail)."""
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError):
        import transformers  # noqa: F401


def test_without_the_detr_extra_offline_nothing_is_compared_or_trained(
    without_transformers, weights_present, synthetic_subset, tmp_path
):
    weights_present(maskrcnn=False, m2f_cached=False)
    plan = family_comparison.plan_comparison(TrainConfig.smoke())
    assert plan.contenders == [] and plan.needs_detr_extra
    (m2f,) = [s for s in plan.skipped if s.startswith("mask2former:")]
    assert "transformers" in m2f and "requirements-detr.txt" in m2f
    assert plan.skipped[-1].startswith("mask-rcnn-v1: nothing to compare it with")

    summary = family_comparison.compare_models(plan, synthetic_subset, tmp_path, num_epochs=1)
    assert summary["models"] == {} and summary["skipped"] == plan.skipped
    assert not (tmp_path / "mask-rcnn-v1").exists()  # nothing trained
    assert json.loads((tmp_path / "comparison.json").read_text())["models"] == {}
    tables = comparison_report.comparison_tables(summary)
    assert set(tables.values()) == {"no model compared"}
    assert comparison_report.ap_series(summary) == (["all"], {})
    assert comparison_report.occlusion_series(summary) == ([], {})


def test_without_the_detr_extra_mask_rcnn_v1_and_v2_still_compare_when_cached(
    without_transformers, weights_present
):
    weights_present(maskrcnn=True, m2f_cached=True)
    plan = family_comparison.plan_comparison(TrainConfig())
    assert [c.name for c in plan.contenders] == [
        "mask-rcnn-v1",
        "zero-shot-mask-rcnn-v1",
        "mask-rcnn-v2",
        "zero-shot-mask-rcnn-v2",
    ]
    assert plan.needs_detr_extra and [s[:12] for s in plan.skipped] == ["mask2former:"]
    # asking for Mask R-CNN alone never mentions the extra
    assert not family_comparison.plan_comparison(TrainConfig(), archs=("v1", "v2")).needs_detr_extra


@needs_transformers
def test_with_the_detr_extra_the_plan_needs_nothing_more(weights_present):
    weights_present(maskrcnn=False, m2f_cached=False)
    plan = family_comparison.plan_comparison(TrainConfig.smoke())
    assert not plan.needs_detr_extra and len(plan.contenders) == 2


# --- reporting -------------------------------------------------------------------------------
def fake_summary(tmp_path) -> dict:
    def metrics(ap: float) -> dict:
        per_class = {n: {"AP": ap, "AP50": ap, "AP75": ap} for n in ("cake", "dog")}
        per_class["dog"]["AP"] = -1.0  # no dog in the split
        section = {"AP": ap, "AP50": 2 * ap, "per_class": per_class}
        return {"bbox": dict(section), "segm": dict(section)}

    def occ(ap: float) -> dict:
        return {
            row: {"instances": n, "bbox": {"AP": ap}, "segm": {"AP": ap if n else -1.0}}
            for row, n in (("all", 5), ("none", 3), ("partial", 2), ("heavy", 0))
        }

    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"image_id": 1, "score": 0.9}]))
    row = dict(train_time_per_image=0.5, time_per_image=0.1, peak_memory_mb=None)
    return {
        "split": "test",
        "models": {
            "mask-rcnn-v1": {
                **row,
                "params": 44_000_000,
                "metrics": metrics(0.25),
                "occlusion": occ(0.2),
                "results": str(results),
            },
            "zero-shot-mask2former": {
                **row,
                "params": 47_400_000,
                "train_time_per_image": None,
                "metrics": metrics(0.5),
                "occlusion": occ(0.4),
                "results": str(results),
            },
        },
    }


def test_tables_show_percent_and_dashes_for_undefined(tmp_path):
    tables = comparison_report.comparison_tables(fake_summary(tmp_path))
    overall = tables["overall"].splitlines()
    assert overall[0].split()[:3] == ["model", "box", "AP"]
    assert overall[1].split() == [
        "mask-rcnn-v1",
        "25.0",
        "25.0",
        "50.0",
        "44.0M",
        "0.500",
        "0.100",
        "-",
    ]
    assert overall[2].split()[5] == "-"  # no training time for a zero-shot model
    per_class = tables["per_class"].splitlines()
    assert per_class[1].split() == ["mask-rcnn-v1", "25.0", "-"]
    occlusion = tables["occlusion"]
    assert "heavy n=0" in occlusion and "- (20.0)" in occlusion


def test_series_feed_grouped_bars(tmp_path):
    summary = fake_summary(tmp_path)
    groups, series = comparison_report.ap_series(summary)
    assert groups == ["cake", "dog", "all"]
    assert series["mask-rcnn-v1"] == [0.25, -1.0, 0.25]
    groups, series = comparison_report.occlusion_series(summary)
    assert groups == ["all (n=5)", "none (n=3)", "partial (n=2)", "heavy (n=0)"]
    assert series["zero-shot-mask2former"] == [0.4, 0.4, 0.4, -1.0]
    assert comparison_report.read_contender_results(summary)["mask-rcnn-v1"] == [
        {"image_id": 1, "score": 0.9}
    ]


def test_most_occluded_falls_back_to_any_image(synthetic_subset):
    from seglib.data.dataset import open_split

    test = open_split(synthetic_subset, "test")
    ids = comparison_report.most_occluded(test, n=len(test) + 5)
    assert sorted(ids) == sorted(test.ids)  # every image once, heavy ones first


# --- the comparison itself ---------------------------------------------------------------
@needs_transformers
@pytest.mark.slow
def test_compare_models_trains_each_for_the_same_budget(synthetic_subset, tmp_path):
    cfg = TrainConfig.smoke(arch="mask2former", num_epochs=8, eval_interval=4)
    contenders = [
        family_comparison.Contender("m2f-a", cfg),
        family_comparison.Contender("m2f-b", cfg.replace(lr=cfg.lr / 2), note="half the lr"),
    ]
    events = []
    summary = family_comparison.compare_models(
        contenders,
        synthetic_subset,
        tmp_path,
        num_epochs=1,
        callback=lambda event, payload: events.append((event, payload["contender"])),
    )
    assert list(summary["models"]) == ["m2f-a", "m2f-b"] and summary["num_images"] == 4
    for name, row in summary["models"].items():
        assert row["iterations"] == 6  # 12 train images, batch 2, one epoch: not 8 epochs
        assert row["params"] > 0 and row["time_per_image"] > 0 and row["train_time_per_image"] > 0
        assert row["peak_memory_mb"] is None  # CPU
        assert 0 <= row["metrics"]["segm"]["AP"] <= 1
        assert set(row["occlusion"]) == {"all", "none", "partial", "heavy"}
        assert (tmp_path / name / "seed-0" / "last.pt").is_file()
        assert json.loads((tmp_path / name / "seed-0" / "test_results.json").read_text())
    assert ("scored", "m2f-b") in events and ("iter", "m2f-a") in events
    assert summary["models"]["m2f-b"]["note"] == "half the lr"
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["models"]["m2f-a"]["note"] == "" and saved["models"]["m2f-b"]["note"]
    assert "m2f-b" in comparison_report.comparison_tables(summary)["overall"]


# --- results files and post-processing -----------------------------------------------------
def test_results_files_carry_coco_ids_and_read_back_as_labels(
    synthetic_subset, tmp_path, monkeypatch, oracle_model
):
    from seglib.core.categories import category_labels
    from seglib.data.dataset import open_split
    from seglib.evaluation.coco_ap import evaluate_results
    from seglib.evaluation.occlusion import occlusion_ap

    dataset = open_split(synthetic_subset, "val", min_box_size=0)
    monkeypatch.setattr(
        family_comparison.study,
        "build_zero_shot",
        lambda cfg, cats: oracle_model(dataset, low_label=2),
    )
    cfg = TrainConfig.smoke(device="cpu")
    summary = family_comparison.compare_models(
        [family_comparison.Contender("oracle", cfg, train=False)],
        synthetic_subset,
        tmp_path,
        split="val",
    )
    row = summary["models"]["oracle"]
    coco_id = {label: cat_id for cat_id, label in category_labels(dataset.categories).items()}
    assert coco_id != {i: i for i in coco_id}  # the split keeps COCO's ids (cake is 61)
    back = comparison_report.read_contender_results(summary)["oracle"]
    labels = {r["category_id"] for r in back}
    assert labels <= {1, 2, 3, 4} and len(labels) > 1  # read back: the split's labels
    on_disk = json.loads(Path(row["results"]).read_text())
    assert [r["category_id"] for r in on_disk] == [coco_id[r["category_id"]] for r in back]
    # read back, through the summary or as a file against the split, it scores the same
    assert row["metrics"]["segm"]["AP"] == pytest.approx(1.0)
    assert evaluate_results(dataset.coco, back, score_thresh=cfg.score_thresh) == row["metrics"]
    assert evaluate_results(synthetic_subset / "val.json", row["results"]) == row["metrics"]
    assert occlusion_ap(dataset.coco, row["results"]) == row["occlusion"]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert comparison_report.read_contender_results(
        saved
    ) == comparison_report.read_contender_results(summary)


def test_mask2former_is_not_offered_post_processing_it_cannot_take(weights_present, tmp_path):
    weights_present(maskrcnn=False, m2f_cached=False)
    for asked in ({"postprocess": "soft-nms-gaussian"}, {"tta_hflip": True}):
        plan = family_comparison.plan_comparison(TrainConfig.smoke(**asked), min_contenders=1)
        assert [c.name for c in plan.contenders] == ["mask-rcnn-v1"]
        (why,) = [s for s in plan.skipped if s.startswith("mask2former:")]
        assert "no NMS to replace" in why
    with pytest.raises(ValueError, match="no NMS to replace"):  # no such contender exists
        TrainConfig.smoke(arch="mask2former", tta_hflip=True)


def test_a_model_at_zero_everywhere_is_named_as_showing_nothing(tmp_path):
    summary = fake_summary(tmp_path)
    assert comparison_report.models_without_scores(summary) == []
    dead = summary["models"]["zero-shot-mask2former"]
    for section in dead["metrics"].values():
        section["AP"] = 0.0
        for per in section["per_class"].values():
            per["AP"] = min(per["AP"], 0.0)  # 0, or undefined (-1)
    for row in dead["occlusion"].values():
        row["segm"]["AP"] = min(row["segm"]["AP"], 0.0)
    assert comparison_report.models_without_scores(summary) == ["zero-shot-mask2former"]
    assert comparison_report.models_without_scores({"models": {}}) == []
