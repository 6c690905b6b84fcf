"""A whole training run (:func:`fit`): model, DDP, optimiser, schedule, resume, the epochs of
:func:`higherpose.core.train_loop.do_train`, validation and checkpoints.

Differences from HigherHRNet: only rank 0 validates, writes TensorBoard and checkpoints; the sampler is
re-seeded every epoch; ``model_best.pth`` holds the weights with the best *validation* AP and is only
written when validation ran; ``final_state.pth`` holds the weight average when ``TRAIN.EMA_DECAY`` > 0.
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

from higherpose.core import train_loop
from higherpose.core.checkpointing import (
    BEST_NAME,
    CHECKPOINT_NAME,
    FINAL_NAME,
    bare_state_dict,
    checkpoint_to_resume,
    load_checkpoint,
    save_checkpoint,
)
from higherpose.core.train_loop import TrainState, amp_settings, make_grad_scaler, steps_per_epoch
from higherpose.utils import distributed as du
from higherpose.utils.checkpoint import save_atomic
from higherpose.utils.ema import ModelEMA
from higherpose.utils.meters import format_seconds
from higherpose.utils.optim import build_scheduler, get_optimizer

_fallback_logger = logging.getLogger(__name__)


def tb_tag(group: str, name: str) -> str:
    """A legal TensorBoard tag: ``('val', 'AP (M)')`` → ``'val/AP_M'``."""
    return f"{group}/" + re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def validate(cfg: Any, model: nn.Module, output_dir: str, logger: logging.Logger) -> dict[str, float]:
    """``run_validation`` on the bare model in eval mode (rank 0 only); returns its metrics."""
    from higherpose.core.evaluation import run_validation

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
    fp16, amp_dtype = amp_settings(cfg, ctx.device)
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


def _log_end(cfg: Any, state: TrainState, logger: logging.Logger) -> None:
    if state.best_perf is None:
        why = "TRAIN.VAL_FREQ = 0" if cfg.TRAIN.VAL_FREQ <= 0 else "no validation ran in this session"
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
    validation AP, ``final_state.pth`` at the end) and validates; the other ranks wait at a barrier.
    ``data_loader`` / ``loss_factory`` / ``model`` / ``loader_fn(cfg, distributed)`` replace the
    default builders (tests, custom code).
    """
    logger = logger or _fallback_logger
    du.setup_determinism(
        int(cfg.TRAIN.SEED),
        cudnn_benchmark=cfg.CUDNN.BENCHMARK,
        cudnn_deterministic=cfg.CUDNN.DETERMINISTIC,
        cudnn_enabled=cfg.CUDNN.ENABLED,
    )
    device = ctx.device
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
    fp16, _ = amp_settings(cfg, device)
    state = TrainState(epoch=cfg.TRAIN.BEGIN_EPOCH)
    if cfg.TRAIN.BEGIN_EPOCH:
        scheduler.set_epoch(cfg.TRAIN.BEGIN_EPOCH)

    resume_path = checkpoint_to_resume(output_dir) if cfg.AUTO_RESUME else None
    if resume_path:
        # Every rank loads (on the CPU) before DDP wraps the model; RNG states are rank 0's.
        state = load_checkpoint(resume_path, model, optimizer, scheduler, scaler, restore_rng=ctx.is_main, ema=ema)
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
    try:
        for epoch in range(state.epoch, cfg.TRAIN.END_EPOCH):
            if cfg.TRAIN.SEED >= 0:
                du.reseed_epoch(data_loader, du.derive_seed(cfg.TRAIN.SEED, epoch, ctx.rank))
            sampler = getattr(data_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # HigherHRNet never did: same order every epoch
            # Looked up on the module at each call, so that tests can replace the epoch.
            train_loop.do_train(
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

            last = epoch + 1 == cfg.TRAIN.END_EPOCH
            val_freq = cfg.TRAIN.VAL_FREQ
            is_best = False
            if val_freq > 0 and ((epoch + 1) % val_freq == 0 or last):
                if ctx.is_main:
                    metrics = validate(cfg, eval_model, output_dir, logger)
                    ap = metrics.get("AP", float("nan"))
                    logger.info(f"=> epoch {epoch} validation AP {ap:.4f}")
                    for name, value in metrics.items():
                        writer_dict["writer"].add_scalar(tb_tag("val", name), value, state.global_step)
                    if math.isfinite(ap) and (state.best_perf is None or ap > state.best_perf):
                        state.best_perf, state.best_epoch, is_best = ap, epoch, True
                du.barrier()
            if ctx.is_main:
                save_checkpoint(
                    os.path.join(output_dir, CHECKPOINT_NAME), cfg, model, optimizer, scheduler, scaler, state, ema
                )
                if is_best:
                    save_atomic(bare_state_dict(eval_model), os.path.join(output_dir, BEST_NAME))
                    logger.info(f"=> new best AP {state.best_perf:.4f}: saved {BEST_NAME}")
                logger.info(f"=> saved {CHECKPOINT_NAME} (epoch {epoch})")
            du.barrier()

        if ctx.distributed:
            # DDP broadcasts BN running stats at the start of each forward, so after the last step every
            # rank has its own; give all ranks rank 0's (the ones saved) so the final models are equal.
            du.broadcast_buffers_(du.unwrap(model))
        if ctx.is_main:
            save_atomic(bare_state_dict(eval_model), os.path.join(output_dir, FINAL_NAME))
            logger.info(f"=> saved {FINAL_NAME} in {output_dir}")
            _log_end(cfg, state, logger)
        # All ranks leave together: a rank that tears its gloo group down while rank 0 is still
        # writing final_state.pth was seen to abort ("terminate called without an active exception").
        du.barrier()
    finally:
        if writer_dict is not None:
            writer_dict["writer"].close()
    return state
