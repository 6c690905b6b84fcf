"""Distributed helpers: who am I (rank, world size), which GPU a process trains on, process-group
set-up (timeout, the launcher-held rendezvous store) and tear-down, backend choice (NCCL on CUDA, gloo
on CPU), rank 0's decisions sent to every rank, the bare model inside DDP, and seeding (per-run,
per-epoch and cuDNN determinism).

Every helper works without an initialised process group (then rank 0 of a world of 1), so the
same training code runs single-process, under ``mp.spawn`` and under ``torchrun``.
"""

from __future__ import annotations

import datetime
import math
import os
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# init_method of a rendezvous whose TCPStore the launcher already serves (see serve_rendezvous).
STORE_SCHEME = "store://"


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node, the
    ``device`` it trains on and the process-group ``backend`` (None when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if is_dist():
        dist.barrier()


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when torchrun (or any env:// launcher) set RANK, WORLD_SIZE and LOCAL_RANK."""
    env = os.environ if environ is None else environ
    return all(k in env for k in TORCHRUN_ENV)


def choose_backend(requested: str, use_cuda: bool) -> tuple[str, str | None]:
    """``(backend, note)``: NCCL needs CUDA, so without CUDA any request becomes gloo (note says so)."""
    requested = (requested or "").lower()
    if use_cuda:
        return (requested or "nccl"), None
    if requested and requested != "gloo":
        return "gloo", f"DIST_BACKEND = {requested!r} needs CUDA; using 'gloo' on the CPU"
    return "gloo", None


def find_free_port() -> int:
    """A TCP port free on this host right now. Another process may take it before it is bound again;
    a launcher should use :func:`serve_rendezvous`, which keeps its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_group_timeout(minutes: float) -> datetime.timedelta:
    """``DIST_TIMEOUT_MIN`` as a timedelta; a :class:`ConfigError` unless it is a finite number > 0."""
    from higherpose.config import ConfigError

    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) or minutes <= 0:
        raise ConfigError(
            f"DIST_TIMEOUT_MIN = {minutes!r}: must be a number of minutes > 0 (how long a rank waits at a "
            "collective, e.g. while rank 0 validates)"
        )
    return datetime.timedelta(minutes=float(minutes))


def serve_rendezvous(timeout_min: float, host: str = "127.0.0.1") -> tuple[Any, str]:
    """``(store, init_method)`` for a single-node launch: a TCPStore on a port the OS picks, served by
    the launcher for as long as it keeps ``store``. The ranks join it as clients through
    ``init_method`` (``store://HOST:PORT``), so no other process can take the port between picking it
    and binding it, as it could with :func:`find_free_port`."""
    timeout = process_group_timeout(timeout_min)
    store = dist.TCPStore(host, 0, None, True, timeout=timeout, wait_for_workers=False)
    return store, f"{STORE_SCHEME}{host}:{store.port}"


def init_distributed(
    backend: str, rank: int, world_size: int, init_method: str = "env://", timeout_min: float = 120.0
) -> None:
    """Join the process group (no-op for a world of 1: single-process training needs no group).

    ``timeout_min`` (``DIST_TIMEOUT_MIN``) bounds every collective, so it must outlast the longest
    work one rank does while the others wait (rank 0's validation). ``init_method``: ``env://``,
    ``tcp://HOST:PORT`` or ``store://HOST:PORT`` (a store served by :func:`serve_rendezvous`).
    """
    timeout = process_group_timeout(timeout_min)
    if world_size <= 1 or is_dist():
        return
    if init_method.startswith(STORE_SCHEME):
        host, port = init_method[len(STORE_SCHEME) :].rsplit(":", 1)
        store = dist.TCPStore(host, int(port), world_size, False, timeout=timeout)
        dist.init_process_group(backend=backend, store=store, world_size=world_size, rank=rank, timeout=timeout)
        return
    dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size, rank=rank, timeout=timeout)


def cuda_device_index(local_rank: int, device_count: int) -> int:
    """The GPU of the process with this node-local rank: ``local_rank``, or 0 when the process sees a
    single GPU (SLURM ``--gpus-per-task=1`` gives each task its own GPU as device 0).

    A :class:`ConfigError` when there are more processes than GPUs. With one visible GPU every local
    rank gets it; :func:`check_one_rank_per_gpu` then stops a group where that GPU is another rank's.
    """
    from higherpose.config import ConfigError

    if device_count < 1:
        raise ConfigError("no CUDA device is visible to this process (set DEVICE 'cpu' to train on the CPU)")
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise ConfigError(
        f"local rank {local_rank} but only {device_count} GPUs visible: start at most one process per GPU"
    )


def gpu_identity(index: int) -> str:
    """CUDA device ``index`` as every process on any node names it, whatever its ``CUDA_VISIBLE_DEVICES``:
    the GPU's UUID (else host name and PCI address)."""
    props = torch.cuda.get_device_properties(index)
    uuid = str(getattr(props, "uuid", "") or "")
    where = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}"
    return f"GPU-{uuid}" if uuid else f"{socket.gethostname()} PCI {where}"


def check_one_rank_per_gpu(identity: str, backend: str | None) -> None:
    """Stop every rank with a :class:`ConfigError` when two ranks drive one GPU under NCCL, which fails
    on that ("Duplicate GPU detected") without saying which ranks. ``identity``: this rank's
    :func:`gpu_identity`. Under gloo a GPU may be shared (slow; a one-GPU machine checking the
    multi-process paths). Every rank must call it (a collective)."""
    from higherpose.config import ConfigError

    first: dict[str, int] = {}
    for rank, ident in enumerate(all_gather_objects(identity)):
        if ident in first and backend == "nccl":
            raise ConfigError(
                f"ranks {first[ident]} and {rank} both use {ident}: NCCL needs one process per GPU; start at "
                "most one process per visible GPU on each node (torchrun --nproc_per_node, --nproc, "
                "CUDA_VISIBLE_DEVICES), or set DIST_BACKEND 'gloo' to share a GPU (slow)"
            )
        first.setdefault(ident, rank)


def spawn_devices(nproc: int, cuda: bool, per_gpu: bool, gpus: Sequence[int], device_count: int) -> list[int | None]:
    """The device of each process a plain launch starts on this node (its length is the process
    count): a GPU index, or None for a CPU process.

    - CPU: ``nproc`` processes (``--nproc``; 0 means one);
    - CUDA, ``nproc`` > 0: GPUs 0 .. nproc-1 (the command line wins over the YAML);
    - CUDA, ``MULTIPROCESSING_DISTRIBUTED`` (``per_gpu``), ``GPUS`` listing several ids: one process
      per listed id;
    - CUDA, ``per_gpu``, ``GPUS`` with one id (HigherHRNet's YAMLs all say ``(0,)``): one process per
      visible GPU, as HigherHRNet launches, so its YAMLs and commands keep their meaning;
    - CUDA otherwise: one process on ``GPUS[0]`` (HigherHRNet's single-process path).

    The total batch is ``TRAIN.IMAGES_PER_GPU`` x the process count (the launcher logs both). A
    :class:`ConfigError` names ``GPUS`` / ``--nproc`` when an id is repeated, negative or not visible.
    """
    from higherpose.config import ConfigError

    if not cuda:
        return [None] * max(1, nproc)
    if nproc > 0:
        ids, key = list(range(nproc)), f"--nproc = {nproc}"
    elif per_gpu and len(gpus) == 1:
        ids, key = list(range(device_count)), f"GPUS = {tuple(gpus)} (every visible GPU)"
    else:
        ids = [int(g) for g in gpus] if per_gpu else [int(gpus[0])] if len(gpus) else []
        key = f"GPUS = {tuple(gpus)}"
    if not ids:
        raise ConfigError(f"{key}: list at least one GPU id")
    if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= device_count:
        raise ConfigError(
            f"{key}: needs distinct GPU ids from 0 to {device_count - 1} ({device_count} visible; "
            "CUDA_VISIBLE_DEVICES renumbers them from 0)"
        )
    return list(ids)


def cleanup() -> None:
    """Stop watching for other ranks' failures and leave the process group if one was joined."""
    from higherpose.utils import failures

    failures.stop_watching()
    if is_dist():
        dist.destroy_process_group()


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place elementwise max over ranks (a no-op single-process)."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; a no-op single-process). Every rank must call it."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled; ``[obj]`` single-process). Every rank must call it."""
    if not is_dist():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one. Every rank must call it."""
    if not is_dist():
        return bool(flag)
    flags: list[Any] = [None] * get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return any(flags)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel."""
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model


def broadcast_buffers_(module: nn.Module, src: int = 0) -> None:
    """Overwrite every buffer (BN running stats, ...) with rank ``src``'s (a no-op single-process)."""
    if is_dist():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src)


def derive_seed(seed: int, epoch: int = 0, rank: int = 0) -> int:
    """A distinct, reproducible 31-bit seed per (run seed, epoch, rank)."""
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(rank) * 101) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    # The global NumPy RNG on purpose: HigherHRNet's augmentations draw from it.
    np.random.seed(seed % (2**32))  # noqa: NPY002
    torch.manual_seed(seed)


def reseed_epoch(data_loader: Any, seed: int) -> None:
    """Seed everything an epoch draws from: the global RNGs, the loader's shuffling generator and, with
    ``WORKERS 0``, the dataset's augmentation stream. Epoch ``e`` then does not depend on whether the
    run was resumed, so a resumed run reproduces an uninterrupted one.

    With workers, their augmentation streams are seeded from the loader's generator when they start,
    which is every epoch only if the loader's workers are not persistent (``make_dataloader`` makes
    them so for a seeded run); persistent workers would keep their epoch-0 streams.
    """
    seed_everything(seed)
    generator = getattr(data_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)
    dataset = getattr(data_loader, "dataset", None)
    if getattr(data_loader, "num_workers", 1) == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)


def setup_determinism(
    seed: int, *, cudnn_benchmark: bool, cudnn_deterministic: bool, cudnn_enabled: bool, deterministic: bool = False
) -> None:
    """cuDNN flags (``CUDNN.*``), ``TRAIN.DETERMINISTIC`` and, for ``seed >= 0`` (``TRAIN.SEED``), the
    global RNGs.

    A seeded run is meant to be reproducible, so it turns benchmarking off and deterministic cuDNN
    kernels on whatever ``CUDNN.BENCHMARK`` / ``CUDNN.DETERMINISTIC`` say. On the CPU that is enough: a
    resumed seeded run reproduces an uninterrupted one. On CUDA, kernels that accumulate with atomics
    (``gather``'s and ``scatter_add``'s backward, attention's backward) differ run to run unless
    ``deterministic`` (``TRAIN.DETERMINISTIC``) picks their deterministic versions and cuBLAS its fixed
    workspace; ops with no deterministic CUDA kernel (nearest upsampling's backward) warn once instead of
    stopping the run, and stay run-to-run different in the last bits.
    """
    if deterministic:
        # Read when cuBLAS makes its handle, at the first matmul: before any has run.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and seed < 0 and not deterministic
        torch.backends.cudnn.deterministic = bool(cudnn_deterministic) or seed >= 0 or deterministic
        torch.backends.cudnn.enabled = bool(cudnn_enabled)
    if seed >= 0:
        # Same seed on every rank for the model init (DDP also broadcasts rank 0's weights).
        seed_everything(int(seed))


def set_tf32(mode: str) -> str:
    """``TF32``: which float32 work may use TF32 tensor cores (Ampere and later GPUs; no effect on the
    CPU): 'conv' convolutions only (PyTorch's default), 'all' also float32 matmuls (the SAT head's
    attention and linears, UDP's resampling), 'none' neither. Returns the choice in words, for the log."""
    conv, matmul = mode in ("conv", "all"), mode == "all"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
    word = {True: "TF32", False: "full FP32"}
    return f"TF32 = {mode!r}: convolutions in {word[conv]}, float32 matmuls in {word[matmul]}"


def rng_state() -> dict[str, Any]:
    """The RNG states of this process (stored in checkpoints)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states written by :func:`rng_state` (missing entries are left alone)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])  # noqa: NPY002
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def resolve_device(name: str) -> torch.device:
    """The ``DEVICE`` key: '' -> cuda when available else cpu; otherwise the named device (a
    :class:`ConfigError` when it names CUDA on a machine without it)."""
    from higherpose.config import ConfigError

    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"DEVICE = {name!r}: {err} (use '', 'cpu', 'cuda' or 'cuda:N')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"DEVICE = {name!r}: CUDA does not work on this machine ({cuda_unavailable_reason()}); "
            "use '' (CUDA when it works) or 'cpu'"
        )
    return device


def cuda_unavailable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False, in words: a CPU-only build, no GPU visible, or a
    driver that cannot run this build's CUDA (PyTorch then only warns and reports no CUDA)."""
    if torch.version.cuda is None:
        return "this PyTorch is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES = {os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
    return (
        f"PyTorch {torch.__version__} is built for CUDA {torch.version.cuda}: no GPU is visible, or the "
        "NVIDIA driver is missing or older than that CUDA needs (nvidia-smi shows the driver)"
    )
