"""Synthetic set: deterministic for a seed, valid COCO json, statistics requirements recomputed from
the written json, occlusion marked as drawn."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest

from higherpose.dataset import synthetic
from higherpose.dataset.coco import CocoDataset, load_coco
from higherpose.dataset.specs import COCO
from higherpose.dataset.synthetic import scene as synthetic_scene


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


def _segmentation_mask(ann: dict, h: int, w: int) -> np.ndarray:
    """The annotation's segmentation (polygons or uncompressed RLE) rasterised by pycocotools, bool (H, W)."""
    seg = ann["segmentation"]
    rle = (
        mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        if isinstance(seg, list)
        else mask_utils.frPyObjects(seg, h, w)
    )
    return mask_utils.decode(rle) > 0


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
        # area is the segmentation's area: its pixel count as pycocotools rasterises it, exactly.
        mask = _segmentation_mask(ann, info["height"], info["width"])
        assert ann["area"] == mask.sum()
        # The box (x, y, w, h; inclusive pixel extent) holds the segmentation and the labelled joints.
        x, y, bw, bh = ann["bbox"]
        rows, cols = np.nonzero(mask)
        xs, ys = np.concatenate([cols, lab[:, 0]]), np.concatenate([rows, lab[:, 1]])
        assert x <= xs.min() and xs.max() <= x + bw - 1 and y <= ys.min() and ys.max() <= y + bh - 1
    assert visibilities == {0, 1, 2}


def _recomputed_stats(path: Path) -> dict:
    """Persons (labelled, non-crowd) per image, % with segmentation area < 32², % whose box overlaps
    another person's box in the same image, crowd regions: counted from the json file alone."""
    data = json.loads(path.read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    persons = [a for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    small = sum(_segmentation_mask(a, *sizes[a["image_id"]]).sum() < 32 * 32 for a in persons)
    overlapping = 0
    for a in persons:
        ax, ay, aw, ah = a["bbox"]
        for b in persons:
            bx, by, bw, bh = b["bbox"]
            if b is not a and b["image_id"] == a["image_id"]:
                if min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by):
                    overlapping += 1
                    break
    n = len(persons)
    return {
        "images": len(data["images"]),
        "persons": n,
        "persons_per_image": n / len(data["images"]),
        "pct_small": 100 * small / n,
        "pct_overlapping": 100 * overlapping / n,
        "crowd_regions": sum(1 for a in data["annotations"] if a["iscrowd"]),
    }


def test_statistics_requirements_on_val(small_set) -> None:
    """The set has many people per image, many small and overlapping ones and some crowds (counted
    from the json), and the statistics the generator reports are those of what it wrote."""
    root, stats = small_set
    val = _recomputed_stats(root / "annotations/person_keypoints_val.json")
    assert val["images"] == 60
    assert val["persons_per_image"] >= 2.5
    assert val["pct_small"] >= 30
    assert val["pct_overlapping"] > 20
    assert val["crowd_regions"] >= 1
    for split, counted in (
        ("val", val),
        ("train", _recomputed_stats(root / "annotations/person_keypoints_train.json")),
    ):
        assert stats[split] == pytest.approx(counted), split


def test_ensure_synthetic_regenerates_an_interrupted_set(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    assert synthetic.ensure_synthetic(str(root), num_train=2, num_val=2, verbose=False)
    assert not synthetic.ensure_synthetic(str(root), num_train=2, num_val=2, verbose=False)
    (root / ".incomplete").write_text("")  # as an interrupted run leaves it
    assert not synthetic.is_complete(str(root))
    assert synthetic.ensure_synthetic(str(root), num_train=2, num_val=2, verbose=False)
    assert synthetic.is_complete(str(root))


def _patch(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 3×3 neighbourhood of pixel (x, y), cut at the image border."""
    return mask[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]


def test_occluders_and_figures_are_drawn(monkeypatch) -> None:
    """Rendered images with the generator's own layer map recorded: figures and occluders are painted,
    occluders mark their pixels in the map, a joint under an occluder is never visible (v=2), each
    person's v=2 joints are exactly those whose 3×3 patch is mostly that person's own pixels, and the
    segmentation is the person's visible region."""
    image, anns = synthetic.render_image(0, "val", 3)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.std() > 10
    assert len([a for a in anns if not a["iscrowd"]]) >= 1

    # The layer map: 0 background, 1..n the labelled figures (farther first), 254 crowd, 255 occluders.
    record: dict = {}
    draw_figure, occluder = synthetic_scene.draw_figure, synthetic_scene.draw_occluder

    def recording_draw(canvas, ids, label, *args, **kwargs):
        if record.get("ids") is not ids:  # the crowd's own map first, then the labelled figures' map
            record["ids"], record["labels"] = ids, []
        record["labels"].append(label)
        return draw_figure(canvas, ids, label, *args, **kwargs)

    def recording_occluder(rng, canvas, ids, *args, **kwargs):
        record.setdefault("before_occluders", canvas.copy())
        return occluder(rng, canvas, ids, *args, **kwargs)

    monkeypatch.setattr(synthetic_scene, "draw_figure", recording_draw)
    monkeypatch.setattr(synthetic_scene, "draw_occluder", recording_occluder)
    square = np.ones((3, 3), np.uint8)
    images_with_occluders = under_occluder = checked_joints = 0
    for index in range(20):
        record.clear()
        image, anns = synthetic.render_image(7, "val", index)
        ids = record["ids"]  # the figures' map, as it stands after the occluders
        h, w = ids.shape
        painted = np.zeros((h, w), bool)  # pixels an occluder fully covers on the image
        if "before_occluders" in record:
            images_with_occluders += 1
            changed = np.any(image != record["before_occluders"], axis=2)
            occluded = ids == 255
            assert occluded.any() and np.all(changed[occluded])  # the map's occluder pixels are painted ...
            assert not np.any(changed & ~(cv2.dilate(occluded.astype(np.uint8), square) > 0))  # ... and only those
            painted = cv2.erode(changed.astype(np.uint8), square) > 0  # without anti-aliased edges
        # Figures drawn: labels 1..n, in the order of their annotations. A figure left with no pixels,
        # or with a remnant too small for a polygon (under 10 px), gets no annotation.
        n = len(record["labels"])
        assert record["labels"] == list(range(1, n + 1))
        pending, pairs = [a for a in anns if not a["iscrowd"]], []
        for label in range(1, n + 1):
            own = ids == label
            seg = _segmentation_mask(pending[0], h, w) if pending else np.zeros_like(own)
            if np.count_nonzero(seg & own) > 0.5 * seg.sum():
                pairs.append((pending.pop(0), own, seg))
            else:
                assert own.sum() < 10, (index, label)
        assert not pending
        for ann, own, seg in pairs:
            assert ann["area"] == seg.sum()
            # The segmentation is the visible region: within 2 px of the person's own pixels, most of them.
            assert not np.any(seg & ~(cv2.dilate(own.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0))
            assert (seg & own).sum() >= 0.4 * (seg | own).sum()
            for x, y, v in np.asarray(ann["keypoints"]).reshape(17, 3):
                if v == 0:
                    continue
                checked_joints += 1
                assert (v == 2) == (np.mean(_patch(own, x, y)) >= 0.5), (index, x, y, v)
                if np.mean(_patch(painted, x, y)) >= 0.5:
                    under_occluder += 1
                    assert v == 1, (index, x, y)
    assert images_with_occluders >= 5 and under_occluder >= 20 and checked_joints > 500  # none of it vacuous


def test_crowded_scene_writes_the_crowd_index_and_is_more_crowded(small_set, tmp_path: Path) -> None:
    from higherpose.dataset.crowd_index import crowd_index

    root, plain = small_set
    crowded = synthetic.generate(
        str(tmp_path), num_train=0, num_val=60, seed=7, verbose=False, cfg=synthetic.CROWDED_CONFIG
    )["val"]
    data = json.loads((tmp_path / "annotations/person_keypoints_val.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in data["images"]:
        assert image["crowdIndex"] == round(crowd_index(by_image.get(image["id"], [])), 2)
    assert "crowdIndex" not in json.loads((root / "annotations/person_keypoints_val.json").read_text())["images"][0]
    assert "mean_crowd_index" not in plain["val"] and crowded["mean_crowd_index"] > 0
    assert crowded["pct_easy"] + crowded["pct_medium"] + crowded["pct_hard"] == pytest.approx(100.0)
    assert crowded["pct_hard"] > 0 and crowded["pct_medium"] > 0
    assert "crowd index" in synthetic.format_stats("val", crowded)
    # the plain set's images, indexed after the fact, are less crowded
    plain_data = json.loads((root / "annotations/person_keypoints_val.json").read_text())
    from higherpose.dataset.crowd_index import add_crowd_index

    add_crowd_index(plain_data)
    plain_mean = np.mean([image["crowdIndex"] for image in plain_data["images"]])
    assert crowded["mean_crowd_index"] > 1.2 * plain_mean


def test_a_set_of_other_generator_settings_is_refused(tmp_path: Path) -> None:
    root = str(tmp_path / "set")
    assert synthetic.ensure_synthetic(root, 2, 1, verbose=False)
    assert not synthetic.ensure_synthetic(root, 2, 1, verbose=False)  # same settings: kept
    with pytest.raises(ValueError, match="near_prob 0.4 there, 0.9 wanted"):
        synthetic.ensure_synthetic(root, 2, 1, verbose=False, cfg=synthetic.CROWDED_CONFIG)
    (tmp_path / "set" / "generator.json").unlink()  # a set written without the record is the plain one
    assert not synthetic.ensure_synthetic(root, 2, 1, verbose=False)
    with pytest.raises(ValueError, match="crowd_index False there, True wanted"):
        synthetic.ensure_synthetic(root, 2, 1, verbose=False, cfg=synthetic.CROWDED_CONFIG)


def test_generator_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="near_prob"):
        synthetic.SyntheticConfig(near_prob=1.5)
    with pytest.raises(ValueError, match="near_spread"):
        synthetic.SyntheticConfig(near_spread=0.0)
