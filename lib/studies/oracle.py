"""Ground-truth grouping: how much AP the tags cost.

The bottom-up papers (Newell et al.'s associative embedding, HigherHRNet) separate the two halves of
the problem by grouping the network's own joint detections with the ground truth instead of the
tags. :func:`group_by_ground_truth` does that on the aggregated test-time heatmaps: the same
candidates (NMS, top-k, ``TEST.DETECTION_THRESHOLD``) and the same sub-pixel adjustment as the tag
grouping, so the AP difference between the two is the cost of grouping by tags alone.
:func:`keypoint_errors` and :func:`summarize_errors` then say which joints the heatmaps miss or
misplace: per joint type and person size, the share found, the error in pixels and the share that
COCO's keypoint similarity scores 0.5 or more.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from higherpose.core.group import HeatmapParser


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
    candidates = parser.top_k(det[None], torch.zeros(1, *det.shape, 1))  # tags unused
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
