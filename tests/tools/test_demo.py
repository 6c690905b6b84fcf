"""tools/demo.py on an image, a folder (with a corrupt file) and a short video, with the tiny model
and a randomly initialised checkpoint, run in-process through ``main(argv)``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from higherpose.models import build_model
from higherpose.utils.checkpoint import CheckpointError, save_atomic
from tests.conftest import TINY_HRNET, load_cfg, load_tool

demo = load_tool("demo")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny HigherHRNet saved like a training checkpoint."""
    torch.manual_seed(0)
    model = build_model(load_cfg(TINY_HRNET), is_train=False)
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    save_atomic({"epoch": 0, "model": model.state_dict()}, str(path))
    return path


def _picture(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.circle(image, (w // 2, h // 3), 12, (255, 255, 255), -1)
    return image


# An untrained model fires everywhere: few people and no refinement keep the runs short (flip,
# refine and multi-scale are predict_image's tests; flip stays on for the single image).
FAST = ["TEST.REFINE", "False", "DATASET.MAX_NUM_PEOPLE", "5", "DEVICE", "cpu"]


def _run(inp, out, checkpoint, *extra, flip=False):
    argv = ["--cfg", str(TINY_HRNET), "--input", str(inp), "--output", str(out), *extra]
    return demo.main([*argv, "TEST.MODEL_FILE", str(checkpoint), *FAST, "TEST.FLIP_TEST", str(flip)])


def test_demo_single_image(tmp_path, checkpoint):
    image_path = tmp_path / "000000000139.jpg"
    cv2.imwrite(str(image_path), _picture(0))
    out = tmp_path / "out"
    assert _run(image_path, out, checkpoint, "--threshold", "0.0", flip=True) == 0
    drawn = cv2.imread(str(out / "000000000139.jpg"))
    assert drawn is not None and drawn.shape == (96, 128, 3)
    results = json.loads((out / "000000000139_keypoints.json").read_text())
    assert isinstance(results, list)
    for r in results:  # COCO result format, image id from the numeric file stem
        assert r["image_id"] == 139 and r["category_id"] == 1 and len(r["keypoints"]) == 17 * 3


def test_demo_folder_skips_corrupt_image(tmp_path, checkpoint, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), _picture(1))
    cv2.imwrite(str(folder / "b.png"), _picture(2, 80, 80))
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"
    assert _run(folder, out, checkpoint) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png", "images_keypoints.json"]
    assert cv2.imread(str(out / "b.png")).shape == (80, 80, 3)
    err = capsys.readouterr().err
    assert "skipped unreadable image" in err and "broken.jpg" in err
    assert "skipped 1 unreadable image(s)" in err
    assert "demo: 3/3" in err  # progress line: done/total
    ids = {r["image_id"] for r in json.loads((out / "images_keypoints.json").read_text())}
    assert ids <= {0, 1}  # non-numeric stems: the image's index in the sorted folder


def test_demo_video(tmp_path, checkpoint, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    assert writer.isOpened()
    for i in range(3):
        writer.write(_picture(10 + i))
    writer.release()
    out = tmp_path / "out"
    assert _run(video, out, checkpoint, "--save-frames") == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_frames", "clip_keypoints.json", "clip_pose.mp4"]
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    cap = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 3
    assert {r["image_id"] for r in json.loads((out / "clip_keypoints.json").read_text())} <= {0, 1, 2}
    assert "3 frames" in capsys.readouterr().err


def test_demo_needs_weights_unless_random(tmp_path, capsys):
    image_path = tmp_path / "x.jpg"
    cv2.imwrite(str(image_path), _picture(3, 64, 64))
    argv = ["--cfg", str(TINY_HRNET), "--input", str(image_path), "--output", str(tmp_path / "out")]
    with pytest.raises(CheckpointError, match="TEST.MODEL_FILE is not set"):
        demo.main(argv)
    with pytest.raises(CheckpointError, match="not found"):
        demo.main([*argv, "TEST.MODEL_FILE", str(tmp_path / "missing.pth")])
    assert demo.main([*argv, "--random-weights", *FAST, "TEST.FLIP_TEST", "False"]) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such file"):
        demo.main(["--cfg", str(TINY_HRNET), "--input", str(tmp_path / "nope.jpg"), "--random-weights"])


def test_image_id_for_numeric_stems():
    from pathlib import Path

    assert demo.image_id_for(Path("000000000785.jpg"), 5) == 785
    assert demo.image_id_for(Path("frame_a.jpg"), 5) == 5
