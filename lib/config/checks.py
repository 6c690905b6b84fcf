"""Checks of config values that :func:`higherpose.config.default.check_config` delegates: the error
type, SWAHR's warm-up and ``TF32`` (the SAT head's are in :mod:`higherpose.config.models`)."""

from __future__ import annotations

from typing import Any

TF32_MODES = ("conv", "all", "none")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


def fail(source: str, key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{source}: {key} = {value!r}: {why}")


def check_warmup_linear(cfg: Any, source: str) -> None:
    if not 0 <= cfg.TRAIN.WARM_UP_EPOCH < cfg.TRAIN.END_EPOCH:
        fail(source, "TRAIN.WARM_UP_EPOCH", cfg.TRAIN.WARM_UP_EPOCH, "must be in [0, TRAIN.END_EPOCH)")
    if cfg.TRAIN.WARMUP_ITERS > 0:  # two warm-ups would multiply
        fail(source, "TRAIN.WARMUP_ITERS", cfg.TRAIN.WARMUP_ITERS, "must be 0 with TRAIN.LR_SCHEDULER 'warmup_linear'")


def check_gpu_keys(cfg: Any, source: str) -> None:
    """``TF32``: which float32 work may run in TF32 on tensor-core GPUs."""
    if cfg.TF32 not in TF32_MODES:
        fail(source, "TF32", cfg.TF32, f"choose one of {TF32_MODES}")
