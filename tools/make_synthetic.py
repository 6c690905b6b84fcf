"""Generate the synthetic COCO-format keypoint set (the quick start's data).

    python tools/make_synthetic.py --root data/synthetic --train 800 --val 100 --seed 0
    python tools/make_synthetic.py --root data/synthetic_crowded --scene crowded
    python tools/make_synthetic.py --root data/my_set --near-prob 0.7 --near-spread 0.6 --crowd-index

Writes ROOT/annotations/person_keypoints_{train,val}.json, ROOT/images/{train,val}/*.jpg and
ROOT/generator.json (the settings), and prints each split's statistics. The same seed and settings
give the same files. ``--scene`` picks a preset (plain: the quick start's set; crowded: nearly every
figure placed against another, with CrowdPose's crowdIndex per image); the other options change it.
The generator is ``higherpose.dataset.synthetic``; this script only parses the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from higherpose.dataset.synthetic import (
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    MAX_AUTO_WORKERS,
    SCENES,
    ensure_synthetic,
    format_stats,
    read_stats,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--root", default="data/synthetic", help="output folder (default: data/synthetic)")
    parser.add_argument(
        "--train", type=int, default=DEFAULT_NUM_TRAIN, help=f"training images (default: {DEFAULT_NUM_TRAIN})"
    )
    parser.add_argument(
        "--val", type=int, default=DEFAULT_NUM_VAL, help=f"validation images (default: {DEFAULT_NUM_VAL})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})")
    parser.add_argument(
        "--workers", type=int, default=0, help=f"processes (default: CPU count, at most {MAX_AUTO_WORKERS})"
    )
    parser.add_argument("--if-missing", action="store_true", help="keep a complete existing set (print its statistics)")
    parser.add_argument("--scene", choices=sorted(SCENES), default="plain", help="generator preset (default: plain)")
    parser.add_argument(
        "--near-prob", type=float, help="share of figures placed against another one (plain: 0.4, crowded: 0.9)"
    )
    parser.add_argument(
        "--near-spread", type=float, help="distance of such a placement, x the plain one (plain: 1, crowded: 0.5)"
    )
    parser.add_argument("--crowd-index", action="store_true", help="write CrowdPose's crowdIndex per image")
    args = parser.parse_args(argv)
    changes = {"near_prob": args.near_prob, "near_spread": args.near_spread, "crowd_index": args.crowd_index or None}
    try:
        cfg = dataclasses.replace(SCENES[args.scene], **{k: v for k, v in changes.items() if v is not None})
    except ValueError as err:
        sys.exit(f"make_synthetic: {err}")
    start = time.perf_counter()
    try:
        generated = ensure_synthetic(
            args.root, args.train, args.val, args.seed, workers=args.workers, force=not args.if_missing, cfg=cfg
        )
    except ValueError as err:  # --if-missing and a set of other settings there
        sys.exit(f"make_synthetic: {err}")
    if generated:
        print(f"wrote {args.root} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"complete synthetic set found in {args.root} (delete it to regenerate):")
        for split, stats in read_stats(args.root).items():
            print(format_stats(split, stats))


if __name__ == "__main__":
    main()
