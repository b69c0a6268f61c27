import json

import nbformat
import pytest

from seglib import runner
from seglib.paths import get_paths
from seglib.runner import NotebookRunError, PreflightError, notebook_paths, preflight, run_notebooks


def _write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def test_the_series_is_five_numbered_notebooks_in_order():
    names = [p.name for p in notebook_paths()]
    assert names == sorted(names) and len(names) == 5
    assert names[0] == "01_data_subset.ipynb" and names[-1] == "05_inference_viz.ipynb"


def test_smoke_needs_nothing(tmp_path):
    assert preflight("smoke", get_paths("smoke", tmp_path)) == []


def test_seed_offline_fails_fast_naming_what_is_missing_and_pointing_to_demo(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PreflightError) as err:
        preflight("seed", get_paths("seed", tmp_path))
    message = str(err.value)
    assert "instances_train2017.json" in message
    assert "maskrcnn_resnet50_fpn_coco" in message
    assert "make demo" in message


def test_seed_with_files_in_place_needs_no_network(tmp_path, monkeypatch):
    from seglib.model import weights_file

    monkeypatch.setattr(runner, "reachable", lambda url, timeout=3.0: False)
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


@pytest.mark.slow
def test_runs_notebooks_in_order_with_the_profile_and_keeps_executed_copies(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    log = tmp_path / "log.jsonl"
    cell = (
        "import json, os, pathlib\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps([pathlib.Path.cwd().name, os.environ['SEGLIB_PROFILE']]) + '\\n')\n"
        "print('done')"
    )
    _write_notebook(src / "02_second.ipynb", cell)
    _write_notebook(src / "01_first.ipynb", cell)
    out = tmp_path / "out"
    done = list(run_notebooks("smoke", out, notebooks_dir=src, timeout=60))
    assert [p.name for p in done] == ["01_first.ipynb", "02_second.ipynb"]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [["nbs", "smoke"]] * 2
    executed = nbformat.read(out / "01_first.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "done\n"
    assert not (src / "01_first.ipynb").read_text().count('"done')  # sources stay output-free


@pytest.mark.slow
def test_a_failing_cell_names_the_notebook_and_stops_the_series(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    _write_notebook(src / "01_ok.ipynb", "x = 1")
    _write_notebook(src / "02_bad.ipynb", "raise ValueError('subset missing: run 01 first')")
    _write_notebook(src / "03_never.ipynb", "x = 3")
    out = tmp_path / "out"
    with pytest.raises(NotebookRunError, match="02_bad.ipynb") as err:
        list(run_notebooks("smoke", out, notebooks_dir=src, timeout=60))
    assert "run 01 first" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["01_ok.ipynb", "02_bad.ipynb"]


@pytest.mark.slow
def test_a_dead_kernel_is_reported_as_a_failed_notebook(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    _write_notebook(src / "01_dies.ipynb", "import os\nos._exit(1)")
    with pytest.raises(NotebookRunError, match="01_dies.ipynb"):
        list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, timeout=60))
    assert (tmp_path / "out" / "01_dies.ipynb").is_file()
