"""Ground-truth grouping: how much AP the tags cost.

The bottom-up papers (Newell et al.'s associative embedding, HigherHRNet) separate the two halves of
the problem by grouping the network's own joint detections with the ground truth instead of the
tags. :func:`group_by_ground_truth` does that on the aggregated test-time heatmaps: the same
candidates (NMS, top-k, ``TEST.DETECTION_THRESHOLD``) and the same sub-pixel adjustment as the tag
grouping, so the AP difference between the two is the cost of grouping by tags alone.
:func:`keypoint_errors` and :func:`summarize_errors` then say which joints the heatmaps miss or
misplace: per joint type and person size, the share found, the error in pixels and the share that
COCO's keypoint similarity scores 0.5 or more. :func:`compare_groupings` runs both groupings over a
test split (``tools/oracle.py``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from higherpose.config import ConfigError
from higherpose.core.evaluation import evaluate_keypoints, poses_to_coco_results
from higherpose.core.group import HeatmapParser
from higherpose.core.inference import ImageMaps, group_by_tags, image_maps
from higherpose.core.protocol import TestProtocol
from higherpose.core.validation import unwrap_test_sample
from higherpose.dataset.build import make_test_dataloader
from higherpose.utils.transforms import get_affine_transform


def match_to_ground_truth(
    det: torch.Tensor,
    gt_joints: np.ndarray,
    radius: np.ndarray,
    parser: HeatmapParser,
    adjust: bool = True,
) -> np.ndarray:
    """Give each ground-truth person the detected joints nearest to its own.

    det: (K, H, W) heatmaps of one image; gt_joints: (P, K, 3) ground truth (x, y, visibility) in
    heatmap pixels; radius: (P,) the farthest a candidate may lie from that person's joint, in
    heatmap pixels. For every joint type the candidates above the detection threshold are matched
    to the labelled joints one-to-one, minimising the total distance (Hungarian). Returns
    ``poses (P, K, 3)`` (x, y, value) in heatmap pixels, row ``p`` for ground-truth person ``p``;
    a joint that got no candidate is all zeros.
    """
    num_joints = det.shape[0]
    num_people = gt_joints.shape[0]
    poses = np.zeros((num_people, num_joints, 3), np.float32)
    if num_people == 0:
        return poses
    candidates = parser.top_k(det[None], det.new_zeros(1, *det.shape, 1))  # tags unused
    loc = candidates["loc_k"][0].astype(np.float64)  # (K, T, 2)
    val = candidates["val_k"][0]  # (K, T)
    # Candidate pixel i is centred at i under UDP; HigherHRNet's convention reads it as i + 0.5.
    centre = loc if parser.udp else loc + 0.5
    for k in range(num_joints):
        keep = np.flatnonzero(val[k] > parser.params.detection_threshold)
        labelled = np.flatnonzero(gt_joints[:, k, 2] > 0)
        if keep.size == 0 or labelled.size == 0:
            continue
        dist = np.linalg.norm(gt_joints[labelled, k, :2][:, None] - centre[k, keep][None], axis=2)  # (P_k, T_k)
        too_far = dist > radius[labelled, None]
        rows, cols = linear_sum_assignment(np.where(too_far, 1e9, dist))
        for r, c in zip(rows, cols):
            if not too_far[r, c]:
                poses[labelled[r], k] = (*loc[k, keep[c]], val[k, keep[c]])
    if adjust:  # only joints with a value move: the empty ones stay zero
        poses = (parser.adjust_udp if parser.udp else parser.adjust)([poses], det[None])[0]
    return poses


def group_by_ground_truth(
    det: torch.Tensor,
    gt_joints: np.ndarray,
    radius: np.ndarray,
    parser: HeatmapParser,
    adjust: bool = True,
) -> tuple[np.ndarray, list[float]]:
    """:func:`match_to_ground_truth` as a grouping result: ``(poses (P', K, 3) in heatmap pixels,
    scores)`` for the persons that got at least one joint; the score is the mean joint value over
    all K joints, as the tag grouping scores."""
    return as_grouping(match_to_ground_truth(det, gt_joints, radius, parser, adjust))


def as_grouping(poses: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """``poses (P, K, 3+)`` -> ``(the persons with at least one joint, their scores)``."""
    kept = poses[poses[:, :, 2].max(axis=1, initial=0) > 0] if len(poses) else poses
    return kept, [float(s) for s in kept[:, :, 2].mean(axis=1)]


# COCO's keypoint-evaluation area ranges, plus the small persons it leaves out of its own rows.
SIZE_RANGES = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def keypoint_errors(pred: np.ndarray, gt: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Per labelled joint: how far the matched candidate lies and how COCO scores it.

    pred: (P, K, 3) matched joints (x, y, value; value 0 = none found) and gt: (P, K, 3) ground truth
    (x, y, visibility), both in image pixels; areas: (P,) ground-truth areas; sigmas: (K,) OKS sigmas.
    Returns (N, 5) rows ``(joint type, area, found, error in px, keypoint similarity)`` for the N
    labelled joints; a joint not found has error NaN and similarity 0. The similarity is COCO's
    ``exp(-d^2 / (2 area (2 sigma)^2))``: OKS is its mean over a person's labelled joints.
    """
    p_idx, k_idx = np.nonzero(gt[:, :, 2] > 0)
    found = pred[p_idx, k_idx, 2] > 0
    dist = np.linalg.norm(pred[p_idx, k_idx, :2] - gt[p_idx, k_idx, :2], axis=1)
    area = areas[p_idx]
    ks = np.exp(-(dist**2) / (2 * (area + np.spacing(1)) * (2 * sigmas[k_idx]) ** 2))
    return np.stack([k_idx, area, found, np.where(found, dist, np.nan), np.where(found, ks, 0.0)], axis=1).astype(
        np.float64
    )


def summarize_errors(rows: np.ndarray, joint_names: tuple[str, ...] | list[str]) -> list[dict]:
    """:func:`keypoint_errors` rows of a whole split -> one summary per joint type, then one per
    :data:`SIZE_RANGES` entry, then 'all': ``name, labelled, found (fraction), median_px, p90_px`` (of
    the found joints) and ``ks50`` (fraction of labelled joints with keypoint similarity >= 0.5);
    None where a group has no joint to measure (JSON has no NaN)."""
    groups = [(name, rows[:, 0] == k) for k, name in enumerate(joint_names)]
    groups += [(name, (rows[:, 1] >= lo) & (rows[:, 1] < hi)) for name, lo, hi in SIZE_RANGES]
    groups.append(("all", np.ones(len(rows), bool)))
    out = []
    for name, sel in groups:
        part = rows[sel]
        err = part[part[:, 2] > 0, 3]
        out.append(
            {
                "name": name,
                "labelled": int(len(part)),
                "found": float(part[:, 2].mean()) if len(part) else None,
                "median_px": float(np.median(err)) if len(err) else None,
                "p90_px": float(np.percentile(err, 90)) if len(err) else None,
                "ks50": float((part[:, 4] >= 0.5).mean()) if len(part) else None,
            }
        )
    return out


# A candidate farther than this fraction of the person's size (sqrt of its area) from the labelled
# joint is not given to that person.
RADIUS_FRACTION = 0.5
MIN_RADIUS = 2.0  # heatmap pixels, so that tiny persons can still take the candidate at their joint


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
    protocol = TestProtocol.from_config(cfg)
    parser = HeatmapParser.from_protocol(protocol)
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
            maps = image_maps(protocol, model, [image], device)
            people, scores = group_by_tags(protocol, maps, parser)[0]  # exactly valid.py's poses
            results["tags"] += poses_to_coco_results(ids[i], people, scores)
            gt, areas = labelled_people(anns, maps.det.shape[1])
            joints, radius = gt_in_heatmap(gt, areas, maps)
            matched = match_to_ground_truth(maps.det[0], joints, radius, parser, protocol.adjust)
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
