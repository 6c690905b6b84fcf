"""Evaluation reproduces the official evaluators' reference values (../shared/data/README.md), handles
empty results and unknown image ids, evaluates several keypoint categories as one class and a subset on
its images only, writes results atomically and prints HigherHRNet's table."""

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
from higherpose.dataset.annotations import AnnotationError
from tests.conftest import shared_path
from tests.dataset.test_annotations import ANIMALS_JSON, ANTELOPE, JAGUAR, write_animal_set

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


def _write_gt(tmp_path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _keypoint_extent(keypoints: list[float]) -> list[float]:
    """The box [x, y, w, h] around an annotation's labelled keypoints (v > 0), written as a plain loop."""
    xs = [keypoints[i] for i in range(0, len(keypoints), 3) if keypoints[i + 2] > 0]
    ys = [keypoints[i + 1] for i in range(0, len(keypoints), 3) if keypoints[i + 2] > 0]
    if not xs:
        return [0.0, 0.0, 0.0, 0.0]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def test_ground_truth_without_area_matches_bbox_area(tmp_path, caplog):
    gt = json.loads(shared_path("coco_sample", "annotations", "person_keypoints_val2017.json").read_text())
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    with_area, without_area = json.loads(json.dumps(gt)), json.loads(json.dumps(gt))
    for ann in with_area["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    for ann in without_area["annotations"]:
        del ann["area"]
    reference = evaluate_keypoints(_write_gt(tmp_path, "with_area.json", with_area), preds, "coco")
    user_file = _write_gt(tmp_path, "without_area.json", without_area)
    before = open(user_file, "rb").read()
    with caplog.at_level(logging.INFO, logger="higherpose.core.evaluation"):
        metrics = evaluate_keypoints(user_file, preds, "coco")
    assert metrics == reference and metrics["AP"] > 0.5
    assert open(user_file, "rb").read() == before  # the user's file is never rewritten
    assert "14 of 14 annotations" in caplog.text and "bbox" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # no bbox either: area and bbox from the extent of the labelled keypoints
    extent, bare = json.loads(json.dumps(gt)), json.loads(json.dumps(without_area))
    for ann in extent["annotations"]:
        ann["bbox"] = _keypoint_extent(ann["keypoints"])
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    for ann in bare["annotations"]:
        del ann["bbox"]
    reference = evaluate_keypoints(_write_gt(tmp_path, "extent.json", extent), preds, "coco")
    assert evaluate_keypoints(_write_gt(tmp_path, "bare.json", bare), preds, "coco") == reference


def test_size_ranges_without_persons_are_minus_one_with_and_without_detections(tmp_path):
    gt = json.loads(shared_path("coco_sample", "annotations", "person_keypoints_val2017.json").read_text())
    gt["annotations"] = [a for a in gt["annotations"] if not 32**2 <= a["area"] < 96**2]  # no medium persons
    path = _write_gt(tmp_path, "no_medium.json", gt)
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    found = evaluate_keypoints(path, preds, "coco")
    empty = evaluate_keypoints(path, [], "coco")
    assert found["AP (M)"] == empty["AP (M)"] == -1.0 and found["AR (M)"] == empty["AR (M)"] == -1.0
    assert found["AP (L)"] > 0 and empty["AP (L)"] == 0.0 and empty["AR (L)"] == 0.0
    only_785 = evaluate_keypoints(path, [], "coco", image_ids=[785])  # one large person: no medium ones
    assert only_785["AP (M)"] == -1.0 and only_785["AP"] == 0.0


def test_crowd_ranges_without_images_are_minus_one_with_and_without_detections():
    gt_path = shared_path("crowdpose_sample", "json", "crowdpose_test.json")
    gt = json.loads(gt_path.read_text())  # crowd indices 0.33 and 0.39: medium images only
    preds = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
             for a in gt["annotations"] if sum(a["keypoints"][2::3]) > 0]  # fmt: skip
    found = evaluate_keypoints(str(gt_path), preds, "crowd_pose")
    empty = evaluate_keypoints(str(gt_path), [], "crowd_pose")
    assert found["AP (E)"] == empty["AP (E)"] == found["AP (H)"] == empty["AP (H)"] == -1.0
    assert found["AP (M)"] == 1.0 and empty["AP (M)"] == 0.0


def test_crowd_region_without_keypoints_evaluates_as_unlabelled(tmp_path):
    """A crowd region without a ``keypoints`` field (it is a mask, not a person) evaluates as one whose
    keypoints are all unlabelled, instead of failing in COCOeval's OKS."""
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    gt = json.loads(open(_coco_gt()).read())
    crowd = {"id": 999001, "image_id": 785, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 60, 60],
             "area": 3600.0, "num_keypoints": 0, "segmentation": {"counts": [0, 3600], "size": [60, 60]}}  # fmt: skip
    explicit = dict(crowd, keypoints=[0] * 51)
    paths = []
    for name, ann in (("missing", crowd), ("explicit", explicit), ("null", dict(crowd, keypoints=None))):
        data = dict(gt, annotations=gt["annotations"] + [ann])
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        paths.append(str(path))
    missing, explicit_metrics, null = (evaluate_keypoints(p, preds, "coco") for p in paths)
    assert list(missing.values()) == list(explicit_metrics.values()) == list(null.values())
    assert "keypoints" not in json.loads(open(paths[0]).read())["annotations"][-1]  # the file is untouched


def _as_results(annotations: list[dict], scores: dict[int, float] | None = None) -> list[dict]:
    """Ground-truth annotations as results, as the result writer gives them (category_id 1)."""
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"],
             "score": (scores or {}).get(a["id"], 1.0)} for a in annotations if a.get("keypoints")]  # fmt: skip


def test_categories_sharing_one_skeleton_are_one_class(tmp_path):
    """Antelopes (category 1) and a jaguar (26), as in AP-10K: the ground truth submitted as results
    scores 1.0, and every statistic counts the animals of the chosen categories only."""
    root = write_animal_set(tmp_path)
    path = str(root / ANIMALS_JSON)
    annotations = json.loads(open(path).read())["annotations"]
    assert evaluate_keypoints(path, _as_results(annotations), "custom") == evaluate_keypoints(
        path, _as_results(annotations), "custom", category_ids=[ANTELOPE, JAGUAR]
    )
    every = evaluate_keypoints(path, _as_results(annotations), "custom")
    assert every["AP"] == every["AR"] == 1.0
    # the jaguar missed: 2 of 3 animals found, precision 1 up to recall 2/3 (67 of COCO's 101 recall points)
    antelopes = [a for a in annotations if a["category_id"] == ANTELOPE]
    missed = evaluate_keypoints(path, _as_results(antelopes), "custom")
    assert missed["AP"] == pytest.approx(67 / 101) and missed["AR"] == pytest.approx(2 / 3)
    # antelopes only: the jaguar, found first, is a false positive (precision 0, 1/2, 2/3 at recall 0, 1/2, 1)
    scores = {21: 0.95, 11: 0.9, 31: 0.9}
    one = evaluate_keypoints(path, _as_results(annotations, scores), "custom", category_ids=[ANTELOPE])
    assert one["AP"] == pytest.approx(2 / 3) and one["AR"] == 1.0
    assert evaluate_keypoints(path, _as_results(antelopes), "custom", category_ids=[ANTELOPE])["AP"] == 1.0


def test_two_annotations_with_one_id_stop_the_evaluation(tmp_path):
    root = write_animal_set(tmp_path, lambda data: data["annotations"][3].update(id=11))
    with pytest.raises(AnnotationError, match=r"annotation id 11 is used twice.*\(image 1\).*\(image 3\)"):
        evaluate_keypoints(str(root / ANIMALS_JSON), [], "custom")


def test_an_exact_repeat_counts_once(tmp_path):
    """pycocotools would index both copies of a repeated annotation: one person found, one missed."""
    root = write_animal_set(tmp_path, lambda data: data["annotations"].append(dict(data["annotations"][0])))
    path = str(root / ANIMALS_JSON)
    metrics = evaluate_keypoints(path, _as_results(json.loads(open(path).read())["annotations"][:4]), "custom")
    assert metrics["AP"] == metrics["AR"] == 1.0


@pytest.mark.parametrize(
    ("dataset", "gt_parts", "preds_name", "subset"),
    [
        (
            "crowd_pose",
            ("eval_fixtures", "crowdpose_example_gt.json"),
            "crowdpose_example_preds.json",
            [114203, 107292],
        ),
        (
            "coco",
            ("coco_sample", "annotations", "person_keypoints_val2017.json"),
            "coco_sample_preds.json",
            [785, 40083],
        ),
    ],
)
def test_subset_statistics_equal_a_file_of_the_subset_only(tmp_path, dataset, gt_parts, preds_name, subset):
    """Every statistic of a subset run (CrowdPose's easy / medium / hard too) is that of a file holding only
    the subset's images; results of the other images are left out."""
    gt_path = shared_path(*gt_parts)
    preds = json.loads(shared_path("eval_fixtures", preds_name).read_text())
    gt = json.loads(gt_path.read_text())
    cut = dict(gt, images=[i for i in gt["images"] if i["id"] in subset],
               annotations=[a for a in gt["annotations"] if a["image_id"] in subset])  # fmt: skip
    only = _write_gt(tmp_path, "subset_only.json", cut)
    expected = evaluate_keypoints(only, [p for p in preds if p["image_id"] in subset], dataset)
    assert evaluate_keypoints(str(gt_path), preds, dataset, image_ids=subset) == expected
    full = evaluate_keypoints(str(gt_path), preds, dataset)
    assert expected != full
    if dataset == "crowd_pose":  # the subset has no easy image (crowd index < 0.2); the whole file has one
        assert expected["AP (E)"] == -1.0 and full["AP (E)"] == 1.0


def test_subset_image_not_in_the_file_is_named():
    with pytest.raises(ValueError, match="1 image ids of the subset are not in .*: 4242"):
        evaluate_keypoints(_coco_gt(), [], "coco", image_ids=[785, 4242])


def test_crowd_index_evaluation_of_a_coco_format_set(tmp_path):
    """DATASET.CROWD_INDEX_EVAL: CrowdPose's names and easy / medium / hard split, COCO's OKS, so AP,
    AP .5, AP .75 and AR equal the COCO evaluation's; crowdIndex is computed where the file has none."""
    preds = json.loads(shared_path("eval_fixtures", "coco_sample_preds.json").read_text())
    coco = evaluate_keypoints(_coco_gt(), preds, "coco")
    crowd = evaluate_keypoints(_coco_gt(), preds, "coco", crowd_index=True)
    assert list(crowd) == CROWDPOSE_NAMES
    for name in ("AP", "Ap .5", "AP .75", "AR", "AR .5", "AR .75"):
        assert crowd[name] == pytest.approx(coco[name], abs=1e-9), name
    # every image in one crowd group: that group's AP is the AP, the other two have no images
    data = json.loads(open(_coco_gt()).read())
    for image in data["images"]:
        image["crowdIndex"] = 0.5
    gt = tmp_path / "medium.json"
    gt.write_text(json.dumps(data))
    medium = evaluate_keypoints(str(gt), preds, "coco", crowd_index=True)
    assert medium["AP (M)"] == pytest.approx(medium["AP"], abs=1e-4)
    assert medium["AP (E)"] == medium["AP (H)"] == -1
