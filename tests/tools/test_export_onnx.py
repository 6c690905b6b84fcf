"""tools/export_onnx.py on the tiny HigherHRNet and HigherPose configs: export, onnxruntime check
(in-process through ``main(argv)``), dynamic axes, and grouping on onnxruntime outputs."""

from __future__ import annotations

import re

import cv2
import numpy as np
import onnx
import pytest
import torch

from higherpose.models import build_model
from higherpose.utils.checkpoint import CheckpointError, save_atomic
from tests.conftest import SHARED_DATA, TINY_HRNET, TINY_SAT, load_cfg, load_tool

export_onnx = load_tool("export_onnx")


def _random_checkpoint(cfg_path, path):
    """Random weights where every branch matters: the zero-initialised SAT gates (gamma, dynamic
    heatmap) are filled too, otherwise the transformer would not reach the outputs."""
    torch.manual_seed(0)
    model = build_model(load_cfg(cfg_path), is_train=False)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    save_atomic(model.state_dict(), str(path))
    return model.eval()


def _real_image(tmp_path):
    """A COCO sample image when ../shared/data is there, else the tool's pattern written as a file."""
    images = sorted((SHARED_DATA / "coco_sample").rglob("*.jpg"))
    if images:
        return images[0]
    path = tmp_path / "pattern.jpg"
    cv2.imwrite(str(path), export_onnx.test_pattern(200, 300)[..., ::-1])
    return path


@pytest.mark.parametrize("cfg_path", [TINY_HRNET, TINY_SAT], ids=["pose_higher_hrnet", "higher_pose"])
def test_export_and_onnxruntime_check(cfg_path, tmp_path, capsys):
    model = _random_checkpoint(cfg_path, tmp_path / "model.pth")
    out = tmp_path / "model.onnx"
    image = _real_image(tmp_path)
    argv = ["--cfg", str(cfg_path), "--output", str(out), "--image", str(image)]
    # An untrained network's heatmaps are nearly flat, so float rounding reorders its candidates at
    # the configs' thresholds; HigherHRNet's threshold (0.1), 5 persons and no refine keep its few
    # detections distinct, so the poses of the two runtimes can be compared.
    weak = ["TEST.REFINE", "False", "DATASET.MAX_NUM_PEOPLE", "5", "TEST.DETECTION_THRESHOLD", "0.1"]
    assert export_onnx.main([*argv, "TEST.MODEL_FILE", str(tmp_path / "model.pth"), *weak]) == 0
    text = capsys.readouterr().out
    assert "OK: max abs difference" in text
    assert text.count("max abs diff ") == 2
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".onnx" or ".tmp" in p.name] == ["model.onnx"]
    # The whole inference (PoseEstimator) on onnxruntime's outputs: the same poses as with PyTorch.
    found = re.search(r"PyTorch (\d+) persons, onnxruntime (\d+), largest keypoint difference (\S+) px", text)
    assert found and found[1] == found[2] and float(found[3]) <= 0.05
    if cfg_path == TINY_HRNET:
        assert int(found[1]) > 0

    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["heatmaps_tags_1_4", "heatmaps_1_2"]
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]  # channels fixed, the rest symbolic

    if cfg_path == TINY_HRNET:  # a network whose maps are one pixel off finds other poses: the check fails
        cfg = load_cfg(cfg_path, *weak)
        rgb = np.ascontiguousarray(cv2.imread(str(image))[..., ::-1])

        def shifted(x):
            return [o.roll(1, dims=-1) for o in model(x)]

        n_ref, _, moved = export_onnx.compare_poses(cfg, model, shifted, rgb)
        assert n_ref > 0 and not moved <= 0.05


def test_pattern_note_and_errors(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="TEST.MODEL_FILE is not set"):
        export_onnx.main(["--cfg", str(TINY_HRNET), "--output", str(tmp_path / "a.onnx")])
    with pytest.raises(ValueError, match="opset"):
        export_onnx.main(["--cfg", str(TINY_HRNET), "--opset", "11", "--random-weights"])
    cfg = load_cfg(TINY_HRNET)
    x = export_onnx.check_input(cfg, "")
    assert "test pattern" in capsys.readouterr().out
    assert x.shape == (2, 3, 256, 384)  # 480 x 360 pattern: short side 256, long side up to /64
    torch.testing.assert_close(x[1], x[0].flip(-1))  # the batch is the image and its mirror
    with pytest.raises(FileNotFoundError, match="cannot read"):
        export_onnx.check_input(cfg, str(tmp_path / "missing.jpg"))


def test_compare_and_output_names(capsys):
    a = [torch.zeros(2, 34, 8, 12), torch.zeros(2, 17, 16, 24)]
    b = [torch.zeros(2, 34, 8, 12), torch.full((2, 17, 16, 24), 0.5)]
    assert export_onnx.compare(["x", "y"], a, b) == 0.5
    assert export_onnx.compare(["x", "y"], a, [a[0], torch.zeros(2, 17, 16, 20)]) == float("inf")
    assert "!= PyTorch" in capsys.readouterr().out
    assert export_onnx.output_names(a, 48, 17) == ["heatmaps_tags_1_4", "heatmaps_1_2"]
