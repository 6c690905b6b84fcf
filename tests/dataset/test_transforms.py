"""Augmentation semantics (HigherHRNet's) on the real samples: peaks at the transformed joints, flip
with its per-resolution offsets, padding masked."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "sample,cls,spec,split",
    [("coco_sample", CocoKeypoints, COCO, "val2017"), ("crowdpose_sample", CrowdPoseKeypoints, CROWDPOSE, "test")],
)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_peaks_and_tags_at_transformed_joints(request, sample, cls, spec, split, flip: float) -> None:
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
