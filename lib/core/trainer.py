"""A whole training run (:func:`fit`): model, DDP, optimiser, schedule, resume, the epochs of
:func:`higherpose.core.train_loop.do_train`, validation and checkpoints.

Differences from HigherHRNet: validation is sharded over the ranks; only rank 0 writes TensorBoard and
checkpoints; the sampler is
re-seeded every epoch; ``checkpoint.pth`` is written before validating, so a failing validation never
costs the epoch; ``model_best.pth`` holds the weights with the best *validation* AP and is only
written when validation ran; ``final_state.pth`` holds the weight average when ``TRAIN.EMA_DECAY`` > 0;
each epoch ends with a summary line that counts the persons beyond ``DATASET.MAX_NUM_PEOPLE`` and the
unreadable images skipped.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from higherpose.config import ConfigError
from higherpose.core import train_loop
from higherpose.core.checkpointing import (
    BEST_NAME,
    CHECKPOINT_NAME,
    FINAL_NAME,
    pretrained_for_this_rank,
    restore_checkpoint,
    resume_point,
    save_checkpoint,
    save_weights,
)
from higherpose.core.train_loop import (
    NonFiniteLossError,
    TrainState,
    amp_settings,
    do_train,
    make_grad_scaler,
    steps_per_epoch,
)
from higherpose.utils import distributed as du
from higherpose.utils.atomic import remove_stale_temporaries
from higherpose.utils.ema import ModelEMA
from higherpose.utils.logging import ensure_writable_dir
from higherpose.utils.meters import format_seconds
from higherpose.utils.optim import build_scheduler, get_optimizer

# HigherHRNet imports the epoch loop from here (``from core.trainer import do_train``).
__all__ = ["do_train", "fit", "validate"]

_fallback_logger = logging.getLogger(__name__)


def tb_tag(group: str, name: str) -> str:
    """A legal TensorBoard tag: ``('val', 'AP (M)')`` → ``'val/AP_M'``."""
    return f"{group}/" + re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def validate(cfg: Any, model: nn.Module, output_dir: str, logger: logging.Logger) -> dict[str, float]:
    """``run_validation`` on the bare model in eval mode, sharded over the ranks (every rank calls it);
    returns rank 0's metrics on every rank."""
    from higherpose.core.validation import run_validation

    bare = du.unwrap(model)
    was_training = bare.training
    bare.eval()
    try:
        with torch.no_grad():
            metrics, _ = run_validation(cfg, bare, output_dir, logger, cfg.TRAIN.VAL_SUBSET)
    finally:
        bare.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def _prepare_model(cfg: Any, ctx: du.DistContext, model: nn.Module | None, logger: logging.Logger) -> nn.Module:
    """The model to train (``build_model`` unless given), with SyncBN when asked and possible, on the device."""
    if model is None:
        from higherpose.models import build_model

        pretrained = cfg.MODEL.PRETRAINED if cfg.MODEL.INIT_WEIGHTS else ""
        if pretrained_for_this_rank(pretrained, ctx.is_main) != pretrained:
            logger.warning(f"=> MODEL.PRETRAINED {pretrained} is not readable here: taking rank 0's weights")
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.PRETRAINED = ""
            cfg.freeze()
        model = build_model(cfg, is_train=True)
    if cfg.MODEL.SYNC_BN and ctx.distributed:
        if ctx.device.startswith("cuda"):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif ctx.is_main:
            logger.warning("=> MODEL.SYNC_BN ignored: SyncBatchNorm needs CUDA; BatchNorm stays per process")
    model = model.to(ctx.device)
    if cfg.TRAIN.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def _log_start(
    cfg: Any, ctx: du.DistContext, state: TrainState, n_steps: int, output_dir: str, logger: logging.Logger
) -> None:
    fp16, amp_dtype = amp_settings(cfg)
    logger.info(
        f"=> training {cfg.MODEL.NAME} on {ctx.world_size} process(es), device {ctx.device}, "
        f"backend {ctx.backend or 'none'}, batch {cfg.TRAIN.IMAGES_PER_GPU} x {ctx.world_size}, "
        f"{n_steps} steps/epoch, "
        f"amp {'off' if not fp16 else str(amp_dtype).replace('torch.', '')}, output {output_dir}"
    )
    if cfg.TRAIN.TIME_BUDGET > 0:
        logger.info(
            f"=> TRAIN.TIME_BUDGET {cfg.TRAIN.TIME_BUDGET:g} min ({format_seconds(state.train_seconds)} used): "
            f"each epoch gets an equal share of the time left and stops early when it is spent"
        )


def data_counts(data_loader: Any) -> tuple[int, int]:
    """``(persons beyond DATASET.MAX_NUM_PEOPLE, unreadable images)`` counted so far by the training set.

    The dataset keeps both counters in shared memory, so samples built in DataLoader worker processes
    count too; a loader without such a dataset (a list of batches, custom code) counts nothing.
    """
    dataset = getattr(data_loader, "dataset", None)
    return int(getattr(dataset, "num_overflow_persons", 0)), int(getattr(dataset, "num_unreadable", 0))


def _sum_over_ranks(values: list[int], device: str) -> list[int]:
    """Each rank's dataset counts its own samples; every rank must call this (a collective)."""
    if not du.is_dist():
        return values
    total = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total)
    return [int(v) for v in total.tolist()]


def _log_epoch(
    cfg: Any, epoch: int, losses: dict[str, float], steps: int, counts: list[int], warn: bool, logger: logging.Logger
) -> None:
    """The epoch summary line; ``warn``: also explain the MAX_NUM_PEOPLE overflow (once a run)."""
    overflow, unreadable = counts
    most = cfg.DATASET.MAX_NUM_PEOPLE
    logger.info(
        f"=> epoch {epoch} done: {steps} steps, mean loss {losses.get('loss', float('nan')):.3e}, "
        f"persons over DATASET.MAX_NUM_PEOPLE ({most}): {overflow}, unreadable images skipped: {unreadable}"
    )
    if warn:
        logger.warning(
            f"=> DATASET.MAX_NUM_PEOPLE = {most}: {overflow} persons in the samples of epoch {epoch} were beyond it "
            f"and left out of the associative-embedding (push/pull) loss; raise it to the most persons an image "
            f"holds (each epoch summary counts them)"
        )


def _checkpoint_note(saved: tuple[str, int] | None) -> str:
    """What a stopped run leaves to resume from: ``saved`` is ``(path, last epoch in it)`` or None."""
    if saved is None:
        return "no checkpoint was written yet"
    path, epoch = saved
    return f"the last checkpoint ({path}, after epoch {epoch}) is intact; AUTO_RESUME True resumes from it"


def _validate_and_keep_best(
    cfg: Any,
    epoch: int,
    eval_model: nn.Module,
    output_dir: str,
    writer: Any,
    state: TrainState,
    save_resume_checkpoint: Callable[[], None],
    logger: logging.Logger,
    is_main: bool = True,
) -> None:
    """Validate after ``epoch`` (its checkpoint already written), every rank its share of the images;
    on a better AP rank 0 saves ``model_best.pth``, then ``checkpoint.pth`` again so that a resumed
    run compares against the new best AP."""
    rng = du.rng_state()
    try:
        metrics = validate(cfg, eval_model, output_dir, logger)
    except Exception as err:
        logger.error(  # on every rank: run_validation raises the same error everywhere
            f"=> validation after epoch {epoch} failed ({type(err).__name__}: {err}); {CHECKPOINT_NAME} of epoch "
            f"{epoch} is saved: AUTO_RESUME True continues at epoch {epoch + 1}"
        )
        raise
    finally:
        # Validation must not change what training draws next: the checkpoint holds the states from
        # before it, and a run resumed from there has to reproduce this one.
        du.set_rng_state(rng)
    if not is_main:
        return
    ap = metrics.get("AP", float("nan"))
    logger.info(f"=> epoch {epoch} validation AP {ap:.4f}")
    for name, value in metrics.items():
        writer.add_scalar(tb_tag("val", name), value, state.global_step)
    if math.isfinite(ap) and (state.best_perf is None or ap > state.best_perf):
        state.best_perf, state.best_epoch = ap, epoch
        save_weights(eval_model, os.path.join(output_dir, BEST_NAME))
        save_resume_checkpoint()
        logger.info(f"=> new best AP {state.best_perf:.4f}: saved {BEST_NAME}")


def _log_end(cfg: Any, state: TrainState, logger: logging.Logger) -> None:
    if state.best_perf is None:
        why = "TRAIN.VAL_FREQ = 0" if cfg.TRAIN.VAL_FREQ <= 0 else "no validation ran in this run"
        logger.info(
            f"=> {BEST_NAME} not written: no validation AP ({why}); HigherHRNet's 'best' was simply "
            f"the latest weights, use {FINAL_NAME} for those"
        )
    else:
        logger.info(f"=> best validation AP {state.best_perf:.4f} at epoch {state.best_epoch} ({BEST_NAME})")
    if state.nan_skipped:
        logger.warning(f"=> {state.nan_skipped} steps were skipped for a non-finite loss")


def fit(
    cfg: Any,
    ctx: du.DistContext,
    output_dir: str,
    tb_log_dir: str,
    logger: logging.Logger | None = None,
    *,
    data_loader: Any = None,
    loss_factory: nn.Module | None = None,
    model: nn.Module | None = None,
    loader_fn: Callable[[Any, bool], Any] | None = None,
) -> TrainState:
    """Train from ``TRAIN.BEGIN_EPOCH`` (or the auto-resume checkpoint) to ``TRAIN.END_EPOCH``.

    Call in every process after :func:`higherpose.utils.distributed.init_distributed`. Rank 0 logs,
    writes TensorBoard, checkpoints (``checkpoint.pth`` every epoch, ``model_best.pth`` on a better
    validation AP, ``final_state.pth`` at the end); every rank validates its share of the test images
    (the others wait at a barrier while rank 0 saves and evaluates: ``DIST_TIMEOUT_MIN`` must outlast
    that). Rank 0 also decides whether and from which
    checkpoint to resume, and whether ``MODEL.PRETRAINED`` exists; ranks that cannot read those files
    start from rank 0's state (:func:`~higherpose.core.checkpointing.resume_point`).
    ``data_loader`` / ``loss_factory`` / ``model`` / ``loader_fn(cfg, distributed)`` replace the
    default builders (tests, custom code).

    An unwritable ``output_dir`` / ``tb_log_dir`` raises :class:`~higherpose.config.ConfigError` before
    any work; temporaries left in ``output_dir`` by interrupted saves are removed; a non-finite loss or
    non-finite weights raise :class:`NonFiniteLossError` saying which checkpoint is left (NaN/inf weights
    are never saved).
    """
    logger = logger or _fallback_logger
    folder_error = None
    if ctx.is_main:
        try:
            ensure_writable_dir(output_dir, "OUTPUT_DIR")
            ensure_writable_dir(tb_log_dir, "LOG_DIR")
        except ConfigError as err:
            folder_error = str(err)
        else:
            # Temporaries of saves killed mid-write (SIGKILL, out of memory) would pile up run after run
            # (remove_stale_temporaries logs what it removes).
            remove_stale_temporaries(output_dir)
    # Every rank stops on rank 0's folder error, instead of waiting for it in the next collective.
    folder_error = du.broadcast_object(folder_error)
    if folder_error is not None:
        raise ConfigError(folder_error)
    du.setup_determinism(
        int(cfg.TRAIN.SEED),
        cudnn_benchmark=cfg.CUDNN.BENCHMARK,
        cudnn_deterministic=cfg.CUDNN.DETERMINISTIC,
        cudnn_enabled=cfg.CUDNN.ENABLED,
        deterministic=cfg.TRAIN.DETERMINISTIC,
    )
    tf32 = du.set_tf32(cfg.TF32)
    device = ctx.device
    if ctx.is_main and device.startswith("cuda"):
        logger.info(f"=> {tf32}; TRAIN.DETERMINISTIC {cfg.TRAIN.DETERMINISTIC}")
    model = _prepare_model(cfg, ctx, model, logger)
    if loss_factory is None:
        from higherpose.core.loss import MultiLossFactory

        loss_factory = MultiLossFactory(cfg)
    loss_factory = loss_factory.to(device)

    if data_loader is None:
        if loader_fn is None:
            from higherpose.dataset.build import make_dataloader

            loader_fn = lambda c, d: make_dataloader(c, is_train=True, distributed=d)  # noqa: E731
        data_loader = loader_fn(cfg, ctx.distributed)

    optimizer = get_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch(cfg, data_loader))
    ema = ModelEMA(model, cfg.TRAIN.EMA_DECAY) if cfg.TRAIN.EMA_DECAY > 0 else None
    scaler = make_grad_scaler(cfg, device)
    fp16, _ = amp_settings(cfg)
    state = TrainState(epoch=cfg.TRAIN.BEGIN_EPOCH)
    if cfg.TRAIN.BEGIN_EPOCH:
        scheduler.set_epoch(cfg.TRAIN.BEGIN_EPOCH)

    # Rank 0 picks the checkpoint; a rank that cannot read it gets rank 0's copy (nodes without a shared
    # file system), so that every rank starts from the same state.
    resume_path, ckpt = resume_point(output_dir, ctx.is_main) if cfg.AUTO_RESUME else (None, None)
    saved: tuple[str, int] | None = None  # the checkpoint a stopped run leaves: (path, last epoch in it)
    if resume_path and ckpt is not None:
        # Every rank restores before DDP wraps the model; RNG states are rank 0's.
        state = restore_checkpoint(
            ckpt, model, optimizer, scheduler, scaler, restore_rng=ctx.is_main, ema=ema, source=resume_path
        )
        del ckpt  # the optimiser and model hold their own copies now
        saved = (resume_path, state.epoch - 1) if state.epoch > 0 else None
        if ctx.is_main:
            logger.info(f"=> resumed from {resume_path}: epoch {state.epoch}, global step {state.global_step}")

    if ctx.distributed:
        device_ids = [torch.device(device).index] if device.startswith("cuda") else None
        model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False)

    writer_dict = None
    if ctx.is_main:
        from tensorboardX import SummaryWriter

        writer_dict = {"writer": SummaryWriter(tb_log_dir), "train_global_steps": state.global_step}
        _log_start(cfg, ctx, state, steps_per_epoch(cfg, data_loader), output_dir, logger)

    # What is validated and saved as model_best / final_state: the weight average when TRAIN.EMA_DECAY > 0.
    eval_model = ema.module if ema is not None else model
    checkpoint_path = os.path.join(output_dir, CHECKPOINT_NAME)

    def save_resume_checkpoint() -> None:
        save_checkpoint(checkpoint_path, cfg, model, optimizer, scheduler, scaler, state, ema)

    overflow_seen = False
    try:
        for epoch in range(state.epoch, cfg.TRAIN.END_EPOCH):
            if cfg.TRAIN.SEED >= 0:
                du.reseed_epoch(data_loader, du.derive_seed(cfg.TRAIN.SEED, epoch, ctx.rank))
            sampler = getattr(data_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # HigherHRNet never did: same order every epoch
            counts_before, steps_before = data_counts(data_loader), state.global_step
            # Looked up on the module at each call, so that tests can replace the epoch.
            losses = train_loop.do_train(
                cfg,
                model,
                data_loader,
                loss_factory,
                optimizer,
                epoch,
                output_dir,
                writer_dict,
                fp16,
                scaler=scaler,
                scheduler=scheduler,
                state=state,
                ctx=ctx,
                logger=logger,
                ema=ema,
            )
            scheduler.step()
            state.epoch = epoch + 1
            counts = _sum_over_ranks([b - a for a, b in zip(counts_before, data_counts(data_loader))], device)
            if ctx.is_main:
                warn = counts[0] > 0 and not overflow_seen
                _log_epoch(cfg, epoch, losses, state.global_step - steps_before, counts, warn, logger)
            overflow_seen = overflow_seen or counts[0] > 0

            # The epoch's checkpoint comes first: whatever validation does, the trained epoch is kept.
            if ctx.is_main:
                save_resume_checkpoint()
                logger.info(f"=> saved {CHECKPOINT_NAME} (epoch {epoch})")
            saved = (checkpoint_path, epoch)
            val_freq = cfg.TRAIN.VAL_FREQ
            last = epoch + 1 == cfg.TRAIN.END_EPOCH
            if val_freq > 0 and ((epoch + 1) % val_freq == 0 or last):
                # Every rank validates its share of the images with rank 0's BN statistics (DDP ranks
                # differ in them after the epoch's last forward), so the model evaluated is the one saved.
                du.broadcast_buffers_(eval_model)
                writer = writer_dict["writer"] if ctx.is_main else None
                _validate_and_keep_best(
                    cfg, epoch, eval_model, output_dir, writer, state, save_resume_checkpoint, logger, ctx.is_main
                )
            du.barrier()

        if ctx.distributed:
            # DDP broadcasts BN running stats at the start of each forward, so after the last step every
            # rank has its own; give all ranks rank 0's (the ones saved) so the final models are equal.
            du.broadcast_buffers_(du.unwrap(model))
        if ctx.is_main:
            save_weights(eval_model, os.path.join(output_dir, FINAL_NAME))
            logger.info(f"=> saved {FINAL_NAME} in {output_dir}")
            _log_end(cfg, state, logger)
        # All ranks leave together: a gloo rank that tears its group down while rank 0 is still
        # writing final_state.pth can abort ("terminate called without an active exception").
        du.barrier()
    except NonFiniteLossError as err:
        err.args = (f"{err}; {_checkpoint_note(saved)}",)
        raise
    finally:
        if writer_dict is not None:
            writer_dict["writer"].close()
    return state
