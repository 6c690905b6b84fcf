"""Config: every shipped YAML merges and passes the check; bad keys and values fail by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from higherpose.config import ConfigError
from tests.conftest import EXPERIMENTS, TINY_HRNET, W32_COCO_512, load_cfg

ALL_YAMLS = sorted(EXPERIMENTS.rglob("*.yaml"))
OFFICIAL = [
    f"{ds}/higher_hrnet/{name}_adam_lr1e-3.yaml"
    for ds in ("coco", "crowd_pose")
    for name in ("w32_512", "w32_640", "w48_640")
]


def test_official_yamls_are_shipped() -> None:
    for rel in OFFICIAL:
        assert (EXPERIMENTS / rel).is_file(), rel


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_yaml_merges_and_passes_check(path: Path) -> None:
    cfg = load_cfg(path)
    assert cfg.is_frozen()
    assert len(cfg.DATASET.OUTPUT_SIZE) == cfg.LOSS.NUM_STAGES
    assert cfg.MODEL.NUM_JOINTS == cfg.DATASET.NUM_JOINTS


def test_official_values() -> None:
    cfg = load_cfg(EXPERIMENTS / "coco/higher_hrnet/w32_640_adam_lr1e-3.yaml")
    assert cfg.DATASET.OUTPUT_SIZE == [160, 320]
    assert cfg.FP16.ENABLED and cfg.FP16.DYNAMIC_LOSS_SCALE
    assert cfg.TEST.WITH_AE == (True, False)  # "(True, False)" YAML string becomes a tuple
    assert cfg.TRAIN.LR_STEP == [200, 260] and cfg.TRAIN.END_EPOCH == 300
    crowd = load_cfg(EXPERIMENTS / "crowd_pose/higher_hrnet/w48_640_adam_lr1e-3.yaml")
    assert crowd.DATASET.NUM_JOINTS == 14 and crowd.DATASET.TEST == "test"
    assert crowd.MODEL.EXTRA.STAGE4.NUM_CHANNELS == [48, 96, 192, 384]


def test_overrides_and_data_dir(tmp_path: Path) -> None:
    cfg = load_cfg(W32_COCO_512, "TRAIN.LR", 0.01, "DATA_DIR", tmp_path, "TEST.MODEL_FILE", "m.pth")
    assert cfg.TRAIN.LR == 0.01
    assert cfg.TEST.MODEL_FILE == str(tmp_path / "m.pth")
    assert cfg.MODEL.PRETRAINED == str(tmp_path / "models/pytorch/imagenet/hrnet_w32-36af842e.pth")


def test_integer_for_a_float_key_is_taken_as_float() -> None:
    # yacs alone rejects `TRAIN.LR 1` (int vs float); a user typing minutes or a round LR should not care
    cfg = load_cfg(TINY_HRNET, "TRAIN.LR", "1", "TRAIN.TIME_BUDGET", 15)
    assert cfg.TRAIN.LR == 1.0 and isinstance(cfg.TRAIN.LR, float)
    assert cfg.TRAIN.TIME_BUDGET == 15.0 and isinstance(cfg.TRAIN.TIME_BUDGET, float)
    with pytest.raises(ConfigError, match="TRAIN.LR"):
        load_cfg(TINY_HRNET, "TRAIN.LR", "fast")


def test_yaml_integer_for_a_float_key_and_a_fractional_sigma(tmp_path: Path) -> None:
    # HigherHRNet's YAMLs write `SIGMA: 2` (an int); yacs alone would then refuse `SIGMA: 1.5` (the tiny
    # YAMLs) or an int in a YAML for a float key such as `LR: 1`. All merge here, as floats.
    official = load_cfg(W32_COCO_512)
    assert official.DATASET.SIGMA == 2.0 and isinstance(official.DATASET.SIGMA, float)
    assert load_cfg(TINY_HRNET).DATASET.SIGMA == 1.5
    assert load_cfg(W32_COCO_512, "DATASET.SIGMA", "1.5").DATASET.SIGMA == 1.5
    assert isinstance(load_cfg(TINY_HRNET).TEST.NMS_KERNEL, int)  # int keys stay ints
    path = tmp_path / "lr.yaml"
    path.write_text(TINY_HRNET.read_text().replace("LR: 0.003", "LR: 1"))
    cfg = load_cfg(path)
    assert cfg.TRAIN.LR == 1.0 and isinstance(cfg.TRAIN.LR, float)


def _write(tmp_path: Path, text: str, base: Path = TINY_HRNET) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(base.read_text() + text)
    return path


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "\nNOT_A_KEY: 3\n")
    with pytest.raises(ConfigError) as err:
        load_cfg(path)
    assert "NOT_A_KEY" in str(err.value) and str(path) in str(err.value)


def test_unknown_override_names_key() -> None:
    with pytest.raises(ConfigError, match="TRAIN.LEARNING_RATE"):
        load_cfg(TINY_HRNET, "TRAIN.LEARNING_RATE", 1)


def test_odd_override_list_fails() -> None:
    with pytest.raises(ConfigError, match="KEY VALUE"):
        load_cfg(TINY_HRNET, "TRAIN.LR")


@pytest.mark.parametrize(
    ("opts", "names"),
    [
        (("DATASET.OUTPUT_SIZE", "[64]"), ("DATASET.OUTPUT_SIZE", "[64]")),
        (("DATASET.INPUT_SIZE", "256", "DATASET.OUTPUT_SIZE", "[64, 64]"), ("DATASET.OUTPUT_SIZE", "128")),
        (("DATASET.INPUT_SIZE", "200"), ("DATASET.INPUT_SIZE", "200")),
        (("TEST.INPUT_SIZE", "300"), ("TEST.INPUT_SIZE", "300")),
        (("MODEL.NAME", "pose_hrnet_v99"), ("MODEL.NAME", "pose_hrnet_v99")),
        (("DATASET.FLIP_INDEX", "[0, 1]"), ("DATASET.FLIP_INDEX", "17")),
        (("MODEL.NUM_JOINTS", "14"), ("MODEL.NUM_JOINTS", "14")),
        (("LOSS.WITH_AE_LOSS", "(True,)"), ("LOSS.WITH_AE_LOSS", "NUM_STAGES")),
        (("TRAIN.IMAGES_PER_GPU", "0"), ("TRAIN.IMAGES_PER_GPU", "0")),
        (("TEST.SCALE_FACTOR", "[0.5, 2.0]"), ("TEST.SCALE_FACTOR", "1.0")),
        (("MODEL.SAT.HEADS", "3"), ("MODEL.SAT.D_MODEL", "HEADS")),
        (("MODEL.SAT.TOKEN_STRIDE", "4"), ("MODEL.SAT.TOKEN_STRIDE", "4")),
        (("FP16.DTYPE", "float8"), ("FP16.DTYPE", "float8")),
        (("LOSS.HEATMAPS_LOSS_TYPE", "l1"), ("LOSS.HEATMAPS_LOSS_TYPE", "l1")),
        (("DATASET.SCALE_AWARE_SIGMA", "True"), ("DATASET.USE_UDP", "SCALE_AWARE_SIGMA")),
        (("TRAIN.TIME_BUDGET", "-1"), ("TRAIN.TIME_BUDGET", "-1.0")),
        (("TRAIN.TIME_BUDGET", "15", "TRAIN.LR_SCHEDULER", "cosine"), ("TRAIN.TIME_BUDGET", "multistep")),
        # the optimiser step overflows float32 at epoch LR_STEP[0] ("value cannot be converted ... overflow")
        (("TRAIN.LR_FACTOR", "1e45"), ("TRAIN.LR_FACTOR", "1e+45")),
        (("TRAIN.LR_FACTOR", "0"), ("TRAIN.LR_FACTOR", "0.0", "(0, 1]")),
        (("TRAIN.LR_FACTOR", "1e999"), ("TRAIN.LR_FACTOR", "inf")),  # yacs reads 1e999 as inf
        (("TRAIN.LR", "1e999"), ("TRAIN.LR", "inf")),
        (("TRAIN.LR", "-0.001"), ("TRAIN.LR", "-0.001")),
        (("TRAIN.LR", "1e40"), ("TRAIN.LR", "1e+40")),
        # SWAHR's scale maps are trained through their stage's heatmap loss
        (
            ("LOSS.HEATMAPS_LOSS_TYPE", "swahr", "LOSS.WITH_HEATMAPS_LOSS", "[False, True]"),
            ("LOSS.WITH_HEATMAPS_LOSS", "swahr"),
        ),
        (("TRAIN.LR_SCHEDULER", "step"), ("TRAIN.LR_SCHEDULER", "warmup_linear")),
        (("TRAIN.LR_SCHEDULER", "warmup_linear", "TRAIN.WARMUP_ITERS", "10"), ("TRAIN.WARMUP_ITERS", "warmup_linear")),
        (("TRAIN.LR_SCHEDULER", "warmup_linear", "TRAIN.WARM_UP_EPOCH", "40"), ("TRAIN.WARM_UP_EPOCH", "END_EPOCH")),
        (
            ("TRAIN.TIME_BUDGET", "15", "TRAIN.LR_SCHEDULER", "warmup_linear", "TRAIN.WARMUP_ITERS", "0"),
            ("TRAIN.TIME_BUDGET", "multistep"),
        ),
    ],
)
def test_inconsistent_values_fail_by_name(opts: tuple[str, ...], names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        load_cfg(TINY_HRNET, *opts)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("stage", [0, 1])
def test_stage_without_loss_fails(stage: int) -> None:
    """A stage no loss trains leaves parameters without gradient, which DDP refuses at step 2."""
    flags = ["True", "True"]
    flags[stage] = "False"
    heatmaps, ae = f"({flags[0]}, {flags[1]})", "(False, False)"
    with pytest.raises(ConfigError) as err:
        load_cfg(TINY_HRNET, "LOSS.WITH_HEATMAPS_LOSS", heatmaps, "LOSS.WITH_AE_LOSS", ae)
    message = str(err.value)
    assert f"LOSS.WITH_HEATMAPS_LOSS[{stage}]" in message and f"LOSS.WITH_AE_LOSS[{stage}]" in message
    assert "LOSS.NUM_STAGES" in message and str(TINY_HRNET) in message
    # one loss per stage is enough
    load_cfg(TINY_HRNET, "LOSS.WITH_HEATMAPS_LOSS", "(True, True)", "LOSS.WITH_AE_LOSS", "(False, False)")


def test_inconsistent_yaml_names_file(tmp_path: Path) -> None:
    text = re.sub(r"OUTPUT_SIZE: \[\d+, \d+\]", "OUTPUT_SIZE: [64, 256]", TINY_HRNET.read_text())
    path = tmp_path / "inconsistent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_cfg(path)
    assert str(path) in str(err.value) and "DATASET.OUTPUT_SIZE" in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_cfg("/nonexistent/x.yaml")


def test_swahr_yaml_merges_as_it_is(tmp_path: Path) -> None:
    """SWAHR's CrowdPose YAML (greatlog/SWAHR-HumanPose) differs from HigherHRNet's in TRAIN.WARM_UP_EPOCH
    (3 by default), no LR_STEP, an FP16 block and SyncBN: it merges without an edit."""
    text = (EXPERIMENTS / "crowd_pose/higher_hrnet/w48_640_adam_lr1e-3.yaml").read_text()
    text = re.sub(r"  LR_STEP: .*\n", "", text).replace("  LR: 0.001\n", "  LR: 0.00012\n")
    text = text.replace("PRINT_FREQ: 100\n", "PRINT_FREQ: 100\nFP16:\n  ENABLED: False\n  DYNAMIC_LOSS_SCALE: False\n")
    text = text.replace("  END_EPOCH: 300\n", "  END_EPOCH: 300\n  WARM_UP_EPOCH: 3\n")
    path = tmp_path / "swahr_w48_640.yaml"
    path.write_text(text)
    cfg = load_cfg(path)
    assert cfg.TRAIN.WARM_UP_EPOCH == 3 and cfg.TRAIN.LR == 0.00012
    switched = load_cfg(path, "LOSS.HEATMAPS_LOSS_TYPE", "swahr", "TRAIN.LR_SCHEDULER", "warmup_linear")
    assert switched.LOSS.HEATMAPS_LOSS_TYPE == "swahr"


@pytest.mark.parametrize("value", ["[1, 1]", "['antelope']", "[True]", "[1.5]"])
def test_category_ids_must_be_distinct_integers(value: str) -> None:
    with pytest.raises(ConfigError, match=r"DATASET.CATEGORY_IDS = .*distinct integer category ids"):
        load_cfg(TINY_HRNET, "DATASET.CATEGORY_IDS", value)
    assert list(load_cfg(TINY_HRNET, "DATASET.CATEGORY_IDS", "[1, 26]").DATASET.CATEGORY_IDS) == [1, 26]


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changed(path, base) -> dict:
    a, b = _flat(load_cfg(base)), _flat(load_cfg(path))
    return {k: b[k] for k in a if a[k] != b[k]}


SAT_STUDY = sorted((EXPERIMENTS / "synthetic" / "sat_study").glob("*.yaml"))


@pytest.mark.parametrize("path", SAT_STUDY, ids=lambda p: p.stem)
def test_sat_study_configs_change_only_the_head_switch_they_name(path) -> None:
    changed = _changed(path, EXPERIMENTS / "synthetic" / "higher_pose_tiny.yaml")
    assert changed and all(k.startswith("MODEL.SAT.") for k in changed), changed
    first = path.read_text().splitlines()[0]
    assert first.startswith("# higher_pose_tiny.yaml with one change: ")
    for key in changed:
        assert key.removeprefix("MODEL.SAT.") in first, (key, first)


@pytest.mark.parametrize("model", ["higher_pose_tiny", "higher_hrnet_tiny"])
def test_crowded_configs_change_only_the_data_and_its_evaluation(model: str) -> None:
    synthetic = EXPERIMENTS / "synthetic"
    changed = _changed(synthetic / f"{model}_crowded.yaml", synthetic / f"{model}.yaml")
    assert changed == {
        "DATASET.ROOT": "data/synthetic_crowded",
        "DATASET.SYNTHETIC_SCENE": "crowded",
        "DATASET.CROWD_INDEX_EVAL": True,
    }


def test_unknown_synthetic_scene_is_named() -> None:
    with pytest.raises(ConfigError, match="DATASET.SYNTHETIC_SCENE"):
        load_cfg(EXPERIMENTS / "synthetic" / "higher_pose_tiny.yaml", "DATASET.SYNTHETIC_SCENE", "busy")
