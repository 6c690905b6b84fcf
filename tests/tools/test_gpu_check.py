"""tools/gpu_check.py: without CUDA one line and a non-zero exit; the pieces of its report (log figures,
GPU-against-CPU keypoint differences, the table). Its GPU stages need a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from higherpose.bench import gpu_check
from tests.conftest import REPO


def test_without_cuda_one_line_and_a_non_zero_exit(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "report"
    cmd = [sys.executable, "tools/gpu_check.py", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.py: no CUDA: "), proc.stderr
    assert "CUDA_VISIBLE_DEVICES = '' hides every GPU" in lines[0]
    assert not out.exists()


def test_last_logged_figures():
    log = "Epoch: [0][0/30] Speed 91.5 samples/s ...\nEpoch: [0][29/30] Speed 1024.25 samples/s\n"
    log += "=> epoch 0 validation AP 0.1250"
    assert gpu_check.last_float(r"Speed ([\d.]+) samples/s", log) == 1024.25
    assert gpu_check.last_float(r"validation AP ([\d.]+)", log) == 0.125
    assert gpu_check.last_float(r"validation AP ([\d.]+)", "=> epoch 0 validation AP nan") is None


def _person(image_id: int, score: float, shift: float) -> dict:
    return {"image_id": image_id, "score": score, "keypoints": [10.0 + shift, 20.0, 1.0] * 17}


def test_largest_keypoint_difference_matches_persons_by_image_and_score():
    gpu = [_person(2, 0.9, 0.0), _person(1, 0.5, 0.25), _person(1, 0.8, 0.0)]
    cpu = [_person(1, 0.8, 0.0), _person(1, 0.5, 0.0), _person(2, 0.9, -1.5)]
    assert gpu_check.largest_keypoint_difference(gpu, cpu) == pytest.approx(1.5)
    assert gpu_check.largest_keypoint_difference(gpu, cpu[:2]) is None  # different detections
    assert gpu_check.largest_keypoint_difference([], []) == 0.0


def test_table_has_a_row_per_stage():
    report = {"cuda": "H", "stages": {"a": {"ok": True, "samples_per_s": 3.5}, "b": {"ok": False, "error": "E: x"}}}
    text = gpu_check.table(report)
    assert "| a | yes | samples_per_s 3.5 |" in text and "| b | NO | error E: x |" in text
