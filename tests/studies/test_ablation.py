"""Ablation planning, settings and statistics against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from higherpose.studies.ablation import (
    AblationError,
    Results,
    Run,
    load_config,
    mean_std,
    paired_differences,
    plan,
    plot,
    run_opts,
    size_opts,
    split_configs,
    steps_opts,
    summary_table,
    synthetic_data,
)

REPO = Path(__file__).resolve().parents[2]
HRNET = "experiments/synthetic/higher_hrnet_tiny.yaml"
SAT = "experiments/synthetic/higher_pose_tiny.yaml"
SWAHR = "experiments/synthetic/higher_hrnet_tiny_swahr.yaml"


def _run(config: str, size: int, seed: int, ap: float, ap50: float = 0.9) -> dict:
    metrics = {"AP": ap, "Ap .5": ap50, "AP .75": ap / 2, "AP (M)": ap, "AP (L)": -1.0}
    return {"config": config, "size": size, "seed": seed, "metrics": metrics}


RUNS = [
    _run("a/base.yaml", 256, 0, 0.5),
    _run("a/base.yaml", 256, 1, 0.6),
    _run("a/base.yaml", 256, 2, 0.4),
    _run("b/other.yaml", 256, 0, 0.55),
    _run("b/other.yaml", 256, 1, 0.7),
    _run("b/other.yaml", 256, 2, 0.35),
    _run("b/other.yaml", 256, 3, 0.9),  # no partner: left out of the paired difference
]


def test_mean_and_sample_std() -> None:
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert mean_std([2.0, 4.0]) == pytest.approx((3.0, math.sqrt(2.0)))
    mean, std = mean_std([0.25])
    assert mean == 0.25 and math.isnan(std)  # one seed has no spread


def test_paired_differences_use_the_same_seeds() -> None:
    diffs = paired_differences(RUNS, "base", "other", 256)
    assert diffs == pytest.approx([0.05, 0.1, -0.05])
    # mean 1/30; deviations 1/60, 4/60, -5/60: variance (1 + 16 + 25) / 3600 / 2
    assert mean_std(diffs) == pytest.approx((1 / 30, math.sqrt(42 / 7200)))


def test_summary_table_rows() -> None:
    lines = summary_table(RUNS, ["base", "other"], [256]).splitlines()
    assert lines[0] == "| config | size | seeds | AP | Ap .5 | AP .75 | AP (M) | AP (L) | AP per seed |"
    # base: AP 0.5, 0.6, 0.4 -> 0.500 ± 0.100; AP .75 is half of it; AP (L) -1 means no such persons
    assert lines[2] == (
        "| base | 256 | 3 | 0.500 ± 0.100 | 0.900 ± 0.000 | 0.250 ± 0.050 | 0.500 ± 0.100 | – | 0.500, 0.600, 0.400 |"
    )
    # other: 0.55, 0.7, 0.35, 0.9: mean 0.625, squared deviations 2 x 0.075² + 2 x 0.275² = 0.1625 over 3
    assert lines[3].startswith("| other | 256 | 4 | 0.625 ± 0.233 |")
    assert lines[-1] == "| 256 | other − base: +0.033 ± 0.076 | 3 | +0.050, +0.100, -0.050 |"


def test_plan_is_seed_major_and_refuses_colliding_names() -> None:
    runs = plan([HRNET, SAT], [256, 128], [0, 1])
    assert [r.key for r in runs[:4]] == [
        "higher_hrnet_tiny@256/seed0",
        "higher_pose_tiny@256/seed0",
        "higher_hrnet_tiny@128/seed0",
        "higher_pose_tiny@128/seed0",
    ]
    assert len(runs) == 8 and {r.seed for r in runs[4:]} == {1}
    with pytest.raises(AblationError, match="share a file name"):
        plan(["a/x.yaml", "b/x.yaml"], [256], [0])


def test_steps_keep_the_schedule_shape() -> None:
    cfg = load_config(str(REPO / SAT))
    assert cfg.TRAIN.END_EPOCH == 40
    assert steps_opts(cfg, SAT, 2400) == ["TRAIN.ITERS_PER_EPOCH", "60"]
    assert steps_opts(cfg, SAT, None) == []
    with pytest.raises(AblationError, match=r"--steps 2410: .* e\.g\. 2400 or 2440"):
        steps_opts(cfg, SAT, 2410)
    with pytest.raises(AblationError, match="--steps 0"):
        steps_opts(cfg, SAT, 0)


def test_sizes_keep_the_configs_crop_ratio() -> None:
    """A size is the test input; the training input scales with it as in the config."""
    cfg = load_config(str(REPO / SAT))
    ratio = cfg.DATASET.INPUT_SIZE / cfg.TEST.INPUT_SIZE
    for size in (256, 128):
        named = dict(zip(*[iter(size_opts(cfg, SAT, size))] * 2))
        train = int(named["DATASET.INPUT_SIZE"])
        assert named["TEST.INPUT_SIZE"] == str(size) and train == size * ratio
        assert named["DATASET.OUTPUT_SIZE"] == f"[{train // 4}, {train // 2}]"
    with pytest.raises(AblationError, match="--sizes 200: .* would train at 150"):
        size_opts(cfg, SAT, 200)


def test_run_opts_give_a_valid_config_per_run() -> None:
    run = Run(str(REPO / SAT), 128, 7)
    cfg = load_config(run.config, run_opts(run, 2400, []))
    assert (cfg.TEST.INPUT_SIZE, cfg.DATASET.INPUT_SIZE, cfg.TRAIN.ITERS_PER_EPOCH, cfg.TRAIN.SEED) == (128, 96, 60, 7)


def test_configs_differ_only_in_the_model() -> None:
    hrnet, sat = (load_config(str(REPO / p)) for p in (HRNET, SAT))
    assert (hrnet.MODEL.NAME, sat.MODEL.NAME) == ("pose_higher_hrnet", "higher_pose")
    for cfg in (hrnet, sat):
        cfg.defrost()
        cfg.MODEL.NAME = ""
        cfg.MODEL.SAT.clear()
    assert hrnet == sat  # same data, schedule, seed and test protocol


def test_results_are_kept_and_other_settings_refused(tmp_path: Path) -> None:
    settings = {"configs": [HRNET, SAT], "steps": 2400, "opts": []}
    results = Results.open(tmp_path, settings)
    results.add(Run(HRNET, 256, 0), {"metrics": {"AP": 0.5}})
    again = Results.open(tmp_path, settings)
    assert again.runs["higher_hrnet_tiny@256/seed0"]["metrics"] == {"AP": 0.5}
    with pytest.raises(AblationError, match=r"steps: 2400 there, 1200 now.*another --output"):
        Results.open(tmp_path, {**settings, "steps": 1200})
    # another set of configs shares the folder: the finished run is kept, the configs are merged
    other = Results.open(tmp_path, {**settings, "configs": [SAT, SWAHR]})
    assert list(other.runs) == ["higher_hrnet_tiny@256/seed0"]
    assert other.settings["configs"] == [HRNET, SAT, SWAHR]
    with pytest.raises(AblationError, match=r"opts: \[\] there, \['TRAIN.LR', '0.1'\] now"):
        Results.open(tmp_path, {"configs": [SWAHR], "steps": 2400, "opts": ["TRAIN.LR", "0.1"]})
    (tmp_path / "results.json").write_text('{"settings": ')
    with pytest.raises(AblationError, match="results.json: not valid JSON"):
        Results.open(tmp_path, settings)
    assert json.loads(json.dumps(again.runs))  # plain JSON


def test_plot_writes_a_png(tmp_path: Path) -> None:
    runs = [*RUNS, _run("a/base.yaml", 128, 0, 0.2), _run("b/other.yaml", 128, 0, 0.3)]
    path = tmp_path / "ablation.png"
    plot(runs, ["base", "other"], [256, 128], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_evaluated_as_crowdpose_get_their_own_table() -> None:
    crowd = {"AP": 0.4, "Ap .5": 0.8, "AP .75": 0.3, "AR": 0.5, "AR .5": 0.9, "AR .75": 0.4}
    crowd |= {"AP (E)": 0.6, "AP (M)": 0.45, "AP (H)": 0.2}
    runs = [*RUNS[:3], *({"config": "c/crowded.yaml", "size": 256, "seed": s, "metrics": crowd} for s in (0, 1, 2))]
    lines = summary_table(runs, ["base", "crowded"], [256]).splitlines()
    assert lines[0].startswith("| config | size | seeds | AP | Ap .5 | AP .75 | AP (M) | AP (L) |")
    assert lines[2].startswith("| base | 256 | 3 |") and lines[3] == ""
    assert lines[4].startswith("| config | size | seeds | AP | Ap .5 | AP .75 | AP (E) | AP (M) | AP (H) |")
    assert lines[6].startswith("| crowded | 256 | 3 | 0.400 ± 0.000 | 0.800 ± 0.000 | 0.300 ± 0.000 | 0.600 ± 0.000")
    assert lines[-1].startswith("| 256 | crowded − base: ")


def test_each_synthetic_config_gets_its_own_generated_set(tmp_path: Path) -> None:
    crowded = load_config("experiments/synthetic/higher_pose_tiny_crowded.yaml")
    assert synthetic_data(crowded, False, tmp_path) == (tmp_path / "data/synthetic_crowded", "crowded")
    assert synthetic_data(crowded, True, tmp_path) == (tmp_path / "data/synthetic_crowded_smoke", "crowded")
    assert synthetic_data(load_config(SAT), False, tmp_path) == (tmp_path / "data/synthetic", "plain")
    coco = load_config("experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml")
    assert synthetic_data(coco, False, tmp_path) is None
    assert synthetic_data(coco, True, tmp_path) == (tmp_path / "data/synthetic_smoke", "plain")


def test_overrides_written_after_the_configs_are_overrides() -> None:
    """``--configs a.yaml b.yaml DATASET.ROOT x``: the KEY VALUE list after the files is not read as two
    more configs (``--configs`` takes several values and would swallow it)."""
    values = [HRNET, SAT, "DATASET.ROOT", "data/synthetic_crowded", "DATASET.CROWD_INDEX_EVAL", "True"]
    assert split_configs(values) == ([HRNET, SAT], values[2:])
    assert split_configs([HRNET, "x.yml", "Y.YAML"]) == ([HRNET, "x.yml", "Y.YAML"], [])
    assert split_configs([SAT, "MODEL.PRETRAINED", "w.yaml"]) == ([SAT], ["MODEL.PRETRAINED", "w.yaml"])
    assert split_configs(["TRAIN.LR", "0.1"]) == ([], ["TRAIN.LR", "0.1"])
