"""Visualisation: pose drawing (pixels where the skeleton is) and the debug grids, checked against
HigherHRNet's plain per-joint / per-image loops kept here as the reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from higherpose.dataset.specs import COCO, CROWDPOSE
from higherpose.utils import vis


# ---------------------------------------------------------------------------------------------
# official HigherHRNet loops (lib/utils/vis.py), the reference for the vectorised code
def official_make_heatmaps(image, heatmaps):
    heatmaps = heatmaps.mul(255).clamp(0, 255).byte().cpu().numpy()
    num_joints, height, width = heatmaps.shape
    image_resized = cv2.resize(image, (int(width), int(height)))
    image_grid = np.zeros((height, (num_joints + 1) * width, 3), dtype=np.uint8)
    for j in range(num_joints):
        colored_heatmap = cv2.applyColorMap(heatmaps[j, :, :], cv2.COLORMAP_JET)
        image_fused = colored_heatmap * 0.7 + image_resized * 0.3
        image_grid[:, width * (j + 1) : width * (j + 2), :] = image_fused
    image_grid[:, 0:width, :] = image_resized
    return image_grid


def official_make_tagmaps(image, tagmaps):
    num_joints, height, width = tagmaps.shape
    image_resized = cv2.resize(image, (int(width), int(height)))
    image_grid = np.zeros((height, (num_joints + 1) * width, 3), dtype=np.uint8)
    for j in range(num_joints):
        tagmap = tagmaps[j, :, :]
        mn, mx = float(tagmap.min()), float(tagmap.max())
        tagmap = tagmap.add(-mn).div(mx - mn + 1e-5).mul(255).clamp(0, 255).byte().cpu().numpy()
        colored_tagmap = cv2.applyColorMap(tagmap, cv2.COLORMAP_JET)
        image_fused = colored_tagmap * 0.9 + image_resized * 0.1
        image_grid[:, width * (j + 1) : width * (j + 2), :] = image_fused
    image_grid[:, 0:width, :] = image_resized
    return image_grid


def official_save_batch_maps(images_u8, batch_maps, batch_mask, map_type):
    """The official per-image loop, fed the already converted uint8 images (B, S, S, 3)."""
    batch_size, num_joints, map_height, map_width = batch_maps.shape
    grid_image = np.zeros((batch_size * map_height, (num_joints + 1) * map_width, 3), dtype=np.uint8)
    for i in range(batch_size):
        make = official_make_heatmaps if map_type == "heatmap" else official_make_tagmaps
        grid_image[map_height * i : map_height * (i + 1)] = make(images_u8[i], batch_maps[i])
        if batch_mask is not None:
            mask = np.expand_dims(batch_mask[i].byte().cpu().numpy(), -1)
            rows = slice(map_height * i, map_height * (i + 1))
            grid_image[rows, :map_width, :] = grid_image[rows, :map_width, :] * mask
    return grid_image


# ---------------------------------------------------------------------------------------------
def _person(offset_x: float, conf: float = 0.9) -> np.ndarray:
    """A standing COCO person, 17 joints, about 80 px tall, left edge at ``offset_x``."""
    x0 = offset_x
    xy = [
        (x0 + 20, 20), (x0 + 17, 17), (x0 + 23, 17), (x0 + 13, 19), (x0 + 27, 19),  # head
        (x0 + 10, 35), (x0 + 30, 35), (x0 + 5, 52), (x0 + 35, 52), (x0 + 3, 68), (x0 + 37, 68),  # arms
        (x0 + 13, 70), (x0 + 27, 70), (x0 + 12, 90), (x0 + 28, 90), (x0 + 11, 110), (x0 + 29, 110),  # legs
    ]  # fmt: skip
    pose = np.zeros((17, 4), np.float32)
    pose[:, :2] = xy
    pose[:, 2] = conf
    return pose


def test_person_colors_are_distinct_and_deterministic():
    colors = [vis.person_color(i) for i in range(20)]
    assert len(set(colors)) == 20
    assert colors == [vis.person_color(i) for i in range(20)]
    assert all(max(c) >= 200 for c in colors)  # bright enough to see on a dark image


def test_draw_poses_colours_each_skeleton_where_its_limbs_are():
    image = np.zeros((130, 120, 3), np.uint8)
    people = [_person(5), _person(65)]
    people[1][15, 2] = 0.0  # right person's left ankle not detected: its shin must not be drawn
    out = vis.draw_poses(image, people, COCO, scores=[0.8, 0.6], thickness=3)

    assert out.shape == image.shape and out.dtype == np.uint8
    assert not image.any(), "draw_poses must draw on a copy"
    for p, pose in enumerate(people):
        color = np.array(vis.person_color(p))
        for a, b in COCO.skeleton:
            mid = np.round((pose[a, :2] + pose[b, :2]) / 2).astype(int)
            patch = out[mid[1] - 1 : mid[1] + 2, mid[0] - 1 : mid[0] + 2].reshape(-1, 3)
            has_color = (patch == color).all(axis=1).any()
            if pose[a, 2] > 0 and pose[b, 2] > 0:
                assert has_color, f"person {p} limb {(a, b)} not drawn in its colour at {mid}"
        # joints are filled circles of the person's colour
        for j in np.flatnonzero(pose[:, 2] > 0):
            x, y = np.round(pose[j, :2]).astype(int)
            assert (out[y, x] == color).all(), f"person {p} joint {j}"
    # the undetected ankle and its shin (13 -> 15) are absent
    x, y = np.round(people[1][15, :2]).astype(int)
    assert not out[y + 2 : y + 5, x - 1 : x + 2].any()
    # far from both people the image stays black
    assert not out[125:, :].any()
    # the person score is written above each person (text pixels in the top rows)
    assert out[: int(people[0][:, 1].min()) - 2].any()


def test_draw_poses_threshold_scores_and_errors():
    image = np.full((130, 60, 3), 40, np.uint8)
    low = _person(5, conf=0.05)
    assert (vis.draw_poses(image, [low], COCO, threshold=0.1) == image).all()
    assert (vis.draw_poses(image, [low], COCO, threshold=0.0) != image).any()
    # joint confidences written next to the joints add pixels
    plain = vis.draw_poses(image, [_person(5)], COCO)
    labelled = vis.draw_poses(image, [_person(5)], COCO, show_joint_scores=True)
    assert (labelled != plain).sum() > 50
    # non-finite joints are skipped, not crashing cv2: a NaN coordinate draws exactly what an undetected
    # joint draws (no circle at x = 0, no limb to it) ...
    nan_pose, undetected = _person(5), _person(5)
    nan_pose[3, 0] = np.nan
    undetected[3, 2] = 0.0
    drawn = vis.draw_poses(image, [nan_pose], COCO)
    np.testing.assert_array_equal(drawn, vis.draw_poses(image, [undetected], COCO))
    x, y = np.round(nan_pose[4, :2]).astype(int)  # the other joints are still drawn
    assert (drawn[y, x] == vis.person_color(0)).all()
    # ... and a person with no finite joint draws nothing, not even its score
    lost = _person(5)
    lost[:, 0] = np.nan
    lost[1, 1] = np.inf
    lost[0] = (30, 60, np.nan, 0)  # a finite place but a NaN confidence
    np.testing.assert_array_equal(
        vis.draw_poses(image, [_person(5), lost], COCO, scores=[0.8, 0.7]),
        vis.draw_poses(image, [_person(5)], COCO, scores=[0.8]),
    )
    np.testing.assert_array_equal(vis.draw_poses(image, [lost], COCO, scores=[0.7]), image)
    # an (P, K, 3) array works like a list; a grey image is accepted
    assert vis.draw_poses(image[..., 0], np.stack([_person(5)]), COCO).shape == image.shape
    with pytest.raises(ValueError, match="CROWDPOSE"):
        vis.draw_poses(image, [_person(5)], CROWDPOSE)
    with pytest.raises(ValueError, match="scores"):
        vis.draw_poses(image, [_person(5)], COCO, scores=[1.0, 2.0])


def test_save_valid_image_writes_bgr_file(tmp_path):
    rgb = np.zeros((130, 60, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    path = tmp_path / "valid.jpg"
    drawn = vis.save_valid_image(rgb, [_person(5)], path, dataset="COCO")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["valid.jpg"]  # no temp files left
    back = cv2.imread(str(path))
    assert back.shape == rgb.shape
    assert abs(int(back[125, 2, 2]) - 200) < 10 and back[125, 2, 0] < 30  # red lands in the R channel
    assert drawn.shape == rgb.shape


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_make_heatmaps_and_tagmaps_equal_official_loops(size):
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(48, 56, 3, generator=gen) * 255).byte().numpy()
    heatmaps = torch.rand(5, *size, generator=gen) * 1.4 - 0.2  # values outside 0..1 get clamped
    tagmaps = torch.randn(5, *size, generator=gen) * 3
    tagmaps[2] = 1.5  # a constant map (max == min)
    np.testing.assert_array_equal(vis.make_heatmaps(image, heatmaps), official_make_heatmaps(image, heatmaps))
    np.testing.assert_array_equal(vis.make_tagmaps(image, tagmaps), official_make_tagmaps(image, tagmaps))
    assert vis.make_heatmaps(image, heatmaps).shape == (size[0], 6 * size[1], 3)


@pytest.mark.parametrize("map_type", ["heatmap", "tagmap"])
def test_save_batch_maps_equals_official_loop(map_type, tmp_path):
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 64, 64, generator=gen)
    maps = torch.rand(3, 4, 16, 16, generator=gen) if map_type == "heatmap" else torch.randn(3, 4, 16, 16)
    masks = (torch.rand(3, 16, 16, generator=gen) > 0.3).float()
    images_u8 = vis.denormalize_images(images)
    expected = official_save_batch_maps(images_u8, maps, masks, map_type)
    path = tmp_path / f"{map_type}.png"
    grid = vis.save_batch_maps(images, maps, masks, path, map_type)
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(cv2.imread(str(path)), expected)  # png: lossless round trip
    with pytest.raises(ValueError, match="map_type"):
        vis.save_batch_maps(images, maps, None, None, "paf")


def test_denormalize_images_inverts_imagenet_normalisation():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    mean, std = np.array(vis.IMAGENET_MEAN), np.array(vis.IMAGENET_STD)
    x = torch.from_numpy(((rgb / 255 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    np.testing.assert_array_equal(vis.denormalize_images(x), rgb[..., ::-1].astype(np.uint8))


def test_joints_to_poses_decodes_flat_indices():
    res, k = 8, 3
    joints = torch.zeros(2, 4, k, 2, dtype=torch.int64)
    expected = {}
    rng = np.random.default_rng(0)
    for b, m, j in [(0, 0, 0), (0, 0, 2), (0, 2, 1), (1, 1, 0)]:
        x, y = rng.integers(0, res, 2)
        joints[b, m, j] = torch.tensor([j * res * res + y * res + x, 1])
        expected[(b, m, j)] = (x + 0.5, y + 0.5)
    poses = vis.joints_to_poses(joints, res, k)
    assert [len(p) for p in poses] == [2, 1]  # persons without visible joints are dropped
    people = {0: {0: poses[0][0], 2: poses[0][1]}, 1: {1: poses[1][0]}}
    for (b, m, j), xy in expected.items():
        np.testing.assert_allclose(people[b][m][j, :2], xy)
        assert people[b][m][j, 2] == 1
    assert poses[0][0][1, 2] == 0


def test_add_debug_images_logs_rgb_hwc():
    calls = []

    class Writer:
        def add_image(self, tag, img, step, dataformats):
            calls.append((tag, img, step, dataformats))

    grid = np.zeros((4, 6, 3), np.uint8)
    grid[..., 0] = 255  # blue in BGR
    vis.add_debug_images(Writer(), {"hm_pred": grid}, 7, tag="train_output_64")
    tag, img, step, fmt = calls[0]
    assert (tag, step, fmt) == ("train_output_64/hm_pred", 7, "HWC")
    assert (img[..., 2] == 255).all() and not img[..., 0].any()
