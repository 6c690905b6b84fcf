"""tools/demo.py on an image, a folder (with a corrupt file) and a short video, run in-process through
``main(argv)`` with a saved checkpoint of the tiny model.

For the image, folder and video runs the checkpoint loads strictly into the tiny network, whose forward
is then replaced by ``PerfectModel``: heatmaps and tags rendered from one known person placed in each
picture. Every run must therefore report exactly that person, at its joints, in the JSON and draw its
skeleton on the picture; a demo that loses, misplaces or does not draw people fails."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from higherpose.apis.demo import image_id_for
from higherpose.models import build_model
from higherpose.utils.checkpoint import CheckpointError, save_atomic
from higherpose.utils.vis import person_color
from tests.conftest import TINY_HRNET, load_cfg, load_tool

demo = load_tool("demo")

# A standing person's 17 COCO joints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles),
# in a 40 x 93 px box with its top-left corner at (0, 0).
STANDING = np.array(
    [(20, 3), (17, 0), (23, 0), (13, 2), (27, 2), (10, 18), (30, 18), (5, 35), (35, 35), (3, 51), (37, 51),
     (13, 53), (27, 53), (12, 73), (28, 73), (11, 93), (29, 93)],
    dtype=np.float64,
)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny HigherHRNet saved like a training checkpoint."""
    torch.manual_seed(0)
    model = build_model(load_cfg(TINY_HRNET), is_train=False)
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    save_atomic({"epoch": 0, "model": model.state_dict()}, str(path))
    return path


@pytest.fixture
def known_people(perfect_model):
    """A list to fill with ``(RGB picture, annotations)``: the network demo.py builds (and loads the
    checkpoint into) then outputs perfect heatmaps and tags of those annotations for those pictures."""
    return perfect_model


def _picture(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.circle(image, (w // 2, h // 3), 12, (255, 255, 255), -1)
    return image


def _person(x0: float, y0: float, size: float = 0.8) -> np.ndarray:
    """(17, 2) joints in image pixels: :data:`STANDING` scaled by ``size``, its box corner at (x0, y0)."""
    return STANDING * size + (x0, y0)


def _show(samples: list, image_bgr: np.ndarray, joints: np.ndarray) -> None:
    """Make the forced network see one person with ``joints`` in the picture ``image_bgr`` (as the demo
    decodes it)."""
    keypoints = np.concatenate([joints, np.full((len(joints), 1), 2.0)], axis=1).reshape(-1).tolist()
    samples.append((image_bgr[..., ::-1].copy(), [{"keypoints": keypoints}]))


def _assert_found(results: list[dict], image_id: int, joints: np.ndarray) -> None:
    """``results`` hold exactly one person for ``image_id``, with every joint within a pixel of ``joints``."""
    mine = [r for r in results if r["image_id"] == image_id]
    assert len(mine) == 1, f"image {image_id}: {len(mine)} persons, expected the one shown"
    assert mine[0]["category_id"] == 1 and mine[0]["score"] > 0.5
    kpts = np.reshape(mine[0]["keypoints"], (17, 3))
    np.testing.assert_allclose(kpts[:, :2], joints, atol=1.0, err_msg=f"image {image_id}")
    assert (kpts[:, 2] > 0.5).all()


def _assert_drawn(drawn: np.ndarray, joints: np.ndarray, tol: int) -> None:
    """Every joint is covered by person 0's colour (joints are filled circles of radius 3 here);
    ``tol``: per-channel tolerance for lossy formats."""
    x, y = np.round(joints).astype(int).T
    deviation = np.abs(drawn[y, x].astype(int) - np.array(person_color(0))).max(axis=1)
    assert (deviation <= tol).all(), f"joints not drawn in person 0's colour, deviations {deviation}"


# Flip, refinement and multi-scale are predict_image's tests: few people and no refinement keep the
# runs short (flip stays on for the single image).
FAST = ["TEST.REFINE", "False", "DATASET.MAX_NUM_PEOPLE", "5", "DEVICE", "cpu"]
LOSSY_TOL = 40  # JPEG and MPEG-4 artefacts on a noise picture move a joint's colour by up to ~12


def _run(inp, out, checkpoint, *extra, flip=False):
    argv = ["--cfg", str(TINY_HRNET), "--input", str(inp), "--output", str(out), *extra]
    return demo.main([*argv, "TEST.MODEL_FILE", str(checkpoint), *FAST, "TEST.FLIP_TEST", str(flip)])


def test_demo_single_image(tmp_path, checkpoint, known_people):
    image_path = tmp_path / "000000000139.jpg"
    cv2.imwrite(str(image_path), _picture(0))
    joints = _person(40, 2)
    _show(known_people, cv2.imread(str(image_path)), joints)
    out = tmp_path / "out"
    assert _run(image_path, out, checkpoint, "--threshold", "0.0", flip=True) == 0
    drawn = cv2.imread(str(out / "000000000139.jpg"))
    assert drawn is not None and drawn.shape == (96, 128, 3)
    _assert_drawn(drawn, joints, LOSSY_TOL)
    results = json.loads((out / "000000000139_keypoints.json").read_text())
    assert isinstance(results, list)
    for r in results:  # COCO result format, image id from the numeric file stem
        assert r["image_id"] == 139 and r["category_id"] == 1 and len(r["keypoints"]) == 17 * 3
    _assert_found(results, 139, joints)


def test_demo_folder_skips_corrupt_image(tmp_path, checkpoint, known_people, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), _picture(1))
    cv2.imwrite(str(folder / "b.png"), _picture(2, 80, 80))
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    people = {"a.jpg": _person(70, 1), "b.png": _person(20, 4, size=0.7)}
    for name, joints in people.items():
        _show(known_people, cv2.imread(str(folder / name)), joints)
    out = tmp_path / "out"
    assert _run(folder, out, checkpoint) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png", "images_keypoints.json"]
    assert cv2.imread(str(out / "b.png")).shape == (80, 80, 3)
    _assert_drawn(cv2.imread(str(out / "a.jpg")), people["a.jpg"], LOSSY_TOL)
    _assert_drawn(cv2.imread(str(out / "b.png")), people["b.png"], 0)  # PNG: exact colour
    err = capsys.readouterr().err
    assert "skipped unreadable image" in err and "broken.jpg" in err
    assert "skipped 1 unreadable image(s)" in err
    assert "demo: 3/3" in err  # progress line: done/total
    results = json.loads((out / "images_keypoints.json").read_text())
    # non-numeric stems: the image's index in the sorted folder
    assert {r["image_id"] for r in results} == {0, 1}
    _assert_found(results, 0, people["a.jpg"])
    _assert_found(results, 1, people["b.png"])


def test_demo_video(tmp_path, checkpoint, known_people, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    assert writer.isOpened()
    for i in range(3):
        writer.write(_picture(10 + i))
    writer.release()
    people = [_person(10 + 30 * i, 2) for i in range(3)]  # the person walks right: each frame its own pose
    cap = cv2.VideoCapture(str(video))
    for joints in people:
        ok, frame = cap.read()
        assert ok
        _show(known_people, frame, joints)
    cap.release()
    out = tmp_path / "out"
    assert _run(video, out, checkpoint, "--save-frames") == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_frames", "clip_keypoints.json", "clip_pose.mp4"]
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    for i, joints in enumerate(people):
        _assert_drawn(cv2.imread(str(out / "clip_frames" / f"{i:06d}.jpg")), joints, LOSSY_TOL)
    cap = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        _assert_drawn(frame, people[frames], LOSSY_TOL)
        frames += 1
    cap.release()
    assert frames == 3
    results = json.loads((out / "clip_keypoints.json").read_text())
    assert {r["image_id"] for r in results} == {0, 1, 2}  # the frame index
    for i, joints in enumerate(people):
        _assert_found(results, i, joints)
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

    assert image_id_for(Path("000000000785.jpg"), 5) == 785
    assert image_id_for(Path("frame_a.jpg"), 5) == 5
