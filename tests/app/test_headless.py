import json

import pytest

from seglib.app import headless, notebook_runner, provenance
from seglib.app.headless import PreflightError, preflight
from seglib.app.operating_point import OperatingPoint
from seglib.core.paths import get_paths
from seglib.studies import comparison_report
from seglib.viz import charts, common, files


def test_smoke_needs_nothing(tmp_path):
    assert preflight("smoke", get_paths("smoke", tmp_path)) == []


def test_seed_offline_fails_fast_naming_what_is_missing_and_pointing_to_demo(tmp_path, monkeypatch):
    monkeypatch.setattr(headless, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PreflightError) as err:
        preflight("seed", get_paths("seed", tmp_path))
    message = str(err.value)
    assert "instances_train2017.json" in message
    assert "maskrcnn_resnet50_fpn_coco" in message
    assert "make demo" in message


def test_seed_with_files_in_place_needs_no_network(tmp_path, monkeypatch):
    from seglib.models.weights import weights_file

    monkeypatch.setattr(headless, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    paths = get_paths("seed", tmp_path)
    for split in ("train", "val"):
        (paths.coco_root / f"{split}2017").mkdir(parents=True)
        ann = paths.coco_root / "annotations" / f"instances_{split}2017.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text("{}")
    weights = weights_file("coco", "v1")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert preflight("seed", paths) == []


def _fake_outputs(paths, ap50=0.3):
    """What notebooks 01-05 leave in a run, with real figures and provenance records."""

    for split in ("train", "val", "test"):
        paths.split_json(split).parent.mkdir(parents=True, exist_ok=True)
        paths.split_json(split).write_text("{}")
    run = paths.run_dir(paths.run_name)
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"weights")
    for name in ("config.json", "run_info.json"):
        (run / name).write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "segm_AP": 0.1}) + "\n")
    source = {"checkpoint": provenance.checkpoint_fingerprint(run / "best.pt")}
    metrics = {"segm": {"AP": 0.1, "AP50": ap50}}
    provenance.write_with_source(run / "eval" / "val_metrics.json", metrics, source)
    provenance.write_with_source(run / "eval" / "test_metrics.json", metrics, source)
    provenance.write_with_source(run / "predictions" / "test_results.json", [], source)
    OperatingPoint(0.5).save(run / "operating_point.json")
    fig, ax = common.make_grid(1)
    ax[0].plot([0, 1], [1, 2])
    for notebook in (
        "01_data_subset",
        "02_data_augmentations",
        "03_train",
        "04_evaluate",
        "05_inference_viz",
    ):
        for file in files.notebook_figures(paths, notebook):
            files.save_figure(fig, file, dpi=30)
    files.close(fig)


STEMS = ["01_data_subset", "02_data_augmentations", "03_train", "04_evaluate", "05_inference_viz"]


def test_check_outputs_passes_a_complete_run(tmp_path):
    paths = get_paths("smoke", tmp_path, run="nbval")
    _fake_outputs(paths)
    assert headless.check_outputs(paths, STEMS, min_val_ap50=0.15) == []


def test_check_outputs_names_every_problem(tmp_path):

    paths = get_paths("smoke", tmp_path, run="nbval")
    _fake_outputs(paths, ap50=0.05)
    fig, axes = common.make_grid(2, ncols=2)
    axes[0].plot([0, 1], [1, 2])
    axes[1].bar([0, 1], [0.0, 0.0])  # the empty AP chart of issue 7
    axes[1].set_title("AP per class")
    files.save_figure(fig, paths.layout.figures / "04_ap_per_class.png", dpi=30)
    (paths.layout.figures / "05_errors.png").unlink()
    (paths.run / "best.pt").write_bytes(b"retrained")  # eval and predictions are now stale
    problems = headless.check_outputs(paths, STEMS, min_val_ap50=0.15)
    text = "\n".join(problems)
    assert "'AP per class'" in text and "holds no data" in text
    assert "05_errors.png is missing" in text
    assert "below the 0.15" in text
    assert sum("current best.pt" in p for p in problems) == 3
    assert "declares no figures" in headless.check_outputs(paths, ["09_new"])[0]


def test_check_outputs_expects_the_figures_07_recorded_it_could_draw(tmp_path):

    paths = get_paths("smoke", tmp_path)
    problems = headless.check_outputs(paths, ["07_detr_comparison"])
    assert len(problems) == 4 and all("missing" in p or "not written" in p for p in problems)
    # the base install offline: nothing compared, no figure drawn, and the record says so
    summary = {"split": "test", "models": {}, "skipped": ["mask2former: needs transformers"]}
    (paths.comparison / "comparison.json").parent.mkdir(parents=True)
    (paths.comparison / "comparison.json").write_text(json.dumps(summary))
    files.record_figures(paths, "07_detr_comparison", (), reason="nothing to compare")
    assert headless.check_outputs(paths, ["07_detr_comparison"]) == []
    # a model at AP 0 everywhere: its chart holds no data, and so does its row in the summary
    per_class = {"cake": {"AP": 0.0}, "dog": {"AP": -1.0}}
    zeros = {"segm": {"AP": 0.0, "per_class": per_class}}
    occlusion = {"all": {"instances": 3, "segm": {"AP": 0.0}}}
    summary["models"] = {"mask-rcnn-v1": {"metrics": zeros, "occlusion": occlusion}}
    (paths.comparison / "comparison.json").write_text(json.dumps(summary))
    files.record_figures(paths, "07_detr_comparison", ["07_ap.png"])
    ax = charts.plot_grouped_scores(*comparison_report.ap_series(summary), title="AP")
    files.save_figure(ax, paths.comparison_figures / "07_ap.png", dpi=30, close=True)
    chart, row = headless.check_outputs(paths, ["07_detr_comparison"])
    assert "07_ap.png" in chart and "holds no data" in chart
    assert "mask-rcnn-v1 scores 0 on every class and occlusion bucket" in row


def test_check_outputs_needs_a_run_for_notebooks_03_to_05(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGLIB_RUN", raising=False)
    problems = headless.check_outputs(get_paths("smoke", tmp_path), ["03_train"])
    assert any("no training run" in p for p in problems)


def test_run_command_passes_run_overrides_and_overwrite_to_the_notebooks(
    tmp_path, monkeypatch, capsys
):
    from seglib.app import cli, runs

    monkeypatch.setenv("SEGLIB_DATA", str(tmp_path))
    calls = []

    def fake_run(profile, out, **kwargs):
        calls.append((profile, out, kwargs))
        _fake_outputs(get_paths(profile, tmp_path, run=kwargs["run_name"]), ap50=0.4321)
        yield out / "01_data_subset.ipynb"

    monkeypatch.setattr(notebook_runner, "run_notebooks", fake_run)
    monkeypatch.setattr(
        notebook_runner, "notebook_paths", lambda *a: [tmp_path / f"{s}.ipynb" for s in STEMS]
    )
    argv = [
        "run",
        "--profile",
        "smoke",
        "--run",
        "exp1",
        "--set",
        "lr=0.002",
        "--set",
        "num_epochs=3",
    ]
    assert cli.main(argv) == 0
    ((profile, out, kwargs),) = calls
    assert profile == "smoke" and out == tmp_path / "runs" / "smoke" / "exp1" / "notebooks"
    assert kwargs["run_name"] == "exp1" and kwargs["overrides"] == {"lr": 0.002, "num_epochs": 3}
    assert kwargs["overwrite"] is False
    assert kwargs["side_by_side"] == notebook_runner.SIDE_BY_SIDE
    assert "val mask AP50: 0.432" in capsys.readouterr().out
    # the same name again: refused before any notebook runs, unless --overwrite
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err and len(calls) == 1
    monkeypatch.setattr(runs, "clear_run", lambda run_dir: None)
    monkeypatch.setattr(
        notebook_runner, "run_notebooks", lambda *a, **k: iter(calls.append(k) or [])
    )
    assert cli.main([*argv, "--overwrite"]) == 0 and calls[-1]["overwrite"] is True
    assert cli.main([*argv, "--overwrite", "--one-at-a-time"]) == 0
    assert calls[-1]["side_by_side"] == ()
    # a bad value fails at once, naming the field
    assert cli.main(["run", "--profile", "smoke", "--set", "lr=-1"]) == 2
    assert "lr" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "smoke", "--set", "learning_rate=1"]) == 2
    assert "not a TrainConfig field" in capsys.readouterr().err


def test_the_run_command_checks_each_notebook_as_it_is_written(tmp_path, monkeypatch, capsys):
    """A notebook's outputs are checked before the next one is written (beside the chains still
    running), not all at the end; every problem is printed and the run exits 1."""
    from seglib.app import cli

    monkeypatch.setenv("SEGLIB_DATA", str(tmp_path))
    events = []

    def fake_run(profile, out, **kwargs):
        for stem in ("01_data_subset", "04_evaluate"):
            events.append(("written", stem))
            yield out / f"{stem}.ipynb"

    def check_outputs(paths, stems):
        events.append(("checked", *stems))
        return [f"{stem}: a problem" for stem in stems if stem == "04_evaluate"]

    monkeypatch.setattr(notebook_runner, "run_notebooks", fake_run)
    monkeypatch.setattr(headless, "check_outputs", check_outputs)
    assert cli.main(["run", "--profile", "smoke", "--notebooks", "01", "04"]) == 1
    assert events == [
        ("written", "01_data_subset"),
        ("checked", "01_data_subset"),
        ("written", "04_evaluate"),
        ("checked", "04_evaluate"),
    ]
    assert "problem: 04_evaluate: a problem" in capsys.readouterr().err
