"""tools/crowdpose_concat_train_val.py on a split of the real CrowdPose sample annotations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_tool

tool = load_tool("crowdpose_concat_train_val")


def test_concat_train_val(crowdpose_sample: Path, tmp_path: Path) -> None:
    gt = json.loads((crowdpose_sample / "json" / "crowdpose_test.json").read_text())
    first, second = gt["images"][:1], gt["images"][1:]
    (tmp_path / "json").mkdir()
    for name, images in (("train", first), ("val", second)):
        ids = {img["id"] for img in images}
        split = {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
        (tmp_path / "json" / f"crowdpose_{name}.json").write_text(json.dumps(split))
    assert tool.main(["--root", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "json" / "crowdpose_trainval.json").read_text())
    assert sorted(i["id"] for i in merged["images"]) == sorted(i["id"] for i in gt["images"])
    assert len(merged["annotations"]) == len(gt["annotations"])
    assert merged["categories"] == gt["categories"]


def test_clashing_ids_fail() -> None:
    split = {"images": [{"id": 1}], "annotations": [], "categories": []}
    with pytest.raises(ValueError, match="share 1 image ids"):
        tool.concat(split, split)
