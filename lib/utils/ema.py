"""Exponential moving average of the weights (``TRAIN.EMA_DECAY``), on ``torch.optim.swa_utils``.

Not in HigherHRNet. Weights trained at a high learning rate jitter from step to step; their running
average is often the better model, at the cost of one extra copy of it (on the synthetic quick start,
whose LR drops for the last epoch, it was not: docs/experiments/quickstart.md). BatchNorm statistics
are averaged with the parameters (``use_buffers=True``), so the averaged model is usable as it is,
without a pass to recompute them.
"""

from __future__ import annotations

import itertools

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
    copied, not averaged. The update count ``n_averaged`` lives on the model's device and the decay is
    computed there, so an update never waits for the device.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"TRAIN.EMA_DECAY = {decay!r}: must be in (0, 1) (0 turns the average off)")
        self.decay = float(decay)
        super().__init__(model, use_buffers=True)
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        if first is not None:
            self.n_averaged = self.n_averaged.to(first.device)

    def _decay(self) -> Tensor:
        """:func:`ema_decay` of ``n_averaged`` as a 0-dim float32 tensor on its device; 0 for the first
        update, which copies the weights."""
        n = self.n_averaged
        ramp = ((n + 1.0) / (n + 10.0)).clamp(max=self.decay)
        return torch.where(n == 0, torch.zeros_like(ramp), ramp)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Average ``model``'s parameters and float buffers into ``self.module``: ``a = d a + (1 - d) c``.

        Replaces ``AveragedModel.update_parameters``, which branches on ``n_averaged`` on the host
        (a device sync every step). With d = 0 the first update is an exact copy (``0 a + c``)."""
        averaged = itertools.chain(self.module.parameters(), self.module.buffers())
        current = itertools.chain(model.parameters(), model.buffers())
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for a, c in zip(averaged, current):
            a, c = a.detach(), c.detach().to(a.device)
            if torch.is_floating_point(a):
                avg, cur = groups.setdefault((a.device, a.dtype), ([], []))
                avg.append(a)
                cur.append(c)
            else:
                a.copy_(c)
        d = self._decay()
        for (device, _), (avg, cur) in groups.items():
            d_here = d.to(device)
            torch._foreach_mul_(avg, d_here)
            torch._foreach_add_(avg, torch._foreach_mul(cur, 1.0 - d_here))
        self.n_averaged += 1
