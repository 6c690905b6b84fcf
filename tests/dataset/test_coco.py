"""COCO / CrowdPose datasets on the real samples: layout, masks, robustness."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

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
