"""Test-time folding of BatchNorm into the convolution before it (``torch.nn.utils.fusion``).

In eval mode ``bn(conv(x))`` is an affine map per output channel, so it equals one convolution with
scaled weights and a bias. Folded: every ``convN`` / ``bnN`` pair of a module (HRNet's blocks and
stem, named as in the official code, which applies ``bnN`` right after ``convN``) and every
``Conv2d`` or ``ConvTranspose2d`` followed by ``BatchNorm2d`` in an ``nn.Sequential`` (transitions,
fuse layers, downsampling, the deconvolution heads). The BatchNorm becomes ``nn.Identity``: the
state dict loses its keys, so fold a model only after loading its weights, and only for inference.
"""

from __future__ import annotations

import re

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> int:
    """Fold in place (``model`` must be in eval mode); returns the number of BatchNorms folded."""
    if model.training:
        raise ValueError("fold_batchnorm: the model must be in eval mode (BatchNorm on running statistics)")
    folded = 0
    for module in list(model.modules()):
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                conv, bn = children[a], children[b]
                if _foldable(conv, bn):
                    transpose = type(conv) is nn.ConvTranspose2d
                    setattr(module, a, fuse_conv_bn_eval(conv, bn, transpose=transpose))
                    setattr(module, b, nn.Identity())
                    folded += 1
            continue
        for name, conv in children.items():
            match = re.fullmatch(r"conv(\d+)", name)
            bn = children.get(f"bn{match[1]}") if match else None
            if bn is not None and _foldable(conv, bn):
                setattr(module, name, fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{match[1]}", nn.Identity())
                folded += 1
    return folded


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) in (nn.Conv2d, nn.ConvTranspose2d)
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.num_features == conv.out_channels
    )
