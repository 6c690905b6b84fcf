"""Checks of config values that :func:`higherpose.config.default.check_config` delegates: the error
type, the SAT head's sizes, SWAHR's warm-up and ``TF32``."""

from __future__ import annotations

from typing import Any

TF32_MODES = ("conv", "all", "none")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


def _fail(source: str, key: str, value: Any, why: str) -> None:
    raise ConfigError(f"{source}: {key} = {value!r}: {why}")


def _check_warmup_linear(cfg: Any, source: str) -> None:
    if not 0 <= cfg.TRAIN.WARM_UP_EPOCH < cfg.TRAIN.END_EPOCH:
        _fail(source, "TRAIN.WARM_UP_EPOCH", cfg.TRAIN.WARM_UP_EPOCH, "must be in [0, TRAIN.END_EPOCH)")
    if cfg.TRAIN.WARMUP_ITERS > 0:  # two warm-ups would multiply
        _fail(source, "TRAIN.WARMUP_ITERS", cfg.TRAIN.WARMUP_ITERS, "must be 0 with TRAIN.LR_SCHEDULER 'warmup_linear'")


def check_sat(cfg: Any, source: str) -> None:
    """``MODEL.SAT``: the token width splits into the heads and the 2-D sine encoding."""
    sat = cfg.MODEL.SAT
    if sat.D_MODEL % sat.HEADS:
        _fail(source, "MODEL.SAT.D_MODEL", sat.D_MODEL, f"must be divisible by MODEL.SAT.HEADS = {sat.HEADS}")
    if sat.D_MODEL % 4:
        _fail(source, "MODEL.SAT.D_MODEL", sat.D_MODEL, "must be divisible by 4 (2-D sine encoding)")
    if sat.TOKEN_STRIDE not in (8, 16):
        _fail(source, "MODEL.SAT.TOKEN_STRIDE", sat.TOKEN_STRIDE, "choose 8 or 16")


def check_gpu_keys(cfg: Any, source: str) -> None:
    """``TF32``: which float32 work may run in TF32 on tensor-core GPUs."""
    if cfg.TF32 not in TF32_MODES:
        _fail(source, "TF32", cfg.TF32, f"choose one of {TF32_MODES}")
