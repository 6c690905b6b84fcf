"""Generate the synthetic COCO-format keypoint set (the quick start's data).

    python tools/make_synthetic.py --root data/synthetic --train 800 --val 100 --seed 0

Writes ROOT/annotations/person_keypoints_{train,val}.json and ROOT/images/{train,val}/*.jpg and prints
each split's statistics. The same seed gives the same files. The generator is
``higherpose.dataset.synthetic``; this script only parses the command line.
"""

from __future__ import annotations

import argparse
import time

from higherpose.dataset.synthetic import (
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    MAX_AUTO_WORKERS,
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
    args = parser.parse_args(argv)
    start = time.perf_counter()
    generated = ensure_synthetic(
        args.root, args.train, args.val, args.seed, workers=args.workers, force=not args.if_missing
    )
    if generated:
        print(f"wrote {args.root} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"complete synthetic set found in {args.root} (delete it to regenerate):")
        for split, stats in read_stats(args.root).items():
            print(format_stats(split, stats))


if __name__ == "__main__":
    main()
