"""One training epoch (:func:`do_train`, HigherHRNet's loop): loss combination, the associative-embedding
warm-up, mixed precision, the non-finite loss policy, progress logging and debug images.

Differences from HigherHRNet: only rank 0 logs, writes TensorBoard and debug images; TensorBoard tags
name the stage (not the batch index); torch.amp replaces apex; the loss runs in fp32; a non-finite loss
stops the run (or skips the step) with the term named, and every rank takes the same decision; under
float16 autocast it skips the step and keeps the loss scale (GradScaler lowers it for overflowing gradients).
A step reads the device once (its loss values and flags together), so the host queues work ahead.
With SWAHR (``LOSS.HEATMAPS_LOSS_TYPE 'swahr'``) the scale terms are logged and summed under their own
names and the scale maps drawn on their own (SWAHR's trainer logs the heatmap loss as its scale loss and
passes ``[scale | heatmaps | tags]`` outputs to the debug pictures as heatmaps and tags).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from higherpose.core.debug_images import save_debug_images
from higherpose.core.layout import OutputLayout
from higherpose.core.time_budget import EpochTimer, epoch_allowance
from higherpose.models.pose_higher_hrnet import has_scale_maps, heatmap_probabilities, heatmaps_are_logits
from higherpose.utils import distributed as du
from higherpose.utils.ema import ModelEMA
from higherpose.utils.meters import AverageMeter, eta_seconds, format_seconds
from higherpose.utils.optim import WarmupMultiStepLR
from higherpose.utils.vis import add_debug_images

MAX_NAN_IN_A_ROW = 20  # NAN_POLICY 'skip' (and float16's overflow skips) give up after this many in a row

_fallback_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and the loss terms (and, raised out of
    :func:`higherpose.core.trainer.fit`, which checkpoint is left to resume from)."""


@dataclass
class TrainState:
    """What a run has done so far; saved in every checkpoint."""

    epoch: int = 0  # the next epoch to run
    global_step: int = 0  # optimiser steps taken over the whole run
    best_perf: float | None = None  # best validation AP so far (None: never validated)
    best_epoch: int = -1
    nan_skipped: int = 0  # steps skipped for a non-finite loss (NAN_POLICY 'skip', or float16 overflow)
    nan_in_a_row: int = 0
    train_seconds: float = 0.0  # wall time spent in training epochs (what TRAIN.TIME_BUDGET counts)


@dataclass(frozen=True)
class NonFiniteStep:
    """A step whose loss is NaN/inf on at least one rank: where it happened and the loss readings."""

    epoch: int
    step: int  # index of the step in its epoch
    n_steps: int  # steps in the epoch
    global_step: int  # optimiser steps taken before this one
    names: list[str]  # the loss terms, then 'total'
    values: list[float]  # this rank's value of each
    bad: list[bool]  # non-finite on any rank (max-reduced, so every rank has the same flags)

    def message(self) -> str:
        """``non-finite loss at epoch E step I/N (global step G) in <terms> [name=value, ...]``."""
        where = ", ".join(
            f"{n}={v}" if b and not math.isfinite(v) else f"{n}={v:.4g}"
            for n, v, b in zip(self.names, self.values, self.bad)
        )
        culprits = [n for n, b in zip(self.names, self.bad) if b and n != "total"] or ["total"]
        return (
            f"non-finite loss at epoch {self.epoch} step {self.step}/{self.n_steps} "
            f"(global step {self.global_step}) in {', '.join(culprits)} [{where}]"
        )


def grads_overflowed(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """``(1,)`` on the device, > 0 when :meth:`GradScaler.unscale_` (just called) found an inf/NaN
    gradient: the record ``scaler.step`` reads with a host sync of its own, read here together with the
    step's other flags. None where the record is not there (a GradScaler of another layout, an optimiser
    that unscales inside its own step): ``scaler.step`` then decides."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        return None
    record = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {}).get("found_inf_per_device")
    if not record:
        return None
    found = [f.reshape(1).float() for f in record.values()]
    return torch.stack(found).amax(dim=0) if len(found) > 1 else found[0]


def apply_nan_policy(
    step: NonFiniteStep,
    policy: str,
    state: TrainState,
    logger: logging.Logger | None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """What a non-finite loss does; the step is skipped whenever this returns.

    With a GradScaler (float16 autocast) a non-finite loss is a forward overflow, skipped whatever
    ``policy`` says; the loss scale stays: it neither causes nor cures a forward overflow, and lowering it
    for each would leave the gradients to underflow for thousands of steps (GradScaler lowers it for
    non-finite *gradients*, its own rule). Otherwise ``TRAIN.NAN_POLICY``: 'stop' raises
    :class:`NonFiniteLossError`; 'skip' returns. Skips are counted in ``state``; the
    :data:`MAX_NAN_IN_A_ROW`-th in a row raises. ``logger``: None on the ranks that do not log.
    """
    msg = step.message()
    if scaler is None and policy != "skip":
        raise NonFiniteLossError(f"{msg}; stopping (TRAIN.NAN_POLICY 'stop'; 'skip' skips such steps)")
    state.nan_skipped += 1
    state.nan_in_a_row += 1
    if scaler is not None:
        scale = scaler.get_scale()
        done = f"step skipped (a float16 forward overflow), loss scale kept at {scale:g}"
        give_up = "in the float16 forward (FP16.DTYPE bfloat16 has float32's range and may train)"
    else:
        done, give_up = "step skipped", "(TRAIN.NAN_POLICY 'skip')"
    if state.nan_in_a_row >= MAX_NAN_IN_A_ROW:
        raise NonFiniteLossError(
            f"{msg}; {state.nan_in_a_row} non-finite steps in a row {give_up}: giving up after {MAX_NAN_IN_A_ROW}"
        )
    if logger is not None:
        logger.warning(f"{msg}: {done} ({state.nan_skipped} skipped so far)")


def amp_settings(cfg: Any) -> tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of autocast from ``FP16.ENABLED`` / ``FP16.DTYPE``."""
    dtype = torch.bfloat16 if cfg.FP16.DTYPE == "bfloat16" else torch.float16
    return bool(cfg.FP16.ENABLED), dtype


def make_grad_scaler(cfg: Any, device: str) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 autocast (bfloat16 has fp32's range and needs none).

    ``FP16.STATIC_LOSS_SCALE`` > 1 becomes the initial scale; the scaler is always dynamic (torch.amp),
    which covers HigherHRNet's ``DYNAMIC_LOSS_SCALE``.
    """
    enabled, dtype = amp_settings(cfg)
    if not enabled or dtype != torch.float16:
        return None
    init_scale = float(cfg.FP16.STATIC_LOSS_SCALE) if cfg.FP16.STATIC_LOSS_SCALE > 1 else 2.0**16
    return torch.amp.GradScaler(device.split(":")[0], init_scale=init_scale)


def combine_losses(
    heatmaps_losses: Sequence[torch.Tensor | None],
    push_losses: Sequence[torch.Tensor | None],
    pull_losses: Sequence[torch.Tensor | None],
    ae_scale: float = 1.0,
    scale_losses: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Sum the per-stage losses as HigherHRNet: ``Σ_s hm_s.mean() + push_s.mean() + pull_s.mean()``,
    plus ``scale_s.mean()`` with SWAHR's scale losses (``scale_losses``, as SWAHR's trainer).

    Each input is a list per stage of ``(B,)`` tensors or None. ``ae_scale`` multiplies push and
    pull (TRAIN.AE_WARMUP_*). Returns the total ``()`` and ``[(name, batch-mean term ())]`` with names
    ``stage{s}_heatmaps`` / ``stage{s}_scale`` / ``stage{s}_push`` / ``stage{s}_pull`` (terms as added
    to the total).
    """
    terms: list[tuple[str, torch.Tensor]] = []
    scale_losses = scale_losses if scale_losses is not None else [None] * len(heatmaps_losses)
    for s, (hm, scale, push, pull) in enumerate(zip(heatmaps_losses, scale_losses, push_losses, pull_losses)):
        if hm is not None:
            terms.append((f"stage{s}_heatmaps", hm.mean(dim=0)))
        if scale is not None:
            terms.append((f"stage{s}_scale", scale.mean(dim=0)))
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


def split_losses(losses: Sequence[list]) -> tuple[list, list | None, list, list]:
    """A loss factory's lists -> ``(heatmaps, scale or None, push, pull)``: three lists from HigherHRNet's
    factory, four (heatmaps, scale, push, pull) from SWAHR's."""
    if len(losses) == 4:
        return losses[0], losses[1], losses[2], losses[3]
    if len(losses) == 3:
        return losses[0], None, losses[1], losses[2]
    raise ValueError(f"a loss factory returns 3 or 4 per-stage lists, got {len(losses)}")


def _to_device(batch: torch.Tensor | list[torch.Tensor], device: str) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return [b.to(device, non_blocking=True) for b in batch]


def _ae_scale(cfg: Any, global_step: int) -> float:
    """The factor on push and pull at ``global_step`` (``TRAIN.AE_WARMUP_FACTOR`` during the warm-up)."""
    return float(cfg.TRAIN.AE_WARMUP_FACTOR) if global_step < cfg.TRAIN.AE_WARMUP_ITERS else 1.0


def steps_per_epoch(cfg: Any, data_loader: Any) -> int:
    """Batches one epoch trains on: the loader's length, capped by ``TRAIN.ITERS_PER_EPOCH`` when > 0."""
    n = len(data_loader)
    return min(n, cfg.TRAIN.ITERS_PER_EPOCH) if cfg.TRAIN.ITERS_PER_EPOCH > 0 else n


def _save_debug(
    cfg: Any, batch: tuple, outputs: list[torch.Tensor], output_dir: str, step: int, writer: Any, global_step: int
) -> None:
    """HigherHRNet's per-scale debug grids (``train_{step}_output_{R}_*.jpg``) and the same grids in
    TensorBoard.

    ``batch`` is the step's ``(images, heatmaps, masks, joints)``; ``outputs`` the model's ``[(B,C,R,R)]``.
    """
    images, heatmaps, masks, joints = batch
    prefix = "{}_{}".format(os.path.join(output_dir, "train"), step)
    layout = OutputLayout.from_config(cfg)
    for s, out in enumerate(outputs):
        res = cfg.DATASET.OUTPUT_SIZE[s]
        scale, out = layout.split_scale(out.detach().float())  # SWAHR's scale maps, drawn on their own
        if heatmaps_are_logits(cfg):  # training-mode outputs are logits: show probabilities
            out = heatmap_probabilities(out, cfg.MODEL.NUM_JOINTS)
        grids = save_debug_images(
            cfg, images, heatmaps[s], masks[s], out, f"{prefix}_output_{res}", joints[s], batch_scale=scale
        )
        if writer is not None and grids:
            add_debug_images(writer, grids, global_step, tag=f"train_debug/output_{res}")


def _debug_wanted(cfg: Any) -> bool:
    d = cfg.DEBUG
    keys = ("SAVE_BATCH_IMAGES_GT", "SAVE_BATCH_IMAGES_PRED", "SAVE_HEATMAPS_GT", "SAVE_HEATMAPS_PRED")
    swahr = has_scale_maps(cfg) and d.SAVE_SCALEMAPS_PRED
    return bool(d.DEBUG) and (any(d[k] for k in keys) or bool(d.SAVE_TAGMAPS_PRED) or bool(swahr))


def do_train(
    cfg: Any,
    model: nn.Module,
    data_loader: Any,
    loss_factory: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    output_dir: str,
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
    """Train one epoch (HigherHRNet's signature without its unused ``tb_log_dir``, plus keyword extras);
    returns the epoch's mean losses.

    Batches are ``(images (B,3,S,S), heatmaps [(B,K,R,R)], masks [(B,R,R)], joints [(B,M,K,2)])``.
    ``fp16`` turns on autocast with ``FP16.DTYPE``; ``scaler`` (float16) scales the loss.
    A non-finite loss raises :class:`NonFiniteLossError` (``TRAIN.NAN_POLICY 'stop'``) or skips the
    step (``'skip'``, at most :data:`MAX_NAN_IN_A_ROW` in a row); with ``scaler`` it skips the step and
    keeps the loss scale whatever the policy (:func:`apply_nan_policy`). Ranks agree on it, so DDP
    never hangs.
    ``TRAIN.TIME_BUDGET`` ends the epoch early when its share of the budget is spent (ranks agree too).
    """
    ctx = ctx or du.DistContext()
    state = state if state is not None else TrainState(epoch=epoch)
    logger = logger or _fallback_logger
    device = ctx.device
    device_type = device.split(":")[0]
    _, amp_dtype = amp_settings(cfg)
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
        hm_l, scale_l, push_l, pull_l = split_losses(loss_factory(outputs, heatmaps, masks, joints))
        total, terms = combine_losses(hm_l, push_l, pull_l, _ae_scale(cfg, state.global_step), scale_l)

        # Term values, their finiteness, whether the time budget ends the epoch here and (float16) whether
        # the gradients overflowed stay on the device until backward is queued; the step's one host read
        # comes before the optimiser step, the first thing that depends on it. Flags are max-reduced over
        # ranks so all ranks take the same branches. A non-finite loss runs its backward on every rank too
        # (DDP's gradient all-reduce needs all of them); its gradients are dropped below. new_full is a
        # fill on the device: a tensor made from a Python list would be a blocking copy that holds the host
        # until the forward has run.
        values = torch.stack([t.detach().float() for _, t in terms] + [total.detach().float()])
        flags = [(~torch.isfinite(values)).float(), values.new_full((1,), float(out_of_time))]
        optimizer.zero_grad(set_to_none=True)
        overflow = None
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)  # what scaler.step would do first; clipping needs it too
            overflow = grads_overflowed(scaler, optimizer)
            if overflow is not None:
                flags.append(overflow)
        else:
            total.backward()
        flags = du.all_reduce_max_(torch.cat(flags))
        host = torch.cat([values, flags]).cpu().tolist()
        values_cpu, flags_cpu = host[: len(values)], host[len(values) :]
        grads_bad = overflow is not None and flags_cpu.pop() > 0
        bad_cpu, cut = [f > 0 for f in flags_cpu[:-1]], flags_cpu[-1] > 0
        steps_done = i + 1
        if any(bad_cpu):
            optimizer.zero_grad(set_to_none=True)  # the step is skipped: its gradients must not linger
            if scaler is not None:
                scaler.update(scaler.get_scale())  # ends the step's unscale_, the scale as it was
            names = [name for name, _ in terms] + ["total"]
            bad_step = NonFiniteStep(epoch, i, n_steps, state.global_step, names, values_cpu, bad_cpu)
            apply_nan_policy(bad_step, cfg.TRAIN.NAN_POLICY, state, logger if ctx.is_main else None, scaler)
            end = time.time()
            if cut:
                break
            continue
        state.nan_in_a_row = 0

        if cfg.TRAIN.CLIP_GRAD > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.TRAIN.CLIP_GRAD)
        if scaler is None:
            optimizer.step()
        elif overflow is None:
            scaler.step(optimizer)  # reads its inf check itself
            scaler.update()
        else:
            if not grads_bad:  # GradScaler's rule: no step on inf/NaN gradients, and update lowers the scale
                optimizer.step()
            scaler.update()
        state.global_step += 1
        if ema is not None:
            ema.update_parameters(du.unwrap(model))

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
