"""Atomic file writes: everything a user keeps (checkpoints, results, metrics, pictures) goes through here.

The data is written to a temporary file in the target folder, flushed to disk, then renamed over the
target, so a crash or a full disk mid-write never leaves a truncated file (the previous one stays).
The file gets the permissions ``open(path, 'w')`` would give: those of the file it replaces, or
``0o666`` less the umask for a new one.

Temporary files are named ``.<target name>.<pid>@<host>.<8 random characters>.tmp``. A writer killed
with SIGKILL leaves its temporary behind; :func:`remove_stale_temporaries` removes such left-overs at
the next start. A temporary is stale when its writer is known to be gone: it was made on this host
by a process id that no longer exists. When that cannot be checked (made on another host sharing the
folder, a platform without ``os.kill(pid, 0)``, or the PID-less form ``.<target>.<random><ext>.tmp``
of a ``mkstemp`` writer, ``<ext>`` being the target's extension), it is stale only after
:data:`STALE_AFTER_S` without a modification, which no live save comes near. A temporary removed by
mistake (two containers with the same host name but separate PID namespaces) only makes that save
fail with an error; the file it would replace is untouched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

_log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0
"""Age (seconds since the last modification) after which a temporary whose writer cannot be checked
is removed by :func:`remove_stale_temporaries`."""

# mkstemp's random part: 8 characters of tempfile's alphabet [a-z0-9_].
_RANDOM = r"[a-z0-9_]{8}"
_TEMPORARY = re.compile(rf"^\.(?P<target>.+)\.(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9-]*)\.{_RANDOM}\.tmp$")
_EARLIER_TEMPORARY = re.compile(rf"^\.(?P<target>.+)\.{_RANDOM}(?P<ext>\.[^.]+)\.tmp$")


def _host_tag() -> str:
    """This host's name as it appears in temporary names: letters, digits and '-' only, at most 32."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]


def _umask() -> int:
    """The process umask. Linux shows it in /proc/self/status; elsewhere it is read by setting and
    restoring it, which another thread creating a file at that instant could see as 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode(path: str) -> int:
    """The permission bits ``open(path, 'w')`` would leave: the existing file's, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> str:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``; returns path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f".{os.path.basename(path)}.{os.getpid()}@{_host_tag()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file 0600 whatever the umask; the result must look like open()'s
        mode = _file_mode(path)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:
            os.chmod(tmp, mode)
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


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:  # os.kill(0, ...) / (-1, ...) address process groups, never one writer
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process; anything else: cannot tell, keep the file
        return True
    return True


def _is_stale(name: str, mtime: float, now: float) -> bool:
    """Whether ``name`` is one of our temporary files whose writer is gone (see the module docstring)."""
    old = now - mtime > STALE_AFTER_S
    match = _TEMPORARY.match(name)
    if match is not None:
        # os.kill on Windows terminates the process instead of probing it: use the age there
        if match["host"] == _host_tag() and os.name == "posix":
            return not _pid_alive(int(match["pid"]))
        return old
    match = _EARLIER_TEMPORARY.match(name)
    if match is not None and os.path.splitext(match["target"])[1] == match["ext"]:
        return old
    return False


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` (not its sub-folders) when
    its writer was killed; returns their names, sorted. Only names of our pattern whose writer is gone
    are removed (see the module docstring); every other file stays. A missing folder gives ``[]``."""
    folder = os.fspath(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    removed = []
    for entry in entries:
        if not entry.name.endswith(".tmp") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if _is_stale(entry.name, entry.stat(follow_symlinks=False).st_mtime, now):
                os.remove(entry.path)
                removed.append(entry.name)
        except FileNotFoundError:  # renamed or removed by its writer / another cleaner meanwhile
            continue
    removed.sort()
    if removed:
        _log.info("removed %d temporary files left by interrupted saves in %s: %s", len(removed), folder, removed)
    return removed
