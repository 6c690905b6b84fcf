"""Ablation on the embedded synthetic set: tiny HigherHRNet vs tiny higher_pose, same budget.

    python tools/ablation.py                       # both tiny configs as they are (~2 x 15 min on 2 cores)
    python tools/ablation.py --sizes 256 128       # tested at 256 and in the low-resolution case (128)
    python tools/ablation.py --smoke               # a smoke run of the same steps (tests)

Both models train with the same seed, data, schedule and number of steps (the YAMLs in
experiments/synthetic/ differ only in MODEL.NAME and the SAT head), are validated with the same test
protocol, and their AP tables are printed side by side (and written to OUTPUT/ablation.md). A size
is the test input (short side); the training input scales with it as in the config (the tiny configs
train on 192 crops of what they test at 256, so ``--sizes 128`` trains on 96 crops).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from higherpose.config import cfg as default_cfg
from higherpose.config import update_config
from higherpose.core.quickstart import DEFAULT_NPROC, REPO, SMOKE_TRAIN, SMOKE_VALID, StepError, make_data, pipeline

CONFIGS = {
    "HigherHRNet (tiny)": "experiments/synthetic/higher_hrnet_tiny.yaml",
    "higher_pose (tiny)": "experiments/synthetic/higher_pose_tiny.yaml",
}


def size_opts(cfg_file: str, size: int) -> list[str]:
    """Overrides that test ``cfg_file`` at short side ``size`` and train it at the config's own
    training/test input ratio."""
    cfg = default_cfg.clone()
    update_config(cfg, argparse.Namespace(cfg=str(REPO / cfg_file), opts=[]))
    test = cfg.TEST.INPUT_SIZE or cfg.DATASET.INPUT_SIZE
    train, rest = divmod(size * cfg.DATASET.INPUT_SIZE, test)
    if rest or train % 32:
        exact = size * cfg.DATASET.INPUT_SIZE / test
        sys.exit(f"ablation: --sizes {size}: {cfg_file} would train at {exact:g}, not a multiple of 32")
    return [
        *("DATASET.INPUT_SIZE", str(train), "DATASET.OUTPUT_SIZE", f"[{train // 4}, {train // 2}]"),
        *("TEST.INPUT_SIZE", str(size)),
    ]


def side_by_side(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per (model, input size), one column per metric."""
    names = list(next(iter(rows.values())).keys()) if rows else []
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for model, metrics in rows.items():
        lines.append(f"| {model} | " + " | ".join(f"{metrics.get(n, float('nan')):.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256], help="test input sizes (multiples of 32)")
    parser.add_argument("--output", default="output/ablation")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few images (tests, CI)")
    parser.add_argument("--nproc", type=int, default=DEFAULT_NPROC, help="training processes (default %(default)s)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both models")
    args = parser.parse_args(argv)

    data_root = REPO / ("data/synthetic_smoke" if args.smoke else "data/synthetic")
    output = Path(args.output) if Path(args.output).is_absolute() else REPO / args.output
    make_data(data_root, args.smoke)
    train = list(SMOKE_TRAIN) if args.smoke else []
    valid = SMOKE_VALID if args.smoke else []
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, int] = {}
    for size in args.sizes:
        for name, cfg in CONFIGS.items():
            label = f"{name} @{size}"
            out = output / f"{Path(cfg).stem}_{size}"
            opts = [*size_opts(cfg, size), *args.opts]
            summary = pipeline(cfg, out, data_root, [*train, *opts], [*valid, *opts], demo_images=0, nproc=args.nproc)
            rows[label] = summary["metrics"]
            seconds[label] = summary["train_seconds"]

    table = side_by_side(rows)
    print("\n" + table)
    print("\ntraining seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.md").write_text(table + "\n")
    (output / "ablation.json").write_text(json.dumps({"metrics": rows, "train_seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    try:
        code = main()
    except StepError as err:
        sys.exit(f"ablation: {err}")
    print(f"[ablation] {time.perf_counter() - start:.0f} s")
    sys.exit(code)
