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
import os
import pprint
import sys
from collections import OrderedDict

from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.core.eval_model import load_eval_model
from higherpose.core.evaluation import print_name_value, run_validation
from higherpose.dataset.annotations import AnnotationError
from higherpose.models import build_model
from higherpose.utils.atomic import write_json_atomic
from higherpose.utils.checkpoint import CheckpointError
from higherpose.utils.logging import create_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test keypoints network")
    add_overrides_argument(add_cfg_argument(parser))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> OrderedDict:
    args = parse_args(argv)
    cfg = default_cfg.clone()
    update_config(cfg, args)

    logger, final_output_dir, _ = create_logger(cfg, args.cfg, "valid")
    logger.info(pprint.pformat(vars(args)))
    logger.info(cfg)

    model, weights, device = load_eval_model(cfg, final_output_dir, build=build_model, log=logger)
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
    except (ConfigError, CheckpointError, AnnotationError) as err:
        sys.exit(f"valid.py: {err}")
