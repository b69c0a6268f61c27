"""bench/bench_demo.py's table, built from a fixture run folder (nothing is run or timed)."""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_demo.py"


@pytest.fixture(scope="module")
def bench_demo():
    spec = importlib.util.spec_from_file_location("bench_demo", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(folder: Path, stem: str, spans: list[tuple[str, str]], text: str = "") -> None:
    """An executed copy whose code cells ran over ``spans`` (start, reply) seconds past 03:00,
    and which the runner recorded as running from a second before its first cell to a second
    after its last."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# title"}]
    for start, reply in spans:
        cells.append(
            {
                "cell_type": "code",
                "metadata": {
                    "execution": {
                        "iopub.execute_input": f"2026-12-02T03:00:{start}Z",
                        "shell.execute_reply": f"2026-12-02T03:00:{reply}Z",
                    }
                },
                "outputs": [{"output_type": "stream", "name": "stdout", "text": [text]}],
                "source": "",
            }
        )
    ran = {
        "started": f"2026-12-02T03:00:{float(spans[0][0]) - 1:09.6f}+00:00",
        "finished": f"2026-12-02T03:00:{float(spans[-1][1]) + 1:09.6f}+00:00",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.ipynb").write_text(json.dumps({"cells": cells, "metadata": {"seglib": ran}}))


def test_table_from_run_folder(bench_demo, tmp_path):
    nbs = tmp_path / "notebooks"
    _notebook(nbs, "01_data_subset", [("01.000000", "03.500000"), ("04.000000", "05.000000")])
    _notebook(nbs, "02_data_augmentations", [("10.000000", "12.000000")])
    _notebook(
        nbs,
        "03_train",
        [("20.000000", "50.200000")],
        "training precision: bf16 autocast on the CPU (native bf16 (AMX or AVX512-BF16))\n",
    )
    (nbs / "04_evaluate.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    stems = ["01_data_subset", "02_data_augmentations", "03_train", "04_evaluate"]

    since = datetime(2026, 12, 2, 3, 0, 0, tzinfo=timezone.utc).timestamp()
    table = bench_demo.build_table(tmp_path, since, stems)

    cells = {r["notebook"]: r["cells_s"] for r in table["notebooks"]}
    assert cells == {
        "01_data_subset": 4.0,
        "02_data_augmentations": 2.0,
        "03_train": 30.2,
        "04_evaluate": None,  # no timed cell
    }
    spans = {r["notebook"]: (r["from_s"], r["to_s"]) for r in table["notebooks"]}
    assert spans["01_data_subset"] == (0.0, 6.0) and spans["03_train"] == (19.0, 51.2)
    assert spans["04_evaluate"] == (None, None)  # no record of the runner's
    assert table["stages"]["data"] == {"cells_s": 6.0, "from_s": 0.0, "to_s": 13.0}
    assert table["stages"]["training"] == {"cells_s": 30.2, "from_s": 19.0, "to_s": 51.2}
    assert table["stages"]["evaluation"] == {"cells_s": None, "from_s": None, "to_s": None}
    assert table["notebooks_total"] == {"cells_s": None, "from_s": None, "to_s": None}
    assert bench_demo.training_precision(nbs / "03_train.ipynb").startswith(
        "training precision: bf16 autocast"
    )
    text = bench_demo.format_table({**table, "total_s": 50.0, "val_mask_ap50": 0.2})
    assert "data (01, 02)" in text and "val mask AP50: 0.2" in text


def test_bf16_from_config(bench_demo, tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"device": "cpu", "amp": False}))
    assert bench_demo.bf16_report(tmp_path)["summary"] == "off (no such setting)"

    monkeypatch.setattr(bench_demo, "cpu_bf16", lambda: {"amx": False, "avx512_bf16": True})
    for setting, used in (("auto", True), ("bf16", True), ("off", False)):
        (tmp_path / "config.json").write_text(json.dumps({"device": "cpu", "cpu_amp": setting}))
        report = bench_demo.bf16_report(tmp_path)
        assert (report["cpu_amp"], report["used"]) == (setting, used)
        assert report["summary"].startswith("on" if used else "off")
    monkeypatch.setattr(bench_demo, "cpu_bf16", lambda: {"amx": False, "avx512_bf16": False})
    assert not bench_demo.bf16_report(tmp_path)["used"]  # still "off"
    (tmp_path / "config.json").write_text(json.dumps({"device": "cpu", "cpu_amp": "auto"}))
    assert not bench_demo.bf16_report(tmp_path)["used"]  # auto without native bf16
