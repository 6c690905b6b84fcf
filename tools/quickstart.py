"""The quick start: from nothing to a trained higher_pose model, its AP table and pose pictures.

    python tools/quickstart.py              # what `make quickstart` runs (at most 15 minutes of training)
    python tools/quickstart.py --minutes 0  # the config's whole schedule (8,000 steps), however long it takes
    python tools/quickstart.py --nproc 2    # train with two gloo DDP processes (docs/experiments/quickstart.md)
    python tools/quickstart.py --smoke      # a 1-minute smoke run of the same steps (used by the tests)

Steps, each an ordinary project command printed before it runs, so you can re-run any of them:
1. generate the synthetic COCO-format set under data/synthetic (skipped when present),
2. train the tiny higher_pose config with tools/dist_train.py on the CPU (one process, all cores) for
   at most --minutes (TRAIN.TIME_BUDGET: a slow machine trains fewer steps per epoch, same schedule),
3. validate the final weights with tools/valid.py (prints the AP table),
4. draw the poses found on a few validation images with tools/demo.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from higherpose.studies import quickstart as steps
from higherpose.studies.quickstart import DEFAULT_NPROC, REPO, SMOKE_TRAIN, SMOKE_VALID, StepError, run_step

DEFAULT_CFG = "experiments/synthetic/higher_pose_tiny.yaml"
# At most 15 minutes of training, so the whole command fits in about a quarter of an hour on a laptop CPU.
DEFAULT_MINUTES = 15.0

# How every step runs (echoed, timed, StepError on failure); one module-level name that a caller can
# wrap to watch or alter the steps.
run = run_step


def pipeline(
    cfg: str,
    output: Path,
    data_root: Path,
    train_opts: list[str],
    valid_opts: list[str],
    demo_images: int,
    nproc: int = DEFAULT_NPROC,
) -> dict:
    """:func:`higherpose.studies.quickstart.pipeline` with each step run by :data:`run`."""
    return steps.pipeline(cfg, output, data_root, train_opts, valid_opts, demo_images, nproc, run=run)


def print_summary(summary: dict) -> None:
    print("\n[quickstart] done:")
    print(f"  weights:  {summary['weights']}")
    print(f"  training: {summary['train_steps']} steps in {summary['train_seconds']} s ", end="")
    print(f"({summary['nproc']} process(es)), ", end="")
    print(f"validation: {summary['valid_seconds']} s", end="")
    print(f", whole quick start: {summary['total_seconds']} s")
    if summary["metrics"]:
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in summary["metrics"].items()))
    if "demo" in summary:
        print(f"  pictures: {summary['demo']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default=DEFAULT_CFG)
    parser.add_argument("--output", default="output/quickstart")
    parser.add_argument("--data", default=None, help="synthetic set root (default data/synthetic)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few images (tests, CI)")
    parser.add_argument("--nproc", type=int, default=DEFAULT_NPROC, help="training processes (default %(default)s)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        help="train at most this long (TRAIN.TIME_BUDGET; default %(default)s; 0 = the config's whole schedule)",
    )
    args = parser.parse_args(argv)
    if args.minutes < 0:
        parser.error(f"--minutes must be >= 0, got {args.minutes}")

    total = time.perf_counter()
    data_root = Path(args.data or ("data/synthetic_smoke" if args.smoke else "data/synthetic"))
    data_root = data_root if data_root.is_absolute() else REPO / data_root
    output = Path(args.output) if Path(args.output).is_absolute() else REPO / args.output
    steps.make_data(data_root, args.smoke, run=run)
    train = SMOKE_TRAIN if args.smoke else []
    if args.minutes > 0:
        train = [*train, "TRAIN.TIME_BUDGET", str(args.minutes)]
    valid = SMOKE_VALID if args.smoke else []
    summary = pipeline(args.cfg, output, data_root, train, valid, demo_images=2 if args.smoke else 8, nproc=args.nproc)
    summary["total_seconds"] = round(time.perf_counter() - total)
    print_summary(summary)
    (output / "quickstart_summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StepError as err:
        sys.exit(f"quickstart: {err}")
