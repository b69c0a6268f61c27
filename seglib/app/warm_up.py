"""The imports a kernel does ahead of its notebook, at the lowest CPU priority.

``seglib.app.notebook_runner`` starts each notebook's kernel while the notebooks before it
run, and has it import the heavy modules then (``warm_up``). Done on equal terms, those imports
slowed notebook 03 most: its training runs two torch threads on the two cores, and while an
import held one core, every parallel region waited for the thread that shared it. On the
2-core Intel Xeon kind, 24 demo training steps took 49.4 s beside three such imports in a row,
and 23.8 s alone.

Here the imports run in a thread of their own at nice 19, so they take only the CPU the
running notebook leaves; the kernel's main thread, which later runs the notebook, keeps its
priority. Linux keeps a nice value per thread; where ``os.setpriority`` cannot set one for a
thread (macOS, Windows) the imports run at normal priority, as they did before.

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
from collections.abc import Sequence

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
#: The importing thread's nice value: the lowest priority.
NICENESS = 19


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
