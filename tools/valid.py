"""Evaluate a pose model on the test split (HigherHRNet's ``tools/valid.py`` command line).

    python tools/valid.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml \\
        TEST.MODEL_FILE models/pose_coco/pose_higher_hrnet_w32_512.pth [KEY VALUE ...]
    python tools/valid.py --nproc 2 --cfg ...              # 2 processes: GPUs 0 and 1, or 2 gloo CPU processes
    torchrun --nproc_per_node 8 tools/valid.py --cfg ...   # every rank of a torchrun launch (several nodes too)

Without ``TEST.MODEL_FILE`` the weights come from the experiment's output folder
(``OUTPUT_DIR/<dataset>/<model>/<cfg name>/model_best.pth``, else ``final_state.pth``). Writes
``results/keypoints_<split>_results.json``, ``metrics_<split>.json`` and a ``valid_*.log`` there, and
prints HigherHRNet's markdown AP table. ``DEVICE`` picks the device ('' = CUDA when available).
With several processes each predicts every N-th image and rank 0 writes one results file and one AP
table, equal to a one-process run's.
"""

from __future__ import annotations

import argparse
import os
import pprint
import sys
from collections import OrderedDict
from typing import Any

import torch

from higherpose.apis.eval_model import load_eval_model
from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.core.evaluation import print_name_value
from higherpose.core.validation import ValidationError, run_validation
from higherpose.dataset.annotations import AnnotationError
from higherpose.utils import distributed as du
from higherpose.utils import failures, launch
from higherpose.utils.atomic import write_json_atomic
from higherpose.utils.checkpoint import CheckpointError

ERRORS = (ConfigError, CheckpointError, AnnotationError, ValidationError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test keypoints network")
    add_cfg_argument(parser)
    parser.add_argument(
        "--nproc", type=int, default=1, help="processes on this node: GPUs 0..N-1 with CUDA, N gloo processes on CPU"
    )
    add_overrides_argument(parser)
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> Any:
    cfg = default_cfg.clone()
    update_config(cfg, args)
    du.process_group_timeout(cfg.DIST_TIMEOUT_MIN)
    return cfg


def _load_on_every_rank(cfg: Any, output_dir: str, device: Any, logger: Any, rank: int, world_size: int) -> tuple:
    """:func:`load_eval_model`; in a group every rank stops with the errors of all when one cannot load
    (any error: a CUDA out-of-memory while loading or folding BN on one rank too)."""
    if world_size == 1:
        return load_eval_model(cfg, output_dir, device=device, log=logger, optimize=True)
    loaded, error = None, None
    try:
        loaded = load_eval_model(cfg, output_dir, device=device, log=logger, optimize=True)
    except ERRORS as err:
        error = f"rank {rank}: {err}"
    except Exception as err:  # noqa: BLE001 - sent to every rank, raised there as a CheckpointError
        error = f"rank {rank}: {type(err).__name__}: {err}"
    errors = [e for e in du.all_gather_objects(error) if e]
    if errors:
        raise CheckpointError("; ".join(errors))
    return loaded


def evaluate(local_rank: int, rank: int, world_size: int, init_method: str, cfg: Any, args: argparse.Namespace):
    """One rank: device, process group, logging, the model, its share of the images; rank 0 writes
    the results, metrics and table. Returns the metrics (rank 0's on every rank)."""
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    try:
        device = None  # one process: DEVICE decides ('' = CUDA when available), as in HigherHRNet
        if world_size > 1:
            device, _, _ = launch.join_group(
                cfg, local_rank, rank, world_size, init_method, local_procs, what="valid.py"
            )
        logger, final_output_dir, _ = launch.rank_logging(cfg, args.cfg, "valid", rank)
        if rank == 0:
            logger.info(pprint.pformat(vars(args)))
            logger.info(cfg)
        model, weights, device = _load_on_every_rank(cfg, final_output_dir, device, logger, rank, world_size)
        if torch.device(device).type == "cpu":
            launch.keep_freed_memory()  # what join_group does for the ranks of a process group
        if rank == 0:
            shards = f" in {world_size} shards" if world_size > 1 else ""
            logger.info("=> evaluating %s/%s on %s%s", cfg.DATASET.ROOT, cfg.DATASET.TEST, device, shards)
        metrics, _ = run_validation(cfg, model, final_output_dir, logger)
        if metrics and rank == 0:
            print_name_value(logger, metrics, cfg.MODEL.NAME)
            path = os.path.join(final_output_dir, f"metrics_{cfg.DATASET.TEST}.json")
            write_json_atomic({"weights": weights, "metrics": metrics}, path, indent=2)
            logger.info("=> wrote %s", path)
        return metrics
    except Exception as err:
        _report(err, rank)
        raise
    finally:
        du.cleanup()


def _report(err: Exception, rank: int) -> None:
    """Send ``err`` to every other rank of the group, which stops at once with it (:mod:`failures`)."""
    known = isinstance(err, ERRORS)
    message = str(err) if known else f"{type(err).__name__}: {err}"
    first = failures.report(message, 2 if known else 1)
    if first != f"rank {rank}: {message}":
        print(f"valid.py: [rank {rank}] stopping: {first}", file=sys.stderr)


def _spawn_entry(local_rank: int, init_method: str, world_size: int, cfg: Any, args: argparse.Namespace) -> None:
    try:
        evaluate(local_rank, local_rank, world_size, init_method, cfg, args)
    except ERRORS as err:
        print(f"valid.py: [rank {local_rank}] {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> OrderedDict | None:
    """Validate in this process or, with ``--nproc N > 1``, in N processes (returns None then:
    rank 0 prints and writes the results)."""
    args = parse_args(argv)
    cfg = load_config(args)
    if du.launched_by_torchrun():
        world_size, rank, local_rank = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
        return evaluate(local_rank, rank, world_size, "env://", cfg, args)
    if args.nproc < 1:
        raise ConfigError(f"--nproc = {args.nproc}: must be at least 1")
    if launch.use_cuda(cfg) and args.nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc = {args.nproc}: only {torch.cuda.device_count()} GPUs are visible")
    if args.nproc == 1:
        return evaluate(0, 0, 1, "", cfg, args)
    code = launch.spawn(_spawn_entry, args.nproc, (args.nproc, cfg, args), cfg.DIST_TIMEOUT_MIN, "valid.py: validation")
    if code:
        raise SystemExit(code)
    return None


if __name__ == "__main__":
    try:
        main()
    except ERRORS as err:
        sys.exit(f"valid.py: {err}")
