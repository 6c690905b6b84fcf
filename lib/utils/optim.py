"""Optimiser and learning-rate schedule (HigherHRNet's, plus AdamW and a linear warm-up)."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def get_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """``TRAIN.OPTIMIZER``: ``adam`` (HigherHRNet: ``Adam(lr=LR)``, default betas, **no** weight decay —
    ``TRAIN.WD`` is ignored as in the official code), ``adamw`` (decoupled ``WD``) or ``sgd``
    (``MOMENTUM``, ``WD``, ``NESTEROV``)."""
    params = [p for p in model.parameters() if p.requires_grad]
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
    ) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.cosine_iters = int(cosine_iters)
        self.global_step = 0
        super().__init__(optimizer, last_epoch)

    def _factor(self) -> float:
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
        if self.warmup_iters > 0 or self.cosine_iters > 0:
            self._apply()

    def set_epoch(self, epoch: int) -> None:
        """Jump to the schedule of ``epoch`` (used when resuming from a checkpoint without scheduler state)."""
        self.last_epoch = int(epoch)
        self._apply()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The cosine length follows the current END_EPOCH, not the checkpoint's: a run resumed with a
        # longer schedule stretches its cosine instead of sitting at LR 0.
        cosine_iters = self.cosine_iters
        super().load_state_dict(state_dict)
        self.cosine_iters = cosine_iters
        self._apply()


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int = 0) -> WarmupMultiStepLR:
    """``TRAIN.LR_SCHEDULER``: ``multistep`` (HigherHRNet: ``LR_STEP`` milestones in epochs, ``LR_FACTOR``
    decay) or ``cosine`` (per step to 0 at ``END_EPOCH``; needs ``steps_per_epoch``); both with the
    ``TRAIN.WARMUP_ITERS`` linear warm-up."""
    name = cfg.TRAIN.LR_SCHEDULER
    if name not in ("multistep", "cosine"):
        raise ValueError(f"TRAIN.LR_SCHEDULER = {name!r}: choose 'multistep' or 'cosine'")
    cosine_iters = 0
    if name == "cosine":
        if steps_per_epoch <= 0:
            raise ValueError("TRAIN.LR_SCHEDULER = 'cosine' needs the number of steps per epoch")
        cosine_iters = int(cfg.TRAIN.END_EPOCH) * int(steps_per_epoch)
    return WarmupMultiStepLR(
        optimizer, cfg.TRAIN.LR_STEP, cfg.TRAIN.LR_FACTOR, cfg.TRAIN.WARMUP_ITERS, cosine_iters=cosine_iters
    )
