"""Models, chosen by ``MODEL.NAME`` through :func:`build_model`."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# MODEL.NAME -> module under higherpose.models that defines get_pose_net(cfg, is_train)
MODELS = {"pose_higher_hrnet": "pose_higher_hrnet", "higher_pose": "higher_pose"}


def build_model(cfg: Any, is_train: bool) -> nn.Module:
    """``get_pose_net(cfg, is_train)`` of the module named by ``MODEL.NAME``."""
    if cfg.MODEL.NAME not in MODELS:
        raise ValueError(f"MODEL.NAME = {cfg.MODEL.NAME!r}: unknown model; choose one of {sorted(MODELS)}")
    module = importlib.import_module(f"{__name__}.{MODELS[cfg.MODEL.NAME]}")
    return module.get_pose_net(cfg, is_train)


__all__ = ["build_model", "MODELS"]
