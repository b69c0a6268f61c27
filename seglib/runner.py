"""Headless execution of the notebook series (``python -m seglib run``) and its pre-flight check.

The notebooks are the product's face; this module runs them in order with nbclient, the same
way a learner would step through them, and keeps the executed copies in the run folder.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from seglib.io import write_bytes_atomic
from seglib.paths import Paths

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
COCO_HOST = "http://images.cocodataset.org"
WEIGHTS_HOST = "https://download.pytorch.org"


class PreflightError(RuntimeError):
    """The seed profile cannot run here (no COCO, no weights, no network)."""


class NotebookRunError(RuntimeError):
    """A notebook cell raised; the message names the notebook and keeps the kernel's error."""


def notebook_paths(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ordered series ``01_*.ipynb`` ... ``05_*.ipynb``.

    Raises:
        FileNotFoundError: the folder holds no numbered notebooks.
    """
    found = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (01_*.ipynb ...) in {notebooks_dir}")
    return found


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def preflight(profile: str, paths: Paths, *, arch: str = "v1") -> list[str]:
    """Check that ``profile`` can run here; return what will be downloaded.

    The smoke profile needs nothing. The seed profile needs the COCO instances JSONs under
    ``paths.coco_root/annotations`` and torchvision's COCO weights in the TORCH_HOME cache, or a
    network that reaches both hosts to fetch them.

    Returns:
        Human-readable notes on what the run will download (empty when all is in place).

    Raises:
        PreflightError: something needed is missing and cannot be fetched; names each item
            and points to ``make demo``.
    """
    if profile != "seed":
        return []
    from seglib.model import weights_file

    notes, problems = [], []
    annotations = [
        paths.coco_root / "annotations" / f"instances_{s}2017.json" for s in ("train", "val")
    ]
    if not all(p.is_file() for p in annotations):
        if reachable(COCO_HOST):
            notes.append(
                f"COCO annotations will be downloaded into {paths.coco_root / 'annotations'} (241 MB, once)"
            )
        else:
            problems.append(
                f"COCO 2017 annotations are missing ({annotations[0]}, {annotations[1].name}) and "
                f"{COCO_HOST} cannot be reached to download them"
            )
    elif not reachable(COCO_HOST) and not (paths.coco_root / "train2017").is_dir():
        problems.append(
            f"COCO images are not under {paths.coco_root} and {COCO_HOST} cannot be reached"
        )
    weights = weights_file("coco", arch)
    if not weights.is_file():
        if reachable(WEIGHTS_HOST):
            notes.append(
                f"COCO-trained Mask R-CNN weights will be downloaded to {weights} (170 MB, once)"
            )
        else:
            problems.append(
                f"the COCO-trained weights {weights} are missing and {WEIGHTS_HOST} cannot be reached"
            )
    if problems:
        raise PreflightError(
            "the seed profile cannot run on this machine:\n  - "
            + "\n  - ".join(problems)
            + "\nPut the files in place by hand (see README, 'Getting COCO and the weights'), "
            "or run `make demo` for the offline smoke profile."
        )
    return notes


def run_notebooks(
    profile: str,
    out_dir: str | Path,
    *,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    timeout: int | None = None,
    kernel_name: str = "python3",
) -> Iterator[Path]:
    """Execute the series in order with nbclient, yielding each executed copy as it is written.

    Each notebook runs in its own folder (as in JupyterLab) with ``SEGLIB_PROFILE=profile``.
    Executed copies, outputs included, go to ``out_dir``; the sources are not modified.

    Raises:
        NotebookRunError: a cell failed; the partly executed copy is still written, and the
            message names it and the notebook to fix.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellControlSignal, DeadKernelError

    out_dir = Path(out_dir)
    previous = os.environ.get("SEGLIB_PROFILE")
    os.environ["SEGLIB_PROFILE"] = profile  # the kernel inherits this process's environment
    try:
        for source in notebook_paths(notebooks_dir):
            nb = nbformat.read(source, as_version=4)
            client = NotebookClient(
                nb,
                timeout=timeout,
                kernel_name=kernel_name,
                resources={"metadata": {"path": str(source.parent)}},
            )
            target = out_dir / source.name
            try:
                client.execute()
            except (
                CellControlSignal,
                DeadKernelError,
            ) as e:  # a cell raised or timed out, or the kernel died
                write_bytes_atomic(target, nbformat.writes(nb).encode())
                raise NotebookRunError(
                    f"{source.name} failed (executed copy: {target}):\n{e}"
                ) from e
            write_bytes_atomic(target, nbformat.writes(nb).encode())
            yield target
    finally:
        if previous is None:
            os.environ.pop("SEGLIB_PROFILE", None)
        else:
            os.environ["SEGLIB_PROFILE"] = previous
