import json
import os
import platform
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import nbformat
import psutil
import pytest

from seglib.app import notebook_runner
from seglib.app.notebook_runner import (
    MALLOC_TUNABLES,
    SIDE_BY_SIDE,
    NotebookRunError,
    malloc_tunables,
    notebook_paths,
    plan_lines,
    plan_stages,
    run_notebooks,
    stage_threads,
)

SERIES = [
    Path(f"{stem}.ipynb")
    for stem in (
        "01_data_subset",
        "02_data_augmentations",
        "03_train",
        "04_evaluate",
        "05_inference_viz",
        "06_occlusion_study",
        "07_detr_comparison",
        "08_augmentation_and_data",
    )
]


def _write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)


def _series(tmp_path: Path, **cells: str) -> Path:
    """Notebooks 01_<name>, 02_<name>, ... of one cell each, in keyword order, in a new folder."""
    src = tmp_path / "nbs"
    src.mkdir()
    for number, (name, cell) in enumerate(cells.items(), start=1):
        _write_notebook(src / f"{number:02d}_{name}.ipynb", cell)
    return src


def test_the_series_is_the_numbered_notebooks_in_order():
    names = [p.name for p in notebook_paths()]
    assert names == sorted(names) and len(names) >= 5
    assert names[0] == "01_data_subset.ipynb" and names[4] == "05_inference_viz.ipynb"


def test_offline_runs_leave_the_long_studies_out_and_say_how_to_run_them(tmp_path):
    for stem in ("01_data_subset", "03_train", "08_augmentation_and_data"):
        _write_notebook(tmp_path / f"{stem}.ipynb", "1")
    stems = lambda nbs: [nb.stem for nb in nbs]  # noqa: E731
    chosen, notes = notebook_runner.select_notebooks("seed", notebooks_dir=tmp_path)
    assert stems(chosen) == ["01_data_subset", "03_train", "08_augmentation_and_data"]
    assert notes == []
    for profile in ("demo", "smoke"):
        chosen, (note,) = notebook_runner.select_notebooks(profile, notebooks_dir=tmp_path)
        assert stems(chosen) == ["01_data_subset", "03_train"]
        assert note.startswith("LEFT OUT: 08_augmentation_and_data")
        assert f"make study PROFILE={profile}" in note and "--notebooks 08" in note
        assert f"study augmentation --profile {profile}" in note
    # asked for by number or name: exactly those, in series order, with nothing left to say
    chosen, notes = notebook_runner.select_notebooks("demo", ["08", "01_data_subset"], tmp_path)
    assert stems(chosen) == ["01_data_subset", "08_augmentation_and_data"] and notes == []
    with pytest.raises(ValueError, match=r"no notebook \['09'\].*01_data_subset, 03_train"):
        notebook_runner.select_notebooks("demo", ["09"], tmp_path)


@pytest.mark.slow
def test_runs_notebooks_in_order_with_the_profile_and_keeps_executed_copies(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    log = tmp_path / "log.jsonl"
    cell = (
        "import json, os, pathlib\n"
        "keys = ['SEGLIB_PROFILE', 'SEGLIB_RUN', 'SEGLIB_SET', 'SEGLIB_OVERWRITE']\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps([pathlib.Path.cwd().name] + [os.environ.get(k) for k in keys]) + '\\n')\n"
        "print('done')"
    )
    _write_notebook(src / "02_second.ipynb", cell)
    _write_notebook(src / "01_first.ipynb", cell)
    out = tmp_path / "out"
    done = list(
        run_notebooks(
            "smoke",
            out,
            run_name="lr-test",
            overrides={"lr": 0.002},
            overwrite=True,
            notebooks_dir=src,
            timeout=60,
        )
    )
    assert [p.name for p in done] == ["01_first.ipynb", "02_second.ipynb"]
    expected = ["nbs", "smoke", "lr-test", '{"lr": 0.002}', "1"]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [expected] * 2
    assert "SEGLIB_RUN" not in os.environ and "SEGLIB_SET" not in os.environ  # restored
    executed = nbformat.read(out / "01_first.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "done\n"
    assert not (src / "01_first.ipynb").read_text().count('"done')  # sources stay output-free


@pytest.mark.slow
@pytest.mark.parametrize(
    "side_by_side", [(), (("01_bad",), ("02_slow",))], ids=["one at a time", "side by side"]
)
def test_a_failing_notebook_is_named_and_no_later_stage_runs(tmp_path, side_by_side):
    """One at a time, the series stops at the failure; side by side, the chain beside it
    finishes first. Either way no later notebook runs and no kernel is left behind (03's was
    warmed while 01 ran)."""
    src = _series(
        tmp_path,
        bad="raise ValueError('no best.pt: run 03 first')",
        slow="import time\ntime.sleep(2)\nx = 2",
        never="x = 3",
    )
    out = tmp_path / "out"
    with pytest.raises(NotebookRunError, match="01_bad.ipynb") as err:
        list(run_notebooks("smoke", out, notebooks_dir=src, side_by_side=side_by_side, timeout=60))
    assert "run 03 first" in str(err.value)
    written = sorted(p.name for p in out.iterdir())
    if side_by_side:
        assert written == ["01_bad.ipynb", "02_slow.ipynb"]
        slow = nbformat.read(out / "02_slow.ipynb", as_version=4)
        assert slow.cells[0].execution_count == 1  # it ran to its end
    else:
        assert written == ["01_bad.ipynb"]
    kernels = [
        p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())
    ]
    assert kernels == []


@pytest.mark.slow
def test_a_dead_kernel_is_reported_as_a_failed_notebook(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    _write_notebook(src / "01_dies.ipynb", "import os\nos._exit(1)")
    with pytest.raises(NotebookRunError, match="01_dies.ipynb"):
        list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, timeout=60))
    assert (tmp_path / "out" / "01_dies.ipynb").is_file()


def test_kernel_environment_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv("SEGLIB_RUN", "outer")
    monkeypatch.delenv("SEGLIB_SET", raising=False)
    with notebook_runner.kernel_environment({"SEGLIB_RUN": None, "SEGLIB_SET": '{"lr": 0.1}'}):
        assert "SEGLIB_RUN" not in os.environ and os.environ["SEGLIB_SET"] == '{"lr": 0.1}'
    assert os.environ["SEGLIB_RUN"] == "outer" and "SEGLIB_SET" not in os.environ


def test_malloc_tunables_adds_glibcs_settings_and_keeps_the_users():
    ours = [f"{name}={value}" for name, value in MALLOC_TUNABLES.items()]
    assert malloc_tunables(None).split(":") == malloc_tunables("").split(":") == ours
    mine = "glibc.malloc.mmap_threshold=131072:glibc.cpu.hwcaps=-AVX2"
    kept = malloc_tunables(mine).split(":")
    assert kept[:2] == mine.split(":") and kept[2:] == ours[1:]  # the user's threshold wins


_REFAULTS = """
import ctypes, resource, torch
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KB pages, whatever THP's mode
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):  # 64 MB, freed at once: the heap grows until a freed block fits again
    before = faults()
    torch.empty(16 << 20).fill_(1)
print(faults() - before)  # the last round's: 0, or 16 thousand fresh pages
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
def test_a_kernels_malloc_keeps_freed_memory_where_the_default_returns_it():
    """A process with the kernels' ``GLIBC_TUNABLES`` fills a freed 64 MB tensor's memory again
    without faulting in new pages; with glibc's defaults it maps fresh ones."""

    def refaults(env):
        out = subprocess.run([sys.executable, "-c", _REFAULTS], env=env, capture_output=True)
        assert out.returncode == 0, out.stderr.decode()
        return int(out.stdout)

    default = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert refaults(notebook_runner._kernel_env(None)) < 1000 < 10_000 < refaults(default)


def test_stepwise_get_msg_waits_in_steps_and_passes_timeouts_through():
    import asyncio
    from queue import Empty

    calls = []

    async def get_msg(timeout=None):
        calls.append(timeout)
        if len(calls) < 3:
            raise Empty
        return {"msg_type": "execute_reply"}

    wait = notebook_runner.stepwise_get_msg(get_msg, step=0.5)
    assert asyncio.run(wait())["msg_type"] == "execute_reply"
    assert calls == [0.5, 0.5, 0.5]  # never one unbounded poll
    calls.clear()
    with pytest.raises(Empty):
        asyncio.run(wait(timeout=2.0))
    assert calls == [2.0]


def test_the_notebook_runs_read_kernel_messages_stepwise(tmp_path, monkeypatch):
    """Every wait of a real run without a timeout goes through the stepwise poll."""
    waits = []
    real = notebook_runner.stepwise_get_msg

    def recording(get_msg, step=notebook_runner.POLL_SECONDS):
        wait = real(get_msg, step)

        async def recorded(timeout=None):
            waits.append(timeout)
            return await wait(timeout)

        return recorded

    monkeypatch.setattr(notebook_runner, "stepwise_get_msg", recording)
    src = tmp_path / "nbs"
    src.mkdir()
    _write_notebook(src / "01_only.ipynb", "print('hi')", "1 + 1")
    list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src))
    assert None in waits  # the cells' replies were waited for without a timeout, in steps


def _stems(stages):
    return [[[nb.stem[:2] for nb in chain] for chain in stage] for stage in stages]


def test_after_03_the_chains_04_05_06_and_07_form_one_stage_and_the_rest_run_alone():
    assert [nb.stem for nb in SERIES] == [nb.stem for nb in notebook_paths()]
    assert _stems(plan_stages(SERIES)) == [
        [["01"]],
        [["02"]],
        [["03"]],
        [["04", "05"], ["06"], ["07"]],
        [["08"]],
    ]
    chosen = [SERIES[i] for i in (0, 4, 5)]  # 05 without 04: 05 and 06 side by side
    assert _stems(plan_stages(chosen)) == [[["01"]], [["05"], ["06"]]]
    assert _stems(plan_stages(SERIES[3:5])) == [[["04", "05"]]]
    assert _stems(plan_stages(SERIES, side_by_side=())) == [[[nb.stem[:2]]] for nb in SERIES]


def test_side_by_side_kernels_share_the_cpus_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    three, alone = plan_stages(SERIES)[3], plan_stages(SERIES)[2]
    assert stage_threads(alone, cpus=2) is None  # torch's own default
    assert stage_threads(three, cpus=2) == 1 and stage_threads(three, cpus=16) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # set by the user: never exceeded
    assert stage_threads(three, cpus=16) == 2 and stage_threads(three, cpus=2) == 1
    (line,) = plan_lines(plan_stages(SERIES))
    assert "04_evaluate -> 05_inference_viz | 06_occlusion_study | 07_detr_comparison" in line
    assert "--one-at-a-time" in line
    assert plan_lines(plan_stages(SERIES, side_by_side=())) == []


def _interval(log, name):
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    (row,) = [r for r in rows if r["name"] == name]
    return row


@pytest.mark.slow
def test_chains_run_at_the_same_time_on_warmed_kernels_with_their_threads(tmp_path, monkeypatch):
    """02 and 03 side by side after 01: their cells overlap in time, each kernel got its
    thread count, and the later stage's kernels had imported WARM_UP before their first cell
    (a light one here, so both are warm, one after the other, within 01's 3 s)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(notebook_runner, "WARM_UP", "import colorsys")
    src, log = tmp_path / "nbs", tmp_path / "log.jsonl"
    src.mkdir()
    cell = (
        "import json, os, sys, time\n"
        "start = time.time()\n"
        "warm = 'colorsys' in sys.modules\n"
        "time.sleep(3)\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'name': NAME,"
        " 'start': start, 'end': time.time(), 'warm': warm,"
        " 'threads': os.environ.get('OMP_NUM_THREADS'),"
        " 'tunables': os.environ.get('GLIBC_TUNABLES')}) + '\\n')\n"
    )
    for name in ("01_first", "02_left", "03_right"):
        _write_notebook(src / f"{name}.ipynb", f"NAME = {name!r}", cell)
    side = (("02_left",), ("03_right",))
    cpus = len(os.sched_getaffinity(0))
    out = tmp_path / "out"
    done = list(run_notebooks("smoke", out, notebooks_dir=src, side_by_side=side, timeout=120))
    assert sorted(p.name for p in done) == ["01_first.ipynb", "02_left.ipynb", "03_right.ipynb"]
    first, left, right = (_interval(log, n) for n in ("01_first", "02_left", "03_right"))
    assert left["start"] < right["end"] and right["start"] < left["end"]  # overlapping
    assert min(left["start"], right["start"]) >= first["end"]  # after the stage before
    threads = str(max(1, cpus // 2))
    assert left["threads"] == right["threads"] == threads and first["threads"] is None
    assert left["warm"] and right["warm"] and not first["warm"]  # 01 started cold
    assert first["tunables"] == left["tunables"] == right["tunables"] == malloc_tunables(None)
    executed = nbformat.read(out / "02_left.ipynb", as_version=4)
    assert executed.metadata.seglib["torch_threads"] == int(threads)
    started, finished = (
        datetime.fromisoformat(executed.metadata.seglib[k]) for k in ("started", "finished")
    )
    assert started < finished
    assert [c.execution_count for c in executed.cells] == [1, 2]  # the warm-up left no trace


@pytest.mark.slow
def test_a_finished_notebooks_kernel_is_killed_not_left_to_exit(tmp_path):
    """01's kernel has an atexit handler that leaves a file, then would take 30 s: a kernel
    asked to shut down runs it; a killed one never does. 02 runs, and no kernel is left."""
    exited = tmp_path / "01_exited"
    touch = f"pathlib.Path({str(exited)!r}).touch()"
    src = _series(
        tmp_path,
        first=f"import atexit, pathlib, time\natexit.register(lambda: ({touch}, time.sleep(30)))",
        second="x = 2",
    )
    out = tmp_path / "out"
    done = list(run_notebooks("smoke", out, notebooks_dir=src, timeout=60))
    assert [p.name for p in done] == ["01_first.ipynb", "02_second.ipynb"]
    kernels = [
        p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())
    ]
    assert kernels == []
    assert not exited.exists()


@pytest.mark.slow
def test_kernels_start_two_stages_ahead_one_after_another(tmp_path, monkeypatch):
    """While 01 runs (6 s), 02's kernel warms (2 s), then 03's: 03's kernel starts after
    02's is warm, long before 01 ends. Kernel start times come from the same clock."""
    monkeypatch.setattr(notebook_runner, "WARM_UP", "import time; time.sleep(2)")
    src, log = tmp_path / "nbs", tmp_path / "log.jsonl"
    src.mkdir()
    cell = (
        "import json, time, psutil\n"
        "time.sleep(6 if NAME == '01_first' else 0)\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'name': NAME, 'kernel': psutil.Process().create_time()}) + '\\n')\n"
    )
    for name in ("01_first", "02_second", "03_third"):
        _write_notebook(src / f"{name}.ipynb", f"NAME = {name!r}", cell)
    list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, side_by_side=(), timeout=60))
    k1, k2, k3 = (_interval(log, n)["kernel"] for n in ("01_first", "02_second", "03_third"))
    assert k3 - k1 < 5  # during 01, not after it
    assert k3 - k2 > 1.5  # after 02's warm-up, not beside it


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values per thread")
def test_a_kernel_warmed_ahead_has_its_imports_done_and_every_thread_at_normal_priority(tmp_path):
    """The real warm-up (``seglib.app.warm_up``): 02's kernel imported torch at nice 19 while
    01 ran, and 02's cells run with every thread of its kernel at the kernel's own priority."""
    seen = tmp_path / "seen.json"
    probe = (
        "import glob, json, os, pathlib, sys\n"
        "warm = 'torch' in sys.modules\n"
        "nices = {int(open(f).read().rsplit(')', 1)[1].split()[16])"
        " for f in glob.glob(f'/proc/{os.getpid()}/task/*/stat')}\n"
        f"pathlib.Path({str(seen)!r}).write_text(json.dumps({{'warm': warm,"
        " 'nices': sorted(nices), 'mine': os.getpriority(os.PRIO_PROCESS, 0)}))\n"
    )
    src = _series(tmp_path, first="import time; time.sleep(1)", second=probe)
    list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, timeout=120))
    record = json.loads(seen.read_text())
    assert record["warm"] and record["nices"] == [record["mine"]] == [
        os.getpriority(os.PRIO_PROCESS, 0)
    ]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no autogroups here")
def test_a_warming_kernels_session_runs_at_nice_19_and_its_notebook_at_0(tmp_path, monkeypatch):
    """Each kernel is a session of its own: while a kernel warms a stage ahead, its whole
    session is at the lowest priority, and once its stage starts it is back at 0. Every
    notebook of a chain warms ahead (03 after 02 here, as 05 after 04 in a run); in a chain
    that nothing runs before (01 -> 02), the next kernel warms beside it at normal priority.
    01 takes 4 s, so the warm-ups finish before the stage after it starts."""
    warming, running = tmp_path / "warming", tmp_path / "running"
    record = "with open({!r}, 'a') as f: f.write(open('/proc/self/autogroup').read())"
    monkeypatch.setattr(notebook_runner, "WARM_UP", record.format(str(warming)))
    cell = record.format(str(running))

    def nices(file):
        values = [line.split()[-1] for line in file.read_text().splitlines()]
        file.unlink()
        return values

    src = _series(tmp_path, first="import time; time.sleep(4)", second=cell, third=cell)
    chain = (("02_second", "03_third"),)
    list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, side_by_side=chain))
    assert nices(warming) == ["19", "19"] and nices(running) == ["0", "0"]
    chain = (("01_first", "02_second"),)
    list(run_notebooks("smoke", tmp_path / "out2", notebooks_dir=src, side_by_side=chain))
    assert nices(warming) == ["0", "19"]  # 02 beside 01, then 03 ahead of its stage
    assert nices(running) == ["0", "0"]


def test_a_stage_starts_its_chains_first_notebooks_first():
    stages = plan_stages(SERIES, SIDE_BY_SIDE)
    after_03 = next(stage for stage in stages if len(stage) > 1)
    assert [nb.stem for nb in notebook_runner.start_order(after_03)] == [
        "04_evaluate",
        "06_occlusion_study",
        "07_detr_comparison",
        "05_inference_viz",
    ]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no autogroups here")
def test_a_warm_up_still_running_when_its_stage_starts_goes_on_at_nice_0(tmp_path, monkeypatch):
    """01 ends at once; 02's warm-up (4 s) is still running then, and the rest of it runs at
    normal priority, as does 03's, which starts after 01 ended: neither waits at nice 19 while
    its own stage runs."""
    warming = tmp_path / "warming"
    record = f"with open({str(warming)!r}, 'a') as f: f.write(open('/proc/self/autogroup').read())"
    monkeypatch.setattr(notebook_runner, "WARM_UP", f"import time; time.sleep(4)\n{record}")
    src = _series(tmp_path, first="x = 1", second="y = 2", third="z = 3")
    chain = (("02_second", "03_third"),)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing was left at nice 19
        list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, side_by_side=chain))
    assert [line.split()[-1] for line in warming.read_text().splitlines()] == ["0", "0"]


@pytest.mark.slow
def test_a_kernel_left_at_nice_19_is_said_loudly(tmp_path, monkeypatch):
    """Setting a warmed kernel's session back to 0 fails: the run still runs the notebook,
    and warns that it runs at the lowest priority."""
    monkeypatch.setattr(notebook_runner, "WARM_UP", "x = 1")
    monkeypatch.setattr(notebook_runner, "set_session_nice", lambda pid, nice: nice > 0)
    src = _series(tmp_path, first="x = 1", second="y = 2")
    with pytest.warns(RuntimeWarning, match="02_second.ipynb runs at the lowest CPU priority"):
        done = list(run_notebooks("smoke", tmp_path / "out", notebooks_dir=src, timeout=60))
    assert [p.name for p in done] == ["01_first.ipynb", "02_second.ipynb"]


def test_the_demo_series_chains_name_real_notebooks():
    stems = {nb.stem for nb in notebook_paths()}
    assert {stem for chain in SIDE_BY_SIDE for stem in chain} <= stems
