"""Evaluation reproduces the official evaluators' reference values (../shared/data/README.md), handles
empty results and unknown image ids, writes results atomically and prints HigherHRNet's table."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

import numpy as np
import pytest

from higherpose.core.evaluation import (
    COCO_NAMES,
    CROWDPOSE_NAMES,
    evaluate_keypoints,
    poses_to_coco_results,
    print_name_value,
    write_results_json,
)
from tests.conftest import shared_path

COCO_REF = [0.8609, 0.9931, 0.9109, 0.7756, 0.9373, 0.875, 1.0, 0.9167, 0.78, 0.9429]
CROWD_REF = [0.7877, 0.9881, 0.7314, 0.8222, 1.0, 0.7778, 1.0, 0.9802, 0.4116]


def _coco_gt():
    return str(shared_path("coco_sample", "annotations", "person_keypoints_val2017.json"))


def test_coco_reference_values():
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    metrics = evaluate_keypoints(_coco_gt(), preds, "coco")
    assert list(metrics) == COCO_NAMES
    assert [round(v, 4) for v in metrics.values()] == COCO_REF


def test_crowdpose_reference_values():
    gt = str(shared_path("eval_fixtures", "crowdpose_example_gt.json"))
    preds = json.loads(shared_path("eval_fixtures", "crowdpose_example_preds.json").read_text())
    metrics = evaluate_keypoints(gt, preds, "crowd_pose")
    assert list(metrics) == CROWDPOSE_NAMES
    assert [round(v, 4) for v in metrics.values()] == CROWD_REF


def test_custom_uses_given_sigmas():
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    coco_sigmas = [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                   0.107, 0.107, 0.087, 0.087, 0.089, 0.089]  # fmt: skip
    same = evaluate_keypoints(_coco_gt(), preds, "custom", sigmas=coco_sigmas)
    assert [round(v, 4) for v in same.values()] == COCO_REF
    looser = evaluate_keypoints(_coco_gt(), preds, "custom", sigmas=[0.2] * 17)
    assert looser["AP"] > same["AP"]


def test_empty_results_give_zero():
    metrics = evaluate_keypoints(_coco_gt(), [], "coco")
    assert metrics["AP"] == 0.0 and list(metrics) == COCO_NAMES
    gt = str(shared_path("eval_fixtures", "crowdpose_example_gt.json"))
    assert evaluate_keypoints(gt, [], "crowd_pose")["AP"] == 0.0


def test_unknown_image_ids_are_named():
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    preds[0] = dict(preds[0], image_id=123456789)
    with pytest.raises(ValueError, match="123456789"):
        evaluate_keypoints(_coco_gt(), preds, "coco")


def test_subset_of_image_ids():
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    only = [p for p in preds if p["image_id"] == 785]
    full = evaluate_keypoints(_coco_gt(), only, "coco")
    subset = evaluate_keypoints(_coco_gt(), only, "coco", image_ids=[785])
    assert subset["AR"] > full["AR"]  # other images' persons no longer count as misses


def test_poses_to_results_and_atomic_write(tmp_path):
    poses = [np.arange(17 * 5, dtype=np.float32).reshape(17, 5), np.ones((17, 5), np.float64)]
    results = poses_to_coco_results(np.int64(785), poses, [np.float32(0.5), 0.25])
    assert len(results) == 2
    r = results[0]
    assert r["image_id"] == 785 and r["category_id"] == 1 and r["score"] == 0.5
    assert len(r["keypoints"]) == 51 and all(type(v) is float for v in r["keypoints"])
    assert r["keypoints"][:3] == [0.0, 1.0, 2.0] and r["keypoints"][3] == 5.0
    assert poses_to_coco_results(1, [], []) == []
    path = tmp_path / "results" / "keypoints_val2017_results.json"
    write_results_json(results, str(path))
    assert json.loads(path.read_text()) == results
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_print_name_value_layout(caplog):
    values = OrderedDict(zip(["AP", "Ap .5"], [0.6712, 0.86]))
    with caplog.at_level(logging.INFO):
        table = print_name_value(logging.getLogger("t"), values, "pose_higher_hrnet")
    assert table.splitlines() == ["| Arch | AP | Ap .5 |", "|---|---|---|", "| pose_hig... | 0.671 | 0.860 |"]
    assert "pose_hig..." in caplog.text
