"""core.debug_images: HigherHRNet's training debug grids (heatmaps, tags, ground truth and grouped
predictions) written as files and returned for TensorBoard."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from higherpose.core.debug_images import save_debug_images
from higherpose.utils import vis
from tests.conftest import TINY_HRNET, load_cfg
from tests.utils.test_vis import _person


def _debug_batch(b=2, s=256, k=17):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, s, s, generator=gen)
    r = s // 4
    heatmaps = torch.rand(b, k, r, r, generator=gen)
    masks = torch.ones(b, r, r)
    outputs = [torch.randn(b, 2 * k, r, r, generator=gen), torch.rand(b, k, 2 * r, 2 * r, generator=gen)]
    return images, heatmaps, masks, outputs


def test_save_debug_images_files_and_grid_shapes(tmp_path):
    cfg = load_cfg(TINY_HRNET, "DEBUG.SAVE_BATCH_IMAGES_GT", "True")
    images, heatmaps, masks, outputs = _debug_batch()
    joints = torch.zeros(2, 30, 17, 2, dtype=torch.int64)
    joints[0, 0, 5] = torch.tensor([5 * 64 * 64 + 10 * 64 + 20, 1])
    joints[0, 0, 6] = torch.tensor([6 * 64 * 64 + 10 * 64 + 40, 1])
    prefix = tmp_path / "train_0_output_64"
    grids = save_debug_images(cfg, images, heatmaps, masks, outputs[0], prefix, batch_joints=joints)
    assert set(grids) == {"hm_gt", "hm_pred", "tag_pred", "gt"}
    for name in ("hm_gt", "hm_pred", "tag_pred"):
        assert grids[name].shape == (2 * 64, 18 * 64, 3)
    assert grids["gt"].shape == (2 + 256 + 2, 2 * (256 + 2) + 2, 3)
    # the shoulders (x 20 and 40 at 1/4, y 10) are drawn as a limb in person 0's colour at x4 scale
    color = np.array(vis.person_color(0))
    assert (grids["gt"][2 + 42, 2 + 120] == color).all()
    for name, grid in grids.items():
        back = cv2.imread(f"{prefix}_{name}.jpg")
        assert back is not None and back.shape == grid.shape
    # the 1/2 output has no tag channels: no tag grid
    grids = save_debug_images(cfg, images, None, None, outputs[1], tmp_path / "train_0_output_128")
    assert set(grids) == {"hm_pred"} and grids["hm_pred"].shape == (2 * 128, 18 * 128, 3)
    # prefix None: grids only, no files
    before = sorted(os.listdir(tmp_path))
    assert set(save_debug_images(cfg, images, heatmaps, masks, outputs[0], None)) == {
        "hm_gt",
        "hm_pred",
        "tag_pred",
    }
    assert sorted(os.listdir(tmp_path)) == before


def test_save_debug_images_honours_debug_keys(tmp_path):
    images, heatmaps, masks, outputs = _debug_batch(b=1)
    off = load_cfg(TINY_HRNET, "DEBUG.DEBUG", "False")
    assert save_debug_images(off, images, heatmaps, masks, outputs[0], tmp_path / "x") == {}
    only_tags = load_cfg(TINY_HRNET, "DEBUG.SAVE_HEATMAPS_GT", "False", "DEBUG.SAVE_HEATMAPS_PRED", "False")
    assert set(save_debug_images(only_tags, images, heatmaps, masks, outputs[0], tmp_path / "y")) == {"tag_pred"}
    assert sorted(os.listdir(tmp_path)) == ["y_tag_pred.jpg"]


def test_save_debug_images_pred_panel_groups_people():
    cfg = load_cfg(TINY_HRNET, "DEBUG.SAVE_BATCH_IMAGES_PRED", "True", "DEBUG.SAVE_HEATMAPS_PRED", "False")
    k, r = 17, 64
    images = torch.zeros(1, 3, 256, 256)
    outputs = torch.zeros(1, 2 * k, r, r)
    pose = _person(10) / 2  # a person inside the 64 x 64 map
    for j, (x, y) in enumerate(pose[:, :2].astype(int)):
        outputs[0, j, y, x] = 1.0
    # tags: one value everywhere -> all joints form a single person
    grids = save_debug_images(cfg, images, None, None, outputs, None)
    assert set(grids) == {"tag_pred", "pred"}
    color = np.array(vis.person_color(0))
    assert grids["pred"].shape == (260, 260, 3)
    assert ((grids["pred"] == color).all(axis=-1)).sum() > 100  # the skeleton of person 0 is drawn
