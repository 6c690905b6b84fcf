"""Training: one epoch (:func:`do_train`, HigherHRNet's loop) and a whole run (:func:`fit`: model,
DDP, optimiser, schedule, resume, validation, checkpoints).

Differences from HigherHRNet, on purpose (each fixes an issue of its §8.1 list or adds a feature):
only rank 0 logs, writes TensorBoard, debug images and checkpoints; the sampler is re-seeded every
epoch; TensorBoard tags name the stage (not the batch index); ``model_best.pth`` holds the weights
with the best *validation* AP and is only written when validation ran; checkpoints load on the CPU;
torch.amp replaces apex; a non-finite loss stops the run (or skips the step) with the term named.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..models.pose_higher_hrnet import heatmap_probabilities, heatmaps_are_logits
from ..utils import distributed as du
from ..utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_pose_state_dict, save_atomic
from ..utils.ema import ModelEMA
from ..utils.meters import AverageMeter, eta_seconds, format_seconds
from ..utils.optim import WarmupMultiStepLR, build_scheduler, get_optimizer
from .time_budget import EpochTimer, epoch_allowance

CHECKPOINT_NAME = "checkpoint.pth"
LEGACY_CHECKPOINT_NAME = "checkpoint.pth.tar"  # HigherHRNet's name, still accepted for resuming
BEST_NAME = "model_best.pth"
FINAL_NAME = "final_state.pth"
MAX_NAN_IN_A_ROW = 20  # NAN_POLICY 'skip' gives up after this many non-finite steps in a row

_fallback_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and the loss terms."""


@dataclass
class TrainState:
    """What a run has done so far; saved in every checkpoint."""

    epoch: int = 0  # the next epoch to run
    global_step: int = 0  # optimiser steps taken over the whole run
    best_perf: float | None = None  # best validation AP so far (None: never validated)
    best_epoch: int = -1
    nan_skipped: int = 0  # steps skipped for a non-finite loss (NAN_POLICY 'skip')
    nan_in_a_row: int = 0
    train_seconds: float = 0.0  # wall time spent in training epochs (what TRAIN.TIME_BUDGET counts)


def tb_tag(group: str, name: str) -> str:
    """A legal TensorBoard tag: ``('val', 'AP (M)')`` → ``'val/AP_M'``."""
    return f"{group}/" + re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel."""
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model


def bare_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain-key (no ``module.``) contiguous CPU weights, loadable by valid.py and HigherHRNet code."""
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def amp_settings(cfg: Any, device: str) -> tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of autocast from ``FP16.ENABLED`` / ``FP16.DTYPE``."""
    dtype = torch.bfloat16 if cfg.FP16.DTYPE == "bfloat16" else torch.float16
    return bool(cfg.FP16.ENABLED), dtype


def make_grad_scaler(cfg: Any, device: str) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 autocast (bfloat16 has fp32's range and needs none).

    ``FP16.STATIC_LOSS_SCALE`` > 1 becomes the initial scale; the scaler is always dynamic (torch.amp),
    which covers HigherHRNet's ``DYNAMIC_LOSS_SCALE``.
    """
    enabled, dtype = amp_settings(cfg, device)
    if not enabled or dtype != torch.float16:
        return None
    init_scale = float(cfg.FP16.STATIC_LOSS_SCALE) if cfg.FP16.STATIC_LOSS_SCALE > 1 else 2.0**16
    return torch.amp.GradScaler(device.split(":")[0], init_scale=init_scale)


# --------------------------------------------------------------------------------------------------
# one step's loss
def combine_losses(
    heatmaps_losses: Sequence[torch.Tensor | None],
    push_losses: Sequence[torch.Tensor | None],
    pull_losses: Sequence[torch.Tensor | None],
    ae_scale: float = 1.0,
) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Sum the per-stage losses as HigherHRNet: ``Σ_s hm_s.mean() + push_s.mean() + pull_s.mean()``.

    Each input is a list per stage of ``(B,)`` tensors or None. ``ae_scale`` multiplies push and
    pull (TRAIN.AE_WARMUP_*). Returns the total and ``[(name, batch-mean term)]`` with names
    ``stage{s}_heatmaps`` / ``stage{s}_push`` / ``stage{s}_pull`` (terms as added to the total).
    """
    terms: list[tuple[str, torch.Tensor]] = []
    for s, (hm, push, pull) in enumerate(zip(heatmaps_losses, push_losses, pull_losses)):
        if hm is not None:
            terms.append((f"stage{s}_heatmaps", hm.mean(dim=0)))
        if push is not None:
            terms.append((f"stage{s}_push", push.mean(dim=0) * ae_scale))
        if pull is not None:
            terms.append((f"stage{s}_pull", pull.mean(dim=0) * ae_scale))
    if not terms:
        raise ValueError("every loss term is disabled (LOSS.WITH_HEATMAPS_LOSS / WITH_AE_LOSS all False)")
    total = terms[0][1]
    for _, t in terms[1:]:
        total = total + t
    return total, terms


def _to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return [b.to(device, non_blocking=True) for b in batch]


def _ae_scale(cfg: Any, global_step: int) -> float:
    return float(cfg.TRAIN.AE_WARMUP_FACTOR) if global_step < cfg.TRAIN.AE_WARMUP_ITERS else 1.0


def steps_per_epoch(cfg: Any, data_loader: Any) -> int:
    n = len(data_loader)
    return min(n, cfg.TRAIN.ITERS_PER_EPOCH) if cfg.TRAIN.ITERS_PER_EPOCH > 0 else n


def _save_debug(cfg: Any, batch: tuple, outputs: list, output_dir: str, step: int, writer: Any, global_step: int):
    """HigherHRNet's per-scale debug grids (``train_{step}_output_{R}_*.jpg``) and the same grids in
    TensorBoard, when ``higherpose.utils.vis`` provides them (guarded: training never needs it)."""
    try:
        from ..utils import vis
    except ImportError:
        return
    if not hasattr(vis, "save_debug_images"):
        return
    images, heatmaps, masks, joints = batch
    prefix = "{}_{}".format(os.path.join(output_dir, "train"), step)
    for s, out in enumerate(outputs):
        res = cfg.DATASET.OUTPUT_SIZE[s]
        out = out.detach().float()
        if heatmaps_are_logits(cfg):  # training-mode outputs are logits: show probabilities
            out = heatmap_probabilities(out, cfg.MODEL.NUM_JOINTS)
        grids = vis.save_debug_images(cfg, images, heatmaps[s], masks[s], out, f"{prefix}_output_{res}", joints[s])
        if writer is not None and grids and hasattr(vis, "add_debug_images"):
            vis.add_debug_images(writer, grids, global_step, tag=f"train_debug/output_{res}")


def _debug_wanted(cfg: Any) -> bool:
    d = cfg.DEBUG
    keys = ("SAVE_BATCH_IMAGES_GT", "SAVE_BATCH_IMAGES_PRED", "SAVE_HEATMAPS_GT", "SAVE_HEATMAPS_PRED")
    return bool(d.DEBUG) and (any(d[k] for k in keys) or bool(d.SAVE_TAGMAPS_PRED))


# --------------------------------------------------------------------------------------------------
# one epoch
def do_train(
    cfg: Any,
    model: nn.Module,
    data_loader: Any,
    loss_factory: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    output_dir: str,
    tb_log_dir: str,
    writer_dict: dict[str, Any] | None,
    fp16: bool = False,
    *,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: WarmupMultiStepLR | None = None,
    state: TrainState | None = None,
    ctx: du.DistContext | None = None,
    logger: logging.Logger | None = None,
    ema: ModelEMA | None = None,
) -> dict[str, float]:
    """Train one epoch (HigherHRNet's signature plus keyword extras); returns the epoch's mean losses.

    Batches are ``(images (B,3,S,S), heatmaps [(B,K,R,R)], masks [(B,R,R)], joints [(B,M,K,2)])``.
    ``fp16`` turns on autocast with ``FP16.DTYPE``; ``scaler`` (float16) scales the loss.
    A non-finite loss raises :class:`NonFiniteLossError` (``TRAIN.NAN_POLICY 'stop'``) or skips the
    step (``'skip'``, at most :data:`MAX_NAN_IN_A_ROW` in a row); ranks agree on it, so DDP never hangs.
    ``TRAIN.TIME_BUDGET`` ends the epoch early when its share of the budget is spent (ranks agree too).
    """
    ctx = ctx or du.DistContext()
    state = state if state is not None else TrainState(epoch=epoch)
    logger = logger or _fallback_logger
    device = ctx.device
    device_type = device.split(":")[0]
    _, amp_dtype = amp_settings(cfg, device)
    channels_last = bool(cfg.TRAIN.CHANNELS_LAST)
    n_steps = steps_per_epoch(cfg, data_loader)
    epochs_after = max(0, cfg.TRAIN.END_EPOCH - epoch - 1)
    print_freq = max(1, int(cfg.PRINT_FREQ))
    debug_freq = int(cfg.DEBUG.SAVE_FREQ) or print_freq
    want_debug = ctx.is_main and _debug_wanted(cfg)
    writer = writer_dict["writer"] if (writer_dict and ctx.is_main) else None
    budget_s = float(cfg.TRAIN.TIME_BUDGET) * 60.0
    timer = EpochTimer(epoch_allowance(budget_s, state.train_seconds, cfg.TRAIN.END_EPOCH - epoch))

    batch_time, data_time = AverageMeter(), AverageMeter()
    meters: dict[str, AverageMeter] = {}
    model.train()
    end = time.time()
    # islice: with TRAIN.ITERS_PER_EPOCH the loader is not asked for a batch it will not train on
    steps_done = 0
    for i, (images, heatmaps, masks, joints) in enumerate(itertools.islice(data_loader, n_steps)):
        data_time.update(time.time() - end)
        out_of_time = timer.last_step(i)
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        heatmaps, masks, joints = (_to_device(x, device) for x in (heatmaps, masks, joints))
        if scheduler is not None:
            scheduler.step_iter(state.global_step)

        with torch.autocast(device_type, dtype=amp_dtype, enabled=fp16):
            outputs = model(images)
        # The loss runs in fp32: MSE of small heatmap values and exp() of tag distances underflow in fp16.
        outputs = [o.float() for o in outputs]
        hm_l, push_l, pull_l = loss_factory(outputs, heatmaps, masks, joints)
        total, terms = combine_losses(hm_l, push_l, pull_l, _ae_scale(cfg, state.global_step))

        # One device sync per step: every term's value (for the meters), its finiteness and whether the
        # time budget ends the epoch here, max-reduced over ranks so all ranks take the same branches.
        values = torch.stack([t.detach().float() for _, t in terms] + [total.detach().float()])
        flags = torch.cat([(~torch.isfinite(values)).float(), values.new_tensor([float(out_of_time)])])
        du.all_reduce_max_(flags)
        values_cpu, flags_cpu = values.cpu().tolist(), flags.cpu().tolist()
        bad_cpu, cut = flags_cpu[:-1], flags_cpu[-1] > 0
        steps_done = i + 1
        if any(bad_cpu):
            _handle_nonfinite(cfg, terms, values_cpu, bad_cpu, epoch, i, n_steps, state, ctx, logger, optimizer)
            end = time.time()
            if cut:
                break
            continue
        state.nan_in_a_row = 0

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
        else:
            total.backward()
        if cfg.TRAIN.CLIP_GRAD > 0:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.TRAIN.CLIP_GRAD)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        state.global_step += 1
        if ema is not None:
            ema.update_parameters(unwrap(model))

        for (name, _), v in zip(terms, values_cpu):
            meters.setdefault(name, AverageMeter()).update(v, images.size(0))
        meters.setdefault("loss", AverageMeter()).update(values_cpu[-1], images.size(0))
        batch_time.update(time.time() - end)

        last = i == n_steps - 1 or cut
        if ctx.is_main and (i % print_freq == 0 or last):
            lr = optimizer.param_groups[0]["lr"]
            speed = images.size(0) * ctx.world_size / max(batch_time.val, 1e-9)
            epoch_eta, run_eta = eta_seconds(batch_time.avg, n_steps - i - 1, epochs_after, n_steps)
            if budget_s > 0:
                epoch_eta = 0.0 if cut else min(epoch_eta, timer.time_left())
                run_eta = min(run_eta, max(0.0, budget_s - state.train_seconds - timer.elapsed()))
            parts = " ".join(f"{name}: {m.val:.3e} ({m.avg:.3e})" for name, m in meters.items() if name != "loss")
            logger.info(
                f"Epoch: [{epoch}][{i}/{n_steps}] Time {batch_time.val:.3f}s ({batch_time.avg:.3f}s) "
                f"Speed {speed:.1f} samples/s Data {data_time.val:.3f}s ({data_time.avg:.3f}s) "
                f"{parts} LR {lr:.3e} ETA epoch {format_seconds(epoch_eta)} run {format_seconds(run_eta)}"
            )
            if writer is not None:
                for name, m in meters.items():
                    writer.add_scalar(
                        "train/loss" if name == "loss" else f"train/{name}_loss", m.val, state.global_step
                    )
                writer.add_scalar("train/lr", lr, state.global_step)
                writer.add_scalar("train/samples_per_s", speed, state.global_step)
                writer_dict["train_global_steps"] = state.global_step
        if want_debug and (i % debug_freq == 0):
            _save_debug(cfg, (images, heatmaps, masks, joints), outputs, output_dir, i, writer, state.global_step)
        end = time.time()
        if cut:
            break
    state.train_seconds += timer.elapsed()
    if budget_s > 0 and ctx.is_main:
        logger.info(
            f"=> TRAIN.TIME_BUDGET: epoch {epoch} trained {steps_done} of {n_steps} steps in "
            f"{format_seconds(timer.elapsed())}; {format_seconds(state.train_seconds)} of "
            f"{format_seconds(budget_s)} used"
        )
    return {name: m.avg for name, m in meters.items()}


def _handle_nonfinite(cfg, terms, values, bad, epoch, i, n_steps, state, ctx, logger, optimizer) -> None:
    names = [name for name, _ in terms] + ["total"]
    where = ", ".join(
        f"{n}={v:.4g}" if b == 0 or math.isfinite(v) else f"{n}={v}" for n, v, b in zip(names, values, bad)
    )
    culprits = [n for n, b in zip(names, bad) if b and n != "total"] or ["total"]
    msg = (
        f"non-finite loss at epoch {epoch} step {i}/{n_steps} (global step {state.global_step}) "
        f"in {', '.join(culprits)} [{where}]"
    )
    optimizer.zero_grad(set_to_none=True)
    if cfg.TRAIN.NAN_POLICY == "skip":
        state.nan_skipped += 1
        state.nan_in_a_row += 1
        if state.nan_in_a_row >= MAX_NAN_IN_A_ROW:
            raise NonFiniteLossError(
                f"{msg}; {state.nan_in_a_row} non-finite steps in a row (TRAIN.NAN_POLICY 'skip' gives up "
                f"after {MAX_NAN_IN_A_ROW}); the last checkpoint is intact"
            )
        if ctx.is_main:
            logger.warning(f"{msg}: step skipped ({state.nan_skipped} skipped so far)")
        return
    raise NonFiniteLossError(
        f"{msg}; stopping (TRAIN.NAN_POLICY 'stop'; 'skip' skips such steps). The last checkpoint is intact"
    )


# --------------------------------------------------------------------------------------------------
# checkpoints
def checkpoint_to_resume(output_dir: str) -> str | None:
    """``checkpoint.pth`` in ``output_dir``, else HigherHRNet's ``checkpoint.pth.tar``, else None."""
    for name in (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            return path
    return None


def save_checkpoint(
    path: str,
    cfg: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupMultiStepLR | None,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    ema: ModelEMA | None = None,
) -> None:
    """Everything needed to resume, written atomically (a crash mid-save keeps the previous file)."""
    weights = bare_state_dict(model)
    obj = {
        "epoch": state.epoch,  # the next epoch to run (HigherHRNet: epoch + 1)
        "arch": cfg.MODEL.NAME,
        "model": weights,  # bare keys
        "state_dict": weights,  # same tensors (stored once): the key HigherHRNet-style code reads
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,  # TRAIN.EMA_DECAY's averaged weights
        "global_step": state.global_step,
        "best_perf": state.best_perf,
        "train_state": asdict(state),
        "config": cfg.dump(),
        "rng": du.rng_state(),
    }
    save_atomic(obj, path)


def load_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupMultiStepLR | None,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
    ema: ModelEMA | None = None,
) -> TrainState:
    """Resume from ours or HigherHRNet's training checkpoint (loaded on the CPU: no ``map_location`` bug).

    HigherHRNet's ``perf`` is the epoch number, not a metric, so it is not taken as the best AP.
    """
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'epoch'); use it as MODEL.PRETRAINED")
    load_pose_state_dict(unwrap(model), extract_state_dict(ckpt), strict=True, source=path)
    if ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    state = TrainState(**ckpt["train_state"]) if "train_state" in ckpt else TrainState()
    state.epoch = int(ckpt["epoch"])
    state.global_step = int(ckpt.get("global_step", state.global_step))
    state.best_perf = ckpt.get("best_perf", state.best_perf)
    state.nan_in_a_row = 0
    if scheduler is not None:
        if ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        else:
            scheduler.global_step = state.global_step
            scheduler.set_epoch(state.epoch)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        if ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        else:  # a checkpoint written without TRAIN.EMA_DECAY: the average starts from the resumed weights
            ema.n_averaged.zero_()
            ema.update_parameters(unwrap(model))
    if restore_rng and ckpt.get("rng"):
        du.set_rng_state(ckpt["rng"])
    return state


# --------------------------------------------------------------------------------------------------
# the whole run
def validate(cfg: Any, model: nn.Module, output_dir: str, logger: logging.Logger) -> dict[str, float]:
    """``run_validation`` on the bare model in eval mode (rank 0 only); returns its metrics."""
    from .evaluation import run_validation

    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    try:
        with torch.no_grad():
            metrics, _ = run_validation(cfg, bare, output_dir, logger, cfg.TRAIN.VAL_SUBSET)
    finally:
        bare.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def reseed_epoch(data_loader: Any, seed: int) -> None:
    """Seed everything an epoch draws from: the global RNGs, the loader's shuffling generator and, with
    ``WORKERS 0``, the dataset's augmentation stream. Epoch ``e`` then does not depend on whether the
    run was resumed, so a resumed run reproduces an uninterrupted one."""
    du.seed_everything(seed)
    generator = getattr(data_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)
    dataset = getattr(data_loader, "dataset", None)
    if getattr(data_loader, "num_workers", 1) == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)


def _setup_determinism(cfg: Any, ctx: du.DistContext) -> None:
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN.BENCHMARK) and cfg.TRAIN.SEED < 0
        torch.backends.cudnn.deterministic = bool(cfg.CUDNN.DETERMINISTIC) or cfg.TRAIN.SEED >= 0
        torch.backends.cudnn.enabled = bool(cfg.CUDNN.ENABLED)
    if cfg.TRAIN.SEED >= 0:
        # Same seed on every rank for the model init (DDP also broadcasts rank 0's weights).
        du.seed_everything(int(cfg.TRAIN.SEED))


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
    _setup_determinism(cfg, ctx)
    device = ctx.device
    if model is None:
        from ..models import build_model

        model = build_model(cfg, is_train=True)
    if cfg.MODEL.SYNC_BN and ctx.distributed:
        if device.startswith("cuda"):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif ctx.is_main:
            logger.warning("=> MODEL.SYNC_BN ignored: SyncBatchNorm needs CUDA; BatchNorm stays per process")
    model = model.to(device)
    if cfg.TRAIN.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    if loss_factory is None:
        from .loss import MultiLossFactory

        loss_factory = MultiLossFactory(cfg)
    loss_factory = loss_factory.to(device)

    if data_loader is None:
        if loader_fn is None:
            from ..dataset.build import make_dataloader

            loader_fn = lambda c, d: make_dataloader(c, is_train=True, distributed=d)  # noqa: E731
        data_loader = loader_fn(cfg, ctx.distributed)

    optimizer = get_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch(cfg, data_loader))
    ema = ModelEMA(model, cfg.TRAIN.EMA_DECAY) if cfg.TRAIN.EMA_DECAY > 0 else None
    scaler = make_grad_scaler(cfg, device)
    fp16, amp_dtype = amp_settings(cfg, device)
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
        logger.info(
            f"=> training {cfg.MODEL.NAME} on {ctx.world_size} process(es), device {device}, "
            f"backend {ctx.backend or 'none'}, batch {cfg.TRAIN.IMAGES_PER_GPU} x {ctx.world_size}, "
            f"{steps_per_epoch(cfg, data_loader)} steps/epoch, "
            f"amp {'off' if not fp16 else str(amp_dtype).replace('torch.', '')}, output {output_dir}"
        )
        if cfg.TRAIN.TIME_BUDGET > 0:
            logger.info(
                f"=> TRAIN.TIME_BUDGET {cfg.TRAIN.TIME_BUDGET:g} min ({format_seconds(state.train_seconds)} used): "
                f"each epoch gets an equal share of the time left and stops early when it is spent"
            )

    # What is validated and saved as model_best / final_state: the weight average when TRAIN.EMA_DECAY > 0.
    eval_model = ema.module if ema is not None else model
    try:
        for epoch in range(state.epoch, cfg.TRAIN.END_EPOCH):
            if cfg.TRAIN.SEED >= 0:
                reseed_epoch(data_loader, du.derive_seed(cfg.TRAIN.SEED, epoch, ctx.rank))
            sampler = getattr(data_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # HigherHRNet never did: same order every epoch
            do_train(
                cfg,
                model,
                data_loader,
                loss_factory,
                optimizer,
                epoch,
                output_dir,
                tb_log_dir,
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
            du.broadcast_buffers_(unwrap(model))
        if ctx.is_main:
            save_atomic(bare_state_dict(eval_model), os.path.join(output_dir, FINAL_NAME))
            logger.info(f"=> saved {FINAL_NAME} in {output_dir}")
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
        # All ranks leave together: a rank that tears its gloo group down while rank 0 is still
        # writing final_state.pth was seen to abort ("terminate called without an active exception").
        du.barrier()
    finally:
        if writer_dict is not None:
            writer_dict["writer"].close()
    return state
