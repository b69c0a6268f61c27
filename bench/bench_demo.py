"""Wall time of the whole demo as a user runs it: ``make demo``, per notebook and per stage.

    python bench/bench_demo.py [--profile demo|smoke] [--set FIELD=VALUE ...] [--keep] [--json FILE]

Runs ``make demo``'s command, ``python -m seglib run --profile PROFILE [--set ...]``, as a
subprocess in a fresh data folder (``$SEGLIB_DATA`` set to a new temporary folder, removed
afterwards unless ``--keep``), so it measures what a user gets: synthetic data built from
nothing, a model trained from scratch, every notebook executed headless by nbclient.
``$SEGLIB_SET`` passes through to the run as it would from a shell. The run's output is
echoed as it comes; the child gets ``PYTHONUNBUFFERED=1`` so each line is time-stamped when
it is printed, not when a buffer fills.

Then it prints a table, one row per notebook (01 ... 07), then per stage: data (01, 02),
training (03), evaluation (04, 05), study (06), comparison (07), and the total:

- ``cells_s``: the notebook's code, from nbclient's cell timing in the executed copy the run
  keeps (``runs/<profile>/<run>/notebooks/``; each code cell's ``metadata.execution``): the
  first cell's ``iopub.execute_input`` to the last cell's ``shell.execute_reply``;
- ``wall_s``: from the previous ``executed <notebook>`` line of the run (for 01, its
  ``run '<name>'`` line) to this notebook's: kernel start-up, the cells, writing the copy;
- total: the subprocess from start to exit (Python start-up, imports, the output checks).

Then the val mask AP50 the run printed, the machine (CPU model and count from ``lscpu``),
torch's version, the training device (the run's ``config.json``) and whether training used
bf16 autocast: the run's ``cpu_amp`` setting when its config has one, with whether this CPU
computes bf16 natively (AMX tiles or AVX512-BF16), and the precision line notebook 03
printed, if any. ``--json`` writes all of it. The exit status is the run's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from seglib.app.headless import notebook_paths, select_notebooks
from seglib.core.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]
#: Stage of each notebook, by its number.
STAGES: dict[str, str] = {
    "01": "data",
    "02": "data",
    "03": "training",
    "04": "evaluation",
    "05": "evaluation",
    "06": "study",
    "07": "comparison",
    "08": "study",
}
STAGE_ORDER = ("data", "training", "evaluation", "study", "comparison")
AP_LINE = re.compile(r"^val mask AP50: (\S+)")
EXECUTED_LINE = re.compile(r"^executed (.+\.ipynb)$")
RUN_LINE = re.compile(r"^run '.*' \(\w+\): ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=[p for p in PROFILES if p != "seed"], default="demo")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="passed to the run as is, e.g. --set num_epochs=1 (repeatable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    p.add_argument("--json", type=Path, default=None, help="write the table here as JSON")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    """CPU model and count from lscpu (platform's guess without it), usable CPUs, torch."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    fields = {
        k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    }
    return {
        "cpu_model": fields.get("Model name") or platform.processor() or platform.machine(),
        "cpus": int(fields["CPU(s)"]) if fields.get("CPU(s)", "").isdigit() else os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cpu_bf16() -> dict[str, bool]:
    """Whether this CPU has AMX tiles and AVX512-BF16 (torch's probes)."""
    return {
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
    }


def _stamp(value: str) -> float:
    """Seconds since the epoch of a Jupyter message timestamp (ISO 8601, ``Z`` for UTC)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def cells_seconds(notebook: Path) -> float | None:
    """First code cell's ``iopub.execute_input`` to the last one's ``shell.execute_reply``
    (nbclient's ``record_timing``), or None when the copy holds no such timing."""
    nb = json.loads(notebook.read_text())
    timings = [
        c.get("metadata", {}).get("execution", {}) for c in nb["cells"] if c["cell_type"] == "code"
    ]
    starts = [_stamp(t["iopub.execute_input"]) for t in timings if "iopub.execute_input" in t]
    ends = [_stamp(t["shell.execute_reply"]) for t in timings if "shell.execute_reply" in t]
    if not starts or not ends:
        return None
    return round(max(ends) - min(starts), 1)


def training_precision(notebook: Path) -> str | None:
    """The ``training precision: ...`` line notebook 03 printed, if it printed one."""
    if not notebook.is_file():
        return None
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            for line in text.splitlines():
                if "training precision:" in line:
                    return line[line.index("training precision:") :].strip()
    return None


def bf16_report(run_dir: Path) -> dict[str, Any]:
    """Whether training used bf16 autocast, from the run's config.json and notebook 03."""
    config_file = run_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    native = cpu_bf16()
    report: dict[str, Any] = {
        "device": config.get("device"),
        "cpu_native_bf16": native,
        "notebook_03": training_precision(run_dir / "notebooks" / "03_train.ipynb"),
    }
    if "cpu_amp" not in config:
        report.update(cpu_amp=None, used=False, summary="off (no such setting)")
        return report
    setting = config["cpu_amp"]
    on_cpu = config.get("device") == "cpu" or (
        config.get("device") == "auto" and not torch.cuda.is_available()
    )
    used = on_cpu and (setting == "bf16" or (setting == "auto" and any(native.values())))
    probes = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in native.items())
    where = "" if on_cpu else f" (trained on {config.get('device')}: cpu_amp does not apply)"
    summary = f"{'on' if used else 'off'} (cpu_amp={setting!r}; CPU {probes}){where}"
    report.update(cpu_amp=setting, used=used, summary=summary)
    return report


def build_table(
    run_dir: Path | None,
    wall: dict[str, float] | None = None,
    notebooks: list[str] | None = None,
) -> dict[str, Any]:
    """Per-notebook and per-stage seconds of a run from its executed copies under
    ``run_dir/notebooks`` (``cells_s``) and ``wall`` (notebook stem -> seconds, ``wall_s``).

    ``notebooks`` (stems) are the rows, by default the series in ``notebooks/``; one the run
    did not execute has None. A stage's seconds are the sum of its notebooks' (None unless all
    of them have some), and so are the notebooks' together.
    """
    wall = wall or {}
    stems = notebooks or [p.stem for p in notebook_paths()]
    rows = []
    for stem in stems:
        copy = run_dir / "notebooks" / f"{stem}.ipynb" if run_dir else None
        rows.append(
            {
                "notebook": stem,
                "stage": STAGES.get(stem[:2], "other"),
                "cells_s": cells_seconds(copy) if copy and copy.is_file() else None,
                "wall_s": wall.get(stem),
            }
        )

    def total(values: list[float | None]) -> float | None:
        return None if None in values else round(sum(values), 1)

    stages = {
        stage: {
            key: total([r[key] for r in rows if r["stage"] == stage])
            for key in ("cells_s", "wall_s")
        }
        for stage in (*STAGE_ORDER, "other")
        if any(r["stage"] == stage for r in rows)
    }
    sums = {key: total([r[key] for r in rows]) for key in ("cells_s", "wall_s")}
    return {"notebooks": rows, "stages": stages, "notebooks_total": sums}


def format_table(result: dict[str, Any]) -> str:
    """The table and the facts around it, as printed."""

    def cell(value: float | None) -> str:
        return f"{value:8.1f}" if value is not None else f"{'-':>8}"

    lines = [f"{'':<26}{'cells_s':>8}  {'wall_s':>8}"]
    for r in result["notebooks"]:
        lines.append(f"{r['notebook']:<26}{cell(r['cells_s'])}  {cell(r['wall_s'])}")
    lines.append("stages")
    for stage, s in result["stages"].items():
        nbs = ", ".join(r["notebook"][:2] for r in result["notebooks"] if r["stage"] == stage)
        lines.append(f"  {f'{stage} ({nbs})':<24}{cell(s['cells_s'])}  {cell(s['wall_s'])}")
    sums = result["notebooks_total"]
    lines.append(f"{'notebooks together':<26}{cell(sums['cells_s'])}  {cell(sums['wall_s'])}")
    if "total_s" in result:
        lines.append(f"{'total (the whole command)':<26}{'':>8}  {cell(result['total_s'])}")
    m = result.get("machine", {})
    ap = result.get("val_mask_ap50")
    bf16 = result.get("bf16", {})
    lines += [
        f"val mask AP50: {ap if ap is not None else 'not printed'}",
        f"CPU: {m.get('cpu_model')}, {m.get('cpus')} CPUs ({m.get('cpus_usable')} usable)"
        + (f"; GPU {m['cuda']}" if m.get("cuda") else ""),
        f"torch {m.get('torch')}, training device {bf16.get('device')}",
        f"bf16 autocast in training: {bf16.get('summary')}",
    ]
    if bf16.get("notebook_03"):
        lines.append(f"notebook 03 said: {bf16['notebook_03']}")
    return "\n".join(lines)


def run_demo(profile: str, sets: list[str], data: Path) -> dict[str, Any]:
    """Run ``python -m seglib run`` with ``$SEGLIB_DATA=data``, echoing and time-stamping its
    lines. Returns its exit status, total seconds, per-notebook wall seconds, the executed
    copies' folder, the AP50 it printed and its problem lines."""
    cmd = [sys.executable, "-m", "seglib", "run", "--profile", profile]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "SEGLIB_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    print(f"$ SEGLIB_DATA={data} python {' '.join(cmd[1:])}", flush=True)
    wall: dict[str, float] = {}
    run_dir, ap50, problems = None, None, []
    start = mark = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        sys.stdout.write(line)
        sys.stdout.flush()
        line = line.rstrip("\n")
        if RUN_LINE.match(line):
            mark = now
        elif m := EXECUTED_LINE.match(line):
            path = Path(m.group(1))
            wall[path.stem] = round(now - mark, 1)
            run_dir, mark = path.parent.parent, now
        elif m := AP_LINE.match(line):
            ap50 = float(m.group(1))
        elif line.startswith("problem: "):
            problems.append(line.removeprefix("problem: "))
    status = proc.wait()
    total = round(time.perf_counter() - start, 1)
    if run_dir is None:  # failed before the first copy was written: look for a partial one
        found = sorted(data.glob(f"runs/{profile}/*/notebooks"))
        run_dir = found[-1].parent if found else None
    return {
        "command": ["python", *cmd[1:]],
        "exit_status": status,
        "total_s": total,
        "wall": wall,
        "run_dir": run_dir,
        "val_mask_ap50": ap50,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="seglib-bench-demo-"))
    try:
        run = run_demo(args.profile, args.set, data)
        result = {
            "profile": args.profile,
            "sets": args.set,
            "seglib_set_env": os.environ.get("SEGLIB_SET"),
            "command": run["command"],
            "exit_status": run["exit_status"],
            "problems": run["problems"],
            # the notebooks `make demo` runs (an offline profile leaves 08 out, and says so)
            **build_table(
                run["run_dir"], run["wall"], [nb.stem for nb in select_notebooks(args.profile)[0]]
            ),
            "total_s": run["total_s"],
            "val_mask_ap50": run["val_mask_ap50"],
            "machine": machine(),
            "bf16": bf16_report(run["run_dir"])
            if run["run_dir"]
            else {"summary": "unknown (no run folder)"},
        }
    finally:
        if args.keep:
            print(f"data folder kept: {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    print()
    print(f"bench_demo: {' '.join(result['command'])} in a fresh $SEGLIB_DATA")
    print(format_table(result))
    if result["exit_status"]:
        print(
            f"the run exited with status {result['exit_status']}"
            + (f" ({len(result['problems'])} problems, listed above)" if result["problems"] else "")
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written: {args.json}")
    return result["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
