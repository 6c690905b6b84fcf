"""The quick start, end to end at reduced size (a few steps on a few images).

The full run (`make quickstart`) takes minutes; these smoke runs check that
every step's command works and produces what the next step and the user need.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.conftest import load_tool

REPO = Path(__file__).resolve().parents[2]
quickstart = load_tool("quickstart")

# Added to the heatmap biases of the trained weights. The smoke model's heatmap logits lie far above -12
# (they start at -4.6, a 1 % prior), so its heatmaps then exceed TEST.DETECTION_THRESHOLD (0.5) nearly
# everywhere: validation and the demo find people in every picture.
FORCE_LOGIT = 12.0


def _force_detections(weights: Path, num_joints: int = 17) -> None:
    """Raise the bias of the heatmap channels of both output layers of ``weights`` (in place)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("final_layers.0.bias", "final_layers.1.bias"):
        state[key][:num_joints] += FORCE_LOGIT
    torch.save(state, weights)


def _coco_stats(gt_file: Path, results_file: Path) -> list[float]:
    """pycocotools' keypoint stats of a result file, computed here as the reference."""
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_quickstart_smoke(tmp_path: Path, monkeypatch) -> None:
    """Every step runs, on the weights the training step wrote. Three steps do not train a model that
    finds people, so the test raises the heatmap logits of ``final_state.pth`` once training is done:
    validation and the demo, when they load that file, must then report and draw people."""
    out = tmp_path / "qs"
    steps = []
    run = quickstart.run

    def run_then_force_detections(cmd: list[str]) -> None:
        run(cmd)
        steps.append(cmd[1])
        if cmd[1] == "tools/dist_train.py":
            _force_detections(next(out.rglob("final_state.pth")))

    monkeypatch.setattr(quickstart, "run", run_then_force_detections)
    data = tmp_path / "data"
    assert quickstart.main(["--smoke", "--output", str(out), "--data", str(data)]) == 0
    assert steps == ["tools/make_synthetic.py", "tools/dist_train.py", "tools/valid.py", "tools/demo.py"]
    summary = json.loads((out / "quickstart_summary.json").read_text())
    assert Path(summary["weights"]).name == "final_state.pth"
    assert summary["train_steps"] == 3  # the smoke schedule; the default 15-minute budget does not cut it
    log = next(out.rglob("train_*rank0.log")).read_text()
    assert "TRAIN.TIME_BUDGET 15 min" in log and "trained 3 of 3 steps" in log

    # Validation: people found in each of the 4 validation images, and the metrics are the official
    # evaluator's on the result file; -1 where no ground truth lies in the area range (the synthetic
    # persons are all below 96^2 px, COCO's large range).
    gt_file = data / "annotations" / "person_keypoints_val.json"
    gt = json.loads(gt_file.read_text())
    (results_file,) = out.rglob("keypoints_*_results.json")
    results = json.loads(results_file.read_text())
    assert {r["image_id"] for r in results} == {im["id"] for im in gt["images"]}
    assert set(summary["metrics"]) >= {"AP", "Ap .5", "AP .75", "AR"}
    assert list(summary["metrics"].values()) == pytest.approx(_coco_stats(gt_file, results_file), abs=1e-9)
    assert max(a["area"] for a in gt["annotations"]) < 96**2
    assert summary["metrics"]["AP (L)"] == summary["metrics"]["AR (L)"] == -1.0

    # Demo: the first two validation pictures, each with people drawn on it and in the JSON.
    demo = Path(summary["demo"])
    pictures = sorted(p.name for p in demo.glob("*.jpg"))
    assert len(pictures) == 2
    for name in pictures:
        drawn = cv2.imread(str(demo / name)).astype(int)
        source = cv2.imread(str(data / "images" / "val" / name)).astype(int)
        changed = (np.abs(drawn - source).max(axis=2) > 60).mean()  # well above JPEG re-encoding noise
        assert changed > 0.01, f"{name}: no skeleton drawn ({changed:.2%} of the pixels changed)"
    (demo_json,) = demo.glob("*.json")
    assert {r["image_id"] for r in json.loads(demo_json.read_text())} == {int(Path(n).stem) for n in pictures}


def test_training_runs_with_the_requested_processes(tmp_path: Path, monkeypatch) -> None:
    """``--nproc`` reaches dist_train."""
    commands: list[list[str]] = []
    monkeypatch.setattr(quickstart, "run", commands.append)
    weights = tmp_path / "out" / "final_state.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"")  # the pipeline looks for it after training
    summary = quickstart.pipeline("cfg.yaml", tmp_path / "out", tmp_path, [], [], demo_images=0, nproc=2)
    train = next(c for c in commands if "tools/dist_train.py" in c)
    assert train[train.index("--nproc") + 1] == "2" and summary["nproc"] == 2
