"""Read images from ``archive.zip@member`` paths (HigherHRNet's ``DATA_FORMAT: zip``).

Each process keeps its own open ``ZipFile`` handles (DataLoader workers are separate processes, and a
handle opened before a fork must not be shared), keyed by archive path and process id.
"""

from __future__ import annotations

import os
import zipfile

import cv2
import numpy as np

_OPEN: dict[tuple[str, int], zipfile.ZipFile] = {}


def split_zip_path(path: str) -> tuple[str, str]:
    """``'a/b.zip@c/d.jpg'`` → ``('a/b.zip', 'c/d.jpg')``; raises ValueError without an ``@``."""
    archive, sep, member = path.partition("@")
    if not sep or not archive.endswith(".zip"):
        raise ValueError(f"not a zip image path (expected 'archive.zip@member'): {path}")
    return archive, member.lstrip("/")


def _archive(archive: str) -> zipfile.ZipFile:
    key = (archive, os.getpid())
    handle = _OPEN.get(key)
    if handle is None:
        if not os.path.isfile(archive):
            raise FileNotFoundError(f"image archive not found: {archive}")
        handle = _OPEN[key] = zipfile.ZipFile(archive, "r")
    return handle


def read_bytes(path: str) -> bytes:
    archive, member = split_zip_path(path)
    return _archive(archive).read(member)


def imread(path: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """Decode ``archive.zip@member`` like ``cv2.imread`` (None when the member is missing or unreadable)."""
    try:
        data = read_bytes(path)
    except (KeyError, OSError, zipfile.BadZipFile):
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
