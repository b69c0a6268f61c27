"""The imports a kernel does ahead of its notebook, at the lowest CPU priority.

``seglib.app.notebook_runner`` starts each notebook's kernel while the notebooks before it
run, and has it import the heavy modules then (``warm_up``). Done on equal terms, those imports
slowed notebook 03 most: its training runs two torch threads on the two cores, and while an
import held one core, every parallel region waited for the thread that shared it. On the
2-core Intel Xeon kind, 24 demo training steps took 54.6 s beside three such imports in a row,
and 23.9 s alone (``bench/bench_warm_up.py``).

Two settings make a warming kernel take only the CPU the running notebook leaves:

- ``warm_up`` imports in a thread of its own at nice 19; the kernel's main thread, which later
  runs the notebook, keeps its priority. Linux keeps a nice value per thread (elsewhere
  ``os.setpriority`` cannot set one, and the imports run at normal priority).
- ``set_session_nice``: jupyter_client starts each kernel in a session of its own, and where
  Linux schedules each session as one group (autogroups, on by default for processes outside
  a cgroup of their own), a thread's nice value counts only inside its session. The runner
  sets the whole session of a kernel warmed a stage ahead to nice 19, and back to 0 when its
  stage starts.

A thread pool started while a module is imported inherits the nice value of the thread that
imports it, and would keep it for the notebook's work. The modules that start one at import
(numpy's and scipy's OpenBLAS, OpenCV) are therefore imported first, at normal priority
(``NORMAL_FIRST``); ``tests/app/test_warm_up.py`` checks that no thread is left at nice 19.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

#: Imported first, at normal priority: each starts a thread pool as it is imported.
NORMAL_FIRST = ("numpy", "cv2", "scipy.linalg")
#: The heavy imports of the notebooks' setup cells (3.0 s of the 3.1 s one took).
MODULES = (
    "torch",
    "torchvision",
    "matplotlib.pyplot",
    "albumentations",
    "pycocotools.coco",
    "ipywidgets",
)
#: The importing thread's nice value, and its kernel session's: the lowest priority.
NICENESS = 19
#: Tries of ``set_session_nice`` while other changes hold the system-wide 100 ms gap.
RETRIES = 20


def warm_up(
    modules: Sequence[str] = MODULES,
    normal_first: Sequence[str] = NORMAL_FIRST,
    niceness: int = NICENESS,
) -> None:
    """Import ``normal_first``, then ``modules`` in a thread at ``niceness``; wait for it.

    Raises:
        ImportError (or whatever an import raised): from the importing thread.
    """
    for name in normal_first:
        importlib.import_module(name)
    failed: list[BaseException] = []

    def work() -> None:
        with contextlib.suppress(AttributeError, OSError):  # a per-thread value: Linux only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        try:
            for name in modules:
                importlib.import_module(name)
        except BaseException as e:  # re-raised in the calling thread
            failed.append(e)

    thread = threading.Thread(target=work, name="seglib-warm-up")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def set_session_nice(pid: int | None, niceness: int) -> bool:
    """Set the nice value of process ``pid``'s scheduling autogroup (Linux); True if set.

    jupyter_client starts each kernel in a session of its own, and where the kernel has
    autogroups on (``/proc/sys/kernel/sched_autogroup_enabled``) each session is one group
    that shares the CPUs with the others as a whole: a warming kernel's thread at nice 19
    still took one of two cores from notebook 03's training (psutil, 2-core Intel Xeon kind).
    The group's own nice value weighs the group; any value from 0 to 19 may be set, and set
    back, without privileges (one change per 100 ms: a busy moment is retried, sleeping up
    to ``RETRIES`` × 0.11 s). False where there is no such file or it cannot be written (no
    autogroups, another platform, no ``pid``): the per-thread value of ``warm_up`` is what
    counts there.
    """
    if pid is None:
        return False
    for _ in range(RETRIES):
        try:
            Path(f"/proc/{pid}/autogroup").write_text(f"{niceness}\n")
            return True
        except BlockingIOError:  # without CAP_SYS_ADMIN, one change per 100 ms, system-wide
            time.sleep(0.11)
        except OSError:
            return False
    return False
