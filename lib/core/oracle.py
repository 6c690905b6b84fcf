"""Ground-truth grouping: how much AP the tags cost.

The bottom-up papers (Newell et al.'s associative embedding, HigherHRNet) separate the two halves of
the problem by grouping the network's own joint detections with the ground truth instead of the
tags. :func:`group_by_ground_truth` does that on the aggregated test-time heatmaps: the same
candidates (NMS, top-k, ``TEST.DETECTION_THRESHOLD``) and the same sub-pixel adjustment as the tag
grouping, so the AP difference between the two is the cost of grouping by tags alone.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from higherpose.core.group import HeatmapParser


def group_by_ground_truth(
    det: torch.Tensor,
    gt_joints: np.ndarray,
    radius: np.ndarray,
    parser: HeatmapParser,
    adjust: bool = True,
) -> tuple[np.ndarray, list[float]]:
    """Give each ground-truth person the detected joints nearest to its own.

    det: (K, H, W) heatmaps of one image; gt_joints: (P, K, 3) ground truth (x, y, visibility) in
    heatmap pixels; radius: (P,) the farthest a candidate may lie from that person's joint, in
    heatmap pixels. For every joint type the candidates above the detection threshold are matched
    to the labelled joints one-to-one, minimising the total distance (Hungarian). Returns
    ``(poses (P', K, 3) in heatmap pixels, scores)`` for the persons that got at least one joint;
    the score is the mean joint value over all K joints, as the tag grouping scores.
    """
    num_joints = det.shape[0]
    num_people = gt_joints.shape[0]
    empty = np.zeros((0, num_joints, 3), np.float32)
    if num_people == 0:
        return empty, []
    candidates = parser.top_k(det[None], torch.zeros(1, *det.shape, 1))  # tags unused
    loc = candidates["loc_k"][0].astype(np.float64)  # (K, T, 2)
    val = candidates["val_k"][0]  # (K, T)
    # Candidate pixel i is centred at i under UDP; HigherHRNet's convention reads it as i + 0.5.
    centre = loc if parser.udp else loc + 0.5
    poses = np.zeros((num_people, num_joints, 3), np.float32)
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
    found = poses[:, :, 2].max(axis=1) > 0
    poses = poses[found]
    if not len(poses):
        return empty, []
    if adjust:
        poses = (parser.adjust_udp if parser.udp else parser.adjust)([poses], det[None])[0]
    return poses, [float(s) for s in poses[:, :, 2].mean(axis=1)]
