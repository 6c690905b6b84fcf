"""tools/valid.py end to end on the real COCO sample with the tiny model and random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from higherpose.models import build_model
from higherpose.utils.checkpoint import CheckpointError
from tests.conftest import REPO, TINY_HRNET, load_cfg, load_tool
from tests.core.test_inference import _samples

valid = load_tool("valid")


def _opts(coco_sample, out):
    return ["DATASET.ROOT", str(coco_sample), "DATASET.TEST", "val2017", "DATASET.SYNTHETIC", "False",
            "OUTPUT_DIR", str(out), "LOG_DIR", str(out / "log"), "DEVICE", "cpu"]  # fmt: skip


@pytest.fixture
def perfect_outputs(perfect_model, coco_sample):
    """The network valid.py builds (and loads the weights into) outputs perfect heatmaps and tags
    rendered from the ground truth of the COCO sample image in its input."""
    ann_file = coco_sample / "annotations" / "person_keypoints_val2017.json"
    samples, _ = _samples(coco_sample, ann_file, coco_sample / "images" / "val2017")
    perfect_model.extend(samples)


def test_valid_end_to_end(coco_sample, tmp_path, perfect_outputs):
    """The weights load strictly into the tiny network, whose forward outputs perfect maps: every
    person is found, so the evaluator's values are known."""
    torch.manual_seed(0)
    cfg = load_cfg(TINY_HRNET, *_opts(coco_sample, tmp_path))
    weights = tmp_path / "random.pth"
    torch.save(build_model(cfg, is_train=False).state_dict(), weights)

    # The first image only (000000000785: one person, area 27789 > 96^2, i.e. large): the evaluation
    # is restricted to it, so perfect outputs give 1 everywhere but the medium rows, -1 (no such GT);
    # an evaluation over all four images would miss the other images' persons.
    args = ["--cfg", str(TINY_HRNET), *_opts(coco_sample, tmp_path), "TEST.SUBSET", "1"]
    metrics = valid.main([*args, "TEST.MODEL_FILE", str(weights)])
    assert list(metrics)[:3] == ["AP", "Ap .5", "AP .75"]
    medium = {"AP (M)", "AR (M)"}
    assert dict(metrics) == pytest.approx({k: -1.0 if k in medium else 1.0 for k in metrics}, abs=1e-6)

    out = tmp_path / "coco_kpt" / "pose_higher_hrnet" / "higher_hrnet_tiny"
    results = json.loads((out / "results" / "keypoints_val2017_results.json").read_text())
    assert len(results) == 1 and results[0]["image_id"] == 785  # its one person, once
    assert all(len(r["keypoints"]) == 51 for r in results)
    saved = json.loads((out / "metrics_val2017.json").read_text())
    assert saved["metrics"] == dict(metrics)
    log = next(out.glob("valid_*_rank0.log")).read_text()
    assert "| Arch | AP | Ap .5 |" in log and "| pose_hig... |" in log
    assert (out / "result_valid_0.jpg").is_file()  # HigherHRNet's picture every PRINT_FREQ images

    # Without TEST.MODEL_FILE the weights are looked up in the output folder; all four images, their
    # 12 persons with keypoints (medium and large) all found.
    os.replace(weights, out / "final_state.pth")
    whole = ["--cfg", str(TINY_HRNET), *_opts(coco_sample, tmp_path), "TEST.FLIP_TEST", "False", "TEST.REFINE", "False"]
    again = valid.main(whole)
    assert dict(again) == pytest.approx(dict.fromkeys(metrics, 1.0), abs=1e-6)
    results = json.loads((out / "results" / "keypoints_val2017_results.json").read_text())
    assert len(results) == 12 and {r["image_id"] for r in results} == {785, 40083, 196141, 197388}


def test_valid_clear_errors(coco_sample, tmp_path):
    with pytest.raises(CheckpointError, match="model_best.pth"):
        valid.main(["--cfg", str(TINY_HRNET), *_opts(coco_sample, tmp_path)])
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match="missing keys"):
        valid.main(["--cfg", str(TINY_HRNET), *_opts(coco_sample, tmp_path), "TEST.MODEL_FILE", str(wrong)])


def test_valid_device_cuda_without_cuda_stops_before_any_work(coco_sample, tmp_path, monkeypatch):
    from higherpose.config import ConfigError
    from higherpose.utils import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(launch.mp, "spawn", lambda *a, **k: pytest.fail("processes were started"))
    opts = _opts(coco_sample, tmp_path)
    opts[opts.index("DEVICE") + 1] = "cuda"
    with pytest.raises(ConfigError, match="DEVICE = 'cuda': CUDA does not work"):
        valid.main(["--nproc", "2", "--cfg", str(TINY_HRNET), *opts])
    assert not (tmp_path / "coco").exists()


def test_valid_runs_as_a_script(coco_sample, tmp_path):
    """From the repo root, with no path hacks: a missing checkpoint exits non-zero with one clear line."""
    proc = subprocess.run(
        [sys.executable, "tools/valid.py", "--cfg", str(TINY_HRNET), *_opts(coco_sample, tmp_path),
         "TEST.MODEL_FILE", str(tmp_path / "nope.pth")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "valid.py: TEST.MODEL_FILE" in proc.stderr and "nope.pth" in proc.stderr


def _valid_rank(local_rank: int, init_method: str, root: str, out: str, weights: str) -> None:
    """One of two valid.py ranks; rank 1 runs out of GPU memory while loading the model."""
    from pathlib import Path

    cfg = load_cfg(TINY_HRNET, *_opts(Path(root), Path(out)), "TEST.MODEL_FILE", weights)
    load = valid.load_eval_model

    def load_or_run_out(*args, **kwargs):
        if local_rank == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return load(*args, **kwargs)

    valid.load_eval_model = load_or_run_out
    try:
        valid.evaluate(local_rank, local_rank, 2, init_method, cfg, valid.parse_args(["--cfg", str(TINY_HRNET)]))
        message = "evaluated"
    except Exception as err:  # noqa: BLE001 - what each rank ends with is the test's subject
        message = f"{type(err).__name__}: {err}"
    Path(out, f"rank{local_rank}.txt").write_text(message)


def test_valid_an_error_of_any_type_while_loading_stops_every_rank(coco_sample, tmp_path):
    from higherpose.utils import launch

    cfg = load_cfg(TINY_HRNET, *_opts(coco_sample, tmp_path))
    weights = tmp_path / "weights.pth"
    torch.save(build_model(cfg, is_train=False).state_dict(), weights)
    args = (str(coco_sample), str(tmp_path), str(weights))
    assert launch.spawn(_valid_rank, 2, args, cfg.DIST_TIMEOUT_MIN, "test: valid.py") == 0
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("CheckpointError: rank 1: OutOfMemoryError: CUDA out of memory"), message
