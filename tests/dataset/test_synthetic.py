"""Synthetic set: deterministic for a seed, valid COCO json, statistics requirements."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from higherpose.dataset import synthetic
from higherpose.dataset.coco import CocoDataset, load_coco
from higherpose.dataset.specs import COCO


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    stats = synthetic.generate(str(root), num_train=6, num_val=60, seed=7, workers=2, verbose=False)
    return root, stats


def test_deterministic_for_a_seed(small_set, tmp_path: Path) -> None:
    root, _ = small_set
    again = tmp_path / "again"
    synthetic.generate(str(again), num_train=6, num_val=60, seed=7, workers=1, verbose=False)  # other worker count
    assert _digest(root) == _digest(again)
    other = tmp_path / "other"
    synthetic.generate(str(other), num_train=6, num_val=0, seed=8, verbose=False)
    assert _digest(other)["images/train/000000000000.jpg"] != _digest(root)["images/train/000000000000.jpg"]


def test_json_loads_with_pycocotools_and_is_consistent(small_set) -> None:
    root, _ = small_set
    coco = load_coco(str(root / "annotations/person_keypoints_val.json"))
    cat = coco.loadCats(1)[0]
    assert cat["keypoints"] == list(COCO.joint_names) and len(cat["skeleton"]) == len(COCO.skeleton)
    assert min(min(e) for e in cat["skeleton"]) == 1  # 1-based
    ds = CocoDataset(str(root), "val")
    assert len(ds) == 60
    image, anns = ds[0]
    assert image.shape == (ds.coco.imgs[ds.ids[0]]["height"], ds.coco.imgs[ds.ids[0]]["width"], 3)
    visibilities = set()
    for ann in coco.loadAnns(coco.getAnnIds()):
        kp = np.asarray(ann["keypoints"]).reshape(17, 3)
        assert ann["num_keypoints"] == np.count_nonzero(kp[:, 2])
        assert ann["area"] > 0 and ann["segmentation"]
        info = coco.imgs[ann["image_id"]]
        lab = kp[kp[:, 2] > 0]
        assert np.all((lab[:, 0] >= 0) & (lab[:, 0] < info["width"]) & (lab[:, 1] >= 0) & (lab[:, 1] < info["height"]))
        visibilities |= set(kp[:, 2].tolist())
        # area is the segmentation's area (pycocotools)
        assert abs(coco.annToMask(ann).sum() - ann["area"]) <= 0.35 * ann["area"] + 20
    assert visibilities == {0, 1, 2}


def test_statistics_requirements_on_val(small_set) -> None:
    _, stats = small_set
    val = stats["val"]
    assert val["persons_per_image"] >= 2.5
    assert val["pct_small"] >= 30
    assert val["pct_overlapping"] > 20
    assert val["crowd_regions"] >= 1


def test_ensure_synthetic_regenerates_an_interrupted_set(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    assert synthetic.ensure_synthetic(str(root), num_train=2, num_val=2, verbose=False)
    assert not synthetic.ensure_synthetic(str(root), num_train=2, num_val=2, verbose=False)
    (root / ".incomplete").write_text("")  # as an interrupted run leaves it
    assert not synthetic.is_complete(str(root))
    assert synthetic.ensure_synthetic(str(root), num_train=2, num_val=2, verbose=False)
    assert synthetic.is_complete(str(root))


def test_occluders_and_figures_are_drawn() -> None:
    image, anns = synthetic.render_image(0, "val", 3)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.std() > 10
    assert len([a for a in anns if not a["iscrowd"]]) >= 1
