"""Where the AP goes: the same heatmaps grouped by the tags and by the ground truth.

    python tools/oracle.py --cfg experiments/synthetic/higher_pose_tiny.yaml \\
        TEST.MODEL_FILE output/quickstart/.../final_state.pth [KEY VALUE ...]

Runs valid.py's test path (flip, multi-scale and every other ``TEST.*`` key of the config) once per
test image and groups the aggregated heatmaps twice: by the tags, which is exactly what valid.py
reports, and by the ground truth (:func:`higherpose.studies.oracle.match_to_ground_truth`: each labelled
joint takes the nearest detected candidate of its type, one-to-one). A small gap means the tags
group well and the heatmaps limit the AP; a large one, that grouping does. Then, from the same
ground-truth matching, a table per joint type and person size: the share of labelled joints found,
the median and 90th-percentile error in image pixels, and the share that COCO's keypoint similarity
scores 0.5 or more (which joints the heatmaps miss or misplace). Prints the tables and writes
``oracle_<split>.json`` (weights, both metric sets, the joint table) to the experiment's output folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

from higherpose.apis.eval_model import load_eval_model
from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.dataset.annotations import AnnotationError
from higherpose.studies.oracle import compare_groupings
from higherpose.utils.atomic import write_json_atomic
from higherpose.utils.checkpoint import CheckpointError
from higherpose.utils.logging import create_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Group the test heatmaps by the tags and by the ground truth")
    add_overrides_argument(add_cfg_argument(parser))
    return parser.parse_args(argv)


def joint_table(summary: list[dict]) -> list[str]:
    """:func:`summarize_errors` output as markdown lines."""
    lines = ["| joints | labelled | found | median error (px) | p90 error (px) | similarity >= 0.5 |", "|---" * 6 + "|"]

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for r in summary:
        cells = [cell(r["found"], 3), cell(r["median_px"], 2), cell(r["p90_px"], 2), cell(r["ks50"], 3)]
        lines.append(f"| {r['name']} | {r['labelled']} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict[str, OrderedDict]:
    args = parse_args(argv)
    cfg = default_cfg.clone()
    update_config(cfg, args)
    logger, final_output_dir, _ = create_logger(cfg, args.cfg, "oracle")
    model, weights, device = load_eval_model(cfg, final_output_dir, log=logger, optimize=True)
    metrics, joints, ann_file, images = compare_groupings(cfg, model, device, logger)
    keys = list(metrics["tags"])
    lines = ["| grouping | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |" for name, m in metrics.items()]
    lines += ["", "Joints matched to the ground truth (errors in image pixels, of the joints found):"]
    for line in lines + joint_table(joints):
        logger.info(line)
    path = os.path.join(final_output_dir, f"oracle_{cfg.DATASET.TEST}.json")
    payload = {"weights": weights, "annotations": ann_file, "images": images, **metrics, "joints": joints}
    write_json_atomic(payload, path, indent=2)
    logger.info("=> wrote %s", path)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, CheckpointError, AnnotationError) as err:
        sys.exit(f"oracle.py: {err}")
