"""HeatmapParser: the vectorised adjust / refine and the linear_sum_assignment matching equal HigherHRNet's
loops (``higherpose.bench.reference``); persons are kept apart even when their first tags collide."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higherpose.bench.reference import brute_force_assignment, ref_adjust, ref_match_by_tag, ref_refine
from higherpose.core import group_refine
from higherpose.core.group import HeatmapParser, Params, match_by_tag
from tests.conftest import TINY_HRNET, load_cfg

# ---------------------------------------------------------------- optimality of the assignment


def lsa_checked_against_brute_force(cost):
    """linear_sum_assignment's pairs, after checking that their total cost is the brute-force minimum.

    With ``round(d) * 100 - val`` costs every full assignment contains each row's val once, so totals tie
    whenever the rounded distances do; Munkres and linear_sum_assignment may then pick different
    optimal assignments (a documented difference). Only optimality can be compared there."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    pairs = list(zip(rows.tolist(), cols.tolist()))
    best = brute_force_assignment(cost)
    assert np.isclose(sum(cost[r, c] for r, c in pairs), sum(cost[r, c] for r, c in best), rtol=0, atol=1e-6)
    return pairs


# ---------------------------------------------------------------- synthetic maps


def make_maps(num_people, k=17, h=48, w=64, tags_l=2, seed=0, drop=0.3):
    """Gaussian blobs per person/joint (some dropped), one tag value per person plus noise."""
    rng = np.random.default_rng(seed)
    det = rng.random((1, k, h, w)).astype(np.float32) * 0.05
    tag = rng.normal(0, 0.05, (1, k, h, w, tags_l)).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w]
    for p in range(num_people):
        person_tag = 2.0 * p + rng.normal(0, 0.1)
        for j in range(k):
            if rng.random() < drop:
                continue
            cx, cy = rng.uniform(2, w - 3), rng.uniform(2, h - 3)
            blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 4.0) * rng.uniform(0.3, 1.0)
            det[0, j] = np.maximum(det[0, j], blob)
            near = ((xs - cx) ** 2 + (ys - cy) ** 2) < 9
            tag[0, j][near] = person_tag + rng.normal(0, 0.05, (near.sum(), tags_l))
    return torch.from_numpy(det), torch.from_numpy(tag)


def _cfg(*opts):
    return load_cfg(TINY_HRNET, "DATASET.MAX_NUM_PEOPLE", 8, "DATASET.USE_UDP", False, *opts)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", range(4))
def test_match_by_tag_equals_munkres_reference(seed):
    """Raw tag distances (USE_DETECTION_VAL False): unique optimum, so exactly the brute-force result."""
    cfg = _cfg("TEST.USE_DETECTION_VAL", False)
    params, parser = Params.from_cfg(cfg), HeatmapParser(cfg)
    det, tag = make_maps(4, seed=seed)
    top = parser.top_k(det, tag)
    got = match_by_tag(top["tag_k"][0], top["loc_k"][0], top["val_k"][0], params)
    want = ref_match_by_tag(top["tag_k"][0], top["loc_k"][0], top["val_k"][0], params)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(4))
def test_match_by_tag_official_cost_is_optimal(seed):
    """Official cost (round(d) * 100 - val): same persons as the reference driven by an assignment of
    brute-force-optimal total cost."""
    params, parser = Params.from_cfg(_cfg()), HeatmapParser(_cfg())
    det, tag = make_maps(4, seed=seed)
    top = parser.top_k(det, tag)
    got = match_by_tag(top["tag_k"][0], top["loc_k"][0], top["val_k"][0], params)
    want = ref_match_by_tag(
        top["tag_k"][0], top["loc_k"][0], top["val_k"][0], params, assign=lsa_checked_against_brute_force
    )
    np.testing.assert_array_equal(got, want)


def test_assignment_equals_brute_force_on_small_matrices():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(1)
    for _ in range(50):
        rows, cols = rng.integers(1, 6), rng.integers(1, 6)
        cost = rng.random((rows, cols)) * 300 - rng.random((rows, 1))  # continuous: unique optimum
        if rows > cols:
            cost = np.concatenate((cost, np.zeros((rows, rows - cols)) + 1e10), axis=1)
        r, c = linear_sum_assignment(cost)
        # Dummy (1e10) columns are interchangeable: only which rows get which real column matters.
        got = [(a, b if b < cols else -1) for a, b in zip(r.tolist(), c.tolist())]
        assert got == [(a, b if b < cols else -1) for a, b in brute_force_assignment(cost)]


def test_colliding_first_tags_stay_separate_persons():
    params = Params.from_cfg(_cfg("TEST.DETECTION_THRESHOLD", 0.1))
    k = params.num_joints
    tag_k = np.zeros((k, 8, 1), np.float32)
    loc_k = np.zeros((k, 8, 2), np.int64)
    val_k = np.zeros((k, 8), np.float32)
    # Two noses with the same tag value (0.5) at different places: the official dict kept only one.
    val_k[0, :2] = 0.9
    loc_k[0, 0], loc_k[0, 1] = (3, 4), (20, 30)
    tag_k[0, :2, 0] = 0.5
    persons = match_by_tag(tag_k, loc_k, val_k, params)
    assert persons.shape == (2, k, 4)
    assert len(ref_match_by_tag(tag_k, loc_k, val_k, params)) == 1  # the official bug


def _candidates(k: int, tags_by_joint: dict[int, list[tuple[float, ...]]]):
    """tag_k (K, 8, L), loc_k (K, 8, 2), val_k (K, 8) with one candidate per listed tag: candidate c
    of joint j sits at (x, y) = (10 j, c), value 0.9 - 0.01 c (all above the detection threshold)."""
    num_tags = len(next(iter(tags_by_joint.values()))[0])
    tag_k = np.zeros((k, 8, num_tags), np.float32)
    loc_k = np.zeros((k, 8, 2), np.int64)
    val_k = np.zeros((k, 8), np.float32)
    for j, tags in tags_by_joint.items():
        for c, t in enumerate(tags):
            tag_k[j, c] = t
            loc_k[j, c] = (10 * j, c)
            val_k[j, c] = 0.9 - 0.01 * c
    return tag_k, loc_k, val_k


def _members(persons: np.ndarray) -> list[set[tuple[int, int]]]:
    """Each person as the set of (joint, candidate) it holds, read back from the candidates' (x, y)."""
    out = []
    for person in persons:
        held = np.nonzero(person[:, 2] > 0)[0]
        out.append({(int(j), int(person[j, 1])) for j in held})
    return out


@pytest.mark.parametrize("use_val", [True, False])
def test_tag_threshold_compares_the_raw_tag_distance(use_val):
    """A joint joins the person whose mean tag is nearest when their distance is below TAG_THRESHOLD (1),
    whatever the matching cost: with USE_DETECTION_VAL the cost of a 0.7 distance is round(0.7) * 100 -
    val = 100 - val, yet the joint joins. Distances 0.3, 0.7, 0.95 join; 1.05, 1.5, 1.9 start persons."""
    params = Params.from_cfg(_cfg("TEST.USE_DETECTION_VAL", use_val))
    assert params.tag_threshold == 1.0
    people = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    dists = [0.3, 0.7, 0.95, 1.05, 1.5, 1.9]
    tag_k, loc_k, val_k = _candidates(
        params.num_joints, {0: [(t,) for t in people], 1: [(t + d,) for t, d in zip(people, dists)]}
    )
    persons = match_by_tag(tag_k, loc_k, val_k, params)
    want = [{(0, 0), (1, 0)}, {(0, 1), (1, 1)}, {(0, 2), (1, 2)}, {(0, 3)}, {(0, 4)}, {(0, 5)}]
    want += [{(1, 3)}, {(1, 4)}, {(1, 5)}]
    assert _members(persons) == want
    np.testing.assert_array_equal(persons, ref_match_by_tag(tag_k, loc_k, val_k, params))


def test_tag_distance_is_euclidean_over_all_tag_channels():
    """Two tag channels (image and flip): (0.6, 0.6) away is 0.85 < 1 (joins), (0.8, 0.8) is 1.13 (does
    not), though each channel alone is under 1."""
    params = Params.from_cfg(_cfg())
    tag_k, loc_k, val_k = _candidates(params.num_joints, {0: [(0.0, 0.0), (10.0, 10.0)], 1: [(0.6, 0.6), (10.8, 10.8)]})
    persons = match_by_tag(tag_k, loc_k, val_k, params)
    assert _members(persons) == [{(0, 0), (1, 0)}, {(0, 1)}, {(1, 1)}]


def test_person_tag_is_the_mean_of_its_joints_tags():
    """Person A: tags 0 then 0.9 (mean 0.45); person B: tags 10 then 10.9 (mean 10.45). A third joint
    at 1.4 is 0.95 from A's mean (joins; 1.4 from A's first tag), one at 9.55 is 0.9 from B's mean
    (joins; 1.35 from B's last tag)."""
    params = Params.from_cfg(_cfg())
    tag_k, loc_k, val_k = _candidates(
        params.num_joints, {0: [(0.0,), (10.0,)], 1: [(0.9,), (10.9,)], 2: [(1.4,), (9.55,)]}
    )
    persons = match_by_tag(tag_k, loc_k, val_k, params)
    assert _members(persons) == [{(0, 0), (1, 0), (2, 0)}, {(0, 1), (1, 1), (2, 1)}]


def test_detection_threshold_and_max_people():
    """Candidates below TEST.DETECTION_THRESHOLD are ignored; with IGNORE_TOO_MUCH a joint is not
    matched once MAX_NUM_PEOPLE persons exist."""
    params = Params.from_cfg(_cfg("TEST.DETECTION_THRESHOLD", 0.85))
    tag_k, loc_k, val_k = _candidates(params.num_joints, {0: [(0.0,), (5.0,), (9.0,)], 1: [(0.1,)]})
    val_k[0] = (0.9, 0.84, 0.86, 0, 0, 0, 0, 0)
    assert _members(match_by_tag(tag_k, loc_k, val_k, params)) == [{(0, 0), (1, 0)}, {(0, 2)}]
    params = Params.from_cfg(_cfg("DATASET.MAX_NUM_PEOPLE", 2, "TEST.IGNORE_TOO_MUCH", True))
    tag_k, loc_k, val_k = _candidates(params.num_joints, {0: [(0.0,), (5.0,)], 1: [(0.1,)]})
    assert _members(match_by_tag(tag_k, loc_k, val_k, params)) == [{(0, 0)}, {(0, 1)}]


@pytest.mark.parametrize("seed", range(3))
def test_adjust_equals_loop(seed):
    parser = HeatmapParser(_cfg())
    det, tag = make_maps(5, seed=seed)
    det = torch.cat([det, det.flip(3)])  # two images
    tag = torch.cat([tag, tag.flip(3)])
    ans = parser.match(**parser.top_k(det, tag))
    want = ref_adjust([a.copy() for a in ans], det)
    got = parser.adjust([a.copy() for a in ans], det)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tags_l", [1, 2])
def test_refine_equals_per_person_loop(seed, tags_l):
    parser = HeatmapParser(_cfg())
    det, tag = make_maps(6, seed=seed, tags_l=tags_l, drop=0.5)
    ans = parser.adjust(parser.match(**parser.top_k(det, tag)), det)[0]
    assert (ans[:, :, 2] == 0).any()  # there is something to refine
    want = np.stack([ref_refine(det[0].numpy(), tag[0].numpy(), p.copy()) for p in ans])
    got = parser.refine(det[0], tag[0], ans.copy())
    np.testing.assert_array_equal(got, want)


def test_refine_leaves_a_joint_missing_where_its_map_is_zero():
    """A missing joint whose heatmap is 0 everywhere stays missing (value 0 at the argmax is not a
    detection), as in the official loop; the other missing joints are filled."""
    parser = HeatmapParser(_cfg())
    det, tag = make_maps(4, seed=1, drop=0.5)
    ans = parser.adjust(parser.match(**parser.top_k(det, tag)), det)[0]
    empty = int(np.nonzero((ans[:, :, 2] == 0).any(axis=0))[0][0])  # a joint some person lacks
    det = det.clone()
    det[0, empty] = 0
    missing = ans[:, empty, 2] == 0
    want = np.stack([ref_refine(det[0].numpy(), tag[0].numpy(), p.copy()) for p in ans])
    got = parser.refine(det[0], tag[0], ans.copy())
    np.testing.assert_array_equal(got, want)
    assert (got[missing, empty, 2] == 0).all() and (got[missing, empty, :2] == ans[missing, empty, :2]).all()
    assert (got[:, :, 2] > 0).sum() > (ans[:, :, 2] > 0).sum()  # others were filled


def test_refine_peak_shortcut_and_full_fallback_both_run(monkeypatch):
    """The pruned argmax settles most pairs; a person whose tag matches no blob falls back to the full
    map. Both paths together still equal the official per-person loop."""
    parser = HeatmapParser(_cfg())
    det, tag = make_maps(6, seed=3, drop=0.5)
    ans = parser.adjust(parser.match(**parser.top_k(det, tag)), det)[0]
    stray = ans[:1].copy()  # a person with one detected joint and a tag far from every blob
    stray[0, :, 2] = 0
    stray[0, 0, :] = 0
    stray[0, 0, :3] = (3, 3, 0.5)
    ans = np.concatenate([ans, stray])
    tag = tag.clone()
    tag[0, 0, 3, 3] = 100.0
    settled = []
    real = group_refine.refine_pruned

    def spy(det_, tag_, prev, p_mis, j_mis, best):
        real(det_, tag_, prev, p_mis, j_mis, best)
        settled.append((int((best >= 0).sum()), len(best)))

    monkeypatch.setattr(group_refine, "refine_pruned", spy)
    want = np.stack([ref_refine(det[0].numpy(), tag[0].numpy(), p.copy()) for p in ans])
    got = parser.refine(det[0], tag[0], ans.copy())
    np.testing.assert_array_equal(got, want)
    ((done, total),) = settled
    assert 0 < done < total


def test_refine_with_one_shared_tag_map():
    cfg = _cfg("MODEL.TAG_PER_JOINT", False)
    parser = HeatmapParser(cfg)
    det, tag = make_maps(3, seed=7, drop=0.5)
    shared = tag[:, :1]  # (1, 1, H, W, L)
    ans = parser.adjust(parser.match(**parser.top_k(det, shared)), det)[0]
    tiled = np.tile(shared[0].numpy(), (17, 1, 1, 1))
    want = np.stack([ref_refine(det[0].numpy(), tiled, p.copy()) for p in ans])
    np.testing.assert_array_equal(parser.refine(det[0], shared[0], ans.copy()), want)


def test_parse_scores_before_refine_and_empty_input():
    parser = HeatmapParser(_cfg())
    det, tag = make_maps(3, seed=2, drop=0.5)
    grouped, scores = parser.parse(det, tag, adjust=True, refine=True)
    unrefined = parser.adjust(parser.match(**parser.top_k(det, tag)), det)[0]
    np.testing.assert_allclose(scores, unrefined[:, :, 2].mean(axis=1), rtol=1e-6)
    assert (grouped[0][:, :, 2] >= unrefined[:, :, 2]).all()

    grouped, scores = parser.parse(torch.zeros(1, 17, 16, 16), torch.zeros(1, 17, 16, 16, 1))
    assert grouped[0].shape == (0, 17, 4) and scores == []


def test_nms_keeps_only_the_largest_value_of_each_window():
    """Hand-made map, NMS kernel 5: of two peaks 2 px apart only the larger survives; a peak 3 px from
    a larger one survives (outside its 5x5 window); everything else becomes 0."""
    parser = HeatmapParser(_cfg("TEST.NMS_KERNEL", 5, "TEST.NMS_PADDING", 2))
    det = torch.zeros(1, 1, 12, 12)
    det[0, 0, 5, 5], det[0, 0, 5, 7], det[0, 0, 5, 8] = 0.9, 0.8, 0.7  # 0.8 is 2 px from 0.9; 0.7 is 3 px
    det[0, 0, 10, 1] = 0.3
    det[0, 0, 5, 6] = 0.5  # a shoulder between two peaks
    kept = parser.nms(det)
    want = torch.zeros_like(det)
    want[0, 0, 5, 5], want[0, 0, 10, 1] = 0.9, 0.3
    torch.testing.assert_close(kept, want)


@pytest.mark.parametrize("kernel,padding", [(5, 2), (3, 1), (7, 3)])
def test_nms_equals_max_pool_suppression(kernel, padding):
    """Random maps with ties (quantised values): det where it equals its max_pool2d window max, else 0."""
    parser = HeatmapParser(_cfg("TEST.NMS_KERNEL", kernel, "TEST.NMS_PADDING", padding))
    det = torch.randint(0, 6, (2, 3, 17, 23)).float() / 5
    pooled = torch.nn.functional.max_pool2d(det, kernel, 1, padding)
    torch.testing.assert_close(parser.nms(det), torch.where(pooled == det, det, torch.zeros_like(det)))


def test_joint_order_comes_from_the_spec():
    crowd = load_cfg(
        TINY_HRNET, "DATASET.DATASET", "crowd_pose_kpt", "DATASET.DATASET_TEST", "crowd_pose",
        "DATASET.NUM_JOINTS", 14, "MODEL.NUM_JOINTS", 14,
    )  # fmt: skip
    assert Params.from_cfg(crowd).joint_order == (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13)
    assert Params.from_cfg(_cfg()).joint_order == (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)
