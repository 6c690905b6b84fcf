"""tools/oracle.py on the real COCO sample: perfect heatmaps with tags that do or do not separate persons."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from higherpose.dataset.specs import COCO
from higherpose.models import build_model
from tests.conftest import TINY_HRNET, load_tool
from tests.core import test_inference
from tests.core.test_inference import PerfectModel, _coco_cfg, _samples

oracle = load_tool("oracle")


def _opts(coco_sample, out):
    return ["DATASET.ROOT", str(coco_sample), "DATASET.TEST", "val2017", "DATASET.SYNTHETIC", "False",
            "OUTPUT_DIR", str(out), "LOG_DIR", str(out / "log"), "DEVICE", "cpu"]  # fmt: skip


def _compare(coco_sample, tmp_path, *opts):
    cfg = _coco_cfg(*_opts(coco_sample, tmp_path), *opts)
    ann_file = coco_sample / "annotations" / "person_keypoints_val2017.json"
    samples, _ = _samples(coco_sample, ann_file, coco_sample / "images" / "val2017")
    metrics, joints, _, images = oracle.compare_groupings(
        cfg, PerfectModel(cfg, samples), torch.device("cpu"), logging.getLogger("test")
    )
    assert images == len(samples)
    return metrics, {r["name"]: r for r in joints}


@pytest.mark.parametrize("udp", [False, True])
def test_perfect_maps_group_perfectly_both_ways(coco_sample, tmp_path, udp):
    metrics, joints = _compare(coco_sample, tmp_path, "DATASET.USE_UDP", udp, "TEST.FLIP_TEST", True)
    assert metrics["tags"]["AP"] >= 0.99, metrics
    assert metrics["ground truth"]["AP"] >= 0.99, metrics
    # Perfect maps: every labelled joint found, within a pixel, and scored as a hit by COCO.
    overall = joints["all"]
    assert overall["labelled"] > 100 and overall["found"] == 1.0, overall
    assert overall["median_px"] < 1.0 and overall["ks50"] >= 0.97, overall


def test_tags_that_say_nothing_cost_ap_that_ground_truth_grouping_keeps(coco_sample, tmp_path, monkeypatch):
    monkeypatch.setattr(test_inference, "TAG_STEP", 0.0)  # every person gets the same tag
    metrics, _ = _compare(coco_sample, tmp_path)
    assert metrics["ground truth"]["AP"] >= 0.99, metrics
    assert metrics["tags"]["AP"] < metrics["ground truth"]["AP"] - 0.2, metrics


def test_main_writes_both_metric_sets(coco_sample, tmp_path):
    torch.manual_seed(0)
    cfg = _coco_cfg(*_opts(coco_sample, tmp_path))
    weights = tmp_path / "random.pth"
    torch.save(build_model(cfg, is_train=False).state_dict(), weights)
    args = ["--cfg", str(TINY_HRNET), *_opts(coco_sample, tmp_path), "TEST.SUBSET", "1"]
    metrics = oracle.main([*args, "TEST.MODEL_FILE", str(weights)])
    out = tmp_path / "coco_kpt" / "pose_higher_hrnet" / "higher_hrnet_tiny" / "oracle_val2017.json"
    written = json.loads(out.read_text())
    assert written["images"] == 1 and written["weights"] == str(weights)
    assert written["tags"] == pytest.approx(dict(metrics["tags"]))
    assert set(written["ground truth"]) == set(metrics["tags"])
    names = [r["name"] for r in written["joints"]]
    assert names[:17] == list(COCO.joint_names) and names[-1] == "all"


def test_unlabelled_split_is_refused(tmp_path):
    from higherpose.config import ConfigError

    ann = tmp_path / "annotations" / "image_info_test.json"  # a test-dev style split
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    (tmp_path / "images" / "test").mkdir(parents=True)
    cfg = _coco_cfg("DATASET.ROOT", str(tmp_path), "DATASET.TEST", "test", "DATASET.SYNTHETIC", "False")
    with pytest.raises(ConfigError, match="no annotations"):
        oracle.compare_groupings(cfg, None, torch.device("cpu"), logging.getLogger("test"))
