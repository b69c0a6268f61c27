"""Executing the notebook series headless with nbclient (``python -m seglib run``).

The notebooks are the product's face; a run executes them the way a learner steps through
them, and keeps the executed copies in the run folder. The kernels get their parameters
through the environment: ``$SEGLIB_PROFILE``, ``$SEGLIB_SET`` (TrainConfig overrides, which
the notebooks' forms start from), ``$SEGLIB_RUN`` (the run name) and ``$SEGLIB_OVERWRITE``.
The series runs in order, except the chains of ``SIDE_BY_SIDE``, which read only what 01-03
wrote and run at the same time once 03 is done; each notebook's kernel is started, and its
heavy imports done, while the notebooks before it run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellControlSignal, DeadKernelError

from seglib.app.runs import OVERWRITE_ENV
from seglib.app.warm_up import NICENESS, set_session_nice
from seglib.core.atomic import write_bytes_atomic
from seglib.core.overrides import OVERRIDES_ENV
from seglib.core.paths import RUN_ENV

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
#: Seconds of each wait for a kernel message in ``run_notebooks`` (see ``stepwise_get_msg``).
POLL_SECONDS = 1.0
#: Chains of notebooks that read only what 01-03 wrote, so a run executes them side by side
#: (``plan_stages``): 05 reads 04's cached test predictions, so it follows 04; 06 reads 03's
#: best.pt; 07 reuses 03's run and trains the rest. Their threads: ``stage_threads``.
SIDE_BY_SIDE = (
    ("04_evaluate", "05_inference_viz"),
    ("06_occlusion_study",),
    ("07_detr_comparison",),
)
#: Run by a kernel started ahead of its notebook (``run_notebooks``): the setup cells' heavy
#: imports, at the lowest CPU priority, while the notebooks before it run (``seglib.app.warm_up``).
WARM_UP = "import seglib.app.warm_up as _warm; _warm.warm_up(); del _warm"
#: glibc's malloc settings every kernel starts with (``$GLIBC_TUNABLES``, read once, as a
#: process starts; ``malloc_tunables``): freed memory stays in the process for reuse. By default
#: each block over 128 KB-32 MB is a mapping of its own, unmapped when freed, so every training
#: step faulted in fresh zeroed pages: about 20 thousand a step in the demo, where casting one
#: 51 MB gradient took 19-25 ms into fresh pages and 2-3 ms into reused ones. The demo's
#: notebook 03 trained in 150-156 s against 172-177 s without (AMD EPYC, docs/benchmarks.md).
#: A kernel keeps its peak memory until it exits.
MALLOC_TUNABLES = {
    "glibc.malloc.mmap_threshold": "4294967295",
    "glibc.malloc.trim_threshold": "4294967295",
}
#: Stages whose kernels start ahead of the running one, one after another. With one stage,
#: 03's kernel started with 02 (4-6 s of cells) and was ready 7.9-8.7 s after 02 ended; all
#: of two stages at once slowed 01 and 02 by 5 s each (docs/benchmarks.md).
WARM_AHEAD = 2
#: A stage of a run: chains of notebooks run side by side, each chain in order.
Stage = tuple[tuple[Path, ...], ...]
#: Notebooks an offline profile's run leaves out unless asked for by name: each trains a dozen
#: models or more (notebook 08: 3 seeds of 4 augmentation rows and 2 more data sizes, about
#: half an hour on 2 CPU cores in the demo profile). The seed profile runs them.
LONG_STUDIES = ("08_augmentation_and_data",)


class NotebookRunError(RuntimeError):
    """A notebook cell raised; the message names the notebook and keeps the kernel's error."""


def notebook_paths(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ordered series ``01_*.ipynb`` ... ``08_*.ipynb``.

    Raises:
        FileNotFoundError: the folder holds no numbered notebooks.
    """
    found = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (01_*.ipynb ...) in {notebooks_dir}")
    return found


def select_notebooks(
    profile: str, chosen: Iterable[str] | None = None, notebooks_dir: str | Path = NOTEBOOKS_DIR
) -> tuple[list[Path], list[str]]:
    """The notebooks a run executes, and a sentence for each one it leaves out.

    ``chosen`` names notebooks by number ("08") or stem; None takes the whole series, less
    ``LONG_STUDIES`` in an offline profile (the sentence says how to run them).

    Raises:
        ValueError: a name that matches no notebook.
    """
    series = notebook_paths(notebooks_dir)
    if chosen is not None:
        chosen = list(chosen)
        unknown = [c for c in chosen if not any(nb.stem.startswith(c) for nb in series)]
        if unknown:
            names = ", ".join(nb.stem for nb in series)
            raise ValueError(f"no notebook {unknown} in {notebooks_dir}; there are {names}")
        return [nb for nb in series if any(nb.stem.startswith(c) for c in chosen)], []
    if profile == "seed":
        return series, []
    left_out = [nb for nb in series if nb.stem in LONG_STUDIES]
    notes = [
        f"LEFT OUT: {nb.stem} is not part of the {profile} run: its studies train a dozen "
        "models or more (about half an hour on 2 CPU cores in the demo profile). Run it with "
        f"`make study PROFILE={profile}` (python -m seglib run --profile {profile} --notebooks "
        f"{nb.stem[:2]}), or `python -m seglib study augmentation --profile {profile}` and "
        "`... study data`."
        for nb in left_out
    ]
    return [nb for nb in series if nb not in left_out], notes


@contextlib.contextmanager
def kernel_environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the kernels started inside, then
    restore them: a kernel inherits this process's environment."""
    previous = {k: os.environ.get(k) for k in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(previous)


def _set_environment(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def stepwise_get_msg(
    get_msg: Callable[..., Awaitable[dict]], step: float = POLL_SECONDS
) -> Callable[..., Awaitable[dict]]:
    """A channel's async ``get_msg`` that waits without a timeout in polls of ``step`` seconds.

    nbclient waits for a cell's ``execute_reply`` with one poll of the shell socket without a
    timeout. In a headless ``make demo`` that poll once never returned: the kernel had finished
    the cell (its idle status had arrived on iopub, which the kernel sends after the reply) and
    sat idle, the reply never came out of the socket, and the run waited for ever (nbclient#312
    describes the same hang around widget cells). A poll that times out checks the socket
    again, so a reply that is there is read within ``step`` seconds. Waits with a timeout pass
    through unchanged.
    """

    async def wait(timeout: float | None = None) -> dict:
        if timeout is not None:
            return await get_msg(timeout=timeout)
        while True:
            try:
                return await get_msg(timeout=step)
            except Empty:
                continue

    return wait


def _poll_stepwise(client: Any) -> None:
    """Make ``client``'s kernel channels wait for messages in steps (``stepwise_get_msg``)."""
    for channel in (client.kc.shell_channel, client.kc.iopub_channel):
        channel.get_msg = stepwise_get_msg(channel.get_msg)


# --- the order of a run: stages of chains run side by side -----------------------------------
def plan_stages(
    notebooks: Sequence[Path], side_by_side: Sequence[Sequence[str]] = SIDE_BY_SIDE
) -> list[Stage]:
    """The stages a run executes ``notebooks`` (in series order) in.

    Each stage is a tuple of chains run side by side; a chain's notebooks run one after the
    other, and a stage starts when the one before it has finished. A run of consecutive
    notebooks that all belong to ``side_by_side``'s chains becomes one stage of those chains
    (notebooks left out of the run are dropped from them); every other notebook is a stage of
    its own. An empty ``side_by_side`` runs every notebook alone, in order.
    """
    chain_of = {stem: i for i, chain in enumerate(side_by_side) for stem in chain}
    stages: list[Stage] = []
    group: list[Path] = []

    def flush() -> None:
        chains = [
            tuple(nb for nb in group if chain_of[nb.stem] == i) for i in range(len(side_by_side))
        ]
        if group:
            stages.append(tuple(chain for chain in chains if chain))
        group.clear()

    for nb in notebooks:
        if nb.stem in chain_of:
            group.append(nb)
            continue
        flush()
        stages.append(((nb,),))
    flush()
    return stages


def stage_threads(stage: Stage, cpus: int | None = None) -> int | None:
    """Torch threads for each kernel of ``stage``: None (torch's default) for a stage of one
    chain; else the usable CPUs shared out, at least 1, and never more than an
    ``$OMP_NUM_THREADS`` already set.

    On the 2-core Intel Xeon kind, kernels side by side with torch's default threads each ran
    04-07 in 234 s, against 93 s one after the other and 65 s with 1 thread each
    (docs/benchmarks.md).
    """
    if len(stage) == 1:
        return None
    cpus = cpus or len(os.sched_getaffinity(0))
    threads = max(1, cpus // len(stage))
    preset = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(preset)) if preset.isdigit() and int(preset) > 0 else threads


def start_order(stage: Stage) -> list[Path]:
    """Every notebook of ``stage`` in the order they can start: each chain's first, then each
    chain's second, and so on (04, 06, 07, then 05)."""
    depth = max(len(chain) for chain in stage)
    return [chain[i] for i in range(depth) for chain in stage if i < len(chain)]


def plan_lines(stages: Sequence[Stage]) -> list[str]:
    """One line for each stage of chains run side by side, naming them and their threads."""
    lines = []
    for stage in stages:
        if len(stage) > 1:
            chains = " | ".join(" -> ".join(nb.stem for nb in chain) for chain in stage)
            threads = stage_threads(stage)
            lines.append(
                f"side by side: {chains} ({threads} torch thread{'s' * (threads > 1)} each on "
                f"{len(os.sched_getaffinity(0))} CPUs; --one-at-a-time runs them in order)"
            )
    return lines


def run_notebooks(
    profile: str,
    out_dir: str | Path,
    *,
    run_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    notebooks: Iterable[Path] | None = None,
    side_by_side: Sequence[Sequence[str]] = SIDE_BY_SIDE,
    timeout: int | None = None,
    kernel_name: str = "python3",
) -> Iterator[Path]:
    """Execute the series with nbclient, yielding each executed copy as it is written.

    ``notebooks`` (``select_notebooks``' choice) replaces the whole series of ``notebooks_dir``.
    They run in the stages of ``plan_stages``: in order, except that ``side_by_side``'s chains
    (04 -> 05, 06 and 07, which read only what 01-03 wrote) run at the same time, each kernel
    with ``stage_threads`` torch threads. While a stage runs, the kernels of every notebook of
    the next ``WARM_AHEAD`` stages start one after another (``start_order``) and run
    ``WARM_UP``, so a notebook starts on a ready kernel; a finished notebook's kernel is
    killed in the background (``_stop``), and the run waits for every kernel before it ends.

    Each notebook runs in its own folder (as in JupyterLab) with ``SEGLIB_PROFILE=profile``,
    ``SEGLIB_RUN=run_name``, the TrainConfig ``overrides`` as JSON in ``SEGLIB_SET`` (the
    notebooks build their config, and so their forms' defaults, from them),
    ``SEGLIB_OVERWRITE=1`` when ``overwrite``, and glibc's ``MALLOC_TUNABLES``. Executed
    copies, outputs included, go to ``out_dir``, their metadata recording when each ran and
    with how many threads (``metadata.seglib``); the sources are not modified.

    Raises:
        NotebookRunError: a cell failed; the partly executed copy is still written, chains
            running beside it finish, and no later stage starts. The message names the copy
            and the notebook to fix.
    """
    sources = notebook_paths(notebooks_dir) if notebooks is None else list(notebooks)
    env = {
        "SEGLIB_PROFILE": profile,
        RUN_ENV: run_name,
        OVERRIDES_ENV: json.dumps(dict(overrides)) if overrides else None,
        OVERWRITE_ENV: "1" if overwrite else None,
    }
    runner = _StageRunner(Path(out_dir), timeout, kernel_name)
    with kernel_environment(env):
        loop = asyncio.new_event_loop()
        task = loop.create_task(runner.run(plan_stages(sources, side_by_side)))
        try:
            while (target := loop.run_until_complete(runner.done.get())) is not None:
                yield target
            loop.run_until_complete(task)  # raises what a stage raised
        finally:
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            loop.close()


class _StageRunner:
    """Runs stages of notebook chains in one event loop (``run_notebooks``); each executed
    copy's path goes to ``done`` when written, then None when the run ends."""

    def __init__(self, out_dir: Path, timeout: int | None, kernel_name: str) -> None:
        self.out_dir, self.timeout, self.kernel_name = out_dir, timeout, kernel_name
        self.done: asyncio.Queue[Path | None] = asyncio.Queue()
        self.warming: dict[Path, asyncio.Task] = {}
        self.last_warm: asyncio.Task | None = None
        self.low: dict[Path, int | None] = {}  # kernels whose session waits at nice 19: pid
        self.current: set[Path] = set()  # the running stage's notebooks
        self.stopping: list[asyncio.Task] = []

    async def run(self, stages: list[Stage]) -> None:
        try:
            for k, stage in enumerate(stages):
                threads, order = stage_threads(stage), start_order(stage)
                self.current = set(order)
                for source in order:  # a warm-up still running goes on at nice 0
                    self._normal(source)
                # Chains' later notebooks that no stage before warmed: next on their paths.
                for source in order[len(stage) :]:
                    if source not in self.warming:
                        self._warm(source, threads, ahead=False)
                for ahead in stages[k + 1 : k + 1 + WARM_AHEAD]:
                    for source in start_order(ahead):
                        if source not in self.warming:
                            self._warm(source, stage_threads(ahead))
                ran = await asyncio.gather(
                    *(self._chain(chain, threads) for chain in stage), return_exceptions=True
                )
                failed = [e for e in ran if isinstance(e, BaseException)]
                if failed:
                    raise failed[0]
        finally:  # kernels warmed for stages that will not run: let them start, then stop them
            for client in await asyncio.gather(*self.warming.values(), return_exceptions=True):
                if isinstance(client, NotebookClient):
                    self._stop(client)
            await asyncio.gather(*self.stopping, return_exceptions=True)
            await self.done.put(None)

    def _client(self, source: Path) -> NotebookClient:
        client = NotebookClient(
            nbformat.read(source, as_version=4),
            timeout=self.timeout,
            kernel_name=self.kernel_name,
            resources={"metadata": {"path": str(source.parent)}},
            shutdown_kernel="immediate",  # see _stop
        )
        client.on_notebook_start = lambda client=client, **_: _poll_stepwise(client)
        return client

    def _warm(self, source: Path, threads: int | None, *, ahead: bool = True) -> None:
        """Start ``source``'s kernel once the kernels asked for before it are warm, and
        run ``WARM_UP`` in it: one warm-up at a time, on the CPU the running notebook leaves.

        A kernel warmed ``ahead`` of its stage runs its session at nice 19 until the stage
        starts (``warm_up.set_session_nice``): a kernel is a session of its own, and where
        sessions are scheduling groups a warming kernel took one of two cores from 03's
        training. A chain's later notebook (05 after 04) warms ahead with the rest of its
        stage: warmed beside 04 at normal priority instead, it took CPU from 04 and 06 as they
        started. Only in a stage that nothing ran before does it warm beside its chain, at
        normal priority (not ``ahead``), as the next on that chain's path."""
        before = self.last_warm

        async def warm() -> NotebookClient:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            client = self._client(source)
            client.km = client.create_kernel_manager()
            await client.async_start_new_kernel(env=_kernel_env(threads))
            pid = _kernel_pid(client)
            if ahead and source not in self.current and set_session_nice(pid, NICENESS):
                self.low[source] = pid  # back to 0 when its stage starts
            await client.async_start_new_kernel_client()
            await client.async_wait_for_reply(client.kc.execute(WARM_UP, silent=True))
            return client

        self.warming[source] = self.last_warm = asyncio.ensure_future(warm())

    async def _chain(self, chain: tuple[Path, ...], threads: int | None) -> None:
        for source in chain:
            warm = self.warming.pop(source, None)
            client = await warm if warm is not None else self._client(source)
            started = datetime.now(timezone.utc).isoformat()
            target = self.out_dir / source.name
            try:
                await client.async_execute(env=_kernel_env(threads), cleanup_kc=False)
            except (CellControlSignal, DeadKernelError) as e:  # a cell raised or timed out
                self._write(client.nb, target, started, threads)
                raise NotebookRunError(
                    f"{source.name} failed (executed copy: {target}):\n{e}"
                ) from e
            finally:
                self._stop(client)
            self._write(client.nb, target, started, threads)
            await self.done.put(target)

    def _normal(self, source: Path) -> None:
        """Set the session of ``source``'s kernel, if warmed at nice 19, back to 0; warn
        loudly where that fails."""
        if source in self.low and not set_session_nice(self.low.pop(source), 0):
            warnings.warn(
                f"{source.name} runs at the lowest CPU priority: its kernel's session "
                "could not be set back from nice 19 (/proc/<pid>/autogroup)",
                RuntimeWarning,
                stacklevel=1,
            )

    def _stop(self, client: NotebookClient) -> None:
        """Stop ``client``'s kernel in the background; ``run`` waits for it at its end.

        The kernel is killed: its notebook's cells have finished and their files are written
        (atomically). Asked to shut down, a kernel that had imported torch kept a core busy
        for 2.4 s on the 2-core Intel Xeon kind until it was terminated, while nbclient waited
        before starting the next notebook.
        """
        if client.km is not None:
            self.stopping.append(asyncio.ensure_future(client._async_cleanup_kernel()))

    @staticmethod
    def _write(nb: Any, target: Path, started: str, threads: int | None) -> None:
        finished = datetime.now(timezone.utc).isoformat()
        nb.metadata["seglib"] = {"started": started, "finished": finished, "torch_threads": threads}
        write_bytes_atomic(target, nbformat.writes(nb).encode())


def _kernel_pid(client: NotebookClient) -> int | None:
    """The process id of ``client``'s kernel, when a local process runs it."""
    return getattr(client.km.provisioner, "pid", None) if client.km is not None else None


def malloc_tunables(current: str | None) -> str:
    """``$GLIBC_TUNABLES`` with ``MALLOC_TUNABLES`` added; a tunable ``current`` sets is kept."""
    entries = [entry for entry in (current or "").split(":") if entry]
    named = {entry.split("=", 1)[0] for entry in entries}
    added = [f"{name}={value}" for name, value in MALLOC_TUNABLES.items() if name not in named]
    return ":".join(entries + added)


def _kernel_env(threads: int | None) -> dict[str, str]:
    """A kernel's environment: this process's, with ``malloc_tunables`` and, when ``threads``,
    ``OMP_NUM_THREADS``."""
    env = {**os.environ, "GLIBC_TUNABLES": malloc_tunables(os.environ.get("GLIBC_TUNABLES"))}
    return env | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
