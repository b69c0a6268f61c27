"""Run folders: no run replaced unasked, derived files tied to their checkpoint, the operating point."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from seglib.app import prediction_cache, provenance, runs
from seglib.app.operating_point import OperatingPoint
from seglib.app.runs import RunExistsError, RunRequest, start_run
from seglib.core.config import TrainConfig
from seglib.core.paths import get_paths
from seglib.core.runtime import cpu_bf16_native
from seglib.evaluation import prediction
from seglib.models import builder


def _fill(run_dir):
    """Leave what a finished, evaluated run leaves."""
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "operating_point.json"):
        (run_dir / name).write_text("old")
    for folder in ("eval", "predictions", "figures", "notebooks"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
        (run_dir / folder / "old.json").write_text("{}")


def test_a_fresh_run_records_its_overrides_and_changes_from_the_profile(tmp_path):
    paths = get_paths("smoke", tmp_path)
    cfg = TrainConfig.smoke(lr=0.002, num_epochs=3)
    selected = start_run(paths, RunRequest("lr-low", cfg), overrides={"lr": 0.002})
    assert selected.run == paths.runs / "lr-low" and selected.run_name == "lr-low"
    info = runs.read_run_info(selected.run)
    assert (info["name"], info["profile"], info["overrides"]) == ("lr-low", "smoke", {"lr": 0.002})
    assert info["changed_from_profile"] == {"lr": 0.002, "num_epochs": 3}
    assert paths.list_runs() == ["lr-low"]


def test_an_existing_run_is_not_replaced_without_asking(tmp_path):
    paths = get_paths("smoke", tmp_path)
    cfg = TrainConfig.smoke()
    start_run(paths, RunRequest("r", cfg))
    _fill(paths.run_dir("r"))
    with pytest.raises(RunExistsError, match="overwrite.*resume") as err:
        start_run(paths, RunRequest("r", cfg))
    assert "'r' already exists" in str(err.value) and "started" in str(err.value)
    assert (paths.run_dir("r") / "best.pt").read_text() == "old"  # untouched
    with pytest.raises(RunExistsError):
        runs.check_can_start(paths, "r")
    assert runs.check_can_start(paths, "other") == paths.run_dir("other")


def test_overwrite_clears_the_old_evaluation_too_but_keeps_executed_notebooks(tmp_path):
    paths = get_paths("smoke", tmp_path)
    run_dir = paths.run_dir("r")
    run_dir.mkdir(parents=True)
    _fill(run_dir)
    start_run(paths, RunRequest("r", TrainConfig.smoke(), overwrite=True))
    assert sorted(p.name for p in run_dir.iterdir()) == ["notebooks", "run_info.json"]
    assert (run_dir / "notebooks" / "old.json").is_file()


def test_resume_needs_last_pt_and_changes_nothing(tmp_path):
    paths = get_paths("smoke", tmp_path)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        start_run(paths, RunRequest("r", TrainConfig.smoke(), resume=True))
    run_dir = paths.run_dir("r")
    run_dir.mkdir(parents=True)
    _fill(run_dir)
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert start_run(paths, RunRequest("r", TrainConfig.smoke(), resume=True)).run == run_dir
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    with pytest.raises(ValueError, match="not both"):
        RunRequest("r", TrainConfig.smoke(), resume=True, overwrite=True)


def test_derived_files_go_stale_when_the_checkpoint_changes(tmp_path):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights v1")
    fp = provenance.checkpoint_fingerprint(ckpt)
    assert fp["size"] == 10 and len(fp["sha1"]) == 40
    out = tmp_path / "predictions" / "val_results.json"
    source = {"split": "val", "checkpoint": fp}
    provenance.write_with_source(out, [{"score": 1.0}], source)
    assert provenance.source_file(out).name == "val_results.source.json"
    assert provenance.read_if_fresh(out, source) == [{"score": 1.0}]
    moved = {**source, "checkpoint": {**fp, "path": "elsewhere", "mtime_ns": 0}}
    assert provenance.read_if_fresh(out, moved) == [{"score": 1.0}]  # same content, same results
    ckpt.write_bytes(b"weights v2")
    assert (
        provenance.read_if_fresh(
            out, {**source, "checkpoint": provenance.checkpoint_fingerprint(ckpt)}
        )
        is None
    )
    assert provenance.read_if_fresh(out, {**source, "split": "test"}) is None
    provenance.source_file(out).unlink()
    assert provenance.read_if_fresh(out, source) is None


def test_operating_point_round_trips_and_filters_the_cache(tmp_path):
    path = tmp_path / "operating_point.json"
    assert OperatingPoint.load(path, 0.5) == OperatingPoint(0.5, None, "config")
    OperatingPoint(0.3, 0.6, "notebook 05").save(path)
    op = OperatingPoint.load(path, 0.5)
    assert (op.score_thresh, op.nms_thresh, op.chosen_in) == (0.3, 0.6, "notebook 05")
    assert "score >= 0.3" in str(op) and "notebook 05" in str(op)
    with pytest.raises(ValueError, match="score_thresh"):
        OperatingPoint(1.5)
    path.write_text('{"score": 1}')
    with pytest.raises(ValueError, match="operating_point.json"):
        OperatingPoint.load(path, 0.5)
    rle = {"size": [4, 4], "counts": "04L0"}
    results = [
        {"image_id": 1, "category_id": 1, "score": s, "segmentation": rle, "bbox": [0, 0, 2, 2]}
        for s in (0.9, 0.4, 0.2)
    ]
    assert [r["score"] for r in OperatingPoint(0.3).apply(results)] == [0.9, 0.4]
    assert [r["score"] for r in OperatingPoint(0.3, 0.5).apply(results)] == [0.9]  # duplicates
    # what AP is given: the extra NMS only, every score kept
    assert [r["score"] for r in OperatingPoint(0.95).suppress(results)] == [0.9, 0.4, 0.2]
    assert [r["score"] for r in OperatingPoint(0.95, 0.5).suppress(results)] == [0.9]


def test_run_summary_reads_the_metrics_of_any_run(tmp_path):
    paths = get_paths("smoke", tmp_path)
    run_dir = paths.run_dir("r")
    run_dir.mkdir(parents=True)
    rows = [
        {"epoch": 1, "iteration": 1, "loss": 3.0},
        {"epoch": 1, "iteration": 1, "segm_AP": 0.2, "segm_AP50": 0.4},
        {"epoch": 2, "iteration": 2, "segm_AP": 0.1, "segm_AP50": 0.5},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = runs.run_summary(paths, "r")
    assert summary["best"]["epoch"] == 1 and len(summary["evals"]) == 2
    assert summary["test"] is None and len(summary["history"]) == 3
    assert runs.headline_ap(paths.with_run("r")) == {"segm_AP": 0.2, "segm_AP50": 0.4}
    with pytest.raises(FileNotFoundError, match="no validation"):
        (paths.run_dir("empty")).mkdir()
        runs.headline_ap(paths.with_run("empty"))


@pytest.mark.parametrize("zero_shot", [False, True])
def test_the_prediction_key_names_what_the_model_predicts_in_not_what_was_asked(
    tmp_path, zero_shot
):
    checkpoint, cpu = tmp_path / "best.pt", torch.device("cpu")
    checkpoint.write_bytes(b"weights")

    def key(cfg: TrainConfig) -> str:
        source = prediction_cache._prediction_source("val", checkpoint, cfg, 100, zero_shot, cpu)
        return source["precision"]

    maskrcnn = TrainConfig.smoke(cpu_amp_eval="bf16")
    assert maskrcnn.arch == "v1" and key(maskrcnn) == "bf16"
    for asked in ("bf16", "auto", "off"):  # Mask R-CNN's key as before: what was asked
        assert (
            key(maskrcnn.replace(cpu_amp_eval=asked))
            == {"bf16": "bf16", "off": "fp32", "auto": ("bf16" if cpu_bf16_native() else "fp32")}[
                asked
            ]
        )
    # Mask2Former (and its zero-shot model) has no bf16 parts: fp32 whatever was asked
    mask2former = maskrcnn.replace(arch="mask2former", m2f_config="tiny")
    assert key(mask2former) == "fp32"


@pytest.mark.slow
def test_predictions_are_cached_at_permissive_thresholds_and_redone_for_a_new_checkpoint(
    tmp_path, synthetic_subset, monkeypatch
):
    from seglib.engine.trainer import train

    paths = get_paths("smoke", tmp_path, run="r")
    shutil.copytree(synthetic_subset, paths.subset)
    cfg = TrainConfig.smoke(num_epochs=1, max_iters=1, box_score_thresh=0.5)
    start_run(paths, RunRequest("r", cfg))
    train(cfg, paths.subset, paths.run)
    calls = []
    real = prediction.predict

    def counting(net, *args, **kwargs):
        heads = net.roi_heads if hasattr(net, "roi_heads") else net.model.roi_heads
        calls.append((heads.score_thresh, heads.detections_per_img))
        return real(net, *args, **kwargs)

    monkeypatch.setattr(prediction, "predict", counting)
    first = prediction_cache.split_predictions(paths, "val", "cpu")
    assert first.recomputed and calls == [(0.0, 100)]  # the config's 0.5 does not apply
    assert "predicted now" in repr(first) and first.file.is_file()
    again = prediction_cache.split_predictions(paths, "val", "cpu")
    assert not again.recomputed and again.results == first.results and len(calls) == 1
    scores = prediction_cache.evaluate_split(paths, again, OperatingPoint(0.5))
    written = json.loads((paths.layout.eval_dir / "val_metrics.json").read_text())
    assert written["source"]["checkpoint"]["sha1"] == first.source["checkpoint"]["sha1"]
    assert written["source"]["operating_point"]["score_thresh"] == 0.5
    assert scores["segm"]["AP"] == written["segm"]["AP"]
    assert runs.headline_ap(paths)["segm_AP"] == written["segm"]["AP"]
    # The precision is part of the key: the run's cpu_amp_eval, resolved on this CPU.
    assert first.source["precision"] == ("bf16" if cpu_bf16_native() else "fp32")
    assert f", {first.source['precision']}:" in repr(first)
    other = "off" if first.source["precision"] == "bf16" else "bf16"
    cfg.replace(cpu_amp_eval=other).save(paths.layout.config)
    redone = prediction_cache.split_predictions(paths, "val", "cpu")
    assert (
        redone.recomputed
        and len(calls) == 2
        and redone.source["precision"] != first.source["precision"]
    )
    cfg.save(paths.layout.config)
    assert prediction_cache.split_predictions(paths, "val", "cpu").recomputed and len(calls) == 3
    zero = prediction_cache.split_predictions(paths, "val", "cpu", zero_shot=True)
    assert zero.file.name == "val_zero_shot.json" and zero.recomputed
    prediction_cache.evaluate_split(paths, zero, OperatingPoint(0.5))
    assert (paths.layout.eval_dir / "val_zero_shot.json").is_file()
    # Retraining replaces best.pt: the cache no longer matches it.
    start_run(paths, RunRequest("r", cfg.replace(seed=1), overwrite=True))
    train(cfg.replace(seed=1), paths.subset, paths.run)
    assert prediction_cache.split_predictions(paths, "val", "cpu").recomputed and len(calls) == 6


# --- cached predictions are COCO results files ---------------------------------------------
class _Oracle(torch.nn.Module):
    """A stand-in detector that returns each image's ground truth (label 2 at a low score).

    It carries the two filters ``split_predictions`` opens, and knows an image by its pixels,
    so it answers the same whatever order or batch the images come in.
    """

    def __init__(self, dataset):
        super().__init__()
        self.score_thresh, self.detections_per_img = 0.5, 10
        self.known = []
        for i in range(len(dataset)):
            image, t = dataset[i]
            scores = torch.where(t["labels"] == 2, 0.3, 0.9)
            output = {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": scores,
                "masks": t["masks"][:, None].float(),
            }
            self.known.append(
                (image.float() / 255 if image.dtype == torch.uint8 else image, output)
            )

    def forward(self, images):
        return [next(out for img, out in self.known if torch.equal(img, x)) for x in images]


def _fake_run(tmp_path, synthetic_subset, cfg):
    """A selected run with ``cfg`` and a stand-in best.pt over a copy of the synthetic subset."""
    paths = get_paths("smoke", tmp_path, run="r")
    shutil.copytree(synthetic_subset, paths.subset)
    paths.run.mkdir(parents=True)
    cfg.save(paths.run / "config.json")
    paths.layout.best_checkpoint.write_bytes(b"stand-in weights")
    return paths


def test_cached_predictions_carry_coco_ids_on_disk_and_labels_in_memory(
    tmp_path, synthetic_subset, monkeypatch
):
    from seglib.data.dataset import open_split
    from seglib.evaluation.coco_ap import evaluate_results

    paths = _fake_run(tmp_path, synthetic_subset, TrainConfig.smoke())
    dataset = open_split(paths.subset, "val", min_box_size=0)
    calls = []

    def from_checkpoint(path, device, categories=None):
        calls.append(path)
        return _Oracle(dataset), TrainConfig.smoke(), categories

    monkeypatch.setattr(builder, "model_from_checkpoint", from_checkpoint)
    first = prediction_cache.split_predictions(paths, "val", "cpu")
    assert first.recomputed and len(calls) == 1 and first.results
    labels = {r["category_id"] for r in first.results}
    assert labels <= {1, 2, 3, 4} and len(labels) > 1  # in memory: the split's labels
    coco_id = {1: 61, 2: 3, 3: 18, 4: 1}  # the split's categories: cake, car, dog, person
    assert [c["id"] for c in dataset.categories] == list(coco_id.values())
    on_disk = json.loads(first.file.read_text())
    assert [r["category_id"] for r in on_disk] == [coco_id[r["category_id"]] for r in first.results]
    assert first.source["category_ids"] == "coco"
    # the cache reads back as what the model returned, and scores the same as a file
    again = prediction_cache.split_predictions(paths, "val", "cpu")
    assert not again.recomputed and len(calls) == 1 and again.results == first.results
    in_memory = evaluate_results(dataset.coco, first.results)
    assert evaluate_results(dataset.coco, again.results) == in_memory
    assert evaluate_results(paths.split_json("val"), first.file) == in_memory
    assert in_memory["segm"]["AP"] == pytest.approx(1.0)


def test_a_cache_in_the_splits_labels_is_recomputed_not_misread(
    tmp_path, synthetic_subset, monkeypatch
):
    from seglib.data.dataset import open_split

    paths = _fake_run(tmp_path, synthetic_subset, TrainConfig.smoke())
    dataset = open_split(paths.subset, "val", min_box_size=0)
    monkeypatch.setattr(
        builder, "model_from_checkpoint", lambda p, d, categories=None: (_Oracle(dataset), None, [])
    )
    fresh = prediction_cache.split_predictions(paths, "val", "cpu")
    # what the cache held before files carried COCO ids: labels, and no category_ids record
    old_source = {k: v for k, v in fresh.source.items() if k != "category_ids"}
    provenance.write_with_source(fresh.file, fresh.results, old_source)
    redone = prediction_cache.split_predictions(paths, "val", "cpu")
    assert redone.recomputed and redone.results == fresh.results
