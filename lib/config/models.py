"""Model-specific defaults: ``MODEL.SAT`` (:data:`SAT_HEAD`, merged by :mod:`.default`, with its
checks :func:`sat_head_problem`) and HigherHRNet's ``POSE_HIGHER_RESOLUTION_NET``.

HigherHRNet ships ``POSE_HIGHER_RESOLUTION_NET`` here but never merges it (its ``MODEL.EXTRA`` is an
empty ``new_allowed`` node filled by the YAML).  We keep the same table for documentation and for
``tools/`` that want a W32 architecture without a YAML.
"""

from __future__ import annotations

import math
from typing import Any

from yacs.config import CfgNode as CN

# NEW: structure-aware transformer (SAT) head of the higher_pose model (docs/higher_pose.md)
SAT_HEAD = CN()
SAT_HEAD.D_MODEL = 64  # token width d
SAT_HEAD.HEADS = 4  # attention heads (D_MODEL must divide by HEADS)
SAT_HEAD.PIXEL_LAYERS = 3  # pre-LN encoder layers over the pixel tokens
SAT_HEAD.KPT_LAYERS = 3  # keypoint-structure decoder layers (0 = no keypoint tokens)
SAT_HEAD.FFN_RATIO = 4  # FFN hidden width = FFN_RATIO * D_MODEL
SAT_HEAD.TOKEN_STRIDE = 8  # pixel-token stride w.r.t. the input: 8 or 16
SAT_HEAD.GRAPH_BIAS = True  # learned self-attention bias per skeleton hop distance
SAT_HEAD.MAX_HOP = 8  # hop distances are clamped to this value
SAT_HEAD.SYM_BIAS = True  # learned self-attention bias between left/right joint pairs
SAT_HEAD.BACK_PROJECT = True  # inject keypoint tokens back into the pixel features
SAT_HEAD.DYN_HEATMAP = True  # dynamic per-keypoint 1x1 heatmap term from the tokens
SAT_HEAD.DROPOUT = 0.0  # dropout in attention and FFN
SAT_HEAD.VERSION = 2  # 1 = the earlier head (offset residual, prior before the image), for its checkpoints
SAT_HEAD.RESIDUAL = True  # add the upsampled pixel tokens to the 1/4 features (False: dynamic heatmap only)
SAT_HEAD.PIXEL_MIXER = "attention"  # or 'conv': a depthwise 7x7 conv in place of the pixel attention
SAT_HEAD.LR_MULT = 1.0  # the head's learning rate is TRAIN.LR x LR_MULT (schedule and warm-up alike)

SAT_VERSIONS = (1, 2)
SAT_PIXEL_MIXERS = ("attention", "conv")


def sat_head_problem(sat: CN) -> tuple[str, Any, str] | None:
    """The first inconsistent ``MODEL.SAT`` value as ``(key, value, why)``, or None."""
    if sat.D_MODEL % sat.HEADS:
        return "MODEL.SAT.D_MODEL", sat.D_MODEL, f"must be divisible by MODEL.SAT.HEADS = {sat.HEADS}"
    if sat.D_MODEL % 4:
        return "MODEL.SAT.D_MODEL", sat.D_MODEL, "must be divisible by 4 (2-D sine encoding)"
    if sat.TOKEN_STRIDE not in (8, 16):
        return "MODEL.SAT.TOKEN_STRIDE", sat.TOKEN_STRIDE, "choose 8 or 16"
    if sat.VERSION not in SAT_VERSIONS:
        return "MODEL.SAT.VERSION", sat.VERSION, f"choose one of {SAT_VERSIONS} (1: the earlier head)"
    if sat.PIXEL_MIXER not in SAT_PIXEL_MIXERS:
        return "MODEL.SAT.PIXEL_MIXER", sat.PIXEL_MIXER, f"choose one of {SAT_PIXEL_MIXERS}"
    if not (math.isfinite(sat.LR_MULT) and sat.LR_MULT > 0):
        return "MODEL.SAT.LR_MULT", sat.LR_MULT, "must be a finite number > 0"
    if not sat.RESIDUAL:
        if sat.BACK_PROJECT and sat.KPT_LAYERS > 0:
            return "MODEL.SAT.BACK_PROJECT", True, "only changes the residual: set it False with RESIDUAL False"
        if not sat.DYN_HEATMAP:
            return "MODEL.SAT.DYN_HEATMAP", False, "RESIDUAL False leaves the dynamic heatmap as the head's only output"
        if sat.KPT_LAYERS <= 0:
            return "MODEL.SAT.KPT_LAYERS", sat.KPT_LAYERS, "RESIDUAL False needs keypoint tokens (dynamic heatmap)"
    return None


POSE_HIGHER_RESOLUTION_NET = CN()
POSE_HIGHER_RESOLUTION_NET.PRETRAINED_LAYERS = ["*"]
POSE_HIGHER_RESOLUTION_NET.STEM_INPLANES = 64
POSE_HIGHER_RESOLUTION_NET.FINAL_CONV_KERNEL = 1

POSE_HIGHER_RESOLUTION_NET.STAGE2 = CN()
POSE_HIGHER_RESOLUTION_NET.STAGE2.NUM_MODULES = 1
POSE_HIGHER_RESOLUTION_NET.STAGE2.NUM_BRANCHES = 2
POSE_HIGHER_RESOLUTION_NET.STAGE2.NUM_BLOCKS = [4, 4]
POSE_HIGHER_RESOLUTION_NET.STAGE2.NUM_CHANNELS = [32, 64]
POSE_HIGHER_RESOLUTION_NET.STAGE2.BLOCK = "BASIC"
POSE_HIGHER_RESOLUTION_NET.STAGE2.FUSE_METHOD = "SUM"

POSE_HIGHER_RESOLUTION_NET.STAGE3 = CN()
POSE_HIGHER_RESOLUTION_NET.STAGE3.NUM_MODULES = 4
POSE_HIGHER_RESOLUTION_NET.STAGE3.NUM_BRANCHES = 3
POSE_HIGHER_RESOLUTION_NET.STAGE3.NUM_BLOCKS = [4, 4, 4]
POSE_HIGHER_RESOLUTION_NET.STAGE3.NUM_CHANNELS = [32, 64, 128]
POSE_HIGHER_RESOLUTION_NET.STAGE3.BLOCK = "BASIC"
POSE_HIGHER_RESOLUTION_NET.STAGE3.FUSE_METHOD = "SUM"

POSE_HIGHER_RESOLUTION_NET.STAGE4 = CN()
POSE_HIGHER_RESOLUTION_NET.STAGE4.NUM_MODULES = 3
POSE_HIGHER_RESOLUTION_NET.STAGE4.NUM_BRANCHES = 4
POSE_HIGHER_RESOLUTION_NET.STAGE4.NUM_BLOCKS = [4, 4, 4, 4]
POSE_HIGHER_RESOLUTION_NET.STAGE4.NUM_CHANNELS = [32, 64, 128, 256]
POSE_HIGHER_RESOLUTION_NET.STAGE4.BLOCK = "BASIC"
POSE_HIGHER_RESOLUTION_NET.STAGE4.FUSE_METHOD = "SUM"

POSE_HIGHER_RESOLUTION_NET.DECONV = CN()
# Official typo kept for fidelity: the real key read by the model is NUM_DECONVS.
POSE_HIGHER_RESOLUTION_NET.DECONV.NUM_DCONVS = 2
POSE_HIGHER_RESOLUTION_NET.DECONV.NUM_CHANNELS = [32, 32]
POSE_HIGHER_RESOLUTION_NET.DECONV.NUM_BASIC_BLOCKS = 4
POSE_HIGHER_RESOLUTION_NET.DECONV.KERNEL_SIZE = [4, 4]
POSE_HIGHER_RESOLUTION_NET.DECONV.CAT_OUTPUT = [True, True]

MODEL_EXTRAS = {"pose_higher_hrnet": POSE_HIGHER_RESOLUTION_NET}
