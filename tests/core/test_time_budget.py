"""TRAIN.TIME_BUDGET's arithmetic: the share of the time left per epoch and when an epoch must stop."""

from __future__ import annotations

import math

import pytest

from higherpose.core.time_budget import EpochTimer, epoch_allowance


def test_epoch_allowance_shares_what_is_left() -> None:
    assert math.isinf(epoch_allowance(0, 0, 14))  # no budget
    assert epoch_allowance(900, 0, 14) == pytest.approx(900 / 14)
    assert epoch_allowance(900, 300, 2) == pytest.approx(300)  # the epochs left share what is left
    assert epoch_allowance(900, 1000, 3) == 0.0  # overspent: nothing left, not negative
    assert epoch_allowance(900, 0, 0) == 900  # resumed at the end: the last share is all of it


def fake_clock(step_s: float):
    """A clock that advances ``step_s`` every time it is read."""
    now = [-step_s]

    def clock() -> float:
        now[0] += step_s
        return now[0]

    return clock


def test_epoch_timer_stops_before_the_step_that_would_overrun() -> None:
    # 2 s per reading = per step (one reading per step); 10 s allowed: steps 0..4 fit (10 s), step 5 not
    timer = EpochTimer(10.0, clock=fake_clock(2.0))
    last = [timer.last_step(i) for i in range(8)]
    assert last.index(True) == 4  # step 4 is the last: after it 10 s are used
    assert timer.time_left() == 0.0


def test_epoch_timer_without_budget_never_stops_and_first_step_runs() -> None:
    timer = EpochTimer(math.inf, clock=fake_clock(100.0))
    assert not any(timer.last_step(i) for i in range(50))
    assert math.isinf(timer.time_left())
    assert not EpochTimer(1.0, clock=fake_clock(100.0)).last_step(0)  # no step time known yet: go on
    assert EpochTimer(0.0, clock=fake_clock(100.0)).last_step(0)  # budget spent: one step, then stop
