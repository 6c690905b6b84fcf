"""Keypoint categories and annotation ids of COCO-format files written elsewhere: several categories that
share one skeleton (one per species, as in animal sets) train as one class, a category of another
length stops naming it, and two annotations with one id stop naming the id and both images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from higherpose.dataset.annotations import AnnotationError, drop_repeated_annotations
from higherpose.dataset.build import build_dataset, build_test_dataset
from higherpose.dataset.coco import CocoDataset, CocoKeypoints
from higherpose.dataset.specs import COCO
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator
from tests.conftest import TINY_HRNET, load_cfg

ANIMALS_JSON = "annotations/person_keypoints_val.json"
ANTELOPE, JAGUAR, CAR = 1, 26, 90


def animal(ann_id: int, image_id: int, category_id: int, x0: float, y0: float) -> dict:
    """One fully labelled 17-joint animal inside the box ``(x0, y0, 120, 80)``."""
    keypoints = []
    for j in range(17):
        keypoints += [x0 + 10 + 6 * j, y0 + 10 + (j % 5) * 14, 2]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "keypoints": keypoints,
            "num_keypoints": 17, "bbox": [x0, y0, 120, 80], "area": 9600.0, "iscrowd": 0}  # fmt: skip


def write_animal_set(root: Path, edit=None) -> Path:
    """An AP-10K-like COCO-layout set under ``root`` (split ``val``, no image files): categories 1
    (antelope) and 26 (jaguar) with the same 17 keypoints and skeleton, and a box-only category 90
    (car). Image 1: an antelope and a car; image 2: a jaguar; image 3: an antelope. ``edit(data)``
    changes the json before it is written."""
    skeleton = [[a + 1, b + 1] for a, b in COCO.skeleton]
    species = [{"id": i, "name": name, "supercategory": "animal", "keypoints": list(COCO.joint_names),
                "skeleton": skeleton} for i, name in ((ANTELOPE, "antelope"), (JAGUAR, "jaguar"))]  # fmt: skip
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 480, "width": 640} for i in (1, 2, 3)],
        "categories": [*species, {"id": CAR, "name": "car", "supercategory": "vehicle"}],
        "annotations": [
            animal(11, 1, ANTELOPE, 50, 60),
            {"id": 12, "image_id": 1, "category_id": CAR, "bbox": [400, 300, 150, 90], "area": 13500.0, "iscrowd": 0},
            animal(21, 2, JAGUAR, 200, 150),
            animal(31, 3, ANTELOPE, 300, 250),
        ],
    }
    if edit is not None:
        edit(data)
    path = root / ANIMALS_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return root


def _train_set(root: Path, category_ids=()) -> CocoKeypoints:
    gen = ([HeatmapGenerator(64, 17, 2)], [JointsGenerator(30, 17, 64, True)])
    return CocoKeypoints(str(root), "val", COCO, *gen, None, category_ids=category_ids)


def test_every_category_with_keypoints_is_one_class_and_the_others_are_counted(tmp_path: Path, caplog) -> None:
    root = write_animal_set(tmp_path)
    with caplog.at_level(logging.INFO, logger="higherpose.dataset.coco"):
        test_set = CocoDataset(str(root), "val")
    assert test_set.categories.ids == (ANTELOPE, JAGUAR)
    assert [a["id"] for a in test_set.coco.dataset["annotations"]] == [11, 21, 31]  # the car is left out
    assert [a["id"] for a in test_set.load_anns(2)] == [21] and test_set.ids == [1, 2, 3]
    (line,) = [r.getMessage() for r in caplog.records if "keypoint categories" in r.getMessage()]
    assert "1 antelope (2 annotations), 26 jaguar (1 annotation)" in line
    assert "left out: 1 annotation of other categories (90 car: 1)" in line
    assert line.startswith(str(root / ANIMALS_JSON))
    # training uses every animal of the selected categories, whatever its species
    assert _train_set(root).ids == [1, 2, 3]


def test_chosen_categories_only(tmp_path: Path) -> None:
    root = write_animal_set(tmp_path)
    antelopes = CocoDataset(str(root), "val", category_ids=[ANTELOPE])
    assert antelopes.categories.ids == (ANTELOPE,) and antelopes.categories.others == {JAGUAR: 1, CAR: 1}
    assert antelopes.load_anns(2) == [] and len(antelopes) == 3  # the test set keeps every image
    assert _train_set(root, [ANTELOPE]).ids == [1, 3]  # the jaguar's image has nothing to train on
    assert _train_set(root, [JAGUAR]).ids == [2]


def test_config_key_reaches_training_and_test_sets(tmp_path: Path) -> None:
    root = write_animal_set(tmp_path)
    opts = ("DATASET.ROOT", root, "DATASET.TRAIN", "val", "DATASET.TEST", "val", "DATASET.SYNTHETIC", "False")
    cfg = load_cfg(TINY_HRNET, *opts, "DATASET.CATEGORY_IDS", f"[{JAGUAR}]")
    assert build_dataset(cfg, is_train=True).ids == [2]
    assert build_test_dataset(cfg).categories.ids == (JAGUAR,)
    assert build_test_dataset(load_cfg(TINY_HRNET, *opts)).categories.ids == (ANTELOPE, JAGUAR)


def test_category_of_another_length_stops_with_its_name(tmp_path: Path) -> None:
    def shorter_jaguar(data: dict) -> None:
        data["categories"][1]["keypoints"] = data["categories"][1]["keypoints"][:15]

    root = write_animal_set(tmp_path, shorter_jaguar)
    with pytest.raises(AnnotationError) as err:
        CocoDataset(str(root), "val")
    message = str(err.value)
    assert message.startswith(str(root / ANIMALS_JSON)) and "\n" not in message
    assert "category 26 'jaguar' has 15 keypoints, expected 17" in message and "DATASET.CATEGORY_IDS" in message
    assert CocoDataset(str(root), "val", category_ids=[ANTELOPE]).categories.ids == (ANTELOPE,)  # not used: fine


def test_unknown_category_id_is_named(tmp_path: Path) -> None:
    root = write_animal_set(tmp_path)
    with pytest.raises(AnnotationError, match=r"DATASET.CATEGORY_IDS = \[1, 7\]: category 7 is neither declared"):
        CocoDataset(str(root), "val", category_ids=[ANTELOPE, 7])


def test_file_without_categories_keeps_every_annotation_with_keypoints(tmp_path: Path) -> None:
    """A hand-made file that declares no category (and gives annotations none) trains on all of them."""

    def bare(data: dict) -> None:
        del data["categories"]
        data["annotations"] = [a for a in data["annotations"] if a["id"] != 12]
        for ann in data["annotations"]:
            del ann["category_id"]

    ds = CocoDataset(str(write_animal_set(tmp_path, bare)), "val")
    assert len(ds.coco.dataset["annotations"]) == 3 and ds.categories.ids == (None,)


def test_two_annotations_with_one_id_stop_naming_the_id_and_both_images(tmp_path: Path) -> None:
    root = write_animal_set(tmp_path, lambda data: data["annotations"][3].update(id=21))
    with pytest.raises(AnnotationError) as err:
        CocoDataset(str(root), "val")
    message = str(err.value)
    assert message.startswith(str(root / ANIMALS_JSON)) and "\n" not in message
    assert "annotation id 21 is used twice, by annotations[2] (image 2) and annotations[3] (image 3)" in message


def test_an_exact_repeat_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    root = write_animal_set(tmp_path, lambda data: data["annotations"].append(dict(data["annotations"][2])))
    with caplog.at_level(logging.WARNING, logger="higherpose.dataset.coco"):
        ds = CocoDataset(str(root), "val")
    assert [a["id"] for a in ds.coco.dataset["annotations"]] == [11, 21, 31]
    assert "annotations repeating an earlier one exactly: 1 (ids 21; one of each is kept)" in caplog.text


def test_drop_repeated_annotations_leaves_unique_ids_alone() -> None:
    data = {"annotations": [{"id": 1, "image_id": 5}, {"image_id": 5}, {"id": 2, "image_id": 5}, "not an object"]}
    before = json.loads(json.dumps(data))
    assert drop_repeated_annotations(data, "x.json") == [] and data == before
