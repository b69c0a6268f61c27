"""Training beside kernel warm-ups: what starting the next notebooks' kernels costs notebook 03.

    python bench/bench_warm_up.py [--steps 24] [--rounds 2] [--json FILE]

A headless run (``seglib.app.notebook_runner``) starts the kernels of the notebooks after 03
while 03 trains, and has each import the heavy modules then. This script trains the demo
profile from its seeded start for ``--steps`` steps (torch's default threads, as 03 does),
in three ways, in alternating rounds of one run:

- ``alone``;
- ``beside, normal priority``: three warm-ups in a row in subprocesses, each importing
  ``seglib.app.warm_up.MODULES`` as the runner's kernels did before (a plain import);
- ``beside, warm_up``: the same three, each calling ``seglib.app.warm_up.warm_up`` as the
  runner's kernels do now (the imports in a thread at nice 19).

A subprocess stands in for a kernel: the kernel's own start (about a second) is left out.
Per row: the training seconds (first step to last, from the trainer's "start" event and its
last "iter" row), their ratio to ``alone`` in the same round, and when the three warm-ups had
finished, in seconds from the training's start. The medians over rounds close the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_demo import machine
from bench_learning import prepare_data

from seglib.app.warm_up import MODULES, NICENESS, set_session_nice
from seglib.core.config import TrainConfig
from seglib.engine import trainer

PLAIN = f"import {', '.join(MODULES)}"
WARM_UP = "from seglib.app.warm_up import warm_up; warm_up()"
#: mode: (the warm-ups' code, whether their session runs at nice 19)
WARM_UPS = {
    "beside, plain imports": (PLAIN, False),
    "beside, warm_up": (WARM_UP, False),
    "beside, warm_up, session at nice 19": (WARM_UP, True),
}


def _train(
    cfg: TrainConfig, data: Path, out: Path, beside: tuple[str, bool] | None
) -> dict[str, float]:
    """Train ``cfg`` into ``out``, with three warm-up subprocesses in a row beside it, in a
    session of their own as a kernel is (``beside``: their code, and whether the session
    runs at nice 19, ``warm_up.set_session_nice``)."""
    marks: dict[str, float] = {}

    def callback(event: str, payload: dict) -> None:
        if event in ("start", "iter"):
            marks["start" if event == "start" else "last"] = time.perf_counter()

    chain = None
    if beside is not None:
        code, low = beside
        line = "; ".join([f"{sys.executable} -c {json.dumps(code)}"] * 3)
        chain = subprocess.Popen(["bash", "-c", line], start_new_session=True)
        if low and not set_session_nice(chain.pid, NICENESS):
            raise RuntimeError("this machine has no autogroup nice value to set")
    begun = time.perf_counter()
    trainer.train(cfg, data, out, callback=callback)
    if chain is not None and chain.wait() != 0:
        raise RuntimeError(f"a warm-up failed: {beside}")
    finished = time.perf_counter() - begun if chain is not None else float("nan")
    return {"train_s": marks["last"] - marks["start"], "warm_ups_done_s": finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = TrainConfig.from_profile("demo", max_iters=args.steps, log_interval=4)
    modes = {"alone": None, **WARM_UPS}
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(cfg, "demo", Path(tmp))
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                out = Path(tmp) / f"run-{r}-{list(modes).index(mode)}"
                rows[mode].append(_train(cfg, data, out, modes[mode]))
                print(f"round {r} {mode}: {rows[mode][-1]}", flush=True)
    cpu = machine()["cpu_model"]
    print(f"\n{args.steps} demo steps, {torch.get_num_threads()} torch threads, {cpu}")
    print(f"{'':38}{'train_s':>10}{'x alone':>10}{'warm-ups done':>15}")
    alone = statistics.median(r["train_s"] for r in rows["alone"])
    for mode, got in rows.items():
        train_s = statistics.median(r["train_s"] for r in got)
        done = statistics.median(r["warm_ups_done_s"] for r in got)
        print(f"{mode:38}{train_s:10.1f}{train_s / alone:10.2f}{done:15.1f}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "cpu": cpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
