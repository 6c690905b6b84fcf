"""Optimiser and learning-rate schedule (HigherHRNet's, plus AdamW, a linear warm-up, a cosine and SWAHR's)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: one at ``lr``, or with ``head_lr_mult != 1`` the SAT
    head's parameters (``sat_head.*``, also under a DDP wrapper) in a second group at ``lr * head_lr_mult``.
    The schedulers scale every group's own initial LR, so the ratio holds through warm-up and decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_head = [n.removeprefix("module.").startswith("sat_head.") for n, _ in named]
    if head_lr_mult == 1.0 or not any(is_head):
        return [{"params": [p for _, p in named], "lr": lr}]
    body = [p for (_, p), head in zip(named, is_head) if not head]
    head = [p for (_, p), head in zip(named, is_head) if head]
    return [{"params": body, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def get_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """``TRAIN.OPTIMIZER``: ``adam`` (HigherHRNet: ``Adam(lr=LR)``, default betas, **no** weight decay —
    ``TRAIN.WD`` is ignored as in the official code), ``adamw`` (decoupled ``WD``) or ``sgd``
    (``MOMENTUM``, ``WD``, ``NESTEROV``). higher_pose's head learns at ``LR x MODEL.SAT.LR_MULT``
    (:func:`param_groups`)."""
    mult = float(cfg.MODEL.SAT.LR_MULT) if cfg.MODEL.NAME == "higher_pose" else 1.0
    params = param_groups(model, cfg.TRAIN.LR, mult)
    name = cfg.TRAIN.OPTIMIZER
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.TRAIN.LR)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.TRAIN.LR, weight_decay=cfg.TRAIN.WD)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.TRAIN.LR, momentum=cfg.TRAIN.MOMENTUM, weight_decay=cfg.TRAIN.WD, nesterov=cfg.TRAIN.NESTEROV
        )
    raise ValueError(f"TRAIN.OPTIMIZER = {name!r}: choose 'adam', 'adamw' or 'sgd'")


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """HigherHRNet's ``MultiStepLR`` over epochs times an optional linear warm-up over steps.

    ``lr(epoch, step) = base_lr * gamma ** #{m in milestones : m <= epoch} * min(1, (step + 1) / warmup_iters)``

    With ``cosine_iters > 0`` the milestone decay is replaced by a per-step cosine from ``base_lr`` to 0
    over ``cosine_iters`` steps (``TRAIN.LR_SCHEDULER 'cosine'``), the usual choice for a fixed budget
    (on the synthetic quick start it did not beat HigherHRNet's late drop: docs/experiments/quickstart.md,
    "Which batch size, learning rate, schedule and initialisation?").

    With ``linear_iters > 0`` it is SWAHR's schedule instead (``TRAIN.LR_SCHEDULER 'warmup_linear'``):
    step ``t`` has ``base_lr * (0.1 + 0.9 t / W)`` for ``t < W = linear_warmup_iters``, then
    ``base_lr * (1 - (t - W) / (linear_iters - W))``, reaching 0 at the last step of ``END_EPOCH``.

    Closed form, so resuming only needs ``last_epoch`` and ``global_step`` (both in ``state_dict``).
    Call :meth:`step` once per epoch (after it, as HigherHRNet) and :meth:`step_iter` before every
    optimiser step; without warm-up ``step_iter`` is a no-op and this equals ``MultiStepLR``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        last_epoch: int = -1,
        cosine_iters: int = 0,
        linear_iters: int = 0,
        linear_warmup_iters: int = 0,
    ) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.cosine_iters = int(cosine_iters)
        self.linear_iters = int(linear_iters)
        self.linear_warmup_iters = int(linear_warmup_iters)
        self.global_step = 0
        super().__init__(optimizer, last_epoch)

    def _factor(self) -> float:
        if self.linear_iters > 0:
            step, warm = self.global_step, self.linear_warmup_iters
            if step < warm:
                return 0.1 + 0.9 * step / warm
            return max(0.0, 1.0 - (step - warm) / max(1, self.linear_iters - warm))
        if self.cosine_iters > 0:
            progress = min(self.global_step, self.cosine_iters) / self.cosine_iters
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = self.gamma ** bisect_right(self.milestones, self.last_epoch)
        warm = min(1.0, (self.global_step + 1) / self.warmup_iters) if self.warmup_iters > 0 else 1.0
        return decay * warm

    def get_lr(self) -> list[float]:
        return [base * self._factor() for base in self.base_lrs]

    def _apply(self) -> None:
        lrs = [base * self._factor() for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def step_iter(self, global_step: int) -> None:
        """Set the LR for optimiser step ``global_step`` (0-based, counted over the whole run)."""
        self.global_step = int(global_step)
        if self.warmup_iters > 0 or self.cosine_iters > 0 or self.linear_iters > 0:
            self._apply()

    def set_epoch(self, epoch: int) -> None:
        """Jump to the schedule of ``epoch`` (used when resuming from a checkpoint without scheduler state)."""
        self.last_epoch = int(epoch)
        self._apply()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The cosine / linear lengths follow the current END_EPOCH, not the checkpoint's: a run resumed
        # with a longer schedule stretches its decay instead of sitting at LR 0.
        lengths = self.cosine_iters, self.linear_iters, self.linear_warmup_iters
        super().load_state_dict(state_dict)
        self.cosine_iters, self.linear_iters, self.linear_warmup_iters = lengths
        self._apply()


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int = 0) -> WarmupMultiStepLR:
    """``TRAIN.LR_SCHEDULER``: ``multistep`` (HigherHRNet: ``LR_STEP`` milestones in epochs, ``LR_FACTOR``
    decay) or ``cosine`` (per step to 0 at ``END_EPOCH``), both with the ``TRAIN.WARMUP_ITERS`` linear
    warm-up; or ``warmup_linear`` (SWAHR: from 0.1 x ``LR`` up over ``TRAIN.WARM_UP_EPOCH`` epochs, then
    down to 0 at ``END_EPOCH``). The per-step schedules need ``steps_per_epoch``.

    ``TRAIN.LR`` is the run's LR whatever the number of processes; SWAHR's YAMLs give a per-GPU LR that
    its code multiplies by its constant ``WORLD_SIZE`` 8."""
    name = cfg.TRAIN.LR_SCHEDULER
    if name not in ("multistep", "cosine", "warmup_linear"):
        raise ValueError(f"TRAIN.LR_SCHEDULER = {name!r}: choose 'multistep', 'cosine' or 'warmup_linear'")
    if name != "multistep" and steps_per_epoch <= 0:
        raise ValueError(f"TRAIN.LR_SCHEDULER = {name!r} needs the number of steps per epoch")
    total = int(cfg.TRAIN.END_EPOCH) * int(steps_per_epoch)
    return WarmupMultiStepLR(
        optimizer,
        cfg.TRAIN.LR_STEP,
        cfg.TRAIN.LR_FACTOR,
        cfg.TRAIN.WARMUP_ITERS,
        cosine_iters=total if name == "cosine" else 0,
        linear_iters=total if name == "warmup_linear" else 0,
        linear_warmup_iters=int(cfg.TRAIN.WARM_UP_EPOCH) * int(steps_per_epoch) if name == "warmup_linear" else 0,
    )
