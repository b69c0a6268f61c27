"""Learning curve of an offline profile: does Mask R-CNN learn the synthetic shapes, and how fast?

Builds the profile's synthetic data in a scratch folder, trains from scratch with
``trainer.train`` and records every validation (mask and box AP, AP50) with the wall time
spent training up to it (validation time excluded and reported apart). This is how the
``demo`` and ``smoke`` recipes in ``seglib/config.py`` were chosen (docs/benchmarks.md).

    python bench/bench_learning.py --profile demo
    python bench/bench_learning.py --profile smoke --set lr=0.02 --set seed=1
    python bench/bench_learning.py --profile demo --device cuda --json curve.json

Prints one line per validation and a final summary line; ``--json`` writes the curve.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision

from seglib.core import runtime
from seglib.core.config import TrainConfig
from seglib.core.overrides import parse_overrides
from seglib.core.paths import get_paths
from seglib.core.profiles import PROFILES
from seglib.data import subset
from seglib.engine import trainer


def prepare_data(cfg: TrainConfig, profile: str, root: Path) -> Path:
    """The profile's synthetic data and subset under ``root``; returns the subset folder."""
    paths = get_paths(profile, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SYNTHETIC DATA warning: this script says so itself
        source = subset.prepare_source(cfg, paths)
        subset.build_subset(
            source,
            paths.subset,
            cfg.categories,
            cfg.num_train,
            cfg.num_val,
            cfg.num_test,
            seed=cfg.seed,
            progress=False,
        )
    return paths.subset


def learning_curve(cfg: TrainConfig, profile: str, root: Path) -> dict[str, Any]:
    """Train ``cfg`` on its synthetic data under ``root``; return the curve and timings."""
    data_dir = prepare_data(cfg, profile, root)
    curve: list[dict[str, Any]] = []
    clock = {"start": time.perf_counter(), "last": time.perf_counter(), "eval": 0.0}

    def callback(event: str, payload: dict[str, Any]) -> None:
        now = time.perf_counter()
        if event == "iter":
            clock["last"] = now
        elif event == "eval":
            clock["eval"] += now - clock["last"]  # validation ran since the last logged step
            m = payload["metrics"]
            curve.append(
                {
                    "iteration": payload["iteration"],
                    "epoch": payload["epoch"],
                    "train_s": round(now - clock["start"] - clock["eval"], 1),
                    "segm_AP50": round(m["segm"]["AP50"], 4),
                    "segm_AP": round(m["segm"]["AP"], 4),
                    "bbox_AP50": round(m["bbox"]["AP50"], 4),
                    "bbox_AP": round(m["bbox"]["AP"], 4),
                }
            )
            clock["last"] = now

    start = time.perf_counter()
    trainer.train(cfg, data_dir, root / "run", callback=callback)
    return {
        "profile": profile,
        "config": cfg.to_dict(),
        "curve": curve,
        "wall_s": round(time.perf_counter() - start, 1),
        "eval_s": round(clock["eval"], 1),
        "device": str(runtime.resolve_device(cfg.device)),
        "cpu_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=[p for p in PROFILES if p != "seed"], default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: the profile's)")
    parser.add_argument("--json", type=Path, default=None, help="write the curve here")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    if args.device:
        overrides["device"] = args.device
    cfg = TrainConfig.from_profile(args.profile, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = learning_curve(cfg, args.profile, Path(tmp))
    for row in result["curve"]:
        print(json.dumps(row))
    last = result["curve"][-1] if result["curve"] else {}
    print(
        f"{args.profile} {args.set}: mask AP50 {last.get('segm_AP50')} mask AP {last.get('segm_AP')} "
        f"box AP {last.get('bbox_AP')} | train {last.get('train_s')} s, validation {result['eval_s']} s, "
        f"wall {result['wall_s']} s on {result['device']} ({result['cpu_threads']} threads)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
