"""The network for evaluation, inference or export: built from the config, its weights loaded strictly,
in eval mode on its device. One loader for ``tools/valid.py``, ``oracle.py``, ``demo.py`` and
``export_onnx.py``, so the same ``TEST.MODEL_FILE`` means the same thing everywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from higherpose.models import build_model
from higherpose.models.fuse import fold_batchnorm
from higherpose.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_pose_state_dict
from higherpose.utils.distributed import resolve_device, set_tf32

logger = logging.getLogger(__name__)

# Looked for in the experiment's output folder when TEST.MODEL_FILE is empty (ours, then HigherHRNet's names).
DEFAULT_WEIGHTS = ("model_best.pth", "final_state.pth", "model_best.pth.tar", "final_state.pth.tar")


def find_weights(model_file: str, output_dir: str | None = None) -> str:
    """``TEST.MODEL_FILE`` when given, else the first of :data:`DEFAULT_WEIGHTS` in ``output_dir``.

    Raises :class:`CheckpointError` when ``model_file`` does not exist, or when it is empty and no
    default file is in ``output_dir`` (``output_dir`` None: no folder to look in).
    """
    if model_file:
        if not os.path.isfile(model_file):
            raise CheckpointError(f"TEST.MODEL_FILE = {model_file!r}: file not found")
        return model_file
    if output_dir is None:
        raise CheckpointError(
            "TEST.MODEL_FILE is not set: pass the weights as `TEST.MODEL_FILE path/to/model.pth` after the "
            "options (or --random-weights for a smoke run with an untrained model)"
        )
    for name in DEFAULT_WEIGHTS:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            return path
    raise CheckpointError(
        f"no weights: TEST.MODEL_FILE is empty and none of {', '.join(DEFAULT_WEIGHTS)} exists in {output_dir} "
        "(pass TEST.MODEL_FILE path/to/weights.pth)"
    )


def _warn_untrained(model_name: str) -> None:
    # On stderr, not through logging: the scripts that allow random weights configure no logging, and
    # a user must not mistake an untrained network's output for results.
    bar = "!" * 78
    print(
        f"{bar}\n!! WARNING: --random-weights: no TEST.MODEL_FILE, using an UNTRAINED {model_name}.\n"
        f"!! Its outputs are meaningless; this only exercises the pipeline.\n{bar}",
        file=sys.stderr,
    )


def load_eval_model(
    cfg: Any,
    output_dir: str | None = None,
    *,
    random_weights: bool = False,
    device: str | torch.device | None = None,
    build: Callable[..., nn.Module] | None = None,
    log: logging.Logger | None = None,
    optimize: bool = False,
) -> tuple[nn.Module, str | None, torch.device]:
    """Apply the ``CUDNN.*`` and ``TF32`` flags, build the network and load its weights strictly, in eval mode.

    Args:
        cfg: the merged config (``MODEL.*``, ``TEST.MODEL_FILE``, ``DEVICE``, ``CUDNN.*``).
        output_dir: the experiment's output folder, searched for :data:`DEFAULT_WEIGHTS` when
            ``TEST.MODEL_FILE`` is empty; None: ``TEST.MODEL_FILE`` is required.
        random_weights: with ``TEST.MODEL_FILE`` empty, keep the untrained network (a loud warning on
            stderr) instead of looking for weights.
        device: where the model goes; None: ``DEVICE`` ('' = CUDA when available).
        build: the network's constructor ``(cfg, is_train) -> nn.Module`` (default
            :func:`~higherpose.models.build_model`, looked up when called).
        log: where the parameter count and the weights path are logged (default: this module's logger).
        optimize: a network for inference only, faster with the same outputs up to float rounding:
            BatchNorm folded into the convolutions (:func:`~higherpose.models.fuse.fold_batchnorm`;
            its state dict has no BatchNorm keys) and, with ``TEST.CHANNELS_LAST``, channels_last.

    Returns:
        ``(model, weights path or None for random weights, device)``.

    Raises:
        CheckpointError: no weights found, an unreadable file, or weights that do not fit the network.
    """
    log = log or logger
    torch.backends.cudnn.benchmark = cfg.CUDNN.BENCHMARK
    torch.backends.cudnn.deterministic = cfg.CUDNN.DETERMINISTIC
    torch.backends.cudnn.enabled = cfg.CUDNN.ENABLED
    tf32 = set_tf32(cfg.TF32)
    device = resolve_device(cfg.DEVICE) if device is None else torch.device(device)
    if device.type == "cuda":
        log.info("=> %s", tf32)
    model = (build or build_model)(cfg, is_train=False)
    log.info("=> %s: %.2fM parameters", cfg.MODEL.NAME, sum(p.numel() for p in model.parameters()) / 1e6)
    weights = None
    if cfg.TEST.MODEL_FILE or not random_weights:
        weights = find_weights(cfg.TEST.MODEL_FILE, output_dir)
        log.info("=> loading model from %s", weights)
        load_pose_state_dict(model, extract_state_dict(load_file(weights)), strict=True, source=weights)
    else:
        _warn_untrained(cfg.MODEL.NAME)
    model = model.to(device).eval()
    if optimize:  # after the weights are loaded: the folded model has no BatchNorm keys
        log.info("=> %d BatchNorm layers folded into their convolutions", fold_batchnorm(model))
        if cfg.TEST.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
    return model, weights, device
