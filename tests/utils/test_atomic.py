"""Atomic writes: file modes follow the umask like open(), and temporary files left by a killed writer are
removed at the next start while a user's files and a live writer's temporaries stay."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from higherpose.utils import atomic
from higherpose.utils.atomic import write_json_atomic
from higherpose.utils.checkpoint import save_atomic
from higherpose.utils.vis import imwrite_atomic

WRITERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "checkpoint": ("checkpoint.pth", lambda path: save_atomic({"epoch": 1}, path)),
    "json": ("metrics.json", lambda path: write_json_atomic({"AP": 0.5}, path)),
    "picture": ("result_valid_0.jpg", lambda path: imwrite_atomic(path, np.zeros((8, 8, 3), np.uint8))),
}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_new_files_follow_the_umask(kind: str, tmp_path: Path, umask) -> None:
    name, write = WRITERS[kind]
    umask(0o022)
    write(str(tmp_path / name))
    assert _mode(tmp_path / name) == 0o644
    umask(0o077)
    write(str(tmp_path / "private" / name))
    assert _mode(tmp_path / "private" / name) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "private"])  # no temporary file left


def test_rewriting_a_file_keeps_its_mode(tmp_path: Path, umask) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic({"AP": 0.1}, path)
    path.chmod(0o600)  # the user made it private: a new version stays private, as with open(path, 'w')
    write_json_atomic({"AP": 0.2}, path)
    assert _mode(path) == 0o600 and path.read_text() == '{"AP": 0.2}'


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_remove_stale_temporaries_after_kill(tmp_path: Path) -> None:
    # a writer killed with SIGKILL in the middle of a save leaves its temporary file behind
    killed = (
        "import os, signal, sys\n"
        "from higherpose.utils.atomic import atomic_write\n"
        "def write(f):\n"
        "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write, binary=True)\n"
    )
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"previous checkpoint")
    subprocess.run([sys.executable, "-c", killed, str(target)], check=False)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pth")
    assert len(left) == 1 and left[0].startswith(".checkpoint.pth.") and left[0].endswith(".tmp")

    host = atomic._host_tag()
    dead, alive = _dead_pid(), os.getpid()
    removable = [
        f".model_best.pth.{dead}@{host}.abcd_123.tmp",  # this host, writer gone
        f".final_state.pth.{alive}@other-host.abcdefgh.tmp",  # another host, untouched for days
        ".checkpoint.pth.k2j4h5g6.pth.tmp",  # the PID-less form, untouched for days
    ]
    kept = [
        f".metrics.json.{alive}@{host}.abcdefgh.tmp",  # a writer still running
        f".valid.jpg.{dead}@other-host.abcdefgh.tmp",  # another host, written a moment ago
        ".results.json.zyxwvut9.json.tmp",  # the PID-less form, written a moment ago
        # a user's files with similar names
        f".notes.{dead}@{host}.abcdefgh.txt",
        f"notes.{dead}@{host}.abcdefgh.tmp",
        f".notes.{dead}@{host}.abcdefg.tmp",
        ".notes.txt.tmp",
        ".notes.k2j4h5g6.txt.tmp",
        ".notes.k2j4h5g6.tmp",
        "checkpoint.pth",
    ]
    for name in removable + kept[:-1]:
        (tmp_path / name).write_bytes(b"")
    for name in removable[1:] + kept[3:-1]:  # the user's files are old too
        _age(tmp_path / name, 3 * 24 * 3600)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / removable[0]).write_bytes(b"")  # only the folder itself is cleaned

    removed = atomic.remove_stale_temporaries(tmp_path)
    assert removed == sorted(left + removable)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["sub"])
    assert target.read_bytes() == b"previous checkpoint"
    assert (tmp_path / "sub" / removable[0]).exists()
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []
