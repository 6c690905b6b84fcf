"""Augmentation semantics (HigherHRNet's) on the real samples: peaks at the transformed joints, flip
with its per-resolution offsets, padding masked."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from higherpose.dataset.coco import CocoKeypoints, CrowdPoseKeypoints
from higherpose.dataset.specs import COCO, CROWDPOSE
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator
from higherpose.dataset.transforms import (
    Compose,
    RandomAffineTransform,
    RandomHorizontalFlip,
    affine_points,
    get_affine_matrix,
)

INPUT, OUTPUTS = 256, (64, 128)


def _dataset(root, cls, spec, split, flip: float):
    k = spec.num_joints
    transforms = Compose(
        [
            RandomAffineTransform(INPUT, OUTPUTS, 30, 0.75, 1.5, "short", 40),
            RandomHorizontalFlip(spec.flip_index, OUTPUTS, flip),
        ]
    )
    hms = [HeatmapGenerator(r, k, 2) for r in OUTPUTS]
    jgs = [JointsGenerator(30, k, r, True) for r in OUTPUTS]
    return cls(str(root), split, spec, hms, jgs, transforms)


def _expected_joints(ds, index: int, seed: int):
    """Joints after the dataset's transforms, with the same random draws as ds[index]."""
    image_id = ds.ids[index]
    image = ds.read_image(image_id)
    anns = [a for a in ds.load_anns(image_id) if a["iscrowd"] == 0 or a["num_keypoints"] > 0]
    joints = ds.get_joints(anns)
    masks = [np.ones(image.shape[:2], bool) for _ in OUTPUTS]
    _, _, out = ds.transforms(image, masks, [joints.copy() for _ in OUTPUTS], np.random.default_rng(seed))
    return out


# HigherHRNet's FLIP_CONFIG, written out here so that the expected targets do not come from the spec
# under test.
FLIP_INDEX = {
    "COCO": [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15],
    "CROWDPOSE": [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13],
}
ANNOTATIONS = {
    "coco_sample": "annotations/person_keypoints_val2017.json",
    "crowdpose_sample": "json/crowdpose_test.json",
}


class _ScriptedRng:
    """Stands in for the dataset's ``numpy.random.Generator`` with chosen draws, so that the
    augmentation parameters of a sample are known. HigherHRNet's order: ``random()`` for the scale,
    ``random()`` for the rotation, ``integers(lo, hi)`` for the x then y shift, ``random()`` for the flip."""

    def __init__(self, uniforms: list[float], shifts: list[int]) -> None:
        self.uniforms, self.shifts, self.bounds = list(uniforms), list(shifts), []

    def random(self) -> float:
        return self.uniforms.pop(0)

    def integers(self, lo: int, hi: int) -> int:
        self.bounds.append((lo, hi))
        return self.shifts.pop(0)


def _closed_form_joints(kpts, height, width, aug_scale, rot_deg, shift, res, flip, flip_index):
    """HigherHRNet's training augmentation of (P, K, 3) image-pixel joints, written out in closed form.

    The crop is the square of side ``200·scale`` (``scale = min(H, W)/200 · aug_scale``, 'short')
    centred at the shifted image centre; a point ``p`` goes to ``R/2 + Rot(θ)·(p - centre)·R/(200·scale)``
    where a positive θ turns the content counter-clockwise on screen (y down): image-right goes up.
    A flip then moves joint ``flip_index[j]`` into slot ``j`` and maps ``x → R - 1 - x``.
    """
    scale = min(height, width) / 200 * aug_scale
    centre = np.array([width / 2 + shift[0], height / 2 + shift[1]])
    d = (kpts[..., :2] - centre) * (res / (200 * scale))
    t = np.deg2rad(rot_deg)
    out = kpts.astype(np.float64).copy()
    out[..., 0] = res / 2 + d[..., 0] * np.cos(t) + d[..., 1] * np.sin(t)
    out[..., 1] = res / 2 - d[..., 0] * np.sin(t) + d[..., 1] * np.cos(t)
    if flip:
        out = out[:, flip_index]
        out[..., 0] = res - 1 - out[..., 0]
    return out


def _closed_form_matrix(height, width, aug_scale, rot_deg, shift, res) -> np.ndarray:
    """The (2, 3) map of :func:`_closed_form_joints` (before any flip), for warping an image."""
    scale = min(height, width) / 200 * aug_scale
    centre = np.array([width / 2 + shift[0], height / 2 + shift[1]])
    t = np.deg2rad(rot_deg)
    a = res / (200 * scale) * np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return np.hstack([a, (res / 2 - a @ centre)[:, None]])


# (u_scale, u_rot, (dx, dy)): aug_scale = 0.75 + 0.75·u_scale, rotation = (2·u_rot - 1)·30 degrees.
SCRIPTS = [(0.2, 0.8, (7, -11)), (0.9, 0.1, (-20, 13)), (0.55, 0.37, (3, 0))]


@pytest.mark.parametrize(
    "sample,cls,spec,split",
    [("coco_sample", CocoKeypoints, COCO, "val2017"), ("crowdpose_sample", CrowdPoseKeypoints, CROWDPOSE, "test")],
)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_peaks_and_tags_at_transformed_joints(request, sample, cls, spec, split, flip: float) -> None:
    """With known augmentation parameters (scale, rotation, shift, flip), every heatmap peak and AE tag
    index sits at the joint position computed in closed form from the raw annotation, per person and
    per resolution, and nowhere else."""
    root = request.getfixturevalue(sample)
    ds = _dataset(root, cls, spec, split, flip)
    raw = json.loads((root / ANNOTATIONS[sample]).read_text())
    flip_index = FLIP_INDEX[spec.name]
    k = spec.num_joints
    checked = 0
    for index, image_id in enumerate(ds.ids):
        info = next(i for i in raw["images"] if i["id"] == image_id)
        h, w = info["height"], info["width"]
        persons = [a for a in raw["annotations"] if a["image_id"] == image_id]
        persons = [a for a in persons if a["iscrowd"] == 0 or a["num_keypoints"] > 0]
        kpts = np.array([a["keypoints"] for a in persons], np.float64).reshape(-1, k, 3)
        for u_scale, u_rot, shift in SCRIPTS:
            rng = _ScriptedRng([u_scale, u_rot, 0.5], list(shift))
            ds._rng = rng  # the stream ds[index] draws its augmentation from
            image, heatmaps, _, tags = ds[index]
            assert not rng.uniforms and not rng.shifts  # every scripted draw used, no other
            aug_scale, rot = 0.75 + 0.75 * u_scale, (2 * u_rot - 1) * 30
            bound = int(40 * min(h, w) / 200 * aug_scale)
            assert rng.bounds == [(-bound, bound)] * 2  # shift range: ±MAX_TRANSLATE·scale
            # The input image is warped by the same closed-form map (then mirrored x → S-1-x).
            expected = cv2.warpAffine(
                ds.read_image(image_id), _closed_form_matrix(h, w, aug_scale, rot, shift, INPUT), (INPUT, INPUT)
            )
            if flip == 1.0:
                expected = expected[:, ::-1]
            assert np.abs(image.astype(np.int16) - expected).mean() < 0.5
            for s, res in enumerate(OUTPUTS):
                joints = _closed_form_joints(kpts, h, w, aug_scale, rot, shift, res, flip == 1.0, flip_index)
                x, y = np.trunc(joints[..., 0]).astype(int), np.trunc(joints[..., 1]).astype(int)
                # No expected joint within float noise of a pixel edge: truncation is unambiguous.
                frac = np.abs(joints[..., :2] - np.round(joints[..., :2]))
                assert frac[joints[..., 2] > 0].min() > 1e-6
                ok = (joints[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < res) & (y < res)
                p, j = np.nonzero(ok)
                peaks = {tuple(v) for v in np.argwhere(heatmaps[s] == 1.0)}
                assert peaks == set(zip(j.tolist(), y[p, j].tolist(), x[p, j].tolist()))
                # One AE row per person with an in-map joint, in annotation order (rows are compacted).
                rows = [
                    {jj * res * res + y[q, jj] * res + x[q, jj] for jj in np.flatnonzero(ok[q])}
                    for q in range(len(persons))
                    if ok[q].any()
                ]
                rows += [set()] * (len(tags[s]) - len(rows))
                assert [set(r[r[:, 1] == 1, 0].tolist()) for r in tags[s]] == rows
                assert [int(np.count_nonzero(r[:, 1])) for r in tags[s]] == [len(r) for r in rows]
                checked += len(p)
    assert checked > 100


@pytest.mark.parametrize(
    "sample,cls,spec,split",
    [("coco_sample", CocoKeypoints, COCO, "val2017"), ("crowdpose_sample", CrowdPoseKeypoints, CROWDPOSE, "test")],
)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_seeded_targets_follow_the_seeded_transforms(request, sample, cls, spec, split, flip: float) -> None:
    """A seeded sample's targets sit at its joints as the same seeded transforms move them: the
    dataset hands its own stream to the augmentation and builds the targets from what comes out."""
    ds = _dataset(request.getfixturevalue(sample), cls, spec, split, flip)
    checked = 0
    for index in range(len(ds)):
        for seed in (0, 1):
            ds.reseed(seed)
            image, heatmaps, masks, tags = ds[index]
            assert image.shape == (INPUT, INPUT, 3)
            for s, res in enumerate(OUTPUTS):
                joints = _expected_joints(ds, index, seed)[s]
                x, y = np.trunc(joints[..., 0]).astype(int), np.trunc(joints[..., 1]).astype(int)
                ok = (joints[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < res) & (y < res)
                p, j = np.nonzero(ok)
                assert np.all(heatmaps[s][j, y[p, j], x[p, j]] == 1.0)
                checked += len(p)
                # Heatmaps are 1 nowhere else than at those pixels.
                peaks = np.argwhere(heatmaps[s] == 1.0)
                assert {tuple(v) for v in peaks} == set(zip(j.tolist(), y[p, j].tolist(), x[p, j].tolist()))
                rows = tags[s][tags[s][..., 1] == 1][:, 0]
                expected = j * res * res + y[p, j] * res + x[p, j]
                assert sorted(rows.tolist()) == sorted(expected.tolist())
    assert checked > 50


def test_flip_swaps_left_right_with_official_offsets() -> None:
    image = np.zeros((256, 256, 3), np.uint8)
    image[10, 20] = 255
    joints = np.zeros((1, 17, 3))
    joints[0, :, 2] = 2
    joints[0, :, 0] = np.arange(17) + 0.25  # joint j at x = j + 0.25
    masks = [np.ones((r, r), np.float32) for r in OUTPUTS]
    masks[0][3, 5] = 0
    flip = RandomHorizontalFlip(COCO.flip_index, OUTPUTS, prob=1.0)
    out_img, out_masks, out_joints = flip(image, masks, [joints.copy(), joints.copy()], np.random.default_rng(0))
    assert out_img[10, 255 - 20].max() == 255  # image: x -> S - 1 - x
    assert out_masks[0][3, 64 - 1 - 5] == 0
    for s, res in enumerate(OUTPUTS):
        left_eye, right_eye = COCO.joint_names.index("left_eye"), COCO.joint_names.index("right_eye")
        # The left-eye slot now holds the mirrored right eye, at x -> R - 1 - x (output resolution).
        assert out_joints[s][0, left_eye, 0] == res - 1 - (right_eye + 0.25)
        assert out_joints[s][0, 0, 0] == res - 1 - 0.25  # nose maps onto itself
    # Never flipping with prob 0.
    same = RandomHorizontalFlip(COCO.flip_index, OUTPUTS, prob=0.0)(image, masks, [joints], np.random.default_rng(0))
    assert same[0] is image


def test_udp_flip_is_the_exact_mirror() -> None:
    """DATASET.USE_UDP: output x = input x * R/S, and the image's mirror S-1-x gives R - R/S - x."""
    image = np.zeros((256, 256, 3), np.uint8)
    joints = np.zeros((1, 17, 3))
    joints[0, :, 2] = 2
    joints[0, :, 0] = np.arange(17) * 3.0 + 0.25  # input x of joint j: (3j + 0.25) * S / R
    masks = [np.ones((r, r), np.float32) for r in OUTPUTS]
    flip = RandomHorizontalFlip(COCO.flip_index, OUTPUTS, prob=1.0, input_size=256)
    _, _, out = flip(image, masks, [joints.copy(), joints.copy()], np.random.default_rng(0))
    for s, res in enumerate(OUTPUTS):
        for j, src in enumerate(COCO.flip_index):
            x_in = joints[0, src, 0] * 256 / res
            assert out[s][0, j, 0] == pytest.approx((256 - 1 - x_in) * res / 256)


def test_affine_matrix_maps_crop_and_pads_with_masked_border() -> None:
    center, scale = np.array([320.0, 212.5]), 425 / 200 * 1.4
    mat = get_affine_matrix(center, scale, (64, 64), 0)[:2]
    # The crop centre lands at the map centre; a 200·scale square spans the map.
    assert np.allclose(affine_points(center[None], mat), [[32, 32]])
    assert np.allclose(affine_points(center[None] + [100 * scale, 0], mat), [[64, 32]])
    rot = get_affine_matrix(center, scale, (64, 64), 90)[:2]
    assert np.allclose(affine_points(center[None] + [100 * scale, 0], rot), [[32, 0]], atol=1e-9)
    # A zoomed-out warp of an all-ones mask: the image area stays 1, the padding becomes 0.
    t = RandomAffineTransform(256, OUTPUTS, 0, 1.5, 1.5, "long", 0)
    image = np.full((425, 640, 3), 200, np.uint8)
    out_img, masks, _ = t(image, [np.ones((425, 640), bool)] * 2, [np.zeros((0, 17, 3))] * 2, np.random.default_rng(0))
    for m, res in zip(masks, OUTPUTS):
        assert m.dtype == np.float32 and m[res // 2, res // 2] == 1 and m[0, 0] == 0 and m[-1, -1] == 0
    assert out_img[0, 0].max() == 0 and out_img[128, 128].min() == 200


def test_mask_border_keeps_pixels_whose_source_is_inside_by_half_a_pixel() -> None:
    """A crop at factor 1 reaching 7.7 px left of the image: output column q samples image column
    q - 7.7. Bilinear with a zero border gives (1 - 0.7) = 0.3 at column 7 (source -0.7): below the 0.5
    threshold, masked; column 8 (source 0.3) is inside. Rows are all inside."""
    t = RandomAffineTransform(32, [32], 0, 1.0, 1.0, "short", 0)
    t.draw = lambda h, w, rng: (np.array([8.3, 20.0]), 32 / 200, 1.0, 0.0)
    _, masks, _ = t(np.zeros((40, 40, 3), np.uint8), [np.ones((40, 40), bool)], [np.zeros((0, 17, 3))], None)
    want = np.ones((32, 32), np.float32)
    want[:, :8] = 0
    np.testing.assert_array_equal(masks[0], want)


def test_scale_aware_sigma_shrinks_with_the_zoom() -> None:
    """DATASET.SCALE_AWARE_SIGMA: the per-person sigma (column 3) is divided by the drawn zoom factor
    (a crop 1.25x larger shows persons 1.25x smaller); positions follow the affine."""
    t = RandomAffineTransform(64, [16, 32], 0, 1.25, 1.25, "short", 0, scale_aware_sigma=True)
    t.draw = lambda h, w, rng: (np.array([50.0, 50.0]), 100 * 1.25 / 200, 1.25, 0.0)
    joints = np.zeros((1, 17, 4))
    joints[0, :, :3] = (50.0, 50.0, 2)
    joints[0, :, 3] = 2.0
    _, _, out = t(np.zeros((100, 100, 3), np.uint8), [np.ones((100, 100), bool)] * 2, [joints] * 2, None)
    for res, j in zip((16, 32), out):
        np.testing.assert_allclose(j[0, :, 3], 1.6)
        np.testing.assert_allclose(j[0, :, :2], res / 2)


def test_random_draws_follow_the_generator() -> None:
    t = RandomAffineTransform(256, OUTPUTS, 30, 0.75, 1.5, "short", 40)
    a = [t.draw(425, 640, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(a[0][0], a[1][0]) and a[0][1:] == a[1][1:]
    draws = [t.draw(425, 640, np.random.default_rng(i)) for i in range(200)]
    rots = np.array([d[3] for d in draws])
    scales = np.array([d[2] for d in draws])
    assert rots.min() >= -30 and rots.max() < 30 and scales.min() >= 0.75 and scales.max() < 1.5
    shifts = np.array([d[0] - (320, 212.5) for d in draws])
    assert np.abs(shifts).max() <= 40 * 425 / 200 * 1.5 and len({tuple(s) for s in shifts}) > 150
