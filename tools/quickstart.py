"""The quick start: from nothing to a trained higher_pose model, its AP table and pose pictures.

    python tools/quickstart.py              # what `make quickstart` runs (at most 15 minutes of training)
    python tools/quickstart.py --minutes 0  # the config's whole schedule (8,000 steps), however long it takes
    python tools/quickstart.py --nproc 2    # train with two gloo DDP processes (see docs/quickstart_tuning.md)
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
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CFG = "experiments/synthetic/higher_pose_tiny.yaml"
SMOKE_TRAIN = ["TRAIN.END_EPOCH", "1", "TRAIN.ITERS_PER_EPOCH", "3", "TRAIN.IMAGES_PER_GPU", "2", "WORKERS", "0"]
SMOKE_TRAIN += ["PRINT_FREQ", "1", "TRAIN.WARMUP_ITERS", "0"]
# One process: the tiny YAMLs' schedule counts epochs of one process's batch 4. Two gloo processes of
# one thread each train 1.2x more images per second on 2 cores, at a global batch of 8; within the
# same 15 minutes that did not give a higher AP (docs/quickstart_tuning.md).
DEFAULT_NPROC = 1
# The promise to a newcomer: at most 15 minutes of training (the whole command: 14 to 17 minutes).
DEFAULT_MINUTES = 15.0


def run(cmd: list[str]) -> None:
    """Run one project command from the repo root, echoing it; stop the quick start if it fails."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode:
        sys.exit(f"quickstart: step failed (exit {result.returncode}): {shlex.join(cmd)}")
    print(f"[quickstart] step took {time.perf_counter() - start:.0f} s", flush=True)


def make_data(root: Path, smoke: bool) -> None:
    """Generate the synthetic set at ``root`` unless a complete one is there (its statistics are printed)."""
    sizes = ["--train", "16", "--val", "4"] if smoke else []
    run([sys.executable, "tools/make_synthetic.py", "--root", str(root), "--if-missing", *sizes])


def pipeline(
    cfg: str,
    output: Path,
    data_root: Path,
    train_opts: list[str],
    valid_opts: list[str],
    demo_images: int,
    nproc: int = DEFAULT_NPROC,
) -> dict:
    """Train ``cfg`` into ``output`` with ``nproc`` CPU processes, validate it and draw a few demo
    pictures; returns a summary (weights, training seconds, the metrics valid.py wrote, the demo folder)."""
    py = sys.executable
    output = output.resolve()
    opts = ["OUTPUT_DIR", str(output), "LOG_DIR", str(output / "log"), "DATASET.ROOT", str(data_root.resolve())]
    start = time.perf_counter()
    run([py, "tools/dist_train.py", "--nproc", str(nproc), "--cfg", cfg, *opts, *train_opts])
    train_s = time.perf_counter() - start

    weights = next(output.rglob("final_state.pth"), None)
    if weights is None:
        sys.exit(f"quickstart: training wrote no final_state.pth under {output}")
    model_opts = ["TEST.MODEL_FILE", str(weights)]
    start = time.perf_counter()
    run([py, "tools/valid.py", "--cfg", cfg, *opts, *model_opts, *valid_opts])
    valid_s = time.perf_counter() - start
    metrics_file = next(output.rglob("metrics_*.json"), None)
    metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file else {}

    summary = {
        "cfg": cfg,
        "nproc": nproc,
        "weights": str(weights),
        "train_steps": trained_steps(output),
        "train_seconds": round(train_s),
        "valid_seconds": round(valid_s),
        "metrics": metrics,
    }
    if demo_images:
        demo_in = output / "demo_input"
        demo_in.mkdir(parents=True, exist_ok=True)
        for image in sorted((data_root / "images" / "val").glob("*.jpg"))[:demo_images]:
            link = demo_in / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
        demo_out = output / "demo"
        demo = ["tools/demo.py", "--cfg", cfg, "--input", str(demo_in), "--output", str(demo_out), "--min-score", "0.1"]
        run([py, *demo, *opts, *model_opts])
        summary["demo"] = str(demo_out)
    return summary


def trained_steps(output: Path) -> int | None:
    """Optimiser steps of the run under ``output`` (from its last checkpoint; None when there is none)."""
    from higherpose.core.checkpointing import CHECKPOINT_NAME
    from higherpose.utils.checkpoint import load_file

    ckpt = next(output.rglob(CHECKPOINT_NAME), None)
    return int(load_file(str(ckpt)).get("global_step", 0)) if ckpt else None


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
    make_data(data_root, args.smoke)
    train = SMOKE_TRAIN if args.smoke else []
    if args.minutes > 0:
        train = [*train, "TRAIN.TIME_BUDGET", str(args.minutes)]
    valid = ["TEST.FLIP_TEST", "False", "TEST.REFINE", "False"] if args.smoke else []
    summary = pipeline(args.cfg, output, data_root, train, valid, demo_images=2 if args.smoke else 8, nproc=args.nproc)
    summary["total_seconds"] = round(time.perf_counter() - total)
    print_summary(summary)
    (output / "quickstart_summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
