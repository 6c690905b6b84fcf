"""Distributed helpers without a process group (the single-process case every helper must support),
backend choice, torchrun detection, free ports, seeding and RNG state round trips, the process-group
timeout, the GPU of each process and the launcher-held rendezvous."""

from __future__ import annotations

import datetime
import os
import random
import socket

import numpy as np
import pytest
import torch

from higherpose.config import ConfigError
from higherpose.utils import distributed as du


def test_helpers_without_a_process_group():
    assert not du.is_dist()
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    du.barrier()  # no-op, must not raise
    flags = torch.tensor([0.0, 1.0])
    assert torch.equal(du.all_reduce_max_(flags), torch.tensor([0.0, 1.0]))
    du.init_distributed("gloo", 0, 1)  # a world of one joins no group
    assert not du.is_dist()
    du.cleanup()
    ctx = du.DistContext()
    assert ctx.is_main and not ctx.distributed and ctx.device == "cpu" and ctx.backend is None
    assert du.DistContext(rank=1, world_size=2).distributed and not du.DistContext(rank=1, world_size=2).is_main


@pytest.mark.parametrize(
    "requested, cuda, expected, noted",
    [
        ("nccl", True, "nccl", False),
        ("gloo", True, "gloo", False),
        ("", True, "nccl", False),
        ("nccl", False, "gloo", True),
        ("NCCL", False, "gloo", True),
        ("gloo", False, "gloo", False),
        ("", False, "gloo", False),
    ],
)
def test_choose_backend(requested, cuda, expected, noted):
    backend, note = du.choose_backend(requested, cuda)
    assert backend == expected
    assert (note is not None) == noted
    if noted:
        assert "gloo" in note and "CUDA" in note


def test_launched_by_torchrun():
    assert du.launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert not du.launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert not du.launched_by_torchrun({})


def test_find_free_port_is_bindable():
    port = du.find_free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


# derive_seed(seed, epoch, rank) = (seed·1 000 003 + epoch·10 007 + rank·101) mod (2³¹ - 1), worked
# out by hand. A resumed or re-run training re-derives its per-epoch, per-rank augmentation seeds, so
# these values are part of what makes a seeded run reproducible: they must not change between
# processes, machines or versions.
PINNED_SEEDS = [
    ((0, 0, 0), 0),
    ((0, 1, 0), 10_007),
    ((0, 0, 1), 101),
    ((7, 0, 0), 7_000_021),
    ((7, 3, 1), 7_030_143),  # 7 000 021 + 30 021 + 101
    ((12345, 99, 7), 1_608_610_200),  # 12 346 028 435 - 5·(2³¹ - 1)
    ((2**31, 5, 3), 1_050_341),  # 2³¹ ≡ 1: 1 000 003 + 50 035 + 303
]


def test_derive_seed_distinct_and_stable():
    seeds = {du.derive_seed(7, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    assert [du.derive_seed(*args) for args, _ in PINNED_SEEDS] == [seed for _, seed in PINNED_SEEDS]


def draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(1).item()  # noqa: NPY002 (the global RNGs on purpose)


def test_seed_everything_and_rng_state_round_trip():
    du.seed_everything(123)
    first = draws()
    du.seed_everything(123)
    assert draws() == first
    state = du.rng_state()
    after = draws()
    draws()
    du.set_rng_state(state)
    assert draws() == after
    du.set_rng_state({})  # missing entries are left alone


# ------------------------------------------------------------------ process group, devices, rendezvous
@pytest.mark.parametrize("minutes", [0, -5, float("nan"), float("inf"), "30", True, None])
def test_process_group_timeout_refuses_bad_values(minutes):
    with pytest.raises(ConfigError, match="DIST_TIMEOUT_MIN"):
        du.process_group_timeout(minutes)


def test_init_distributed_passes_the_timeout(monkeypatch):
    seen = {}
    monkeypatch.setattr(du.dist, "init_process_group", lambda **kw: seen.update(kw))
    du.init_distributed("gloo", 1, 2, "tcp://127.0.0.1:1", timeout_min=240)
    assert seen["timeout"] == datetime.timedelta(minutes=240) and seen["rank"] == 1 and seen["world_size"] == 2
    assert du.process_group_timeout(0.5) == datetime.timedelta(seconds=30)
    with pytest.raises(ConfigError, match="DIST_TIMEOUT_MIN"):  # refused before any rendezvous
        du.init_distributed("gloo", 0, 2, "tcp://127.0.0.1:1", timeout_min=0)


@pytest.mark.parametrize(
    "local_rank, count, expected",
    [(0, 1, 0), (3, 1, 0), (0, 4, 0), (3, 4, 3), (4, 4, None), (0, 0, None)],
)
def test_cuda_device_index(local_rank, count, expected):
    """One GPU per SLURM task shows as device 0 whatever the local rank; more ranks than GPUs is an error."""
    if expected is None:
        with pytest.raises(ConfigError):
            du.cuda_device_index(local_rank, count)
    else:
        assert du.cuda_device_index(local_rank, count) == expected


@pytest.mark.parametrize(
    "nproc, cuda, per_gpu, gpus, count, expected",
    [
        (0, False, True, (0,), 0, [None]),  # CPU: one process
        (2, False, True, (0,), 0, [None, None]),  # CPU: --nproc gloo processes
        (0, True, True, (0,), 4, [0, 1, 2, 3]),  # HigherHRNet's GPUS (0,): every visible GPU
        (0, True, True, (0,), 1, [0]),
        (0, True, True, (0, 1, 2, 3), 4, [0, 1, 2, 3]),
        (0, True, True, (2, 3), 4, [2, 3]),
        (0, True, False, (1, 2), 4, [1]),  # MULTIPROCESSING_DISTRIBUTED False: one process
        (2, True, True, (0,), 4, [0, 1]),  # --nproc wins over the YAML
        (0, True, True, (0, 4), 4, None),  # not visible
        (0, True, True, (1, 1), 4, None),  # repeated
        (0, True, False, (), 4, None),
        (5, True, True, (0,), 4, None),
    ],
)
def test_spawn_devices_follows_gpus(nproc, cuda, per_gpu, gpus, count, expected):
    if expected is None:
        with pytest.raises(ConfigError, match="GPUS|--nproc"):
            du.spawn_devices(nproc, cuda, per_gpu, gpus, count)
    else:
        assert du.spawn_devices(nproc, cuda, per_gpu, gpus, count) == expected


def test_served_rendezvous_keeps_its_port():
    """The launcher's store holds the port from the moment it is chosen: nothing else can bind it."""
    store, init_method = du.serve_rendezvous(1.0)
    host, port = init_method.removeprefix(du.STORE_SCHEME).rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) == store.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", int(port)))
    client = torch.distributed.TCPStore(host, int(port), None, False, timeout=datetime.timedelta(seconds=30))
    client.set("k", "v")
    assert store.get("k") == b"v"


def test_device_cuda_without_cuda_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"DEVICE = 'cuda': CUDA does not work on this machine \("):
        du.resolve_device("cuda")
    with pytest.raises(ConfigError, match="DEVICE = 'gpu'"):
        du.resolve_device("gpu")
    assert du.resolve_device("") == torch.device("cpu")


def _join_one_gpu(rank: int, init_method: str, backend: str, out: str) -> None:
    """One of two ranks whose device lookup says they share one GPU; they talk over gloo (no GPU here)."""
    from higherpose.utils import launch
    from tests.conftest import TINY_HRNET, load_cfg

    cfg = load_cfg(TINY_HRNET, "DIST_BACKEND", backend, "DEVICE", "cuda")
    init = du.init_distributed
    launch.use_cuda = lambda cfg: True
    torch.cuda.device_count, torch.cuda.set_device = (lambda: 1), (lambda index: None)
    du.gpu_identity = lambda index: "GPU-5e1f"  # what either rank's lookup finds
    du.init_distributed = lambda backend, *a, **k: init("gloo", *a, **k)
    try:
        device, backend, _ = launch.join_group(cfg, rank, rank, 2, init_method, 2)
        message = f"joined {device} {backend}"
    except ConfigError as err:
        message = str(err)
    finally:
        du.cleanup()
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(message)


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_two_ranks_on_one_gpu_stop_under_nccl(tmp_path, backend):
    """The one-visible-GPU fallback gives every local rank GPU 0; under NCCL both ranks stop with the ranks
    and the GPU named (NCCL's own error names neither); gloo may share it."""
    import torch.multiprocessing as mp

    init = f"tcp://127.0.0.1:{du.find_free_port()}"
    mp.spawn(_join_one_gpu, nprocs=2, args=(init, backend, str(tmp_path)), join=True)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if backend == "nccl":
        assert all("ranks 0 and 1 both use GPU-5e1f: NCCL needs one process per GPU" in m for m in messages), messages
    else:
        assert messages == ["joined cuda:0 gloo"] * 2, messages


@pytest.fixture
def restore_precision_flags():
    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    deterministic, cublas = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.enabled)
    yield
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.enabled = cudnn
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@pytest.mark.parametrize(
    "mode, conv, matmul, words",
    [
        ("conv", "tf32", "ieee", "convolutions in TF32, float32 matmuls in full FP32"),
        ("all", "tf32", "tf32", "convolutions in TF32, float32 matmuls in TF32"),
        ("none", "ieee", "ieee", "convolutions in full FP32, float32 matmuls in full FP32"),
    ],
)
def test_tf32_modes_set_both_flags_and_say_so(restore_precision_flags, mode, conv, matmul, words):
    assert du.set_tf32(mode) == f"TF32 = {mode!r}: {words}"
    assert torch.backends.cudnn.conv.fp32_precision == conv and torch.backends.cuda.matmul.fp32_precision == matmul


def test_tf32_key_is_checked():
    from tests.conftest import TINY_HRNET, load_cfg

    assert load_cfg(TINY_HRNET).TF32 == "conv"  # PyTorch's own default
    with pytest.raises(ConfigError, match=r"TF32 = 'fast': choose one of \('conv', 'all', 'none'\)"):
        load_cfg(TINY_HRNET, "TF32", "fast")


def test_deterministic_switch_sets_what_cuda_needs(restore_precision_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = dict(cudnn_benchmark=True, cudnn_deterministic=False, cudnn_enabled=True)
    du.setup_determinism(-1, **flags)
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    du.setup_determinism(-1, **flags, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    if torch.backends.cudnn.is_available():
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
