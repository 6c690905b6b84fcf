"""Rank start-up helpers: CPU threads and glibc's allocator setting for CPU ranks."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from higherpose.utils import launch

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


# Run in a fresh interpreter: glibc raises its mmap threshold by itself as mmap'd blocks are freed,
# so in a process that has run other tests an 8 MiB block may come from the heap anyway.
_MMAPPED_BY_AN_8_MIB_TENSOR = """
import ctypes, sys, torch
from higherpose.utils import launch
class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert launch.keep_freed_memory()
before = libc.mallinfo2().hblkhd
x = torch.empty(2 << 20, dtype=torch.float32).fill_(1.0)
print(libc.mallinfo2().hblkhd - before)
"""


def _mmapped_bytes(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _MMAPPED_BY_AN_8_MIB_TENSOR, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_cpu_threads_follow_omp_num_threads_or_share_the_cores(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.cpu_threads(4) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 8)
    assert launch.cpu_threads(2) == 4 and launch.cpu_threads(16) == 1


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only: elsewhere keep_freed_memory changes nothing")
def test_keep_freed_memory_serves_large_tensors_from_the_heap() -> None:
    """An 8 MiB tensor (an activation of the quick-start network is 9 MiB) is a fresh mmap by default,
    page-faulted in and unmapped again at every forward; after the call it comes from the heap."""
    assert _mmapped_bytes("default") >= 8 << 20
    assert _mmapped_bytes("keep") == 0


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(launch.platform, "libc_ver", lambda: ("", ""))
    assert launch.keep_freed_memory() is False


_JOIN_ONE_RANK = """
import cv2
from higherpose.utils import launch
from tests.conftest import TINY_HRNET, load_cfg

print("default", cv2.getNumThreads())
launch.join_group(load_cfg(TINY_HRNET, "DEVICE", "cpu"), 0, 0, 1, "env://", 2)
print("rank", cv2.getNumThreads())
"""


def test_a_rank_caps_opencv_threads_like_pytorch_threads() -> None:
    """A rank's OpenCV pool has its share of the cores (here OMP_NUM_THREADS), as PyTorch does."""
    import os

    from tests.conftest import REPO

    env = {**os.environ, "OMP_NUM_THREADS": "3"}
    out = subprocess.run(
        [sys.executable, "-c", _JOIN_ONE_RANK], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    default, rank = out.stdout.split()[1], out.stdout.split()[-1]
    if default == "3":  # OpenCV's own count on a 3-core machine: the check below would prove nothing
        pytest.skip("OpenCV already defaults to 3 threads here")
    assert rank == "3", out.stdout
