"""Train a bottom-up pose network (HigherHRNet's command line).

    python tools/dist_train.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml [KEY VALUE ...]

How it runs:
- under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process joins the group
  (env://; multi-node through torchrun's --nnodes / --node_rank / --rdzv-* options);
- launched plainly with CUDA: one process per visible GPU, as HigherHRNet, when ``GPUS`` holds one id
  (every shipped YAML says ``(0,)``); one per listed id when ``GPUS`` lists several; ``--nproc N``:
  GPUs 0..N-1. By ``mp.spawn`` around a rendezvous store this launcher serves, NCCL; the total batch is
  ``TRAIN.IMAGES_PER_GPU`` x the process count;
- launched plainly without CUDA: one CPU process, or ``--nproc N`` gloo processes (DDP on a laptop);
- HigherHRNet's multi-node form still works: ``--world-size NODES --rank NODE --dist-url tcp://HOST:PORT``.
A world of one process trains without any process group. Options go BEFORE the ``KEY VALUE`` list.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import SimpleNamespace
from typing import Any

import torch
import torch.multiprocessing as mp

from higherpose.config import ConfigError, check_config, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.dataset.annotations import AnnotationError
from higherpose.dataset.build import annotation_file
from higherpose.utils import distributed as du
from higherpose.utils.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train keypoints network (HigherHRNet / HigherPose)")
    add_cfg_argument(parser)
    parser.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="processes on this node (default: one per GPUS id with CUDA, 1 on CPU; N: GPUs 0..N-1 with CUDA, "
        "N gloo processes on CPU)",
    )
    parser.add_argument(
        "--gpu", type=int, default=None, help="HigherHRNet compatibility; ignored (use CUDA_VISIBLE_DEVICES)"
    )
    parser.add_argument("--world-size", type=int, default=1, help="number of nodes for the tcp:// launch (HigherHRNet)")
    parser.add_argument("--dist-url", type=str, default="tcp://127.0.0.1:23456", help="rendezvous of the tcp:// launch")
    parser.add_argument("--rank", type=int, default=0, help="node rank for the tcp:// launch")
    add_overrides_argument(parser)
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> Any:
    cfg = default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=args.cfg, opts=args.opts))
    return cfg


def preflight(cfg: Any, nproc: int) -> None:
    """Fail before any process starts, with a message naming the key, when the run cannot work:
    :func:`check_config` (the config's own consistency), then what only start-up can check (the
    process count, the data and weight files).

    Generates the synthetic set here (once) rather than racing in every spawned process.
    """
    check_config(cfg)
    du.process_group_timeout(cfg.DIST_TIMEOUT_MIN)
    if nproc < 1:
        raise ConfigError(f"--nproc = {nproc}: must be at least 1")
    root = cfg.DATASET.ROOT
    if cfg.DATASET.SYNTHETIC and not os.path.isdir(root):
        from higherpose.dataset.synthetic import ensure_synthetic

        print(f"=> generating the synthetic data set in {root}", flush=True)
        ensure_synthetic(root)
    if not os.path.isdir(root):
        raise ConfigError(
            f"DATASET.ROOT = {root!r} does not exist (DATA_DIR = {cfg.DATA_DIR!r}); point it at the data set, "
            "or set DATASET.SYNTHETIC True to generate the synthetic one"
        )
    ann = annotation_file(cfg, is_train=True)
    if not os.path.isfile(ann):
        raise ConfigError(
            f"DATASET.TRAIN = {cfg.DATASET.TRAIN!r}: annotation file {ann} not found "
            f"(DATASET.DATASET = {cfg.DATASET.DATASET!r}, DATASET.ROOT = {root!r})"
        )
    if cfg.MODEL.INIT_WEIGHTS and cfg.MODEL.PRETRAINED and not os.path.isfile(cfg.MODEL.PRETRAINED):
        raise ConfigError(
            f"MODEL.PRETRAINED = {cfg.MODEL.PRETRAINED!r} does not exist; download the ImageNet HRNet weights "
            "or set MODEL.PRETRAINED '' to train from scratch"
        )


def use_cuda(cfg: Any) -> bool:
    return cfg.DEVICE != "cpu" and torch.cuda.is_available()


def _setup_logging(cfg: Any, args: argparse.Namespace, rank: int) -> tuple[logging.Logger, str, str]:
    """Rank 0: HigherHRNet's ``create_logger`` (file + console, output and TensorBoard folders).
    Other ranks: console warnings only, folders received from rank 0 (one place decides the layout)."""
    dirs: list[Any] = [None, None, None]  # output folder, TensorBoard folder, rank 0's error
    log = logging.getLogger(f"higherpose.train.rank{rank}")
    if rank == 0:
        from higherpose.utils.logging import create_logger

        try:
            log, output_dir, tb_log_dir = create_logger(cfg, args.cfg, "train", rank=0)
            dirs = [str(output_dir), str(tb_log_dir), None]
        except ConfigError as err:  # e.g. an unwritable OUTPUT_DIR: every rank must stop, not wait
            dirs = [None, None, str(err)]
    else:
        log.setLevel(logging.WARNING)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
            log.addHandler(handler)
        log.propagate = False
    if du.is_dist():
        import torch.distributed as dist

        dist.broadcast_object_list(dirs, src=0)
    if dirs[2] is not None:
        raise ConfigError(dirs[2])
    return log, dirs[0], dirs[1]


def run_worker(
    local_rank: int,
    rank: int,
    world_size: int,
    init_method: str,
    cfg: Any,
    args: argparse.Namespace,
    model: torch.nn.Module | None = None,
    device_index: int | None = None,
) -> None:
    """One training process: device, process group, per-rank config, logging, :func:`fit`
    (``model``: a prebuilt model to train in place instead of ``build_model``, for tests and custom code;
    ``device_index``: its GPU, by default :func:`~higherpose.utils.distributed.cuda_device_index`)."""
    from higherpose.core.train_loop import NonFiniteLossError
    from higherpose.core.trainer import fit

    cuda = use_cuda(cfg)
    if cuda:
        if device_index is None:
            device_index = du.cuda_device_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(device_index)
        device = f"cuda:{device_index}"
    else:
        device = "cpu"
        local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", max(1, world_size // max(1, args.world_size))))
        # CPU processes share the cores: without this each one starts a thread per core and they thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_procs))
    backend, note = du.choose_backend(cfg.DIST_BACKEND, cuda)
    du.init_distributed(backend, rank, world_size, init_method, timeout_min=cfg.DIST_TIMEOUT_MIN)
    ctx = du.DistContext(rank, world_size, local_rank, device, backend if world_size > 1 else None)

    # HigherHRNet re-read the YAML in every spawned child, so cfg.RANK stayed 0 everywhere and every
    # rank logged and wrote TensorBoard; here cfg.RANK is this process' global rank.
    cfg = cfg.clone()
    cfg.defrost()
    cfg.RANK = rank
    cfg.freeze()
    try:
        log, output_dir, tb_log_dir = _setup_logging(cfg, args, rank)
        if rank == 0:
            if note and world_size > 1:
                log.info(f"=> {note}")
            log.info(f"=> config {args.cfg} with overrides {args.opts}")
            log.info(cfg.dump())
        fit(cfg, ctx, output_dir, tb_log_dir, log, model=model)
    except NonFiniteLossError as err:
        if rank == 0:
            logging.getLogger().error(f"=> {err}")
        else:
            print(f"[rank {rank}] {err}", file=sys.stderr)
        raise SystemExit(3) from None
    except ConfigError as err:  # e.g. an OUTPUT_DIR that turns out not to be writable
        print(f"dist_train.py: config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointError as err:  # e.g. a checkpoint rank 0 cannot read: raised on every rank
        print(f"dist_train.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except AnnotationError as err:  # NaN joints, a truncated JSON, a split without labelled persons
        print(f"dist_train.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        du.cleanup()


def _spawn_entry(
    local_rank: int,
    node_rank: int,
    devices: list[int | None],
    world_size: int,
    init_method: str,
    cfg: Any,
    args: argparse.Namespace,
) -> None:
    nproc = len(devices)
    rank = node_rank * nproc + local_rank
    run_worker(local_rank, rank, world_size, init_method, cfg, args, device_index=devices[local_rank])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
        if du.launched_by_torchrun():
            world_size = int(os.environ["WORLD_SIZE"])
            rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
            if rank == 0:
                preflight(cfg, 1)
            run_worker(local_rank, rank, world_size, "env://", cfg, args)
            return 0
        # HigherHRNet: MULTIPROCESSING_DISTRIBUTED False = one process (it then used DataParallel; we
        # train on one device, DDP being the way to use several).
        cuda = use_cuda(cfg)
        if args.nproc < 0:
            raise ConfigError(f"--nproc = {args.nproc}: must be at least 1")
        count = torch.cuda.device_count() if cuda else 0
        devices = du.spawn_devices(args.nproc, cuda, cfg.MULTIPROCESSING_DISTRIBUTED, cfg.GPUS, count)
        nproc = len(devices)
        preflight(cfg, nproc)
    except ConfigError as err:
        print(f"dist_train.py: config error: {err}", file=sys.stderr)
        return 2

    world_size = nproc * args.world_size
    if world_size > 1:
        where = "CPU (gloo)" if devices[0] is None else f"GPUs {devices}"
        print(f"dist_train.py: {world_size} processes ({nproc} here, on {where}), total batch "
              f"{world_size * cfg.TRAIN.IMAGES_PER_GPU}", flush=True)  # fmt: skip
    if world_size == 1:
        run_worker(0, 0, 1, "", cfg, args, device_index=devices[0])
        return 0
    store = None  # the processes' rendezvous: referenced until they have ended
    if args.world_size > 1:
        init_method = args.dist_url  # HigherHRNet's multi-node tcp:// launch
    else:
        store, init_method = du.serve_rendezvous(cfg.DIST_TIMEOUT_MIN)
    try:
        spawn_args = (args.rank, devices, world_size, init_method, cfg, args)
        mp.spawn(_spawn_entry, nprocs=nproc, args=spawn_args, join=True)
    except mp.ProcessExitedException as err:
        print(f"dist_train.py: training process {err.error_index} exited with code {err.exit_code}", file=sys.stderr)
        return int(err.exit_code) if err.exit_code and err.exit_code > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
