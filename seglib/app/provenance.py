"""Provenance of derived files: which checkpoint and settings a JSON file was made from.

A derived file ``x.json`` (predictions, metrics) has a record ``x.source.json`` beside it
(``source_file``) holding the checkpoint's fingerprint (``checkpoint_fingerprint``: path,
size, mtime and sha1) and the settings it was made with. ``read_if_fresh`` returns the file
only while its record matches what is wanted now, by the checkpoint's content (sha1) and equal
settings, so a retrained checkpoint makes every derived file stale. Results files go through
``write_results_with_source`` / ``read_results_if_fresh``: COCO's category ids on disk, the
split's labels in memory (``seglib.app.prediction_cache``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seglib.core.atomic import write_json_atomic
from seglib.evaluation.coco_results import from_coco_ids, write_results


def checkpoint_fingerprint(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha1"}`` of a checkpoint: what derived files record.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha1": digest.hexdigest(),
    }


def source_file(path: str | Path) -> Path:
    """The provenance record beside a derived file: ``x.json`` -> ``x.source.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.source.json")


def _same_source(recorded: Mapping, wanted: Mapping) -> bool:
    """Equal settings and the same checkpoint content (sha1; path and mtime may move)."""

    def strip(d: Mapping) -> dict:
        out = dict(d)
        out["checkpoint"] = (d.get("checkpoint") or {}).get("sha1")
        return out

    return strip(recorded) == strip(wanted)


def read_if_fresh(path: str | Path, source: Mapping) -> Any | None:
    """The JSON in ``path`` if its provenance record matches ``source``, else None."""
    path, record = Path(path), source_file(path)
    if not (path.is_file() and record.is_file()):
        return None
    try:
        if not _same_source(json.loads(record.read_text()), source):
            return None
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_with_source(path: str | Path, data: Any, source: Mapping) -> Path:
    """Write ``data`` as JSON and its provenance record (written second: a crash leaves stale)."""
    source_file(path).unlink(missing_ok=True)
    write_json_atomic(path, data)
    write_json_atomic(source_file(path), dict(source))
    return Path(path)


def write_results_with_source(
    path: str | Path, results: Sequence[Mapping], categories: Sequence[Mapping], source: Mapping
) -> Path:
    """``write_with_source`` for in-memory results (labels 1..k): the file gets COCO's category
    ids, through ``prediction.write_results``; ``read_results_if_fresh`` reads it back."""

    source_file(path).unlink(missing_ok=True)
    write_results(path, results, categories)
    write_json_atomic(source_file(path), dict(source))
    return Path(path)


def read_results_if_fresh(path: str | Path, source: Mapping, gt: Any) -> list[dict] | None:
    """A results file (COCO's category ids) in ``gt``'s labels if its provenance record
    matches ``source``, else None."""

    cached = read_if_fresh(path, source)
    return None if cached is None else from_coco_ids(cached, gt, source=f"results file {path}")
