"""Evaluate a pose model on the test split (HigherHRNet's ``tools/valid.py`` command line).

    python tools/valid.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml \\
        TEST.MODEL_FILE models/pose_coco/pose_higher_hrnet_w32_512.pth [KEY VALUE ...]

Without ``TEST.MODEL_FILE`` the weights come from the experiment's output folder
(``OUTPUT_DIR/<dataset>/<model>/<cfg name>/model_best.pth``, else ``final_state.pth``). Writes
``results/keypoints_<split>_results.json``, ``metrics_<split>.json`` and a ``valid_*.log`` there, and
prints HigherHRNet's markdown AP table. ``DEVICE`` picks the device ('' = CUDA when available).
"""

from __future__ import annotations

import argparse
import logging
import os
import pprint
import sys
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.core.evaluation import print_name_value, run_validation
from higherpose.models import build_model
from higherpose.utils.atomic import write_json_atomic
from higherpose.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_pose_state_dict
from higherpose.utils.distributed import resolve_device
from higherpose.utils.logging import create_logger

# Looked for in the experiment's output folder when TEST.MODEL_FILE is empty (ours, then HigherHRNet's names).
DEFAULT_WEIGHTS = ("model_best.pth", "final_state.pth", "model_best.pth.tar", "final_state.pth.tar")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test keypoints network")
    parser.add_argument("--cfg", help="experiment configure file name", required=True, type=str)
    parser.add_argument(
        "opts", help="Modify config options using the command-line", default=None, nargs=argparse.REMAINDER
    )
    return parser.parse_args(argv)


def find_weights(model_file: str, output_dir: str) -> str:
    """TEST.MODEL_FILE when given, else the first of DEFAULT_WEIGHTS in ``output_dir``."""
    if model_file:
        if not os.path.isfile(model_file):
            raise CheckpointError(f"TEST.MODEL_FILE = {model_file!r}: file not found")
        return model_file
    for name in DEFAULT_WEIGHTS:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            return path
    raise CheckpointError(
        f"no weights: TEST.MODEL_FILE is empty and none of {', '.join(DEFAULT_WEIGHTS)} exists in {output_dir} "
        "(pass TEST.MODEL_FILE path/to/weights.pth)"
    )


def load_eval_model(cfg: Any, output_dir: str, logger: logging.Logger) -> tuple[nn.Module, str, torch.device]:
    """cuDNN flags, the device (``DEVICE``) and the model with its weights (:func:`find_weights`), in
    eval mode. Returns ``(model, weights path, device)``."""
    torch.backends.cudnn.benchmark = cfg.CUDNN.BENCHMARK
    torch.backends.cudnn.deterministic = cfg.CUDNN.DETERMINISTIC
    torch.backends.cudnn.enabled = cfg.CUDNN.ENABLED
    device = resolve_device(cfg.DEVICE)
    model = build_model(cfg, is_train=False)
    logger.info("=> %s: %.2fM parameters", cfg.MODEL.NAME, sum(p.numel() for p in model.parameters()) / 1e6)
    weights = find_weights(cfg.TEST.MODEL_FILE, output_dir)
    logger.info("=> loading model from %s", weights)
    load_pose_state_dict(model, extract_state_dict(load_file(weights)), strict=True, source=weights)
    return model.to(device).eval(), weights, device


def main(argv: list[str] | None = None) -> OrderedDict:
    args = parse_args(argv)
    cfg = default_cfg.clone()
    update_config(cfg, args)

    logger, final_output_dir, _ = create_logger(cfg, args.cfg, "valid")
    logger.info(pprint.pformat(vars(args)))
    logger.info(cfg)

    model, weights, device = load_eval_model(cfg, final_output_dir, logger)
    logger.info("=> evaluating %s/%s on %s", cfg.DATASET.ROOT, cfg.DATASET.TEST, device)
    metrics, _ = run_validation(cfg, model, final_output_dir, logger)
    if metrics:
        print_name_value(logger, metrics, cfg.MODEL.NAME)
        path = os.path.join(final_output_dir, f"metrics_{cfg.DATASET.TEST}.json")
        write_json_atomic({"weights": weights, "metrics": metrics}, path, indent=2)
        logger.info("=> wrote %s", path)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError) as err:
        sys.exit(f"valid.py: {err}")
