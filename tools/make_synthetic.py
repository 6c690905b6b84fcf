"""Generate the synthetic COCO-format keypoint set (the quick start's data).

    python tools/make_synthetic.py --root data/synthetic --train 800 --val 100 --seed 0

Writes ROOT/annotations/person_keypoints_{train,val}.json and ROOT/images/{train,val}/*.jpg and prints
each split's statistics. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from higherpose.dataset.synthetic import format_stats, generate, is_complete, split_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default="data/synthetic", help="output folder (default: data/synthetic)")
    parser.add_argument("--train", type=int, default=800, help="training images (default: 800)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: CPU count, at most 4)")
    parser.add_argument("--if-missing", action="store_true", help="keep a complete existing set (print its statistics)")
    args = parser.parse_args(argv)
    if args.if_missing and is_complete(args.root):
        print(f"complete synthetic set found in {args.root} (delete it to regenerate):")
        for split in ("train", "val"):
            with open(os.path.join(args.root, "annotations", f"person_keypoints_{split}.json")) as f:
                print(format_stats(split, split_stats(json.load(f))))
        return
    start = time.perf_counter()
    generate(args.root, args.train, args.val, args.seed, args.workers)
    print(f"wrote {args.root} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
