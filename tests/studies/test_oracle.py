"""Ground-truth grouping on hand-made heatmaps: one-to-one, nearest, within the radius; the joint
error statistics on hand-made poses, the keypoint similarity against pycocotools' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higherpose.core.group import HeatmapParser
from higherpose.dataset.specs import COCO
from higherpose.studies.oracle import (
    SIZE_RANGES,
    group_by_ground_truth,
    keypoint_errors,
    match_to_ground_truth,
    summarize_errors,
)
from tests.conftest import TINY_HRNET, load_cfg

K = 17


def _parser(udp: bool = True) -> HeatmapParser:
    return HeatmapParser(load_cfg(TINY_HRNET, "DATASET.USE_UDP", udp, "TEST.DETECTION_THRESHOLD", 0.1))


def _det(peaks: list[tuple[int, int, int, float]], size: int = 48) -> torch.Tensor:
    """(K, size, size) maps with a Gaussian (sigma 1) of height v at each (joint, x, y, v)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    det = np.zeros((K, size, size))
    for k, x, y, v in peaks:
        det[k] = np.maximum(det[k], v * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2.0))
    return torch.from_numpy(det).float()


def _gt(people: list[dict[int, tuple[float, float]]]) -> np.ndarray:
    joints = np.zeros((len(people), K, 3))
    for p, person in enumerate(people):
        for k, (x, y) in person.items():
            joints[p, k] = (x, y, 2)
    return joints


def test_each_person_takes_its_own_nearest_candidates():
    # Two persons, joints 0 and 5 each; the candidates lie 1 px off their joints, plus a far distractor.
    peaks = [(0, 10, 10, 0.9), (0, 30, 12, 0.8), (5, 11, 20, 0.7), (5, 31, 22, 0.6), (0, 45, 45, 0.95)]
    gt = _gt([{0: (10.4, 10.0), 5: (12.0, 20.0)}, {0: (29.0, 12.0), 5: (31.0, 23.0)}])
    poses, scores = group_by_ground_truth(_det(peaks), gt, np.array([5.0, 5.0]), _parser(), adjust=False)
    assert poses.shape == (2, K, 3)
    np.testing.assert_allclose(poses[0, [0, 5]], [[10, 10, 0.9], [11, 20, 0.7]], atol=1e-6)
    np.testing.assert_allclose(poses[1, [0, 5]], [[30, 12, 0.8], [31, 22, 0.6]], atol=1e-6)
    assert np.count_nonzero(poses[:, :, 2]) == 4  # the distractor at (45, 45) went to nobody
    np.testing.assert_allclose(scores, [(0.9 + 0.7) / K, (0.8 + 0.6) / K], rtol=1e-6)


def test_one_candidate_goes_to_one_person_the_nearer():
    gt = _gt([{3: (20.0, 20.0)}, {3: (22.5, 20.0)}])
    poses, scores = group_by_ground_truth(_det([(3, 22, 20, 0.8)]), gt, np.array([6.0, 6.0]), _parser(), False)
    assert poses.shape == (1, K, 3)  # the other person got no joint and is left out
    np.testing.assert_allclose(poses[0, 3], [22, 20, 0.8], atol=1e-6)
    assert len(scores) == 1


def test_candidates_beyond_the_radius_or_below_the_threshold_are_not_taken():
    gt = _gt([{1: (10.0, 10.0), 2: (30.0, 30.0)}])
    det = _det([(1, 16, 10, 0.9), (2, 30, 30, 0.05)])  # 6 px away; below DETECTION_THRESHOLD 0.1
    poses, scores = group_by_ground_truth(det, gt, np.array([5.0]), _parser(), False)
    assert poses.shape == (0, K, 3) and scores == []
    poses, _ = group_by_ground_truth(det, gt, np.array([7.0]), _parser(), False)
    np.testing.assert_allclose(poses[0, 1], [16, 10, 0.9], atol=1e-6)


def test_unlabelled_joints_stay_empty_and_no_people_gives_nothing():
    det = _det([(0, 10, 10, 0.9), (4, 20, 20, 0.9)])
    poses, _ = group_by_ground_truth(det, _gt([{0: (10.0, 10.0)}]), np.array([5.0]), _parser(), False)
    assert poses[0, 4, 2] == 0  # a peak of joint 4 exists but the person's joint 4 is not labelled
    poses, scores = group_by_ground_truth(det, np.zeros((0, K, 3)), np.zeros(0), _parser(), False)
    assert poses.shape == (0, K, 3) and scores == []


@pytest.mark.parametrize("udp", [True, False])
def test_adjust_is_the_tag_groupings_adjust(udp):
    # An off-grid peak: the sub-pixel step must be the one the tag grouping applies.
    ys, xs = np.mgrid[0:48, 0:48].astype(np.float64)
    det = np.zeros((K, 48, 48))
    det[7] = 0.9 * np.exp(-((xs - 20.3) ** 2 + (ys - 14.8) ** 2) / 8.0)
    det = torch.from_numpy(det).float()
    parser = _parser(udp)
    gt = _gt([{7: (20.5, 15.0)}])
    raw, _ = group_by_ground_truth(det, gt, np.array([4.0]), parser, adjust=False)
    adjusted, _ = group_by_ground_truth(det, gt, np.array([4.0]), parser, adjust=True)
    expected = (parser.adjust_udp if udp else parser.adjust)([raw.copy()], det[None])[0]
    np.testing.assert_allclose(adjusted, expected)
    assert not np.allclose(adjusted[0, 7, :2], raw[0, 7, :2])
    if udp:  # Taylor decoding moves the integer peak toward the true centre
        assert abs(adjusted[0, 7, 0] - 20.3) < abs(raw[0, 7, 0] - 20.3)


def test_match_keeps_one_row_per_ground_truth_person_in_order():
    # Person 0 has no candidate near it; person 1 does. The grouping drops person 0, the match keeps it.
    gt = _gt([{2: (5.0, 5.0)}, {2: (30.0, 30.0)}])
    det = _det([(2, 31, 30, 0.7)])
    matched = match_to_ground_truth(det, gt, np.array([4.0, 4.0]), _parser(), adjust=False)
    assert matched.shape == (2, K, 3)
    assert not matched[0].any()
    np.testing.assert_allclose(matched[1, 2], [31, 30, 0.7], atol=1e-6)
    grouped, _ = group_by_ground_truth(det, gt, np.array([4.0, 4.0]), _parser(), adjust=False)
    np.testing.assert_array_equal(grouped, matched[1:])


def _coco_similarity(pred_xy: np.ndarray, gt: np.ndarray, area: float, sigmas: np.ndarray) -> np.ndarray:
    """Per-joint similarity as pycocotools' COCOeval.computeOks writes it (before the mean)."""
    variances = (sigmas * 2) ** 2
    dx, dy = pred_xy[:, 0] - gt[:, 0], pred_xy[:, 1] - gt[:, 1]
    e = (dx**2 + dy**2) / variances / (area + np.spacing(1)) / 2
    return np.exp(-e)


def test_keypoint_errors_distance_similarity_and_missing_joints():
    sigmas = np.asarray(COCO.sigmas)
    rng = np.random.default_rng(0)
    gt = np.zeros((2, K, 3))
    gt[:, :, :2] = rng.uniform(10, 90, (2, K, 2))
    gt[:, :, 2] = 2
    gt[0, 4, 2] = 0  # unlabelled: no row
    gt[1, 7, 2] = 1  # labelled but occluded: counts
    pred = gt.copy()
    pred[:, :, :2] += rng.normal(0, 2, (2, K, 2))
    pred[:, :, 2] = 0.8
    pred[1, 9, 2] = 0  # not found
    areas = np.array([900.0, 5000.0])
    rows = keypoint_errors(pred, gt, areas, sigmas)
    assert rows.shape == (2 * K - 1, 5)
    person0 = rows[: K - 1]
    np.testing.assert_array_equal(person0[:, 0], [k for k in range(K) if k != 4])
    np.testing.assert_allclose(person0[:, 1], 900.0)
    dist = np.linalg.norm(pred[0, :, :2] - gt[0, :, :2], axis=1)
    np.testing.assert_allclose(person0[:, 3], np.delete(dist, 4))
    ks = _coco_similarity(pred[0, :, :2], gt[0], 900.0, sigmas)
    np.testing.assert_allclose(person0[:, 4], np.delete(ks, 4))
    missing = rows[K - 1 + 9]
    assert missing[2] == 0 and np.isnan(missing[3]) and missing[4] == 0
    assert rows[K - 1 + 7, 2] == 1  # the occluded joint was found and measured


def test_summary_by_joint_size_and_overall():
    # Joint 0: found 1 px off in a small person, not found in a large one; joint 5: 3 px off (medium).
    rows = np.array(
        [
            [0, 500.0, 1, 1.0, 0.9],
            [0, 20000.0, 0, np.nan, 0.0],
            [5, 2000.0, 1, 3.0, 0.4],
        ]
    )
    summary = {r["name"]: r for r in summarize_errors(rows, COCO.joint_names)}
    assert list(summary)[:K] == list(COCO.joint_names) and list(summary)[K:] == [n for n, *_ in SIZE_RANGES] + ["all"]
    nose, shoulder = summary[COCO.joint_names[0]], summary[COCO.joint_names[5]]
    assert nose["labelled"] == 2 and nose["found"] == 0.5 and nose["median_px"] == 1.0 and nose["ks50"] == 0.5
    assert shoulder["labelled"] == 1 and shoulder["ks50"] == 0.0 and shoulder["p90_px"] == 3.0
    assert summary["small"]["labelled"] == 1 and summary["medium"]["median_px"] == 3.0
    assert summary["large"]["found"] == 0.0 and summary["large"]["median_px"] is None
    assert summary[COCO.joint_names[1]]["labelled"] == 0 and summary[COCO.joint_names[1]]["found"] is None
    assert summary["all"]["labelled"] == 3 and summary["all"]["median_px"] == 2.0
    assert summary["all"]["ks50"] == 1 / 3
