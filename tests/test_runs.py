"""Run folders: no run replaced unasked, derived files tied to their checkpoint, the operating point."""

from __future__ import annotations

import json
import shutil

import pytest

from seglib import runs
from seglib.config import TrainConfig
from seglib.paths import get_paths
from seglib.runs import OperatingPoint, RunExistsError, RunRequest, start_run


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
    fp = runs.checkpoint_fingerprint(ckpt)
    assert fp["size"] == 10 and len(fp["sha1"]) == 40
    out = tmp_path / "predictions" / "val_results.json"
    source = {"split": "val", "checkpoint": fp}
    runs.write_with_source(out, [{"score": 1.0}], source)
    assert runs.source_file(out).name == "val_results.source.json"
    assert runs.read_if_fresh(out, source) == [{"score": 1.0}]
    moved = {**source, "checkpoint": {**fp, "path": "elsewhere", "mtime_ns": 0}}
    assert runs.read_if_fresh(out, moved) == [{"score": 1.0}]  # same content, same results
    ckpt.write_bytes(b"weights v2")
    assert (
        runs.read_if_fresh(out, {**source, "checkpoint": runs.checkpoint_fingerprint(ckpt)}) is None
    )
    assert runs.read_if_fresh(out, {**source, "split": "test"}) is None
    runs.source_file(out).unlink()
    assert runs.read_if_fresh(out, source) is None


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
    assert runs.headline(paths.with_run("r")) == {"segm_AP": 0.2, "segm_AP50": 0.4}
    with pytest.raises(FileNotFoundError, match="no validation"):
        (paths.run_dir("empty")).mkdir()
        runs.headline(paths.with_run("empty"))


@pytest.mark.slow
def test_predictions_are_cached_at_permissive_thresholds_and_redone_for_a_new_checkpoint(
    tmp_path, synthetic_subset, monkeypatch
):
    from seglib import inference
    from seglib.engine import train

    paths = get_paths("smoke", tmp_path, run="r")
    shutil.copytree(synthetic_subset, paths.subset)
    cfg = TrainConfig.smoke(num_epochs=1, max_iters=1, box_score_thresh=0.5)
    start_run(paths, RunRequest("r", cfg))
    train(cfg, paths.subset, paths.run)
    calls = []
    real = inference.predict

    def counting(net, *args, **kwargs):
        heads = net.roi_heads if hasattr(net, "roi_heads") else net.model.roi_heads
        calls.append((heads.score_thresh, heads.detections_per_img))
        return real(net, *args, **kwargs)

    monkeypatch.setattr(inference, "predict", counting)
    first = runs.split_predictions(paths, "val", "cpu")
    assert first.recomputed and calls == [(0.0, 100)]  # the config's 0.5 does not apply
    assert "predicted now" in repr(first) and first.file.is_file()
    again = runs.split_predictions(paths, "val", "cpu")
    assert not again.recomputed and again.results == first.results and len(calls) == 1
    scores = runs.evaluate_split(paths, again, OperatingPoint(0.5))
    written = json.loads((paths.eval_dir / "val_metrics.json").read_text())
    assert written["source"]["checkpoint"]["sha1"] == first.source["checkpoint"]["sha1"]
    assert written["source"]["operating_point"]["score_thresh"] == 0.5
    assert scores["segm"]["AP"] == written["segm"]["AP"]
    assert runs.headline(paths)["segm_AP"] == written["segm"]["AP"]
    zero = runs.split_predictions(paths, "val", "cpu", zero_shot=True)
    assert zero.file.name == "val_zero_shot.json" and zero.recomputed
    runs.evaluate_split(paths, zero, OperatingPoint(0.5))
    assert (paths.eval_dir / "val_zero_shot.json").is_file()
    # Retraining replaces best.pt: the cache no longer matches it.
    start_run(paths, RunRequest("r", cfg.replace(seed=1), overwrite=True))
    train(cfg.replace(seed=1), paths.subset, paths.run)
    assert runs.split_predictions(paths, "val", "cpu").recomputed and len(calls) == 4
