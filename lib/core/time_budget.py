"""``TRAIN.TIME_BUDGET``: at most so many minutes of training, on whatever machine runs it.

The schedule stays the config's (epochs, ``LR_STEP`` milestones, warm-up steps); only the length of
each epoch changes. Each epoch may use an equal share of the time still left (its own included), so
an epoch that ran short (a slow step, a loader that ran out) leaves its time to the later ones, and
the LR drop of ``LR_STEP`` still comes for the same last fraction of the training time. A budget
never adds steps: a fast machine trains the config's full schedule.

A budgeted run is *not* reproducible from machine to machine (its number of steps is the machine's);
the training log says how many steps each epoch took. The quick start uses it so that a newcomer's
slow laptop trains for 15 minutes, not 40.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def _clock() -> float:
    return time.perf_counter()


def epoch_allowance(budget_s: float, used_s: float, epochs_left: int) -> float:
    """Seconds the current epoch may train: what is left of ``budget_s`` after ``used_s``, shared
    equally by the ``epochs_left`` epochs (the current one included). ``inf`` when ``budget_s <= 0``."""
    if budget_s <= 0:
        return math.inf
    return max(0.0, budget_s - used_s) / max(1, epochs_left)


class EpochTimer:
    """Tells the training loop when the step it is starting must be the epoch's last.

    ``allowance_s``: from :func:`epoch_allowance`; ``clock``: seconds (tests pass a fake one).
    """

    def __init__(self, allowance_s: float, clock: Callable[[], float] | None = None):
        self.allowance_s = allowance_s
        self._clock = clock or _clock
        self.start = self._clock()

    def elapsed(self) -> float:
        return self._clock() - self.start

    def last_step(self, steps_done: int) -> bool:
        """Called as step ``steps_done`` (0-based) starts: True when, at the epoch's average step time
        so far, the step after this one would end past the allowance. Every epoch takes at least one
        step (so the schedule still moves on when the budget is spent); its first is the last only then."""
        if math.isinf(self.allowance_s):
            return False
        if steps_done == 0:
            return self.allowance_s <= 0
        elapsed = self.elapsed()
        per_step = elapsed / steps_done
        return elapsed + 2 * per_step > self.allowance_s

    def time_left(self) -> float:
        """Seconds of the allowance not yet used (``inf`` without a budget)."""
        return max(0.0, self.allowance_s - self.elapsed())
