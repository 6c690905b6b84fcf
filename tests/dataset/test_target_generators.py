"""Vectorised target generators == HigherHRNet's loops (``higherpose.bench.reference``), on random and real
joints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from higherpose.bench.reference import heatmaps_loop, heatmaps_udp_loop, joints_loop, joints_official
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator, ScaleAwareHeatmapGenerator


def random_joints(rng: np.random.Generator, num_people: int, num_joints: int, res: int) -> np.ndarray:
    """(P, K, 4) joints spread a bit beyond the map (so clipping and truncation are exercised)."""
    joints = np.zeros((num_people, num_joints, 4))
    joints[..., 0] = rng.uniform(-0.1 * res, 1.1 * res, (num_people, num_joints))
    joints[..., 1] = rng.uniform(-0.1 * res, 1.1 * res, (num_people, num_joints))
    joints[..., 2] = rng.integers(0, 3, (num_people, num_joints))
    joints[..., 3] = rng.uniform(0.5, 4.0, (num_people, 1))
    return joints


# Coordinates around both borders of a map of size R (R - offset for the negative entries): a joint
# exactly on a pixel centre, half a pixel either side of the first and the last pixel, and beyond.
BORDER_OFFSETS = (-1.0, -0.51, -0.5, -0.49, -0.2, 0.0, 0.3, 0.49, 0.5, 1.0)


def border_joints(rng: np.random.Generator, num_joints: int, res: int) -> np.ndarray:
    """(P, K, 4) joints, each with x or y (or both) at a coordinate of :data:`BORDER_OFFSETS` near
    column / row 0 or R - 1, the other coordinate random in the map; all labelled (v = 2), σ 2."""
    coords = list(BORDER_OFFSETS) + [res - 1 + o for o in BORDER_OFFSETS] + [res - 0.6, res - 0.4]
    coords = np.array(coords)
    num = len(coords)
    persons = int(np.ceil(3 * num / num_joints))
    joints = np.zeros((persons, num_joints, 4))
    flat = joints.reshape(-1, 4)
    free = rng.uniform(1, res - 2, 3 * num)
    for i in range(3 * num):
        c = coords[i % num]
        kind = i // num  # 0: x at the border, 1: y at the border, 2: both (a corner)
        flat[i, 0] = c if kind != 1 else free[i]
        flat[i, 1] = c if kind != 0 else free[i]
        flat[i, 2] = 2
    joints[..., 3] = 2.0
    return joints


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("res,sigma", [(32, 1.0), (64, 2.0), (128, 2.0), (64, 1.5), (48, 0.7)])
def test_heatmaps_equal_loop_random(seed: int, res: int, sigma: float) -> None:
    rng = np.random.default_rng(seed)
    joints = random_joints(rng, int(rng.integers(0, 35)), 17, res)
    assert np.array_equal(HeatmapGenerator(res, 17, sigma)(joints), heatmaps_loop(joints, res, 17, sigma))
    # Scale-aware: per-person σ in column 3; the 3-argument call of HigherHRNet's build works too.
    assert np.array_equal(ScaleAwareHeatmapGenerator(res, 17, sigma)(joints), heatmaps_loop(joints, res, 17, None))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("res,sigma", [(32, 1.0), (32, 2.0), (64, 1.5), (48, 0.7)])
def test_udp_heatmaps_equal_pixel_loop(seed: int, res: int, sigma: float) -> None:
    """DATASET.USE_UDP targets against their definition evaluated pixel by pixel, on random joints and on
    joints at every border (half a pixel inside and outside the first and last row and column)."""
    rng = np.random.default_rng(seed)
    for joints in (random_joints(rng, int(rng.integers(1, 30)), 17, res), border_joints(rng, 17, res)):
        got = HeatmapGenerator(res, 17, sigma, udp=True)(joints)
        want = heatmaps_udp_loop(joints, res, 17, sigma)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert np.array_equal(got > 0, want > 0)  # the same support: nothing wraps across a border


@pytest.mark.parametrize("seed", range(3))
def test_plain_heatmaps_equal_loop_at_the_borders(seed: int) -> None:
    rng = np.random.default_rng(seed)
    joints = border_joints(rng, 17, 32)
    assert np.array_equal(HeatmapGenerator(32, 17, 2.0)(joints), heatmaps_loop(joints, 32, 17, 2.0))


@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_joints_equal_loop_at_the_borders(seed: int, udp: bool) -> None:
    rng = np.random.default_rng(seed)
    for joints in (border_joints(rng, 17, 32), random_joints(rng, 20, 17, 32)):
        for tpj in (True, False):
            got = JointsGenerator(30, 17, 32, tpj, udp=udp)(joints)
            assert np.array_equal(got, joints_loop(joints, 30, 17, 32, tpj, udp=udp))


@pytest.mark.parametrize("tag_per_joint", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_joints_equal_loop_random(seed: int, tag_per_joint: bool) -> None:
    rng = np.random.default_rng(seed)
    res = 64
    joints = random_joints(rng, int(rng.integers(0, 45)), 17, res)
    out = JointsGenerator(30, 17, res, tag_per_joint)(joints)
    assert out.dtype == np.int64 and out.shape == (30, 17, 2)
    assert np.array_equal(out, joints_loop(joints, 30, 17, res, tag_per_joint))


@pytest.mark.parametrize("udp", [False, True])
def test_integer_sigma_equals_its_float(udp: bool) -> None:
    # DATASET.SIGMA is a float now; HigherHRNet's YAMLs give the int 2 and must get the same targets.
    joints = random_joints(np.random.default_rng(0), 12, 17, 64)
    assert np.array_equal(HeatmapGenerator(64, 17, 2, udp=udp)(joints), HeatmapGenerator(64, 17, 2.0, udp=udp)(joints))


def test_default_sigma_and_negative_coordinates() -> None:
    assert HeatmapGenerator(128, 17).sigma == 2.0
    # int() truncates toward zero: a joint at x = -0.6 lands on column 0; x = -1.0 is outside.
    joints = np.array([[[-0.6, 5.0, 2.0], [-1.0, 5.0, 2.0], [3.0, 3.0, 0.0]]])
    hm = HeatmapGenerator(16, 3, 1.0)(joints)
    assert hm[0, 5, 0] == 1.0 and hm[1].max() == 0 and hm[2].max() == 0


def test_overlapping_people_take_the_max() -> None:
    joints = np.array([[[10.0, 10.0, 2.0]], [[12.0, 10.0, 1.0]]])
    hm = HeatmapGenerator(32, 1, 2.0)(joints)
    single = HeatmapGenerator(32, 1, 2.0)(joints[:1])
    assert hm[0, 10, 10] == 1.0 and hm[0, 10, 12] == 1.0
    assert np.all(hm >= single) and hm[0, 10, 11] == single[0, 10, 11]


def test_udp_gaussians_sit_at_the_exact_joint() -> None:
    """DATASET.USE_UDP: each map is a Gaussian around the float position (its log is an exact quadratic,
    so the Taylor decoding recovers the position), on the nearest pixel; rows and columns beyond the map
    are cut, joints whose nearest pixel is outside are skipped; tags point at the nearest pixel."""
    import torch

    from higherpose.core.udp import taylor_offsets

    joints = np.array([[[10.3, 20.7, 2.0], [5.45, 5.49, 1.0], [-0.6, 3.0, 2.0], [31.4, 0.2, 2.0]]])
    gen = HeatmapGenerator(32, 4, 2.0, udp=True)
    hm = gen(joints)
    ys, xs = np.mgrid[0:32, 0:32]
    want = np.exp(-((xs - 10.3) ** 2 + (ys - 20.7) ** 2) / 8.0)
    window = (np.abs(xs - 10) <= 7) & (np.abs(ys - 21) <= 7)  # ceil(3 sigma) + 1 around the nearest pixel
    np.testing.assert_allclose(hm[0], np.where(window, want, 0), rtol=1e-6, atol=1e-7)
    assert np.unravel_index(hm[0].argmax(), hm[0].shape) == (21, 10)
    assert hm[2].max() == 0  # nearest pixel -1: outside (HigherHRNet's truncation would keep it)
    assert hm[3].max() > 0.9 and hm[3][0].argmax() == 31
    peaks = [np.unravel_index(hm[j].argmax(), hm[j].shape) for j in (0, 1, 3)]
    rows, cols = np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks])
    ox, oy = taylor_offsets(torch.from_numpy(hm), np.array([0, 1, 3]), rows, cols)
    np.testing.assert_allclose(cols + ox, [10.3, 5.45, 31.0], atol=1e-4)  # no offset on the border column
    np.testing.assert_allclose(rows + oy, [20.7, 5.49, 0.0], atol=1e-4)  # ... nor on the border row

    tags = JointsGenerator(30, 4, 32, True, udp=True)(joints)
    assert tags[0, 0, 0] == 0 * 32 * 32 + 21 * 32 + 10 and tags[0, 1, 0] == 1 * 32 * 32 + 5 * 32 + 5
    assert tags[0, 2, 0] == 3 * 32 * 32 + 0 * 32 + 31 and tags[0, 3, 1] == 0  # the outside joint has no slot


def test_joints_rows_match_official_when_persons_fit() -> None:
    """Compaction only moves rows of persons without joints (the AE loss skips empty rows)."""
    rng = np.random.default_rng(3)
    joints = random_joints(rng, 12, 17, 64)
    joints[4, :, 2] = 0  # a person without labelled joints
    ours = JointsGenerator(30, 17, 64, True)(joints)
    official = joints_official(joints, 30, 17, 64, True)
    nonempty = official[official[:, :, 1].any(axis=1)]
    assert np.array_equal(ours[: len(nonempty)], nonempty)
    assert not ours[len(nonempty) :].any()


def test_more_people_than_max_are_dropped_and_counted() -> None:
    joints = np.zeros((35, 2, 3))
    joints[:, 0] = (5.0, 6.0, 2.0)
    gen = JointsGenerator(30, 2, 16, True)
    out = gen(joints)
    assert gen.last_overflow == 5 and gen.overflow == 5
    assert np.all(out[:, 0] == (6 * 16 + 5, 1)) and not out[:, 1].any()


def test_tag_index_points_at_the_joint_pixel() -> None:
    rng = np.random.default_rng(1)
    res, k = 64, 17
    joints = random_joints(rng, 10, k, res)
    out = JointsGenerator(30, k, res, True)(joints)
    hm = HeatmapGenerator(res, k, 2.0)(joints)
    idx = out[out[..., 1] == 1][:, 0]
    j, rem = np.divmod(idx, res * res)
    y, x = np.divmod(rem, res)
    assert len(idx) > 0 and np.all(hm[j, y, x] == 1.0)  # each tag index sits on a heatmap peak


@pytest.mark.parametrize(
    "sample,json_path,num_joints",
    [
        ("coco_sample", "annotations/person_keypoints_val2017.json", 17),
        ("crowdpose_sample", "json/crowdpose_test.json", 14),
    ],
)
def test_equal_loop_on_real_samples(request, sample: str, json_path: str, num_joints: int) -> None:
    root = request.getfixturevalue(sample)
    anns = json.loads((root / json_path).read_text())["annotations"]
    rng = np.random.default_rng(0)
    for res in (128, 256):
        for ann_group in (anns[:3], anns[3:]):
            kp = np.array([a["keypoints"] for a in ann_group], dtype=np.float64).reshape(len(ann_group), num_joints, 3)
            # Scale image coordinates into the map with a random sub-pixel affine, as augmentation does.
            joints = kp.copy()
            joints[..., :2] = kp[..., :2] * rng.uniform(0.2, 0.45) + rng.uniform(-10, 10, 2)
            assert np.array_equal(
                HeatmapGenerator(res, num_joints, 2)(joints), heatmaps_loop(joints, res, num_joints, 2)
            )
            for tpj in (True, False):
                assert np.array_equal(
                    JointsGenerator(30, num_joints, res, tpj)(joints), joints_loop(joints, 30, num_joints, res, tpj)
                )
