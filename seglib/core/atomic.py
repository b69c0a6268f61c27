"""Atomic file writing: a file is either its old content or its new content, never half.

Everything seglib writes (JSON, figures, checkpoints) goes through ``atomic_file``: a
temporary file in the same folder, fsynced, then renamed over the target. The result has the
mode ``open()`` would give it (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(
    path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> Path:
    """Write ``obj`` as JSON to a temporary file beside ``path``, then rename it into place.

    A crash mid-write leaves the old file (or none), never a truncated one.
    """
    return write_bytes_atomic(
        path, (json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n").encode()
    )


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only when the ``with`` block succeeds.

    It is written under a temporary name in the same folder, fsynced, then renamed; on any
    error the temporary file is removed and ``path`` keeps its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it the mode open() would (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
