"""COCO / CrowdPose datasets on the real samples: layout, masks, robustness."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from higherpose.dataset.annotations import AnnotationError
from higherpose.dataset.coco import CocoDataset, CocoKeypoints, CrowdPoseDataset, CrowdPoseKeypoints, get_mask
from higherpose.dataset.specs import COCO, CROWDPOSE
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator

COCO_JSON = "annotations/person_keypoints_val2017.json"


def _train_set(root: Path, res: int = 64, cls=CocoKeypoints, spec=COCO, split: str = "val2017"):
    k = spec.num_joints
    return cls(str(root), split, spec, [HeatmapGenerator(res, k, 2)], [JointsGenerator(30, k, res, True)], None)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_test_dataset_interface(coco_sample: Path) -> None:
    ds = CocoDataset(str(coco_sample), "val2017")
    assert ds.name == "coco" and ds.spec is COCO and ds.ann_file.endswith(COCO_JSON)
    assert ds.ids == [785, 40083, 196141, 197388] and len(ds) == 4
    image, anns = ds[1]
    info = ds.coco.imgs[ds.ids[1]]
    assert image.dtype == np.uint8 and image.shape == (info["height"], info["width"], 3)
    assert {a["image_id"] for a in anns} == {40083} and len(anns) == 3


def test_crowdpose_without_area_or_segmentation(crowdpose_sample: Path) -> None:
    ds = CrowdPoseDataset(str(crowdpose_sample), "test")
    assert ds.name == "crowd_pose" and ds.spec is CROWDPOSE and len(ds) == 2
    image, anns = ds[0]
    assert image is not None and all("segmentation" not in a for a in anns)
    train = _train_set(crowdpose_sample, cls=CrowdPoseKeypoints, spec=CROWDPOSE, split="test")
    _, heatmaps, masks, joints = train[0]
    assert heatmaps[0].shape == (14, 64, 64) and masks[0].all()  # no transform: nothing masked


def test_unlabelled_persons_are_masked(coco_sample: Path) -> None:
    ds = _train_set(coco_sample)
    index = ds.ids.index(40083)  # holds one person with num_keypoints == 0 and a polygon
    anns = ds.load_anns(40083)
    unlabelled = [a for a in anns if a["num_keypoints"] == 0]
    assert len(unlabelled) == 1
    info = ds.coco.imgs[40083]
    region = mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects(unlabelled[0]["segmentation"], info["height"], info["width"]))
    ).astype(bool)
    mask = ds.get_mask(anns, 40083)
    assert region.sum() > 100 and not mask[region].any() and mask[~region].all()
    # Without transforms the training mask is the full-size mask.
    _, _, masks, _ = ds[index]
    assert np.array_equal(masks[0].astype(bool), mask)


def test_crowd_region_is_masked_and_not_a_person(coco_sample: Path, tmp_path: Path) -> None:
    root = _copy(coco_sample, tmp_path / "coco")
    data = json.loads((root / COCO_JSON).read_text())
    info = next(i for i in data["images"] if i["id"] == 785)
    h, w = info["height"], info["width"]
    crowd = np.zeros((h, w), np.uint8, order="F")
    crowd[20:80, 30:200] = 1
    rle = mask_utils.encode(crowd)
    flat = crowd.reshape(-1, order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    data["annotations"].append(
        {
            "id": 1,
            "image_id": 785,
            "category_id": 1,
            "iscrowd": 1,
            "num_keypoints": 0,
            "keypoints": [0] * 51,
            "area": float(mask_utils.area(rle)),
            "bbox": [30, 20, 170, 60],
            "segmentation": {"counts": np.diff(bounds).tolist(), "size": [h, w]},  # uncompressed, as COCO
        }
    )
    (root / COCO_JSON).write_text(json.dumps(data))
    ds = _train_set(root)
    anns = ds.load_anns(785)
    mask = ds.get_mask(anns, 785)
    assert not mask[20:80, 30:200].any() and mask.sum() == h * w - 60 * 170
    assert np.array_equal(get_mask(anns, h, w), mask)
    # Untransformed joints are in image pixels: a 512 map holds image 785's person, and only it.
    _, _, _, joints = _train_set(root, res=512)[ds.ids.index(785)]
    assert joints[0][:, :, 1].any(axis=1).sum() == 1 and joints[0][0, :, 1].sum() == 17


def test_corrupt_image_is_skipped_and_counted(coco_sample: Path, tmp_path: Path, caplog) -> None:
    root = _copy(coco_sample, tmp_path / "coco")
    (root / "images/val2017/000000040083.jpg").write_bytes(b"not a jpeg at all")
    test_set = CocoDataset(str(root), "val2017")
    image, anns = test_set[1]
    assert image is None and len(anns) == 3 and test_set.num_unreadable == 1
    assert "000000040083.jpg" in caplog.text
    train = _train_set(root)
    i = train.ids.index(40083)
    sample = train[i]  # the next readable image stands in
    expected = train[i + 1]
    assert np.array_equal(sample[1][0], expected[1][0]) and train.num_unreadable == 1


def test_malformed_keypoints_fail_naming_the_annotation(coco_sample: Path, tmp_path: Path) -> None:
    root = _copy(coco_sample, tmp_path / "coco")
    data = json.loads((root / COCO_JSON).read_text())
    data["annotations"][2]["keypoints"] = data["annotations"][2]["keypoints"][:-3]
    bad_id = data["annotations"][2]["id"]
    (root / COCO_JSON).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"annotation id {bad_id}.*48 keypoint values"):
        CocoDataset(str(root), "val2017")


def test_missing_root_and_annotation_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset root not found.*nowhere(.|\n)*expected layout"):
        CocoDataset(str(tmp_path / "nowhere"), "val2017")
    with pytest.raises(FileNotFoundError, match="person_keypoints_train2017.json(.|\n)*images/<split>"):
        CocoDataset(str(tmp_path), "train2017")
    with pytest.raises(FileNotFoundError, match="crowdpose_train.json"):
        CrowdPoseDataset(str(tmp_path), "train")
    with pytest.raises(ValueError, match="DATA_FORMAT"):
        CocoDataset(str(tmp_path), "val2017", data_format="png")


def test_zip_format(coco_sample: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(coco_sample / COCO_JSON, root / COCO_JSON)
    (root / "images").mkdir()
    with zipfile.ZipFile(root / "images/val2017.zip", "w") as zf:
        for f in (coco_sample / "images/val2017").iterdir():
            zf.write(f, f.name)
    zipped = CocoDataset(str(root), "val2017", data_format="zip")
    plain = CocoDataset(str(coco_sample), "val2017")
    assert zipped.image_path("a.jpg").endswith("images/val2017.zip@a.jpg")
    assert np.array_equal(zipped[2][0], plain[2][0])


def _edited(coco_sample: Path, tmp_path: Path, edit) -> Path:
    """A COCO root under tmp_path whose annotation json is the sample's after ``edit(data)`` (in place);
    the images are the sample's, symlinked."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images/val2017").symlink_to(coco_sample / "images/val2017")
    data = json.loads((coco_sample / COCO_JSON).read_text())
    edit(data)
    (root / COCO_JSON).write_text(json.dumps(data))  # json writes NaN / Infinity as those bare words
    return root


@pytest.mark.parametrize(
    ("field", "index", "value", "shown"),
    [
        ("keypoints", 4, float("nan"), r"keypoints\[4\] \(joint 1 y\) = nan"),
        ("keypoints", 0, float("-inf"), r"keypoints\[0\] \(joint 0 x\) = -inf"),
        ("bbox", 2, float("inf"), r"bbox\[2\] \(w\) = inf"),
        ("area", None, float("nan"), "non-finite area = nan"),
        ("num_keypoints", None, float("inf"), "non-finite num_keypoints = inf"),
        ("keypoints", 2, None, r"non-numeric keypoints\[2\] \(joint 0 v\) = None"),
    ],
    ids=["nan_keypoint", "inf_keypoint", "inf_bbox", "nan_area", "inf_num_keypoints", "null_keypoint"],
)
def test_non_finite_numbers_fail_naming_file_and_annotation(
    coco_sample: Path, tmp_path: Path, field: str, index: int | None, value: float | None, shown: str
) -> None:
    def edit(data: dict) -> None:
        ann = data["annotations"][2]
        if index is None:
            ann[field] = value
        else:
            ann[field][index] = value

    root = _edited(coco_sample, tmp_path, edit)
    ann_file = str(root / COCO_JSON)
    # The test set is what tools/valid.py evaluates on: it must refuse the file as the training set does.
    for build in (lambda: CocoDataset(str(root), "val2017"), lambda: _train_set(root)):
        with pytest.raises(AnnotationError) as err:
            build()
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{ann_file}: annotation id 230195 (image 40083)")
        assert re.search(shown, message), message


def test_truncated_json_names_file_and_position(coco_sample: Path, tmp_path: Path) -> None:
    root = _edited(coco_sample, tmp_path, lambda data: None)
    text = (root / COCO_JSON).read_text()
    (root / COCO_JSON).write_text(text[: len(text) // 2])
    with pytest.raises(AnnotationError) as err:
        CocoDataset(str(root), "val2017")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{root / COCO_JSON}: not valid JSON")
    assert re.search(r"line 1, column \d+", message) and "truncated" in message
    # A mistake inside the file (not at its end) is reported where it is, without the truncation hint.
    (root / COCO_JSON).write_text('{\n  "images": [,]\n}\n')
    with pytest.raises(AnnotationError, match=r"not valid JSON \(Expecting value at line 2, column 14\)$"):
        CocoDataset(str(root), "val2017")


@pytest.mark.parametrize("unlabel", ["num_keypoints_0", "no_keypoints", "no_annotations"])
def test_train_split_without_labelled_person_fails_naming_file(coco_sample: Path, tmp_path: Path, unlabel: str) -> None:
    def edit(data: dict) -> None:
        if unlabel == "no_annotations":
            data["annotations"] = []
        for ann in data["annotations"]:
            ann["num_keypoints"] = 0
            if unlabel == "num_keypoints_0":
                ann["keypoints"] = [0] * 51
            else:
                del ann["keypoints"], ann["num_keypoints"]

    root = _edited(coco_sample, tmp_path, edit)
    with pytest.raises(AnnotationError) as err:
        _train_set(root)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{root / COCO_JSON}: no image has a labelled person")
    assert len(CocoDataset(str(root), "val2017")) == 4  # a test split may hold no labelled person


def test_persons_without_keypoints_field_load(coco_sample: Path, tmp_path: Path) -> None:
    """A crowd region and an unlabelled person given as box and polygon only (no ``keypoints``): both are
    masked, neither is a person of the targets."""
    region = [[30.0, 20.0, 200.0, 20.0, 200.0, 80.0, 30.0, 80.0]]  # x 30..200, y 20..80
    unlabelled = [[400.0, 300.0, 450.0, 300.0, 450.0, 350.0, 400.0, 350.0]]

    def edit(data: dict) -> None:
        common = {"image_id": 785, "category_id": 1}
        data["annotations"].append({"id": 1, "iscrowd": 1, "area": 10200.0, "bbox": [30, 20, 170, 60],
                                    "segmentation": region, **common})  # fmt: skip
        data["annotations"].append({"id": 2, "iscrowd": 0, "area": 2500.0, "bbox": [400, 300, 50, 50],
                                    "segmentation": unlabelled, **common})  # fmt: skip

    root = _edited(coco_sample, tmp_path, edit)
    assert len(CocoDataset(str(root), "val2017").load_anns(785)) == 3
    ds = _train_set(root, res=512)
    mask = ds.get_mask(ds.load_anns(785), 785)
    assert not mask[21:79, 31:199].any() and not mask[301:349, 401:449].any() and mask[100:200, 300:400].all()
    _, heatmaps, masks, joints = ds[ds.ids.index(785)]
    assert joints[0][:, :, 1].any(axis=1).sum() == 1  # image 785's one labelled person only


def test_unknown_image_id_fails_naming_both_ids(coco_sample: Path, tmp_path: Path) -> None:
    root = _edited(coco_sample, tmp_path, lambda data: data["annotations"][4].update(image_id=123456))
    with pytest.raises(AnnotationError) as err:
        CocoDataset(str(root), "val2017")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{root / COCO_JSON}: annotation id 460541")
    assert "image id 123456 is not in 'images'" in message


def test_annotation_without_id_is_named_by_position(coco_sample: Path, tmp_path: Path) -> None:
    root = _edited(coco_sample, tmp_path, lambda data: data["annotations"][5].pop("id"))
    with pytest.raises(AnnotationError, match=r"person_keypoints_val2017.json: annotations\[5\] \(image 196141\) "
                       "has no 'id'"):  # fmt: skip
        CocoDataset(str(root), "val2017")
