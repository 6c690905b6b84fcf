"""Write CrowdPose's ``crowdpose_trainval.json`` (train + val), the split HigherHRNet trains on.

python tools/crowdpose_concat_train_val.py --root data/crowd_pose
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from higherpose.utils.atomic import write_json_atomic


def concat(train: dict, val: dict) -> dict:
    """Images and annotations of both splits; categories (and anything else) from train."""
    ids = {img["id"] for img in train["images"]}
    clash = ids & {img["id"] for img in val["images"]}
    if clash:
        raise ValueError(f"train and val share {len(clash)} image ids, e.g. {sorted(clash)[:5]}")
    out = dict(train)
    out["images"] = train["images"] + val["images"]
    out["annotations"] = train["annotations"] + val["annotations"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/crowd_pose", help="CrowdPose root (with json/)")
    args = parser.parse_args(argv)
    folder = os.path.join(args.root, "json")
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(folder, f"crowdpose_{split}.json")
        if not os.path.isfile(path):
            sys.exit(f"missing {path}: expected {folder}/crowdpose_{{train,val}}.json")
        with open(path) as f:
            splits[split] = json.load(f)
    merged = concat(splits["train"], splits["val"])
    target = os.path.join(folder, "crowdpose_trainval.json")
    write_json_atomic(merged, target)
    print(f"wrote {target}: {len(merged['images'])} images, {len(merged['annotations'])} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
