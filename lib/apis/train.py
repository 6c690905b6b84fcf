"""The training launcher behind ``tools/dist_train.py``: checks before any process starts
(:func:`preflight`) and one training process (:func:`run_worker`: device, process group, per-rank
config and logging, :func:`~higherpose.core.trainer.fit`, errors turned into one line and an exit code).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import torch

from higherpose.config import ConfigError, check_config
from higherpose.dataset.annotations import AnnotationError
from higherpose.dataset.build import annotation_file
from higherpose.utils import distributed as du
from higherpose.utils import failures, launch
from higherpose.utils.checkpoint import CheckpointError


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
    if cfg.DATASET.SYNTHETIC:
        from higherpose.dataset.synthetic import SCENES, ensure_synthetic

        scene = cfg.DATASET.SYNTHETIC_SCENE
        if not os.path.isdir(root):
            print(f"=> generating the synthetic data set ({scene}) in {root}", flush=True)
        try:
            ensure_synthetic(root, cfg=SCENES[scene])  # a complete set of another preset: an error
        except ValueError as err:
            raise ConfigError(f"DATASET.SYNTHETIC_SCENE = {scene!r}: {err}") from None
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
    check_on_rank0: bool = False,
) -> None:
    """One training process: device, process group, per-rank config, logging, :func:`fit`.

    Rank ``rank`` of ``world_size`` (``local_rank`` on this node); ``args``: dist_train.py's parsed
    arguments (``cfg``, ``opts`` and the node count ``world_size``); ``model``: a prebuilt model to
    train in place instead of ``build_model`` (tests, custom code); ``device_index``: its GPU, by
    default :func:`~higherpose.utils.distributed.cuda_device_index`; ``check_on_rank0`` (torchrun, where
    no launcher checks before the processes start): rank 0 runs :func:`preflight`, and once every rank
    has joined the group each one stops with rank 0's error (a rank cannot be told anything before the
    group exists: the ranks of other nodes would wait for rank 0 at the rendezvous until
    ``DIST_TIMEOUT_MIN``)."""
    from higherpose.core.trainer import fit

    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", max(1, world_size // max(1, args.world_size))))
    # HigherHRNet re-read the YAML in every spawned child, so cfg.RANK stayed 0 everywhere and every
    # rank logged and wrote TensorBoard; here cfg.RANK is this process' global rank.
    cfg = cfg.clone()
    cfg.defrost()
    cfg.RANK = rank
    cfg.freeze()
    try:
        startup_error = None
        if check_on_rank0 and rank == 0:
            try:
                preflight(cfg, 1)
            except ConfigError as err:
                startup_error = str(err)
        device, backend, note = launch.join_group(
            cfg, local_rank, rank, world_size, init_method, local_procs, device_index, what="dist_train.py"
        )
        if check_on_rank0:
            startup_error = du.broadcast_object(startup_error)
            if startup_error is not None:
                raise ConfigError(f"rank 0: {startup_error}" if world_size > 1 else startup_error)
        ctx = du.DistContext(rank, world_size, local_rank, device, backend)
        log, output_dir, tb_log_dir = launch.rank_logging(cfg, args.cfg, "train", rank)
        if rank == 0:
            if note and world_size > 1:
                log.info(f"=> {note}")
            log.info(f"=> config {args.cfg} with overrides {args.opts}")
            log.info(cfg.dump())
        fit(cfg, ctx, output_dir, tb_log_dir, log, model=model)
    except Exception as err:
        code, message = exit_for(err)
        # Every other rank prints the first failure and exits now, wherever it waits (failures.report).
        first = failures.report(message, code)
        _print_failure(err, message, rank)
        if first != f"rank {rank}: {message}":
            print(f"dist_train.py: [rank {rank}] stopping: {first}", file=sys.stderr)
        if code == 1:
            raise  # unexpected: its traceback
        raise SystemExit(code) from None
    finally:
        du.cleanup()


def exit_for(err: Exception) -> tuple[int, str]:
    """``(exit code, one line)`` for an error a training process ends with: 3 for a non-finite loss or
    weights, 2 for a config / checkpoint / annotation error, 1 (with the error's type) for anything else."""
    from higherpose.core.train_loop import NonFiniteLossError

    if isinstance(err, NonFiniteLossError):
        return 3, str(err)
    if isinstance(err, ConfigError):  # e.g. an OUTPUT_DIR that turns out not to be writable
        return 2, f"config error: {err}"
    if isinstance(err, (CheckpointError, AnnotationError)):  # a checkpoint rank 0 cannot read or write, NaN joints
        return 2, str(err)
    return 1, f"{type(err).__name__}: {err}"


def _print_failure(err: Exception, message: str, rank: int) -> None:
    from higherpose.core.train_loop import NonFiniteLossError

    if isinstance(err, NonFiniteLossError):
        if rank == 0:
            logging.getLogger().error(f"=> {err}")
        else:
            print(f"[rank {rank}] {err}", file=sys.stderr)
    else:
        print(f"dist_train.py: {message}", file=sys.stderr)


def spawn_entry(
    local_rank: int,
    init_method: str,
    node_rank: int,
    devices: list[int | None],
    world_size: int,
    cfg: Any,
    args: argparse.Namespace,
) -> None:
    """``mp.spawn``'s entry: this node's ``local_rank``-th process on ``devices[local_rank]``."""
    nproc = len(devices)
    rank = node_rank * nproc + local_rank
    run_worker(local_rank, rank, world_size, init_method, cfg, args, device_index=devices[local_rank])
