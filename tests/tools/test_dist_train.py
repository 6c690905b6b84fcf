"""tools/dist_train.py: config errors before any process starts, a single CPU process through
``main(argv)``, two gloo DDP processes (``mp.spawn`` as ``--nproc 2`` does, and torchrun) on the real
COCO sample images with the tiny HigherHRNet at 128 px."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from higherpose.utils import distributed as du
from higherpose.utils import launch
from higherpose.utils.checkpoint import load_file
from tests.conftest import REPO, SHARED_DATA, TINY_HRNET, load_tool

dist_train = load_tool("dist_train")

FAST = ["DATASET.INPUT_SIZE", "128", "DATASET.OUTPUT_SIZE", "[32, 64]", "TRAIN.IMAGES_PER_GPU", "2", "WORKERS", "0"]
FAST += ["TRAIN.SEED", "0", "PRINT_FREQ", "1", "DEBUG.DEBUG", "False", "TRAIN.END_EPOCH", "1"]


def argv(out: Path, *opts: str, nproc: int = 0) -> list[str]:
    data = ["DATASET.ROOT", str(SHARED_DATA / "coco_sample"), "DATASET.TRAIN", "val2017", "DATASET.TEST", "val2017"]
    data += ["DATASET.SYNTHETIC", "False", "OUTPUT_DIR", str(out), "LOG_DIR", str(out / "log")]
    flags = ["--nproc", str(nproc)] if nproc else []
    return ["--cfg", str(TINY_HRNET), *flags, *data, *FAST, *opts]


def run_dir(out: Path) -> Path:
    return out / "coco_kpt" / "pose_higher_hrnet" / "higher_hrnet_tiny"


@pytest.mark.parametrize(
    "opts, message",
    [
        (["TRAIN.IMAGES_PER_GPU", "0"], "TRAIN.IMAGES_PER_GPU"),
        (["DATASET.ROOT", "/no/such/data"], "DATASET.ROOT = '/no/such/data' does not exist"),
        (["DATASET.TRAIN", "train2017"], "person_keypoints_train2017.json not found"),
        (["TRAIN.BEGIN_EPOCH", "1"], "TRAIN.END_EPOCH = 1 must be larger"),
        (["MODEL.PRETRAINED", "/no/such/hrnet_w32.pth"], "MODEL.PRETRAINED"),
        (["DIST_TIMEOUT_MIN", "0"], "DIST_TIMEOUT_MIN = 0.0"),
    ],
)
def test_config_errors_stop_before_any_process(coco_sample, tmp_path, capsys, monkeypatch, opts, message):
    monkeypatch.setattr(dist_train, "run_worker", lambda *a, **k: pytest.fail("a worker was started"))
    assert dist_train.main(argv(tmp_path, *opts, nproc=2)) == 2
    err = capsys.readouterr().err
    assert "config error" in err and message in err, err
    assert not (tmp_path / "coco_kpt").exists()


@pytest.mark.parametrize("torchrun", [False, True])
def test_device_cuda_without_cuda_stops_before_any_work(coco_sample, tmp_path, capsys, monkeypatch, torchrun):
    """No driver, or one too old for this PyTorch's CUDA: a run meant for the GPU does not go to the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist_train, "run_worker", lambda *a, **k: pytest.fail("a worker was started"))
    monkeypatch.setattr(dist_train, "preflight", lambda *a, **k: pytest.fail("preflight ran"))
    if torchrun:
        for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
            monkeypatch.setenv(key, value)
    assert dist_train.main(argv(tmp_path, "DEVICE", "cuda", nproc=2)) == 2
    err = capsys.readouterr().err
    assert "config error: DEVICE = 'cuda': CUDA does not work on this machine" in err, err


def test_timeout_from_the_config_reaches_the_process_group(tmp_path, monkeypatch):
    seen = {}

    def init_process_group(**kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(du.dist, "init_process_group", init_process_group)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # run_worker sizes the CPU threads
    args = dist_train.parse_args(argv(tmp_path, "DIST_TIMEOUT_MIN", "240"))
    cfg = dist_train.load_config(args)
    with pytest.raises(RuntimeError, match="stop here"):
        dist_train.run_worker(1, 1, 2, "tcp://127.0.0.1:1", cfg, args)
    assert seen["timeout"] == datetime.timedelta(minutes=240) and seen["rank"] == 1


def test_spawned_processes_rendezvous_at_a_store_the_launcher_holds(coco_sample, tmp_path, monkeypatch):
    """``--nproc 2``: the port is bound by the launcher before the processes start (no free-port race),
    one device entry per process."""
    calls = []

    def spawn(fn, nprocs, args, join):
        init_method = args[0]
        host, port = init_method.removeprefix(du.STORE_SCHEME).rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
            s.bind((host, int(port)))  # still held while the processes run
        calls.append((nprocs, args[2], init_method))

    monkeypatch.setattr(launch.mp, "spawn", spawn)
    assert dist_train.main(argv(tmp_path, nproc=2)) == 0
    ((nprocs, devices, init_method),) = calls
    assert nprocs == 2 and devices == [None, None] and init_method.startswith(du.STORE_SCHEME)


@pytest.fixture
def restore_root_logger():
    """main() in-process configures the root logger (create_logger); put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def test_single_cpu_process_trains_and_saves(coco_sample, tmp_path, restore_root_logger):
    assert dist_train.main(argv(tmp_path, "TRAIN.ITERS_PER_EPOCH", "1")) == 0
    folder = run_dir(tmp_path)
    assert {"checkpoint.pth", "final_state.pth"} <= set(os.listdir(folder))
    log = next(folder.glob("train_*_rank0.log")).read_text()
    assert "Epoch: [0][0/1]" in log and "samples/s" in log and "model_best.pth not written" in log


def _spawned(local_rank: int, nproc: int, init_method: str, cfg, args, out: str) -> None:
    """One rank of the ``--nproc`` path; trains a model it owns so the test can compare ranks."""
    from higherpose.models import build_model

    torch.manual_seed(100 + local_rank)  # different inits per rank: DDP must broadcast rank 0's
    model = build_model(cfg, is_train=True)
    dist_train.run_worker(local_rank, local_rank, nproc, init_method, cfg, args, model=model)
    torch.save(model.state_dict(), os.path.join(out, f"weights_rank{local_rank}.pt"))


def test_two_gloo_processes_keep_identical_weights(coco_sample, tmp_path):
    args = dist_train.parse_args(argv(tmp_path, "TRAIN.ITERS_PER_EPOCH", "2", nproc=2))
    cfg = dist_train.load_config(args)
    init = f"tcp://127.0.0.1:{du.find_free_port()}"
    mp.spawn(_spawned, nprocs=2, args=(2, init, cfg, args, str(tmp_path)), join=True)

    w0, w1 = (torch.load(tmp_path / f"weights_rank{r}.pt") for r in (0, 1))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    folder = run_dir(tmp_path)
    final = load_file(str(folder / "final_state.pth"))
    assert all(torch.equal(final[k], w0[k]) for k in final)
    ckpt = load_file(str(folder / "checkpoint.pth"))
    # 4 images, 2 ranks, batch 2: one step per epoch (DistributedSampler splits the set)
    assert ckpt["global_step"] == 1 and not any(k.startswith("module.") for k in ckpt["model"])
    # Only rank 0 wrote: one log file (rank 0's), one TensorBoard event file, no per-rank finals.
    assert [p.name for p in folder.glob("*.log")] == [next(folder.glob("*.log")).name]
    assert next(folder.glob("*.log")).name.endswith("_rank0.log")
    assert len(list((tmp_path / "log").rglob("events.out.tfevents*"))) == 1
    assert [p.name for p in folder.glob("final_state*")] == ["final_state.pth"]
    log = next(folder.glob("*.log")).read_text()
    assert "2 process(es)" in log and "backend gloo" in log and "batch 2 x 2" in log


def test_torchrun_two_processes(coco_sample, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(REPO / "tools" / "dist_train.py"), *argv(tmp_path, "TRAIN.ITERS_PER_EPOCH", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = run_dir(tmp_path)
    assert {"checkpoint.pth", "final_state.pth"} <= set(os.listdir(folder))
    logs = list(folder.glob("*.log"))
    assert len(logs) == 1 and logs[0].name.endswith("_rank0.log")
    assert "2 process(es)" in logs[0].read_text()


def test_unwritable_output_dir_stops_every_process(coco_sample, tmp_path):
    """OUTPUT_DIR under a regular file: rank 0 finds it when it creates its folders, inside the
    processes, and sends the error to rank 1; the run ends with a one-line error naming the folder."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cmd = [sys.executable, "tools/dist_train.py", *argv(tmp_path, nproc=2)]
    cmd[cmd.index("OUTPUT_DIR") + 1] = str(blocker / "out")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "OUTPUT_DIR" in result.stderr and str(blocker) in result.stderr, result.stderr[-2000:]


def _node(out: Path, node: int, port: int, *opts: str, file_size_limit: int | None = None) -> subprocess.Popen:
    """One node of HigherHRNet's tcp:// launch (one gloo process on it), its own OUTPUT_DIR (no shared
    file system); ``file_size_limit``: the largest file its processes may write (RLIMIT_FSIZE: writing
    more fails as on a full disk)."""
    import resource

    nodes = ["--world-size", "2", "--rank", str(node), "--dist-url", f"tcp://127.0.0.1:{port}"]
    cmd = [sys.executable, "tools/dist_train.py", *nodes, *argv(out / f"node{node}", *opts)]
    limit = None
    if file_size_limit is not None:
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))  # noqa: E731
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stderr=subprocess.PIPE, preexec_fn=limit)


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, float]]:
    """``(exit code, stderr, time it ended)`` of each process, waited for side by side."""
    import threading
    import time

    results: list = [None] * len(procs)

    def wait(i: int) -> None:
        _, err = procs[i].communicate(timeout=400)
        results[i] = (procs[i].returncode, err, time.monotonic())

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_tcp_nodes_rank_0_that_cannot_write_its_checkpoint_stops_the_other_node(coco_sample, tmp_path):
    """Node 0 can write files of at most 2 MB: its log, not its checkpoint. Node 1, waiting for rank 0 at the
    epoch's end, stops within seconds with rank 0's message."""
    port = du.find_free_port()
    opts = ["TRAIN.ITERS_PER_EPOCH", "1", "TRAIN.END_EPOCH", "2"]
    procs = [_node(tmp_path, 0, port, *opts, file_size_limit=2 << 20), _node(tmp_path, 1, port, *opts)]
    (code0, err0, end0), (code1, err1, end1) = _finish(procs)
    assert code0 == 2 and "cannot write" in err0 and "checkpoint.pth" in err0, err0[-3000:]
    assert code1 == 2, err1[-3000:]
    assert "[rank 1] stopping: rank 0: cannot write" in err1 and "checkpoint.pth" in err1, err1[-3000:]
    assert abs(end1 - end0) < 60
    assert not list(tmp_path.rglob("checkpoint.pth")) and not list(tmp_path.rglob("final_state.pth"))


def test_tcp_nodes_config_error_on_one_node_ends_every_node(coco_sample, tmp_path):
    """Node 1 finds no data where its DATASET.ROOT points; node 0's checks pass. Both end with node 1's
    message before any process starts."""
    port = du.find_free_port()
    procs = [_node(tmp_path, 0, port), _node(tmp_path, 1, port, "DATASET.ROOT", str(tmp_path / "nothing"))]
    (code0, err0, end0), (code1, err1, end1) = _finish(procs)
    for code, err in ((code0, err0), (code1, err1)):
        assert code == 2 and "config error: node 1: " in err and "DATASET.ROOT" in err, err[-3000:]
    assert abs(end1 - end0) < 60
    assert not (tmp_path / "node0" / "coco_kpt").exists()


def test_torchrun_nodes_config_error_of_rank_0_ends_every_node(coco_sample, tmp_path):
    """Two torchrun nodes (one rank each, static rendezvous): rank 0's DATASET.ROOT holds no data. Rank 1,
    whose own data is there, stops within a minute with rank 0's message instead of waiting for rank 0
    at the rendezvous."""
    port = str(du.find_free_port())
    procs = []
    for node in (0, 1):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node)]
        torchrun += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port]
        opts = ["DATASET.ROOT", str(tmp_path / "nothing")] if node == 0 else []
        cmd = [*torchrun, "tools/dist_train.py", *argv(tmp_path / f"node{node}", *opts)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, text=True, stderr=subprocess.PIPE))
    (code0, err0, end0), (code1, err1, end1) = _finish(procs)
    for code, err in ((code0, err0), (code1, err1)):
        assert code != 0 and "config error: rank 0: DATASET.ROOT" in err, err[-3000:]
    assert abs(end1 - end0) < 60
    assert not list(tmp_path.rglob("coco_kpt"))
