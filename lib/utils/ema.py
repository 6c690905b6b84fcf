"""Exponential moving average of the weights (``TRAIN.EMA_DECAY``), on ``torch.optim.swa_utils``.

Not in HigherHRNet. Weights trained at a high learning rate jitter from step to step; their running
average is often the better model, at the cost of one extra copy of it (on the synthetic quick start,
whose LR drops for the last epoch, it was not: docs/experiments/quickstart.md). BatchNorm statistics
are averaged with the parameters (``use_buffers=True``), so the averaged model is usable as it is,
without a pass to recompute them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, num_averaged: int) -> float:
    """The decay used for update ``num_averaged`` (0-based): ``min(decay, (1 + n) / (10 + n))``.

    The ramp (as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps the first
    updates from averaging in the random initialisation for thousands of steps."""
    return min(float(decay), (1.0 + num_averaged) / (10.0 + num_averaged))


class ModelEMA(AveragedModel):
    """``AveragedModel`` with an EMA of parameters and buffers and the ramped decay of :func:`ema_decay`.

    Call :meth:`update_parameters` with the bare (un-DDP'd) model after every optimiser step; the
    averaged network is ``self.module``. Integer buffers (BatchNorm's ``num_batches_tracked``) are
    copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"TRAIN.EMA_DECAY = {decay!r}: must be in (0, 1) (0 turns the average off)")
        self.decay = float(decay)
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)

    def _average(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        d = ema_decay(self.decay, int(num_averaged))
        if averaged and torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current):
                a.copy_(c)
