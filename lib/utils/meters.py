"""Running averages, time-left estimates and clock strings for the training log and progress lines."""

from __future__ import annotations

import math


class AverageMeter:
    """The latest value and the running (count-weighted) average, as HigherHRNet's ``AverageMeter``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count if self.count else 0.0


def format_seconds(seconds: float) -> str:
    """``3725.4`` → ``'1:02:05'``; days are written as ``'2d 03:04:05'``."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def format_clock(seconds: float) -> str:
    """``65`` → ``'1:05'``, ``3725`` → ``'1:02:05'`` (progress lines); ``'?'`` when not finite."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(seconds_per_step: float, steps_left_in_epoch: int, epochs_left_after: int, steps_per_epoch: int):
    """Time left in this epoch and in the whole run, from the average step time.

    Returns ``(epoch_eta, run_eta)`` in seconds; ``epochs_left_after`` counts the epochs after the current one.
    """
    epoch_eta = seconds_per_step * max(0, steps_left_in_epoch)
    run_eta = epoch_eta + seconds_per_step * steps_per_epoch * max(0, epochs_left_after)
    return epoch_eta, run_eta
