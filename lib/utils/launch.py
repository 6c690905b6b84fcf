"""Starting ranks, shared by ``tools/dist_train.py`` and ``tools/valid.py``: each rank's device and
threads, joining the process group, and one process per rank on this node (``mp.spawn`` around a
rendezvous store the launcher serves)."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import torch
import torch.multiprocessing as mp

from higherpose.utils import distributed as du
from higherpose.utils import failures


def use_cuda(cfg: Any) -> bool:
    """Whether this run's ranks use CUDA: ``DEVICE`` '' picks CUDA when it works, 'cpu' never does, and
    'cuda' / 'cuda:N' must have it: a :class:`ConfigError` naming ``DEVICE`` when CUDA does not work (no
    GPU, no driver, a driver older than the CUDA this PyTorch was built for), rather than a run on the
    CPU that was meant for the GPU."""
    if cfg.DEVICE == "cpu":
        return False
    if cfg.DEVICE:
        du.resolve_device(cfg.DEVICE)  # raises the ConfigError
        return True
    return torch.cuda.is_available()


def cpu_threads(local_procs: int) -> int:
    """Threads of one CPU process: ``OMP_NUM_THREADS`` when set (e.g. several runs side by side), else
    the cores shared by the ``local_procs`` processes of this node: without this each process starts a
    thread per core and they thrash."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // max(1, local_procs))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest on 64-bit: bigger blocks are always mmap'd
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    CPU PyTorch allocates every activation anew. By default glibc serves large blocks with ``mmap``
    and unmaps them when freed (and trims the heap top), so each forward page-faults its activations in
    again, zero-filled by the kernel: on the quick-start validation a tenth of the CPU time was
    system time. Blocks up to 32 MiB now come from the heap, which keeps up to 1 GiB of free memory at its
    top; the process's peak memory is unchanged. It does what preloading jemalloc or tcmalloc does in
    PyTorch's CPU performance guide, without a library to install. Process-wide: for the CPU ranks of
    ``valid.py`` and ``dist_train.py``. Returns False (nothing changed) where the C library is not
    glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def join_group(
    cfg: Any,
    local_rank: int,
    rank: int,
    world_size: int,
    init_method: str,
    local_procs: int,
    device_index: int | None = None,
    what: str = "higherpose",
) -> tuple[str, str | None, str | None]:
    """Set this rank's device (CUDA: ``device_index``, by default :func:`du.cuda_device_index`; CPU:
    :func:`keep_freed_memory`; both: PyTorch's and OpenCV's threads of :func:`cpu_threads`), join the
    group of ``world_size`` (no group for a world of 1) and watch for the other ranks' failures
    (:mod:`~higherpose.utils.failures`; ``what`` names the tool in what is printed). Returns
    ``(device, backend or None, backend note)``."""
    cuda = use_cuda(cfg)
    # GPU ranks too: their host side (decoding, grouping, the loader's main process) would otherwise
    # start a thread per core in each of the node's processes; OpenCV's pool likewise (a loader with
    # workers lowers it to one thread before it forks them: dataset.build.make_dataloader).
    threads = cpu_threads(local_procs)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    if cuda:
        if device_index is None:
            device_index = du.cuda_device_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(device_index)
        device = f"cuda:{device_index}"
    else:
        device = "cpu"
        keep_freed_memory()
    backend, note = du.choose_backend(cfg.DIST_BACKEND, cuda)
    du.init_distributed(backend, rank, world_size, init_method, timeout_min=cfg.DIST_TIMEOUT_MIN)
    if world_size > 1:
        failures.watch(init_method, rank, world_size, what)
    if cuda and world_size > 1:
        du.check_one_rank_per_gpu(du.gpu_identity(device_index), backend)
    return device, backend if world_size > 1 else None, note


def spawn(
    entry: Callable[..., None],
    nproc: int,
    args: tuple,
    timeout_min: float,
    what: str,
    init_method: str | None = None,
    store: Any = None,
    other_ranks: Sequence[int] = (),
) -> int:
    """Run ``entry(local_rank, init_method, *args)`` in ``nproc`` processes and wait for them; the
    rendezvous is a store served here unless ``init_method`` is given (multi-node: ``store`` is this
    launcher's connection to it, or the store it serves, and ``other_ranks`` the ranks of the other nodes,
    which a failure here must reach before this launcher goes). Returns 0, or the exit code of the first
    process that failed (reported on stderr as ``what``)."""
    if init_method is None:
        store, init_method = du.serve_rendezvous(timeout_min)
    try:
        mp.spawn(entry, nprocs=nproc, args=(init_method, *args), join=True)
    except mp.ProcessExitedException as err:
        print(f"{what} process {err.error_index} exited with code {err.exit_code}", file=sys.stderr)
        if store is not None and other_ranks:
            failures.wait_for_ranks(store, other_ranks)
        return int(err.exit_code) if err.exit_code and err.exit_code > 0 else 1
    except mp.ProcessRaisedException as err:  # an unexpected error: its traceback
        print(f"{what} process {err.error_index} failed:\n{err}", file=sys.stderr)
        if store is not None and other_ranks:
            failures.wait_for_ranks(store, other_ranks)
        return 1
    finally:
        del store  # referenced until the processes have ended: the store of their rendezvous
    return 0


def node_store(dist_url: str, node: int, timeout_min: float) -> tuple[Any, str]:
    """HigherHRNet's multi-node launch (``--dist-url tcp://HOST:PORT``): node 0's launcher serves the
    rendezvous store at HOST:PORT for the whole run (so it outlives any rank, and a rank's failure still
    reaches the other nodes), the other nodes' launchers connect to it. Returns ``(store, init_method of
    the ranks)``; a :class:`ConfigError` names ``--dist-url`` when it is not ``tcp://HOST:PORT`` or
    node 0 cannot serve it."""
    from higherpose.config import ConfigError

    address = failures.store_address(dist_url) if dist_url.startswith("tcp://") else None
    if address is None:
        raise ConfigError(f"--dist-url = {dist_url!r}: expected tcp://HOST:PORT")
    host, port = address
    timeout = du.process_group_timeout(timeout_min)
    try:
        store = du.dist.TCPStore(host, port, None, node == 0, timeout=timeout, wait_for_workers=False)
    except (RuntimeError, OSError) as err:
        role = "serve" if node == 0 else "reach node 0 at"
        raise ConfigError(f"--dist-url = {dist_url!r}: node {node} cannot {role} it: {err}") from None
    return store, f"{du.STORE_SCHEME}{host}:{port}"


def rank_logging(cfg: Any, cfg_name: str, phase: str, rank: int) -> tuple[logging.Logger, str, str]:
    """Rank 0: HigherHRNet's ``create_logger`` (file + console, output and TensorBoard folders).
    Other ranks: console warnings only, folders received from rank 0 (one place decides the layout).
    Returns ``(logger, output folder, TensorBoard folder)``; rank 0's :class:`ConfigError` (e.g. an
    unwritable ``OUTPUT_DIR``) is raised on every rank, none is left waiting."""
    from higherpose.config import ConfigError
    from higherpose.utils.logging import create_logger

    dirs: list[Any] = [None, None, None]  # output folder, TensorBoard folder, rank 0's error
    log = logging.getLogger(f"higherpose.{phase}.rank{rank}")
    if rank == 0:
        try:
            log, output_dir, tb_log_dir = create_logger(cfg, cfg_name, phase, rank=0)
            dirs = [str(output_dir), str(tb_log_dir), None]
        except ConfigError as err:
            dirs = [None, None, str(err)]
    else:
        log.setLevel(logging.WARNING)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
            log.addHandler(handler)
        log.propagate = False
    dirs = du.broadcast_object(dirs)
    if dirs[2] is not None:
        raise ConfigError(dirs[2])
    return log, dirs[0], dirs[1]
