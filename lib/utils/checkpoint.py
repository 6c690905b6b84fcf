"""Checkpoint I/O: atomic saves, tolerant pose-checkpoint loading, ImageNet HRNet initialisation."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from higherpose.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

# Prefixes that wrappers put in front of the bare model's keys: DDP/DataParallel ('module.') and
# HigherHRNet's fp16 ``nn.Sequential(tofp16(), model, tofp32())`` ('1.'), possibly both.
_WRAPPER_PREFIXES = ("module.", "1.")
_SCALE_PREFIX = "conv_scale_layers."  # SWAHR's scale branches (LOSS.HEATMAPS_LOSS_TYPE 'swahr')
_SAT_VERSION_KEY = "sat_head.head_version"  # in checkpoints of the SAT head from MODEL.SAT.VERSION 2 on


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model; the message says why."""


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash mid-write never
    leaves a truncated file at ``path`` (the previous one stays intact)."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def load_file(path: str) -> Any:
    """``torch.load`` on the CPU with a clear error for a missing or truncated file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: our training checkpoints hold the config (a yacs CfgNode).
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a truncated zip / pickle
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file?): {err}") from err


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint: a bare state dict, or ours / HigherHRNet's
    training checkpoint (``'model'`` / ``'state_dict'`` / ``'best_state_dict'``)."""
    if isinstance(obj, Mapping):
        for key in ("model", "best_state_dict", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError("no model weights found (expected a state dict or a dict with 'model'/'state_dict')")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` and ``1.`` wrapper prefixes (repeatedly, in any order) from every key,
    but only when all keys carry the prefix, so a genuine key like ``1.weight`` is never changed."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def load_pose_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> tuple[list[str], list[str]]:
    """Load pose weights (ours or official HigherHRNet) into ``model``.

    Accepts ``module.`` / ``1.`` prefixes and fp16 tensors (cast to the model's dtype). With
    ``strict``, any missing or unexpected key or shape difference raises :class:`CheckpointError`
    listing them; otherwise matching tensors are loaded and the lists are returned and logged.
    """
    sd = strip_prefixes(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]  # fmt: skip
    if strict and (missing or unexpected or shapes):
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}:\n"
            + _describe("missing keys", missing)
            + _describe("unexpected keys", unexpected)
            + _describe("shape differences", shapes)
            + _scale_branch_hint(missing, unexpected)
            + _sat_version_hint(missing, unexpected)
            + "(load non-strictly to take only the matching tensors)"
        )
    bad = {s.split(":")[0] for s in shapes}
    loadable = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()
                if k in own and k not in bad}  # fmt: skip
    model.load_state_dict(loadable, strict=False)
    if missing or unexpected or shapes:
        logger.warning(
            "%s: loaded %d tensors; %d missing, %d unexpected, %d shape differences",
            source, len(loadable), len(missing), len(unexpected), len(shapes),
        )  # fmt: skip
    return missing, unexpected


def _scale_branch_hint(missing: list[str], unexpected: list[str]) -> str:
    """What SWAHR's scale branches (``conv_scale_layers.*``) on one side only mean for the config."""
    if any(k.startswith(_SCALE_PREFIX) for k in unexpected):
        return "  the checkpoint has SWAHR's scale branches: set LOSS.HEATMAPS_LOSS_TYPE swahr\n"
    if any(k.startswith(_SCALE_PREFIX) for k in missing):
        return "  the model has SWAHR's scale branches (LOSS.HEATMAPS_LOSS_TYPE swahr), the checkpoint has none\n"
    return ""


def _sat_version_hint(missing: list[str], unexpected: list[str]) -> str:
    """What a SAT head version mark (``sat_head.head_version``) on one side only means for the config."""
    if _SAT_VERSION_KEY in unexpected:
        return "  the checkpoint holds the SAT head of MODEL.SAT.VERSION 2 (the default): drop MODEL.SAT.VERSION 1\n"
    if _SAT_VERSION_KEY in missing and len([k for k in missing if k.startswith("sat_head.")]) == 1:
        return (
            "  the checkpoint holds the earlier SAT head: set MODEL.SAT.VERSION 1 to load it with its behaviour "
            "(docs/higher_pose.md)\n"
        )
    return ""


def _describe(title: str, items: list[str], limit: int = 20) -> str:
    if not items:
        return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more + "\n"


def load_imagenet_weights(
    model: nn.Module, path: str, pretrained_layers: Iterable[str] = ("*",), verbose: bool = True
) -> list[str]:
    """Initialise ``model`` from an ImageNet HRNet classification checkpoint.

    Keeps a tensor when its first name component is in ``pretrained_layers`` (or that list starts
    with ``'*'``) and the model has a tensor of that name and shape; classifier keys
    (``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``) and stage-4 fuse rows
    this model lacks are skipped. Returns the loaded keys and logs what was taken and skipped.
    """
    sd = strip_prefixes(extract_state_dict(load_file(path)))
    layers = list(pretrained_layers)
    take_all = bool(layers) and layers[0] == "*"
    own = model.state_dict()
    loaded, skipped = {}, []
    for name, tensor in sd.items():
        if (take_all or name.split(".")[0] in layers) and name in own and own[name].shape == tensor.shape:
            loaded[name] = tensor.to(own[name].dtype) if tensor.is_floating_point() else tensor
        else:
            skipped.append(name)
    model.load_state_dict(loaded, strict=False)
    logger.info("=> init %d tensors from %s (%d skipped)", len(loaded), path, len(skipped))
    if verbose and skipped:
        groups = sorted({".".join(k.split(".")[:2]) for k in skipped})
        logger.info("=> skipped (not in model or not in PRETRAINED_LAYERS): %s", ", ".join(groups))
    return sorted(loaded)
