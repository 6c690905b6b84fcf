"""Where the AP goes: the same heatmaps grouped by the tags and by the ground truth.

    python tools/oracle.py --cfg experiments/synthetic/higher_pose_tiny.yaml \\
        TEST.MODEL_FILE output/quickstart/.../final_state.pth [KEY VALUE ...]

Runs valid.py's test path (flip, multi-scale and every other ``TEST.*`` key of the config) once per
test image and groups the aggregated heatmaps twice: by the tags, which is exactly what valid.py
reports, and by the ground truth (:func:`higherpose.core.oracle.match_to_ground_truth`: each labelled
joint takes the nearest detected candidate of its type, one-to-one). A small gap means the tags
group well and the heatmaps limit the AP; a large one, that grouping does. Then, from the same
ground-truth matching, a table per joint type and person size: the share of labelled joints found,
the median and 90th-percentile error in image pixels, and the share that COCO's keypoint similarity
scores 0.5 or more (which joints the heatmaps miss or misplace). Prints the tables and writes
``oracle_<split>.json`` (weights, both metric sets, the joint table) to the experiment's output folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.core.eval_model import load_eval_model
from higherpose.core.evaluation import evaluate_keypoints, poses_to_coco_results
from higherpose.core.group import HeatmapParser
from higherpose.core.inference import ImageMaps, group_by_tags, image_maps
from higherpose.core.oracle import as_grouping, keypoint_errors, match_to_ground_truth, summarize_errors
from higherpose.core.validation import unwrap_test_sample
from higherpose.dataset.annotations import AnnotationError
from higherpose.dataset.build import make_test_dataloader
from higherpose.utils.atomic import write_json_atomic
from higherpose.utils.checkpoint import CheckpointError
from higherpose.utils.logging import create_logger
from higherpose.utils.transforms import get_affine_transform

# A candidate farther than this fraction of the person's size (sqrt of its area) from the labelled
# joint is not given to that person.
RADIUS_FRACTION = 0.5
MIN_RADIUS = 2.0  # heatmap pixels, so that tiny persons can still take the candidate at their joint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Group the test heatmaps by the tags and by the ground truth")
    add_overrides_argument(add_cfg_argument(parser))
    return parser.parse_args(argv)


def labelled_people(anns: list[dict], num_joints: int) -> tuple[np.ndarray, np.ndarray]:
    """The non-crowd annotated persons -> ``(joints (P, K, 3) (x, y, visibility) in image pixels,
    areas (P,))``. A joint the annotations lack (the center joint of ``*_WITH_CENTER`` sets) is
    unlabelled."""
    people = [a for a in anns if not a.get("iscrowd", 0) and a.get("num_keypoints", 1) > 0 and "keypoints" in a]
    joints = np.zeros((len(people), num_joints, 3), np.float64)
    for p, a in enumerate(people):
        labelled = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
        joints[p, : len(labelled)] = labelled
    return joints, np.array([float(a.get("area", 0.0)) for a in people])


def gt_in_heatmap(joints: np.ndarray, areas: np.ndarray, maps: ImageMaps) -> tuple[np.ndarray, np.ndarray]:
    """Image 0's ground truth (:func:`labelled_people`) -> ``(joints (P, K, 3) in heatmap pixels,
    radius (P,) in heatmap pixels)``: how far a candidate may lie from the joint to be taken."""
    trans = get_affine_transform(maps.centers[0], maps.scales[0], 0, maps.heatmap_size)
    joints = joints.copy()
    joints[:, :, :2] = joints[:, :, :2] @ trans[:, :2].T + trans[:, 2]
    pixels_per_image_pixel = float(np.sqrt(abs(np.linalg.det(trans[:, :2]))))
    return joints, np.maximum(RADIUS_FRACTION * np.sqrt(areas) * pixels_per_image_pixel, MIN_RADIUS)


def compare_groupings(
    cfg: Any, model: nn.Module, device: torch.device, logger: logging.Logger
) -> tuple[dict[str, OrderedDict], list[dict], str, int]:
    """Group every test image's maps by the tags and by the ground truth; evaluate both.

    Returns ``({"tags": metrics, "ground truth": metrics}, joint table (:func:`summarize_errors` of
    the ground-truth matching), split annotation file, images evaluated)``.
    """
    loader, dataset = make_test_dataloader(cfg)
    if not dataset.coco.dataset.get("annotations"):
        raise ConfigError(f"{dataset.ann_file} has no annotations: ground-truth grouping needs a labelled split")
    ids = list(dataset.ids)
    total = min(len(ids), cfg.TEST.SUBSET) if cfg.TEST.SUBSET > 0 else len(ids)
    parser = HeatmapParser(cfg)
    results: dict[str, list[dict]] = {"tags": [], "ground truth": []}
    errors: list[np.ndarray] = []
    sigmas = np.asarray(dataset.spec.sigmas, np.float64)
    skipped = 0
    with torch.no_grad():
        for i, sample in enumerate(loader):
            if i >= total:
                break
            image, anns = unwrap_test_sample(sample)
            if image is None:
                skipped += 1
                continue
            maps = image_maps(cfg, model, [image], device)
            people, scores = group_by_tags(cfg, maps, parser)[0]  # exactly valid.py's poses
            results["tags"] += poses_to_coco_results(ids[i], people, scores)
            gt, areas = labelled_people(anns, maps.det.shape[1])
            joints, radius = gt_in_heatmap(gt, areas, maps)
            matched = match_to_ground_truth(maps.det[0], joints, radius, parser, cfg.TEST.ADJUST)
            matched = np.stack([maps.to_image(0, person) for person in matched]) if len(matched) else matched
            errors.append(keypoint_errors(matched, gt, areas, sigmas))
            poses, oracle_scores = as_grouping(matched)
            results["ground truth"] += poses_to_coco_results(ids[i], list(poses), oracle_scores)
            if (i + 1) % max(1, cfg.PRINT_FREQ) == 0:
                logger.info("oracle: %d / %d images", i + 1, total)
    if skipped:
        logger.warning("oracle: skipped %d unreadable images", skipped)
    image_ids = ids[:total] if total < len(ids) else None
    metrics = {
        name: evaluate_keypoints(
            dataset.ann_file,
            res,
            dataset.name,
            sigmas=dataset.spec.sigmas,
            image_ids=image_ids,
            category_ids=dataset.categories.ids,
        )
        for name, res in results.items()
    }
    rows = np.concatenate(errors) if errors else np.zeros((0, 5))
    return metrics, summarize_errors(rows, dataset.spec.joint_names), dataset.ann_file, total - skipped


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
