"""Sharded validation: two gloo ranks write the results file and the AP table of one process, and an
error on one rank stops every rank (none waits in a collective)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from higherpose.core.validation import ValidationError, _Progress, run_validation
from higherpose.dataset import synthetic
from higherpose.models import build_model
from higherpose.utils import distributed as du
from higherpose.utils import launch
from tests.conftest import REPO, TINY_HRNET, load_cfg, load_tool
from tests.core.test_inference import PerfectModel, _samples


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.ensure_synthetic(str(root), num_train=2, num_val=5, verbose=False)
    return root


def _cfg(root: Path, *opts):
    return load_cfg(TINY_HRNET, "DATASET.ROOT", str(root), "DEVICE", "cpu", "DEBUG.DEBUG", "False", *opts)


def _perfect_model(cfg, root: Path) -> PerfectModel:
    """Outputs the ground-truth maps of the synthetic validation image in its input."""
    samples, _ = _samples(root, root / "annotations" / "person_keypoints_val.json", root / "images" / "val")
    return PerfectModel(cfg, samples)


def _rank(local_rank: int, init_method: str, root: str, out: str, fail_rank: int) -> None:
    """One of two ranks: the perfect model's validation; rank ``fail_rank`` breaks its forward."""
    cfg = _cfg(Path(root), "DIST_TIMEOUT_MIN", "2")
    launch.join_group(cfg, local_rank, local_rank, 2, init_method, 2)
    model = _perfect_model(cfg, Path(root))
    if local_rank == fail_rank:

        def broken(x: torch.Tensor) -> None:
            raise RuntimeError("broken forward")

        model.forward = broken
    try:
        metrics, results = run_validation(cfg, model, out)
        if local_rank == 0:
            Path(out, "metrics.json").write_text(json.dumps(metrics))
    except ValidationError as err:
        Path(out, f"error_rank{local_rank}.txt").write_text(str(err))
    finally:
        du.cleanup()


def _results(out: Path) -> list[dict]:
    return json.loads((out / "results" / "keypoints_val_results.json").read_text())


def test_two_ranks_write_the_results_and_table_of_one_process(synthetic_val: Path, tmp_path: Path) -> None:
    cfg = _cfg(synthetic_val)
    torch.set_num_threads(1)  # as each of the two ranks on two cores: the same float sums
    try:
        one, _ = run_validation(cfg, _perfect_model(cfg, synthetic_val), str(tmp_path / "one"))
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    assert one["AP"] > 0.9  # the perfect model finds the persons: a lost image would show

    two = tmp_path / "two"
    assert launch.spawn(_rank, 2, (str(synthetic_val), str(two), -1), 2, "test: validation") == 0
    assert json.loads((two / "metrics.json").read_text()) == dict(one)
    # the same file: the images in the data set's order, each image's persons as one process found them
    assert _results(two) == _results(tmp_path / "one")
    images = json.loads((synthetic_val / "annotations" / "person_keypoints_val.json").read_text())["images"]
    assert {r["image_id"] for r in _results(two)} == {image["id"] for image in images}


def synthetic_val_ids(root: Path) -> list[int]:
    return [
        image["id"] for image in json.loads((root / "annotations" / "person_keypoints_val.json").read_text())["images"]
    ]


def test_an_error_on_one_rank_stops_every_rank(synthetic_val: Path, tmp_path: Path) -> None:
    assert launch.spawn(_rank, 2, (str(synthetic_val), str(tmp_path), 1), 2, "test: validation") == 0
    for rank in (0, 1):
        message = (tmp_path / f"error_rank{rank}.txt").read_text()
        assert message.startswith("rank 1: RuntimeError: broken forward")
    assert not (tmp_path / "metrics.json").exists()


def test_progress_counts_the_whole_set(caplog) -> None:
    import logging

    logger = logging.getLogger("test.progress")
    progress = _Progress(10, logger, use_bar=False, every=4, ranks=2)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(3):
            progress.update()  # rank 0's third image: about six of the ten
        progress.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("valid: 4/10 images on 2 ranks") and lines[-1].startswith("valid: 10/10 images")
    silent = _Progress(10, None, use_bar=False, every=1)
    silent.update(10)  # no logger: no line, no error


def test_validation_inside_two_process_training_equals_valid_py(synthetic_val: Path, tmp_path: Path) -> None:
    """``TRAIN.VAL_FREQ`` in a 2-process gloo run: each rank validates its share; the results file and
    the AP equal a one-process valid.py run on the weights it saved."""
    # An untrained network at a low detection threshold finds many "persons": every image has results.
    test = ["TEST.DETECTION_THRESHOLD", "0.004", "DATASET.MAX_NUM_PEOPLE", "4", "TRAIN.CHANNELS_LAST", "False"]
    common = ["DATASET.ROOT", str(synthetic_val), "DEVICE", "cpu", "DEBUG.DEBUG", "False", "WORKERS", "0", *test]
    train = ["TRAIN.END_EPOCH", "1", "TRAIN.ITERS_PER_EPOCH", "1", "TRAIN.IMAGES_PER_GPU", "1", "TRAIN.VAL_FREQ", "1"]
    out = ["OUTPUT_DIR", str(tmp_path / "train"), "LOG_DIR", str(tmp_path / "train" / "log")]
    command = [sys.executable, str(REPO / "tools" / "dist_train.py"), "--nproc", "2", "--cfg", str(TINY_HRNET)]
    subprocess.run([*command, *common, *train, *out], check=True, cwd=REPO, capture_output=True, timeout=900)
    (folder,) = (tmp_path / "train").glob("coco_kpt/*/*")
    during = json.loads((folder / "results" / "keypoints_val_results.json").read_text())
    log = next(folder.glob("train_*_rank0.log")).read_text()
    ap = float(re.search(r"epoch 0 validation AP (\S+)", log)[1])

    again = ["OUTPUT_DIR", str(tmp_path / "valid"), "LOG_DIR", str(tmp_path / "valid" / "log")]
    weights = ["TEST.MODEL_FILE", str(folder / "final_state.pth")]
    torch.set_num_threads(1)  # as each training rank
    try:
        metrics = load_tool("valid").main(["--cfg", str(TINY_HRNET), *common, *again, *weights])
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    (results_file,) = (tmp_path / "valid").rglob("keypoints_val_results.json")
    alone = json.loads(results_file.read_text())
    assert len(during) == len(alone) > 0
    assert [r["image_id"] for r in during] == [r["image_id"] for r in alone]
    # Training validates its own network; valid.py folds the BatchNorms first, so values agree to float
    # rounding, which sub-pixel refinement can lift to about 2e-4 px (seen on an AVX-512 CPU).
    for a, b in zip(during, alone):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=5e-4)
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert ap == pytest.approx(metrics["AP"], abs=1e-4)


def test_valid_py_under_torchrun_equals_one_process(synthetic_val: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 tools/valid.py``: env:// ranks, one results file equal to one process's."""
    test = ["TEST.DETECTION_THRESHOLD", "0.004", "DATASET.MAX_NUM_PEOPLE", "4"]
    common = ["DATASET.ROOT", str(synthetic_val), "DEVICE", "cpu", "DEBUG.DEBUG", "False", *test]
    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save(build_model(load_cfg(TINY_HRNET), is_train=False).state_dict(), weights)
    common += ["TEST.MODEL_FILE", str(weights)]

    port = str(du.find_free_port())  # torchrun's static rendezvous needs a real port (0 is passed on as is)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    out = ["OUTPUT_DIR", str(tmp_path / "two"), "LOG_DIR", str(tmp_path / "two" / "log")]
    command = [*torchrun, str(REPO / "tools" / "valid.py"), "--cfg", str(TINY_HRNET), *common, *out]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, timeout=900)
    torch.set_num_threads(1)  # as each rank (torchrun sets OMP_NUM_THREADS 1)
    try:
        out = ["OUTPUT_DIR", str(tmp_path / "one"), "LOG_DIR", str(tmp_path / "one" / "log")]
        load_tool("valid").main(["--cfg", str(TINY_HRNET), *common, *out])
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    (two,), (one,) = ((tmp_path / d).rglob("keypoints_val_results.json") for d in ("two", "one"))
    sharded, alone = json.loads(two.read_text()), json.loads(one.read_text())
    assert len(sharded) == len(alone) > 0
    for a, b in zip(sharded, alone):
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-4)
    (metrics_two,), (metrics_one,) = ((tmp_path / d).rglob("metrics_val.json") for d in ("two", "one"))
    assert json.loads(metrics_two.read_text())["metrics"] == json.loads(metrics_one.read_text())["metrics"]


def test_keypoint_categories_sharing_one_skeleton_are_evaluated_as_one_class(
    synthetic_val: Path, tmp_path: Path
) -> None:
    """Half of the persons moved to a second category declared with the same keypoints: validation
    gives the AP of the one-category file, not an average over categories with one left empty."""
    root = tmp_path / "two_categories"
    shutil.copytree(synthetic_val, root)
    ann_file = root / "annotations" / "person_keypoints_val.json"
    data = json.loads(ann_file.read_text())
    data["categories"].append(dict(data["categories"][0], id=2, name="child"))
    for ann in data["annotations"][::2]:
        ann["category_id"] = 2
    ann_file.write_text(json.dumps(data))
    model = _perfect_model(_cfg(synthetic_val), synthetic_val)
    one, _ = run_validation(_cfg(synthetic_val), model, str(tmp_path / "one"))
    two, _ = run_validation(_cfg(root), model, str(tmp_path / "two"))
    assert one["AP"] > 0.9 and two == one
    only_first, _ = run_validation(_cfg(root, "DATASET.CATEGORY_IDS", "[1]"), model, str(tmp_path / "first"))
    assert only_first["AP"] < one["AP"]  # the persons of category 2 are found, and are false positives now


def test_validation_turns_cudnn_benchmark_off_while_it_predicts(
    synthetic_val: Path, tmp_path: Path, monkeypatch
) -> None:
    """Test images differ in shape: no per-shape benchmarking there; the flag is as it was afterwards."""
    from higherpose.core import validation

    cfg = _cfg(synthetic_val)
    seen = []
    share = validation._predict_share

    def predict(*args, **kwargs):
        seen.append(torch.backends.cudnn.benchmark)
        return share(*args, **kwargs)

    monkeypatch.setattr(validation, "_predict_share", predict)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    run_validation(cfg, _perfect_model(cfg, synthetic_val), str(tmp_path))
    assert seen == [False] and torch.backends.cudnn.benchmark is True


def test_validation_as_on_a_gpu_writes_the_results_of_the_cpu_scheme(
    synthetic_val: Path, tmp_path: Path, monkeypatch
) -> None:
    """Loader workers reading ahead and the grouping beside the forwards (what a GPU model gets) forced
    on the CPU: the same results file and metrics as the CPU scheme."""
    from higherpose.core import validation
    from higherpose.core.predictor import Predictor

    cfg = _cfg(synthetic_val, "WORKERS", "2")
    model = _perfect_model(cfg, synthetic_val)
    plain, _ = run_validation(cfg, model, str(tmp_path / "plain"))
    workers = []

    def gpu_workers(cfg, device):
        workers.append(int(cfg.WORKERS))
        return int(cfg.WORKERS)

    monkeypatch.setattr(validation, "test_workers", gpu_workers)
    monkeypatch.setattr(Predictor, "overlaps", property(lambda self: True))
    overlapped, _ = run_validation(cfg, model, str(tmp_path / "gpu"))
    assert workers == [2] and overlapped == plain and plain["AP"] > 0.9
    assert _results(tmp_path / "gpu") == _results(tmp_path / "plain")
