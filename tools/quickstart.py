"""The quick start: from nothing to a trained higher_pose model, its AP table and pose pictures.

    python tools/quickstart.py            # what `make quickstart` runs (about 20 minutes on 2 CPU cores)
    python tools/quickstart.py --smoke    # a 1-minute smoke run of the same steps (used by the tests)

Steps, each an ordinary project command printed before it runs, so you can re-run any of them:
1. generate the synthetic COCO-format set under data/synthetic (skipped when present),
2. train the tiny higher_pose config with tools/dist_train.py on the CPU,
3. validate the final weights with tools/valid.py (prints the AP table),
4. draw the poses found on a few validation images with tools/demo.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CFG = "experiments/synthetic/higher_pose_tiny.yaml"


def run(cmd: list[str]) -> None:
    """Run one project command from the repo root, echoing it; stop the quick start if it fails."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode:
        sys.exit(f"quickstart: step failed (exit {result.returncode}): {shlex.join(cmd)}")
    print(f"[quickstart] step took {time.perf_counter() - start:.0f} s", flush=True)


def pipeline(cfg: str, output: str, train_opts: list[str], valid_opts: list[str], demo_images: int) -> dict:
    """Train ``cfg`` into ``output``, validate it and draw a few demo pictures; returns a summary."""
    py = sys.executable
    out = REPO / output
    opts = ["OUTPUT_DIR", output, "LOG_DIR", f"{output}/log"]
    start = time.perf_counter()
    run([py, "tools/dist_train.py", "--cfg", cfg, *opts, *train_opts])
    train_s = time.perf_counter() - start

    weights = next(out.rglob("final_state.pth"), None)
    if weights is None:
        sys.exit(f"quickstart: training wrote no final_state.pth under {out}")
    model_opts = ["TEST.MODEL_FILE", str(weights.relative_to(REPO))]
    run([py, "tools/valid.py", "--cfg", cfg, *opts, *model_opts, *valid_opts])
    metrics_file = next(out.rglob("metrics_*.json"), None)
    metrics = json.loads(metrics_file.read_text()) if metrics_file else {}

    summary = {"cfg": cfg, "weights": str(weights), "train_seconds": round(train_s), "metrics": metrics}
    if demo_images:
        images = sorted((REPO / "data/synthetic/images/val").glob("*.jpg"))[:demo_images]
        demo_in = out / "demo_input"
        demo_in.mkdir(parents=True, exist_ok=True)
        for image in images:
            link = demo_in / image.name
            if not link.exists():
                link.symlink_to(image)
        demo_out = out / "demo"
        run([py, "tools/demo.py", "--cfg", cfg, "--input", str(demo_in), "--output", str(demo_out), *model_opts])
        summary["demo"] = str(demo_out)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default=DEFAULT_CFG)
    parser.add_argument("--output", default="output/quickstart")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few images (tests, CI)")
    args = parser.parse_args(argv)

    py = sys.executable
    total = time.perf_counter()
    if args.smoke:
        run([py, "tools/make_synthetic.py", "--root", "data/synthetic_smoke", "--train", "16", "--val", "4"])
        data = ["DATASET.ROOT", "data/synthetic_smoke"]
        train = [*data, "TRAIN.END_EPOCH", "1", "TRAIN.ITERS_PER_EPOCH", "3", "TRAIN.IMAGES_PER_GPU", "2"]
        train += ["WORKERS", "0", "PRINT_FREQ", "1"]
        summary = pipeline(args.cfg, args.output, train, [*data, "TEST.FLIP_TEST", "False"], demo_images=2)
    else:
        run([py, "tools/make_synthetic.py", "--root", "data/synthetic"])
        summary = pipeline(args.cfg, args.output, [], [], demo_images=8)
    summary["total_seconds"] = round(time.perf_counter() - total)

    print("\n[quickstart] done:")
    print(f"  weights:  {summary['weights']}")
    print(f"  training: {summary['train_seconds']} s, whole quick start: {summary['total_seconds']} s")
    if summary["metrics"]:
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in summary["metrics"].items()))
    if "demo" in summary:
        print(f"  pictures: {summary['demo']}")
    os.makedirs(REPO / args.output, exist_ok=True)
    (REPO / args.output / "quickstart_summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
