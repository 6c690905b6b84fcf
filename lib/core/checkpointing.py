"""Training checkpoints: what a run saves (weights, optimiser, schedule, loss scaler, weight average,
:class:`~higherpose.core.train_loop.TrainState`, config, RNG states), how it resumes, and the file names
in the output folder, and how every rank of a distributed run starts from rank 0's files (the resume
checkpoint, ``MODEL.PRETRAINED``) even where it cannot read them. The file-level I/O (atomic saves, tolerant loading) is
:mod:`higherpose.utils.checkpoint`.

Differences from HigherHRNet: checkpoints load on the CPU (no ``map_location`` bug); weights are saved
with plain keys (no ``module.``); HigherHRNet's ``checkpoint.pth.tar`` is still accepted for resuming,
and its ``perf`` (the epoch number, not a metric) is not taken as the best AP; NaN/inf weights are
never saved (:class:`NonFiniteWeightsError`), so a file on disk always holds usable weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from higherpose.config import ConfigError
from higherpose.core.train_loop import NonFiniteLossError, TrainState
from higherpose.utils import distributed as du
from higherpose.utils.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_file,
    load_pose_state_dict,
    save_atomic,
)
from higherpose.utils.ema import ModelEMA
from higherpose.utils.optim import WarmupMultiStepLR

CHECKPOINT_NAME = "checkpoint.pth"
LEGACY_CHECKPOINT_NAME = "checkpoint.pth.tar"  # HigherHRNet's name, still accepted for resuming
BEST_NAME = "model_best.pth"
FINAL_NAME = "final_state.pth"


class NonFiniteWeightsError(NonFiniteLossError):
    """Weights or buffers hold NaN/inf, so they were not saved; the message names the first such tensor.

    A :class:`NonFiniteLossError`: the same cause (a diverged run) and the same handling by the tools.
    """


def check_finite(tensors: Mapping[str, object], what: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first floating-point tensor of ``tensors`` (in
    order) with a NaN/inf value; ``what`` says what was about to be saved. Other entries are ignored."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise NonFiniteWeightsError(f"refusing to write {what}: {name} has {bad} of {t.numel()} values NaN/inf")


def bare_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain-key (no ``module.``) contiguous CPU weights, loadable by valid.py and HigherHRNet code."""
    return {k: v.detach().cpu().contiguous() for k, v in du.unwrap(model).state_dict().items()}


def _write(obj: Any, path: str) -> None:
    """:func:`save_atomic`; a :class:`CheckpointError` naming ``path`` when it cannot be written (a full
    disk, a file size limit, a read-only folder), which every rank is then told of."""
    try:
        save_atomic(obj, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        raise CheckpointError(f"cannot write {path}: {err}") from err


def save_weights(model: nn.Module, path: str) -> None:
    """:func:`bare_state_dict` of ``model`` to ``path`` atomically, refused when a value is NaN/inf."""
    weights = bare_state_dict(model)
    check_finite(weights, path)
    _write(weights, path)


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
    """Everything needed to resume, written atomically (a crash mid-save keeps the previous file).

    Raises :class:`NonFiniteWeightsError` (writing nothing) when a weight, buffer or weight average is
    NaN/inf: resuming from such a file could only diverge again.
    """
    weights = bare_state_dict(model)
    check_finite(weights, path)
    if ema is not None:
        check_finite(ema.state_dict(), f"{path} (TRAIN.EMA_DECAY weight average)")
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
    _write(obj, path)


def read_checkpoint(path: str) -> dict[str, Any]:
    """The training checkpoint at ``path`` (ours or HigherHRNet's), on the CPU; a :class:`CheckpointError`
    when the file is not one."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'epoch'); use it as MODEL.PRETRAINED")
    return ckpt


def load_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupMultiStepLR | None,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
    ema: ModelEMA | None = None,
) -> TrainState:
    """Resume from ours or HigherHRNet's training checkpoint (loaded on the CPU: no ``map_location`` bug)."""
    return restore_checkpoint(read_checkpoint(path), model, optimizer, scheduler, scaler, restore_rng, ema, path)


def restore_checkpoint(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupMultiStepLR | None,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
    ema: ModelEMA | None = None,
    source: str = "checkpoint",
) -> TrainState:
    """Put a checkpoint read by :func:`read_checkpoint` into the training objects; returns its state.

    HigherHRNet's ``perf`` is the epoch number, not a metric, so it is not taken as the best AP.
    """
    load_pose_state_dict(du.unwrap(model), extract_state_dict(ckpt), strict=True, source=source)
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
            ema.update_parameters(du.unwrap(model))
    if restore_rng and ckpt.get("rng"):
        du.set_rng_state(ckpt["rng"])
    return state


def _stamp(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """What tells two copies of a checkpoint apart: a stale copy on another node is of an older step."""
    return int(ckpt["epoch"]), int(ckpt.get("global_step", 0))


def resume_point(output_dir: str, is_main: bool) -> tuple[str | None, dict[str, Any] | None]:
    """``(path, checkpoint)`` to resume from, the same on every rank, or ``(None, None)``; every rank
    must call it.

    Rank 0 alone decides, from its ``output_dir`` (only it writes checkpoints), and sends its choice
    to all ranks. A rank that cannot read that file, or holds a copy of another step, receives rank
    0's checkpoint through the process group: on nodes without a shared file system every rank still
    starts from the same model, optimiser, schedule, scaler and epoch. That transfer pickles the whole
    checkpoint (weights and optimiser state, about 4x the weights for Adam) and briefly holds it twice
    on every rank, so it is done only when some rank needs it. A checkpoint rank 0 cannot read stops
    every rank with the same :class:`CheckpointError`.
    """
    path, ckpt, stamp, error = None, None, None, None
    if is_main:
        path = checkpoint_to_resume(output_dir)
        if path is not None:
            try:
                ckpt = read_checkpoint(path)
                stamp = _stamp(ckpt)
            except CheckpointError as err:
                error = str(err)
    path, stamp, error = du.broadcast_object((path, stamp, error))
    if error is not None:
        raise CheckpointError(error)
    if path is None:
        return None, None
    if not is_main and os.path.isfile(path):
        try:
            local = read_checkpoint(path)
            ckpt = local if _stamp(local) == stamp else None
        except CheckpointError:
            ckpt = None  # a truncated copy: take rank 0's
    if du.any_rank(ckpt is None):
        received = du.broadcast_object(ckpt if is_main else None)
        ckpt = ckpt if ckpt is not None else received
    return path, ckpt


def pretrained_for_this_rank(path: str, is_main: bool) -> str:
    """The ``MODEL.PRETRAINED`` file this rank loads; every rank must call it (with the same ``path``).

    ``path`` when this rank can read it (or is empty); ``''`` when only rank 0 can: DDP copies rank 0's
    weights and buffers to every rank when it wraps the model, so such a rank needs no file. A
    :class:`ConfigError` naming the file on every rank when rank 0 cannot read it, so that all ranks
    stop together instead of the others waiting for rank 0 until the process-group timeout.
    """
    if not path:
        return ""
    here = os.path.isfile(path)
    if not du.broadcast_object(here if is_main else None):
        raise ConfigError(
            f"MODEL.PRETRAINED = {path!r} does not exist on rank 0; download the ImageNet HRNet weights "
            "or set MODEL.PRETRAINED '' to train from scratch"
        )
    return path if here else ""
