import json
import os
import subprocess
import sys
import threading

import pytest

from seglib.app.warm_up import NICENESS, set_session_nice, warm_up

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's"
)


autogroups = pytest.mark.skipif(
    not os.path.exists("/proc/self/autogroup"), reason="no scheduling autogroups here"
)


def _probe(tmp_path, monkeypatch, name):
    """A module that records, as it is imported, the nice value of the thread importing it."""
    (tmp_path / f"{name}.py").write_text(
        "import os, threading\nNICE = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


@linux_only
def test_the_modules_are_imported_at_the_lowest_priority_and_the_caller_keeps_its_own(
    tmp_path, monkeypatch
):
    _probe(tmp_path, monkeypatch, "seglib_probe_low")
    _probe(tmp_path, monkeypatch, "seglib_probe_first")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    warm_up(modules=("seglib_probe_low",), normal_first=("seglib_probe_first",))
    assert sys.modules["seglib_probe_low"].NICE == max(mine, NICENESS) == 19
    assert sys.modules["seglib_probe_first"].NICE == mine
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_an_import_that_fails_is_raised_in_the_caller():
    with pytest.raises(ModuleNotFoundError, match="seglib_no_such_module"):
        warm_up(modules=("json", "seglib_no_such_module"), normal_first=())


@linux_only
@pytest.mark.slow
def test_the_real_warm_up_leaves_no_thread_at_low_priority():
    """numpy's and scipy's OpenBLAS and OpenCV start thread pools as they are imported; a
    pool started by the low-priority thread would run the notebook's work at nice 19. In a
    fresh process, after the real warm-up, every thread has the main thread's nice value."""
    code = (
        "import glob, json, os, sys\n"
        "from seglib.app.warm_up import MODULES, warm_up\n"
        "warm_up()\n"
        "nices = [int(open(f).read().rsplit(')', 1)[1].split()[16])"
        " for f in glob.glob(f'/proc/{os.getpid()}/task/*/stat')]\n"
        "print(json.dumps({'nices': nices, 'main': os.getpriority(os.PRIO_PROCESS, 0),"
        " 'imported': all(m in sys.modules for m in MODULES)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["imported"] and len(seen["nices"]) > 1
    assert set(seen["nices"]) == {seen["main"]}


@autogroups
def test_a_sessions_nice_value_is_set_and_set_back():
    session = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        group = f"/proc/{session.pid}/autogroup"
        assert set_session_nice(session.pid, NICENESS)
        assert open(group).read().split()[-1] == "19"
        assert set_session_nice(session.pid, 0)  # within 100 ms of the last change: retried
        assert open(group).read().split()[-1] == "0"
    finally:
        session.kill()
        session.wait()
    assert not set_session_nice(session.pid, 0)  # gone
    assert not set_session_nice(None, 0)
