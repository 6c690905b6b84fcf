"""The quick start and the ablation, end to end at reduced size (a few steps on a few images).

The full runs (`make quickstart`, `python tools/ablation.py`) take minutes; these smoke runs check that
every step's command works and produces what the next step and the user need.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import load_cfg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import ablation  # noqa: E402
import quickstart  # noqa: E402


def test_quickstart_smoke(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    assert quickstart.main(["--smoke", "--output", str(out), "--data", str(tmp_path / "data")]) == 0
    summary = json.loads((out / "quickstart_summary.json").read_text())
    assert Path(summary["weights"]).name == "final_state.pth"
    assert summary["train_steps"] == 3  # the smoke schedule; the default 15-minute budget does not cut it
    log = next(out.rglob("train_*rank0.log")).read_text()
    assert "TRAIN.TIME_BUDGET 15 min" in log and "trained 3 of 3 steps" in log
    assert set(summary["metrics"]) >= {"AP", "Ap .5", "AP .75", "AR"}
    # -1 is COCOeval's value for an area range without ground truth (no large person in 4 images)
    assert all(0.0 <= v <= 1.0 or v == -1.0 for v in summary["metrics"].values())
    results = list(out.rglob("keypoints_*_results.json"))
    assert results and isinstance(json.loads(results[0].read_text()), list)
    pictures = sorted(p.name for p in Path(summary["demo"]).glob("*.jpg"))
    assert len(pictures) == 2
    assert list(Path(summary["demo"]).glob("*.json"))


def test_ablation_table() -> None:
    rows = {"A @256": {"AP": 0.5, "AR": 0.25}, "B @256": {"AP": 0.125, "AR": 1.0}}
    table = ablation.side_by_side(rows).splitlines()
    assert table[0] == "| model | AP | AR |"
    assert table[2] == "| A @256 | 0.500 | 0.250 |" and table[3] == "| B @256 | 0.125 | 1.000 |"


def test_ablation_configs_differ_only_in_the_model() -> None:
    hrnet, sat = (load_cfg(REPO / p) for p in ablation.CONFIGS.values())
    assert (hrnet.MODEL.NAME, sat.MODEL.NAME) == ("pose_higher_hrnet", "higher_pose")
    for cfg in (hrnet, sat):
        cfg.defrost()
        cfg.MODEL.NAME = ""
        cfg.MODEL.SAT.clear()
    assert hrnet == sat  # same data, schedule, seed and test protocol


def test_ablation_sizes_keep_the_configs_crop_ratio() -> None:
    """A size is the test input; the training input scales with it as in the config."""
    cfg_file = ablation.CONFIGS["higher_pose (tiny)"]
    cfg = load_cfg(REPO / cfg_file)
    ratio = cfg.DATASET.INPUT_SIZE / (cfg.TEST.INPUT_SIZE or cfg.DATASET.INPUT_SIZE)
    for size in (256, 128):
        opts = ablation.size_opts(cfg_file, size)
        named = dict(zip(opts[::2], opts[1::2]))
        train = int(named["DATASET.INPUT_SIZE"])
        assert named["TEST.INPUT_SIZE"] == str(size) and train == size * ratio
        assert named["DATASET.OUTPUT_SIZE"] == f"[{train // 4}, {train // 2}]"
        load_cfg(REPO / cfg_file, *opts)  # a valid config, the low-resolution case included


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
