"""PoseEstimator: the poses of valid.py's results file, the input forms it takes, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import higherpose
from higherpose.apis.estimator import Person, PoseEstimator
from higherpose.config import ConfigError
from higherpose.dataset import synthetic
from higherpose.models import build_model
from tests.conftest import TINY_HRNET, load_cfg, load_tool

# An untrained model's heatmaps sit near its 1 % prior: this threshold lets it find many "persons",
# so the comparison covers grouping, refine and the back-projection of many joints.
OPTS = ["DEVICE", "cpu", "TEST.DETECTION_THRESHOLD", "0.004", "DATASET.MAX_NUM_PEOPLE", "8", "DEBUG.DEBUG", "False"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A small synthetic set and the weights of a randomly initialised tiny HigherHRNet."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.ensure_synthetic(str(root), num_train=2, num_val=3, verbose=False)
    torch.manual_seed(0)
    weights = root / "random.pth"
    torch.save(build_model(load_cfg(TINY_HRNET), is_train=False).state_dict(), weights)
    return root, weights


def test_same_poses_as_valid_results_file(setup, tmp_path: Path) -> None:
    root, weights = setup
    opts = [*OPTS, "DATASET.ROOT", str(root), "OUTPUT_DIR", str(tmp_path), "LOG_DIR", str(tmp_path / "log")]
    load_tool("valid").main(["--cfg", str(TINY_HRNET), *opts, "TEST.MODEL_FILE", str(weights)])
    (results_file,) = tmp_path.rglob("keypoints_val_results.json")
    results = json.loads(results_file.read_text())

    estimator = PoseEstimator.from_config(TINY_HRNET, weights, opts=opts)
    images = json.loads((root / "annotations" / "person_keypoints_val.json").read_text())["images"]
    paths = [root / "images" / "val" / image["file_name"] for image in images]
    found = estimator(paths)
    assert sum(len(people) for people in found) == len(results) > 0
    for image, people in zip(images, found):
        rows = [r for r in results if r["image_id"] == image["id"]]
        assert len(rows) == len(people)
        for row, person in zip(rows, people):
            np.testing.assert_allclose(person.keypoints.ravel(), row["keypoints"], atol=1e-6)
            assert person.score == pytest.approx(row["score"], abs=1e-9)


def test_input_forms_and_persons(setup) -> None:
    root, weights = setup
    estimator = higherpose.PoseEstimator.from_config(TINY_HRNET, weights, opts=[*OPTS, "DATASET.ROOT", str(root)])
    path = sorted((root / "images" / "val").glob("*.jpg"))[0]
    by_path = estimator(path)
    by_array = estimator(cv2.imread(str(path)))
    (in_list,) = estimator([str(path)])
    assert len(by_path) > 0 and all(isinstance(p, Person) for p in by_path)
    for a, b, c in zip(by_path, by_array, in_list):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.keypoints, c.keypoints)
    person = by_path[0]
    assert person.keypoints.shape == (17, 3) and person.names[:2] == ("nose", "left_eye")
    assert list(person.as_dict()) == list(person.names)
    assert person.as_dict()["nose"] == tuple(float(v) for v in person.keypoints[0])


def test_from_a_config_object_and_errors(setup, tmp_path: Path) -> None:
    root, weights = setup
    cfg = load_cfg(TINY_HRNET, *OPTS)
    estimator = PoseEstimator.from_config(cfg, weights, device="cpu", opts=["TEST.FLIP_TEST", "False"])
    assert estimator.cfg.TEST.FLIP_TEST is False and cfg.TEST.FLIP_TEST is True  # the caller's config untouched
    with pytest.raises(FileNotFoundError, match="missing.jpg: cannot read"):
        estimator(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"BGR uint8 array \(H, W, 3\)"):
        estimator(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="BGR uint8"):
        estimator(np.zeros((64, 64, 3), np.float32))


def _val_images(root: Path, copies: int = 1) -> list[np.ndarray]:
    """The validation images as RGB arrays, and mirrored copies to have more of them."""
    paths = sorted((root / "images" / "val").glob("*.jpg"))
    images = [np.ascontiguousarray(cv2.imread(str(p))[..., ::-1]) for p in paths]
    for _ in range(copies - 1):
        images += [np.ascontiguousarray(im[:, ::-1]) for im in images[: len(paths)]]
    return images


@pytest.mark.parametrize("per_gpu", [1, 2])
def test_image_threads_give_the_poses_of_one_image_at_a_time(setup, per_gpu: int) -> None:
    """CPU_IMAGE_THREADS 2 runs each image's operations on one thread: the same operations as one image
    at a time on one thread, so the same poses, in the input's order, with torch's threads restored."""
    root, weights = setup
    opts = [*OPTS, "DATASET.ROOT", str(root), "TEST.IMAGES_PER_GPU", str(per_gpu)]
    one = PoseEstimator.from_config(TINY_HRNET, weights, opts=[*opts, "TEST.CPU_IMAGE_THREADS", "1"])
    two = PoseEstimator(load_cfg(TINY_HRNET, *opts, "TEST.CPU_IMAGE_THREADS", "2"), one.model)
    assert one.image_threads == 1 and two.image_threads == 2
    images = _val_images(root, copies=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = one.predict_rgb(images)
        torch.set_num_threads(2)  # split between the two image threads: one each
        got = two.predict_rgb(images)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(got) == len(images) and sum(len(poses) for poses, _ in got) > 0
    for (poses_a, scores_a), (poses_b, scores_b) in zip(expected, got):
        assert scores_a == scores_b
        for a, b in zip(poses_a, poses_b):
            np.testing.assert_array_equal(a, b)


def test_predict_stream_takes_images_as_threads_free_up(setup) -> None:
    root, weights = setup
    opts = [*OPTS, "DATASET.ROOT", str(root), "TEST.CPU_IMAGE_THREADS", "2"]
    estimator = PoseEstimator.from_config(TINY_HRNET, weights, opts=opts)
    images = _val_images(root, copies=4)
    taken: list[int] = []

    def source():
        for i, image in enumerate(images):
            taken.append(i)
            yield image

    stream = estimator.predict_stream(source())
    first = next(stream)
    assert len(taken) <= 2 * estimator.image_threads + 1 < len(images)  # at most two forwards a thread waiting
    rest = list(stream)
    assert len(taken) == len(images) == 1 + len(rest)
    expected = estimator.predict_rgb(images[:1])[0]
    assert first[1] == expected[1] and all(np.array_equal(a, b) for a, b in zip(first[0], expected[0]))


def test_image_threads_setting(setup) -> None:
    root, weights = setup
    estimator = PoseEstimator.from_config(TINY_HRNET, weights, opts=[*OPTS, "DATASET.ROOT", str(root)])
    assert estimator.image_threads == min(torch.get_num_threads(), 4)  # 0: automatic
    assert PoseEstimator(estimator.cfg, lambda x: estimator.model(x)).image_threads == 1  # a plain callable

    class Runtime(torch.nn.Module):  # as OnnxPoseNet: a module without parameters, the runtime's threads
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return estimator.model(x)

    assert PoseEstimator(estimator.cfg, Runtime()).image_threads == 1
    with pytest.raises(ConfigError, match="TEST.CPU_IMAGE_THREADS = -1"):
        load_cfg(TINY_HRNET, *OPTS, "TEST.CPU_IMAGE_THREADS", "-1")


@pytest.mark.parametrize("per_gpu", [1, 2])
def test_overlapped_grouping_gives_the_poses_in_order(setup, per_gpu: int) -> None:
    """The GPU scheme (forwards here, grouping on a second thread one forward behind) forced on the CPU:
    the plain path's poses in the input's order, images of two sizes mixed in a forward's batch."""
    root, weights = setup
    opts = [*OPTS, "DATASET.ROOT", str(root), "TEST.IMAGES_PER_GPU", str(per_gpu), "TEST.CPU_IMAGE_THREADS", "1"]
    estimator = PoseEstimator.from_config(TINY_HRNET, weights, opts=opts)
    assert not estimator.overlaps  # parameters on the CPU
    images = _val_images(root, copies=2)
    images.insert(1, np.ascontiguousarray(images[0][: images[0].shape[0] // 2]))  # another input size
    expected = list(estimator.predict_stream(images, overlap=False))
    got = list(estimator.predict_stream(iter(images), overlap=True))
    assert len(got) == len(images) and sum(len(poses) for poses, _ in got) > 0
    for (poses_a, scores_a), (poses_b, scores_b) in zip(expected, got):
        assert scores_a == scores_b and len(poses_a) == len(poses_b)
        for a, b in zip(poses_a, poses_b):
            np.testing.assert_array_equal(a, b)
