"""tools/ablation.py end to end on a few dozen steps: results, table and plot; an interrupted ablation
trains only the runs still missing; a finished one re-prints without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_tool

ablation = load_tool("ablation")
ARGS = ["--smoke", "--seeds", "0", "1", "--sizes", "128", "--steps", "24", "TRAIN.END_EPOCH", "3"]


def test_interrupted_ablation_trains_only_the_missing_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    real_pipeline = ablation.pipeline
    trained: list[str] = []

    def pipeline(cfg, output, *args, **kwargs):
        if stop_after is not None and len(trained) == stop_after:
            raise KeyboardInterrupt  # the ablation is killed here
        trained.append(Path(output).name)
        return real_pipeline(cfg, output, *args, **kwargs)

    monkeypatch.setattr(ablation, "pipeline", pipeline)
    argv = [*ARGS[:-2], "--output", str(tmp_path), *ARGS[-2:]]

    stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        ablation.main(argv)
    assert trained == ["higher_hrnet_tiny_128_seed0"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["runs"]) == ["higher_hrnet_tiny@128/seed0"]
    assert results["runs"]["higher_hrnet_tiny@128/seed0"]["train_steps"] == 24

    stop_after, trained[:] = None, []
    assert ablation.main(argv) == 0
    assert trained == ["higher_pose_tiny_128_seed0", "higher_hrnet_tiny_128_seed1", "higher_pose_tiny_128_seed1"]
    table = (tmp_path / "ablation.md").read_text()
    lines = table.splitlines()
    assert lines[2].startswith("| higher_hrnet_tiny | 128 | 2 | ") and " ± " in lines[2]
    assert lines[3].startswith("| higher_pose_tiny | 128 | 2 | ")
    assert lines[-1].startswith("| 128 | higher_pose_tiny − higher_hrnet_tiny: ")
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs) == 4 and {r["train_steps"] for r in runs.values()} == {24}

    capsys.readouterr()
    assert ablation.main(argv) == 0  # finished: re-prints without training
    assert len(trained) == 3 and table.strip() in capsys.readouterr().out

    # a subset of the configs in the same folder: their finished runs are reused, the others kept
    assert ablation.main(["--configs", "experiments/synthetic/higher_pose_tiny.yaml", *argv]) == 0
    assert len(trained) == 3
    assert "| higher_hrnet_tiny |" not in (tmp_path / "ablation.md").read_text()
    assert len(json.loads((tmp_path / "results.json").read_text())["runs"]) == 4


def test_other_settings_in_the_same_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"settings": {"steps": 48}, "runs": {}}))
    with pytest.raises(ablation.AblationError, match="steps: 48 there, 24 now"):
        ablation.main([*ARGS[:-2], "--output", str(tmp_path), *ARGS[-2:]])
