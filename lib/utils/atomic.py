"""Atomic file writes: everything a user keeps (checkpoints, results, metrics, pictures) goes through here.

The data is written to a temporary file in the target folder, flushed to disk, then renamed over the
target, so a crash or a full disk mid-write never leaves a truncated file (the previous one stays).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> str:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``; returns path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] + ".tmp"
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json_atomic(obj: Any, path: str | os.PathLike, indent: int | None = None) -> str:
    """``json.dump(obj)`` to ``path`` atomically."""
    return atomic_write(path, lambda f: json.dump(obj, f, indent=indent))
