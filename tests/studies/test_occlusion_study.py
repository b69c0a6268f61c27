"""The occlusion study end to end on a random tiny model, its report, the CLI, and its figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seglib.core.config import TrainConfig
from seglib.core.runtime import cpu_bf16_native
from seglib.evaluation import coco_results, occlusion
from seglib.models import builder
from seglib.studies import occlusion_report, occlusion_study
from seglib.viz import charts, galleries

pytestmark = pytest.mark.slow  # builds a Mask R-CNN and runs it on 10 images (~10 s)

GRIDS = {"nms": {"box_nms_thresh": (0.3, 0.5)}, "soft-nms-linear": {"soft_nms_thresh": (0.3, 0.6)}}


def _save_tiny_model(subset, folder, **changes):
    """best.pt of a randomly initialised 64 px model over the synthetic subset's categories."""
    from seglib.data.dataset import open_split
    from seglib.models.builder import build_model
    from seglib.models.checkpoint import save_checkpoint

    categories = open_split(subset, "val").categories
    cfg = TrainConfig.smoke(
        min_size=64,
        max_size=64,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=30,
        detections_per_img=20,
        box_score_thresh=0.0,
        **changes,
    )
    torch.manual_seed(0)
    model = build_model(cfg.num_classes, "none", cfg.arch, cfg)
    path = folder / "best.pt"
    return save_checkpoint(path, model=model, cfg=cfg, categories=categories, epoch=1, iteration=1)


@pytest.fixture(scope="module")
def checkpoint(synthetic_subset, tmp_path_factory):
    return _save_tiny_model(synthetic_subset, tmp_path_factory.mktemp("run"), postprocess_pool=40)


@pytest.fixture(scope="module")
def result(checkpoint, synthetic_subset):
    return occlusion_study.run_study(
        checkpoint,
        synthetic_subset,
        "cpu",
        methods=("nms", "soft-nms-linear"),
        grids=GRIDS,
        timing_images=1,
        zero_shot_archs=("v1",),
    )


def test_every_variant_is_tuned_on_val_and_scored_per_bucket_on_test(result):
    names = [v["name"] for v in result["variants"]]
    assert names == ["baseline", "nms", "nms + flip", "soft-nms-linear", "soft-nms-linear + flip"]
    base = result["variants"][0]
    assert base["params"] == {"box_nms_thresh": 0.5} and base["val_grid"] == []
    for v in result["variants"][1:]:
        grid = v["val_grid"]
        assert len(grid) == 2
        assert v["val_mask_AP"] == max(g["val_mask_AP"] for g in grid)
        assert v["params"] in [g["params"] for g in grid]
        assert v["tta_hflip"] == v["name"].endswith("+ flip")
    for v in result["variants"]:
        assert set(v["test"]) == set(occlusion.ROWS)
        assert v["test"]["all"]["instances"] == sum(
            v["test"][b]["instances"] for b in occlusion.BUCKETS
        )
        assert np.isfinite(v["ms_per_image"]) and v["ms_per_image"] > 0
    assert base["extra_ms"] == 0.0
    assert result["best"] in names[1:]
    assert set(result["predictions"]) == set(names)
    assert result["counts"]["test"]["heavy"] + result["counts"]["test"]["partial"] > 0


def test_the_variants_report_as_a_study_of_one_seed(result):
    from seglib.studies import occlusion_report, study_report

    record = occlusion_report.as_study(result)
    assert list(record["contenders"]) == [v["name"] for v in result["variants"]]
    flip = record["contenders"]["nms + flip"]
    assert flip["changes"]["tta_hflip"] is True and not flip["trains"]
    assert "box_nms_thresh" in flip["changes"] and record["seeds"] == [result["seed"]]
    summary = study_report.summarize(record)
    for v in result["variants"]:  # the study's scores are the variant's own
        scores = summary[v["name"]]
        assert (
            scores["mask AP"]["mean"] == v["metrics"]["segm"]["AP"]
            or v["metrics"]["segm"]["AP"] < 0
        )
        assert scores["mask AP heavy"]["n"] == (v["test"]["heavy"]["segm"]["AP"] >= 0)
    table = study_report.study_table(record)
    assert "soft-nms-linear + flip" in table and "1 seed" in table.splitlines()[-1]


def _own_predictions(model, dataset, cpu_amp="auto"):
    """COCO results of ``model(images)`` itself, batched as the study batches them, at the
    precision the study predicts in (the checkpoint's ``cpu_amp_eval``)."""
    from seglib.core.runtime import images_to_device, prediction_dtype
    from seglib.models.precision import autocast_parts

    results = []
    dtype = prediction_dtype(torch.device("cpu"), cpu_amp)
    with torch.inference_mode(), autocast_parts(model, dtype):
        for images, targets in occlusion_study._loader(dataset, 2):
            outputs = model(images_to_device(images, "cpu"))
            for target, det in zip(targets, outputs, strict=True):
                results.extend(coco_results.to_coco_results(int(target["image_id"]), det, 0.0))
    return results


def test_the_baseline_is_the_models_own_output_even_when_the_pool_is_tight(
    synthetic_subset, tmp_path
):
    from seglib.data.dataset import open_split
    from seglib.evaluation.coco_ap import evaluate_results
    from seglib.models.builder import model_from_checkpoint

    tight = _save_tiny_model(synthetic_subset, tmp_path, postprocess_pool=20)
    grids = {"nms": {"box_nms_thresh": (0.5, 0.7)}}
    result = occlusion_study.run_study(
        tight,
        synthetic_subset,
        "cpu",
        methods=("nms",),
        tta=(False,),
        grids=grids,
        timing_images=0,
        zero_shot_archs=(),
    )
    val_ds, test_ds = open_split(synthetic_subset, "val"), open_split(synthetic_subset, "test")
    model, cfg, _ = model_from_checkpoint(tight, "cpu", categories=test_ds.categories)
    assert cfg.postprocess_pool == cfg.detections_per_img == 20
    own_test, own_val = _own_predictions(model, test_ds), _own_predictions(model, val_ds)
    per_image = [sum(r["image_id"] == i for r in own_test) for i in test_ds.ids]
    assert max(per_image) == cfg.detections_per_img  # the model fills its quota: the pool is tight
    base, nms = result["variants"]
    assert result["predictions"]["baseline"] == own_test  # same detections, same order
    assert base["test"] == occlusion.occlusion_ap(
        test_ds.coco, own_test, score_thresh=cfg.score_thresh
    )
    assert base["test"]["all"]["bbox"]["AP"] > 0  # a number NMS over the pool got wrong (0)
    assert base["val_mask_AP"] == evaluate_results(val_ds.coco, own_val)["segm"]["AP"]
    at = {g["params"]["box_nms_thresh"]: g["val_mask_AP"] for g in nms["val_grid"]}
    assert at[0.5] == base["val_mask_AP"]  # box NMS at the model's own threshold is the baseline


def test_box_nms_settings_are_the_model_built_with_that_threshold(synthetic_subset, tmp_path):
    from seglib.data.dataset import open_split
    from seglib.models.builder import model_from_checkpoint
    from seglib.models.suppression import Settings

    val_ds = open_split(synthetic_subset, "val")
    paths = {
        t: _save_tiny_model(
            synthetic_subset, tmp_path / str(t), box_nms_thresh=t, postprocess_pool=20
        )
        for t in (0.5, 0.7)
    }
    models = {
        t: model_from_checkpoint(p, "cpu", categories=val_ds.categories)[0]
        for t, p in paths.items()
    }
    cfg = model_from_checkpoint(paths[0.5], "cpu")[1]
    settings = {
        "nms 0.7": Settings.from_config(cfg, box_nms_thresh=0.7),
        "soft": Settings.from_config(cfg, postprocess="soft-nms-linear"),
        "nms 0.5": Settings.from_config(cfg),
    }
    swept = occlusion_study.sweep(models[0.5], val_ds, settings, "cpu", cpu_amp="bf16")
    assert list(swept) == list(settings)
    assert swept["nms 0.5"] == _own_predictions(models[0.5], val_ds, "bf16")
    assert swept["nms 0.7"] == _own_predictions(models[0.7], val_ds, "bf16")
    assert swept["nms 0.7"] != swept["nms 0.5"] and swept["soft"]
    assert models[0.5].roi_heads.nms_thresh == 0.5  # the sweep put the model back


def test_one_backbone_pass_gives_each_threshold_and_the_pool_its_own_output_at_480x640():
    """A random Mask R-CNN at 480x640 that scores every candidate: the sweep's box NMS
    settings equal the model's own predictions with its NMS at each threshold (in bf16 at
    128 px: the test above), and its pooled ones what the candidates of a pass of their own
    give; the backbone and the box branch run once per batch and view."""
    from seglib.evaluation.coco_results import to_coco_results
    from seglib.evaluation.prediction import predict
    from seglib.models.postprocess import PostProcessed
    from seglib.models.suppression import Settings

    cfg = TrainConfig.demo(min_size=480, max_size=640, box_score_thresh=0.0)
    torch.manual_seed(0)
    model = builder.build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg).eval()
    data = [(torch.rand(3, 480, 640), {"image_id": i}) for i in range(2)]
    settings = {t: Settings.from_config(cfg, box_nms_thresh=t) for t in (0.3, 0.6)}
    pooled = {
        ("soft-nms-gaussian", flip): Settings.from_config(
            cfg, postprocess="soft-nms-gaussian", tta_hflip=flip
        )
        for flip in (False, True)
    }
    passes, box_heads = [], []
    model.backbone.register_forward_hook(lambda *_: passes.append(1))
    model.roi_heads.box_head.fc6.register_forward_hook(lambda *_: box_heads.append(1))
    swept = occlusion_study.sweep(model, data, {**settings, **pooled}, "cpu")
    assert len(passes) == 2  # one batch: the shared pass and the mirrored view's
    assert len(box_heads) == 2  # the box branch too: 2 thresholds and the pool share one
    assert "forward" not in vars(model.roi_heads.box_head)  # put back
    for t in settings:
        model.roi_heads.nms_thresh = t
        assert swept[t] == predict(model, data, "cpu"), t
    assert swept[0.3] != swept[0.6]
    with torch.inference_mode():
        own = PostProcessed(model, pooled["soft-nms-gaussian", True])
        candidates = own.candidates([image for image, _ in data], tta_hflip=True)
    for key, s in pooled.items():
        alone = [
            r
            for (_, target), c in zip(data, candidates, strict=True)
            for r in to_coco_results(target["image_id"], PostProcessed.select(c, s), 0.0)
        ]
        assert swept[key] == alone and alone, key
    assert model.training is False


def test_a_mask2former_checkpoint_is_refused(synthetic_subset, monkeypatch):

    cfg = TrainConfig.smoke(arch="mask2former")
    monkeypatch.setattr(
        builder,
        "model_from_checkpoint",
        lambda path, device, categories=None: (torch.nn.Identity(), cfg, categories),
    )
    with pytest.raises(ValueError, match="m2f.pt is a mask2former checkpoint.*no NMS to replace"):
        occlusion_study.run_study("m2f.pt", synthetic_subset, "cpu", methods=("nms",), tta=(False,))


def test_zero_shot_rows_say_why_they_are_missing(result):
    from seglib.models.weights import weights_file

    (row,) = result["zero_shot"]
    if not weights_file("coco", "v1").is_file():
        assert "not cached" in row["skipped"] and "fetch-weights" in row["skipped"]
    else:
        assert set(row["test"]) == set(occlusion.ROWS)


def test_save_writes_json_without_predictions_and_the_table(result, tmp_path):
    written = occlusion_report.save_study(result, tmp_path)
    data = json.loads(written["json"].read_text())
    assert "predictions" not in data and len(data["variants"]) == 5
    table = written["table"].read_text()
    for name in ("baseline", "soft-nms-linear + flip", "zero-shot v1", "heavy"):
        assert name in table
    assert table == occlusion_report.format_study(result) + "\n"
    # the checkpoint's cpu_amp_eval ("auto") decides the precision of every variant's pass
    expected = "bf16" if cpu_bf16_native() else "fp32"
    assert data["precision"] == expected and f"predicted in {expected} on cpu" in table


def test_changed_images_ranks_by_change(result, synthetic_subset):
    gt = synthetic_subset / "test.json"
    before = result["predictions"]["baseline"]
    unchanged = occlusion_report.changed_images(gt, before, before, n=10)
    assert [c for _, c in unchanged] == [0.0] * len(unchanged) and len(unchanged) >= 1
    assert [i for i, _ in unchanged] == sorted(i for i, _ in unchanged)
    changed = occlusion_report.changed_images(gt, before, [], score_thresh=0.0, n=2)
    assert len(changed) <= 2 and all(c <= 0 for _, c in changed)
    assert [abs(c) for _, c in changed] == sorted((abs(c) for _, c in changed), reverse=True)


def test_cli_study_writes_both_files(checkpoint, synthetic_subset, tmp_path, capsys):
    from seglib.app.cli import main

    argv = [
        "study",
        "postprocess",
        "--data",
        str(synthetic_subset),
        "--checkpoint",
        str(checkpoint),
    ]
    argv += ["--out", str(tmp_path), "--methods", "mask-nms", "--no-tta", "--timing-images", "0"]
    argv += ["--device", "cpu"]
    assert main(argv) == 0
    assert "mask-nms" in capsys.readouterr().out
    data = json.loads((tmp_path / occlusion_report.JSON_NAME).read_text())
    assert [v["name"] for v in data["variants"]] == ["baseline", "mask-nms"]
    assert (tmp_path / occlusion_report.TABLE_NAME).is_file()


def test_figures_have_content(result, synthetic_subset):
    from seglib.data.dataset import open_split

    ax = charts.plot_occlusion_study(result)
    assert len(ax.patches) == len(result["variants"]) * len(occlusion.ROWS)
    assert any(p.get_height() > 0 for p in ax.patches) or all(
        v["test"]["all"]["segm"]["AP"] <= 0 for v in result["variants"]
    )
    test_ds = open_split(synthetic_subset, "test")
    levels = occlusion.occlusion_levels(test_ds.coco)
    ax = charts.plot_occlusion_levels(levels)
    assert sum(p.get_height() for p in ax.patches) == len(levels)
    ids = occlusion.most_occluded_images(test_ds.coco, bucket="partial", n=2) or test_ds.ids[:1]
    fig = galleries.draw_occlusion_gallery(test_ds, ids, levels)
    assert all(a.images for a in fig.axes[: len(ids)])
    table = result["variants"][0]["test"]
    ax = charts.plot_bucket_metrics(table)
    assert len(ax.patches) == 4 * len(occlusion.ROWS)
    before = result["predictions"]["baseline"]
    fig = galleries.draw_before_after(test_ds, test_ds.ids[:1], before, [], score_thresh=0.0)
    drawn = fig.axes[:3]
    assert all(a.images for a in drawn)
    assert "after: 0" in drawn[2].get_title()
