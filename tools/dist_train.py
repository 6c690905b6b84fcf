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

from higherpose.config import ConfigError, check_config, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.dataset.annotations import AnnotationError
from higherpose.dataset.build import annotation_file
from higherpose.utils import distributed as du
from higherpose.utils import launch
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

    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", max(1, world_size // max(1, args.world_size))))
    device, backend, note = launch.join_group(cfg, local_rank, rank, world_size, init_method, local_procs, device_index)
    ctx = du.DistContext(rank, world_size, local_rank, device, backend)

    # HigherHRNet re-read the YAML in every spawned child, so cfg.RANK stayed 0 everywhere and every
    # rank logged and wrote TensorBoard; here cfg.RANK is this process' global rank.
    cfg = cfg.clone()
    cfg.defrost()
    cfg.RANK = rank
    cfg.freeze()
    try:
        log, output_dir, tb_log_dir = launch.rank_logging(cfg, args.cfg, "train", rank)
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
    init_method: str,
    node_rank: int,
    devices: list[int | None],
    world_size: int,
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
        cuda = launch.use_cuda(cfg)
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
    init_method = args.dist_url if args.world_size > 1 else None  # None: a store served here
    spawn_args = (args.rank, devices, world_size, cfg, args)
    return launch.spawn(_spawn_entry, nproc, spawn_args, cfg.DIST_TIMEOUT_MIN, "dist_train.py: training", init_method)


if __name__ == "__main__":
    sys.exit(main())
