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
- HigherHRNet's multi-node form still works: ``--world-size NODES --rank NODE --dist-url tcp://HOST:PORT``
  (node 0's launcher serves the rendezvous there; the nodes share their start-up checks, and a failure
  on any rank reaches every node with its message).
A world of one process trains without any process group. Options go BEFORE the ``KEY VALUE`` list.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace
from typing import Any

import torch

from higherpose.apis.train import preflight, run_worker, spawn_entry
from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.utils import distributed as du
from higherpose.utils import failures, launch


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if du.launched_by_torchrun():
            cfg = load_config(args)
            world_size = int(os.environ["WORLD_SIZE"])
            rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
            launch.use_cuda(cfg)  # every rank: DEVICE 'cuda' where CUDA does not work stops here
            # rank 0 checks; every rank stops with its error once they have joined the group
            run_worker(local_rank, rank, world_size, "env://", cfg, args, check_on_rank0=True)
            return 0
    except ConfigError as err:
        print(f"dist_train.py: config error: {err}", file=sys.stderr)
        return 2
    error, cfg, devices = None, None, [None]
    try:
        cfg = load_config(args)
        # HigherHRNet: MULTIPROCESSING_DISTRIBUTED False = one process (it then used DataParallel; we
        # train on one device, DDP being the way to use several).
        cuda = launch.use_cuda(cfg)
        if args.nproc < 0:
            raise ConfigError(f"--nproc = {args.nproc}: must be at least 1")
        count = torch.cuda.device_count() if cuda else 0
        devices = du.spawn_devices(args.nproc, cuda, cfg.MULTIPROCESSING_DISTRIBUTED, cfg.GPUS, count)
        preflight(cfg, len(devices))
    except ConfigError as err:
        error = str(err)
    store, init_method, nproc = None, None, len(devices)  # init_method None: a store served by launch.spawn
    if args.world_size > 1:
        # HigherHRNet's tcp:// launch: node 0's launcher serves the rendezvous for the whole run, and the
        # nodes agree on their checks before any process starts: one node's error ends them all.
        timeout_min = (cfg or default_cfg).DIST_TIMEOUT_MIN
        try:
            store, init_method = launch.node_store(args.dist_url, args.rank, timeout_min)
        except ConfigError as err:
            print(f"dist_train.py: config error: {err}", file=sys.stderr)
            return 2
        errors = failures.agree_across_nodes(store, args.rank, args.world_size, error, timeout_min * 60)
        error = "; ".join(errors) if errors else None
    if error is not None:
        print(f"dist_train.py: config error: {error}", file=sys.stderr)
        return 2

    world_size = nproc * args.world_size
    if world_size > 1:
        where = "CPU (gloo)" if devices[0] is None else f"GPUs {devices}"
        print(f"dist_train.py: {world_size} processes ({nproc} here, on {where}), total batch "
              f"{world_size * cfg.TRAIN.IMAGES_PER_GPU}", flush=True)  # fmt: skip
    if world_size == 1:
        run_worker(0, 0, 1, "", cfg, args, device_index=devices[0])
        return 0
    here = range(args.rank * nproc, (args.rank + 1) * nproc)
    others = [r for r in range(world_size) if r not in here]
    spawn_args = (args.rank, devices, world_size, cfg, args)
    what = "dist_train.py: training"
    return launch.spawn(spawn_entry, nproc, spawn_args, cfg.DIST_TIMEOUT_MIN, what, init_method, store, others)


if __name__ == "__main__":
    sys.exit(main())
