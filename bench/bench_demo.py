"""Wall time of the whole demo as a user runs it: ``make demo``, per notebook and per stage.

    python bench/bench_demo.py [--profile demo|smoke] [--set FIELD=VALUE ...] [--one-at-a-time]
                               [--keep] [--json FILE]

Runs ``make demo``'s command, ``python -m seglib run --profile PROFILE [--set ...]``, as a
subprocess in a fresh data folder (``$SEGLIB_DATA`` set to a new temporary folder, removed
afterwards unless ``--keep``), so it measures what a user gets: synthetic data built from
nothing, a model trained from scratch, every notebook executed headless by nbclient.
``$SEGLIB_SET`` passes through to the run as it would from a shell. The run's output is
echoed as it comes (the child gets ``PYTHONUNBUFFERED=1``).

Then it prints a table, one row per notebook (01 ... 07), then per stage: data (01, 02),
training (03), evaluation (04, 05), study (06), comparison (07), and the total. The run
executes 04 -> 05, 06 and 07 side by side (``seglib.app.notebook_runner``), so the stages
after training overlap in time:

- ``cells_s``: the notebook's code, from nbclient's cell timing in the executed copy the run
  keeps (``runs/<profile>/<run>/notebooks/``; each code cell's ``metadata.execution``): the
  first cell's ``iopub.execute_input`` to the last cell's ``shell.execute_reply``;
- ``from_s`` and ``to_s``: when the notebook started and finished executing, in seconds from
  the command's start (the copy's ``metadata.seglib``, which the runner writes; a kernel
  started ahead of its notebook did so while the ones before it ran);
- a stage's ``from_s`` and ``to_s``: its first start and its last finish;
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

from seglib.app.notebook_runner import notebook_paths, select_notebooks
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
    p.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="passed to the run: every notebook alone, in order (the baseline of side by side)",
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


def ran_between(notebook: Path, since: float) -> tuple[float | None, float | None]:
    """When an executed copy started and finished executing (``metadata.seglib``, from the
    runner), in seconds after ``since`` (seconds since the epoch); None where unrecorded."""
    meta = json.loads(notebook.read_text()).get("metadata", {}).get("seglib", {})
    return tuple(  # type: ignore[return-value]
        round(_stamp(meta[key]) - since, 1) if key in meta else None
        for key in ("started", "finished")
    )


def build_table(
    run_dir: Path | None, since: float | None = None, notebooks: list[str] | None = None
) -> dict[str, Any]:
    """Per-notebook and per-stage seconds of a run from its executed copies under
    ``run_dir/notebooks``: ``cells_s``, and ``from_s``/``to_s`` after ``since`` (the
    command's start, seconds since the epoch).

    ``notebooks`` (stems) are the rows, by default the series in ``notebooks/``; one the run
    did not execute has None. A stage's ``cells_s`` is the sum of its notebooks' and its
    ``from_s``/``to_s`` their first start and last finish (None unless all of them have
    some); so are the notebooks' together.
    """
    stems = notebooks or [p.stem for p in notebook_paths()]
    rows = []
    for stem in stems:
        copy = run_dir / "notebooks" / f"{stem}.ipynb" if run_dir else None
        ran = copy is not None and copy.is_file()
        started, finished = ran_between(copy, since) if ran and since else (None, None)
        rows.append(
            {
                "notebook": stem,
                "stage": STAGES.get(stem[:2], "other"),
                "cells_s": cells_seconds(copy) if ran else None,
                "from_s": started,
                "to_s": finished,
            }
        )

    def summary(group: list[dict[str, Any]]) -> dict[str, float | None]:
        def known(key: str) -> list[float] | None:
            values = [r[key] for r in group]
            return None if None in values else values

        cells, starts, ends = known("cells_s"), known("from_s"), known("to_s")
        return {
            "cells_s": round(sum(cells), 1) if cells else None,
            "from_s": min(starts) if starts else None,
            "to_s": max(ends) if ends else None,
        }

    stages = {
        stage: summary([r for r in rows if r["stage"] == stage])
        for stage in (*STAGE_ORDER, "other")
        if any(r["stage"] == stage for r in rows)
    }
    return {"notebooks": rows, "stages": stages, "notebooks_total": summary(rows)}


def format_table(result: dict[str, Any]) -> str:
    """The table and the facts around it, as printed."""

    def cell(value: float | None) -> str:
        return f"{value:8.1f}" if value is not None else f"{'-':>8}"

    def row(name: str, r: dict[str, Any]) -> str:
        return f"{name:<26}{cell(r['cells_s'])}  {cell(r['from_s'])}  {cell(r['to_s'])}"

    lines = [f"{'':<26}{'cells_s':>8}  {'from_s':>8}  {'to_s':>8}"]
    lines += [row(r["notebook"], r) for r in result["notebooks"]]
    lines.append("stages")
    for stage, s in result["stages"].items():
        nbs = ", ".join(r["notebook"][:2] for r in result["notebooks"] if r["stage"] == stage)
        lines.append(row(f"  {stage} ({nbs})", s))
    lines.append(row("notebooks together", result["notebooks_total"]))
    if "total_s" in result:
        lines.append(
            f"{'total (the whole command)':<26}{'':>8}  {'':>8}  {cell(result['total_s'])}"
        )
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


def run_demo(
    profile: str, sets: list[str], data: Path, one_at_a_time: bool = False
) -> dict[str, Any]:
    """Run ``python -m seglib run`` with ``$SEGLIB_DATA=data``, echoing its lines. Returns its exit status, start (seconds since the epoch) and total seconds, the
    executed copies' folder, the AP50 it printed and its problem lines."""
    cmd = [sys.executable, "-m", "seglib", "run", "--profile", profile]
    cmd += ["--one-at-a-time"] if one_at_a_time else []
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "SEGLIB_DATA": str(data), "PYTHONUNBUFFERED": "1"}
    print(f"$ SEGLIB_DATA={data} python {' '.join(cmd[1:])}", flush=True)
    run_dir, ap50, problems = None, None, []
    since, start = time.time(), time.perf_counter()
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
        sys.stdout.write(line)
        sys.stdout.flush()
        line = line.rstrip("\n")
        if m := EXECUTED_LINE.match(line):
            run_dir = Path(m.group(1)).parent.parent
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
        "since": since,
        "total_s": total,
        "run_dir": run_dir,
        "val_mask_ap50": ap50,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="seglib-bench-demo-"))
    try:
        run = run_demo(args.profile, args.set, data, args.one_at_a_time)
        result = {
            "profile": args.profile,
            "sets": args.set,
            "seglib_set_env": os.environ.get("SEGLIB_SET"),
            "command": run["command"],
            "exit_status": run["exit_status"],
            "problems": run["problems"],
            # the notebooks `make demo` runs (an offline profile leaves 08 out, and says so)
            **build_table(
                run["run_dir"], run["since"], [nb.stem for nb in select_notebooks(args.profile)[0]]
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
