"""Multi-seed ablation: configs x test input sizes x seeds, each run trained for the same steps.

    python tools/ablation.py                                   # tiny HigherHRNet vs tiny higher_pose, 3 seeds, 256
    python tools/ablation.py --seeds 0 1 2 --sizes 256 128 --steps 2000
    python tools/ablation.py --configs a.yaml b.yaml --seeds 0 1 --steps 40000 --nproc 8 TRAIN.LR 0.002
    python tools/ablation.py --smoke                           # a few steps on a few images (tests)
    python tools/ablation.py --configs experiments/synthetic/sat_study/*.yaml --sizes 128 --steps 2000

Every config of experiments/synthetic/sat_study/ is higher_pose_tiny.yaml with one switch changed
(its first line says which); docs/higher_pose.md lists the study. A synthetic config trains and tests
on its own generated set (DATASET.ROOT, DATASET.SYNTHETIC_SCENE: the crowded configs on
data/synthetic_crowded, generated on first use). Configs evaluated as CrowdPose (DATASET.CROWD_INDEX_EVAL)
get their own table with AP (E)/(M)/(H).

A size is the test input's short side; the training crop and heatmaps scale with it at the config's
own training/test ratio (the tiny configs train on 192 crops of what they test at 256). ``--steps N``
keeps each config's epochs and learning-rate steps and caps every epoch at N / END_EPOCH steps.
Every finished run is recorded in OUTPUT/results.json: run again, the ablation trains only the runs
still missing (an interrupted run resumes from its checkpoint) and a finished one re-prints without
training. ``--configs`` may add configs to a folder, or name a subset of its configs, as long as the
steps and overrides match: the tables cover the configs named, results.json keeps every run.
``--jobs 2`` trains two runs at once, each on half the cores. Prints and writes OUTPUT/ablation.md
(mean ± std over seeds, each seed's AP, the paired difference against the first config) and
OUTPUT/ablation.png (AP against input size).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from higherpose.studies.ablation import (
    AblationError,
    Results,
    Run,
    load_config,
    plan,
    plot,
    run_opts,
    split_configs,
    summary_table,
    synthetic_data,
)
from higherpose.studies.quickstart import DEFAULT_NPROC, REPO, SMOKE_TRAIN, SMOKE_VALID, StepError, make_data, pipeline
from higherpose.utils.atomic import atomic_write
from higherpose.utils.meters import format_seconds

CONFIGS = ["experiments/synthetic/higher_hrnet_tiny.yaml", "experiments/synthetic/higher_pose_tiny.yaml"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=CONFIGS,
        help="experiment YAMLs (the first is the baseline); KEY VALUE overrides may follow them",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="TRAIN.SEED of the runs")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256], help="test input sizes (short side)")
    parser.add_argument("--steps", type=int, help="optimiser steps of every run (default: the configs' schedule)")
    parser.add_argument("--output", default="output/ablation", help="results, tables, plot and the runs' folders")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few images (tests, CI)")
    parser.add_argument("--nproc", type=int, default=DEFAULT_NPROC, help="training processes (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side (CPU: the cores are split)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    args.configs, extra = split_configs(args.configs)
    args.opts = [*extra, *args.opts]
    if not args.configs:
        parser.error("--configs: no YAML file given")

    output = Path(args.output) if Path(args.output).is_absolute() else REPO / args.output
    runs = plan(args.configs, args.sizes, args.seeds)
    train_opts = [*SMOKE_TRAIN] if args.smoke else []
    valid = [*SMOKE_VALID] if args.smoke else []
    opts = {run.key: run_opts(run, args.steps, [*train_opts, *args.opts]) for run in runs}  # checks every setting first
    settings = {"configs": args.configs, "steps": args.steps, "opts": args.opts, "smoke": args.smoke}
    results = Results.open(output, settings)

    # each synthetic config's own set (DATASET.ROOT, DATASET.SYNTHETIC_SCENE, the overrides included)
    data = {c: synthetic_data(load_config(c, args.opts), args.smoke, REPO) for c in args.configs}
    for root, scene in dict.fromkeys(d for d in data.values() if d is not None):
        make_data(root, args.smoke, scene=scene)

    todo = [run for run in runs if run.key not in results.runs]
    print(f"[ablation] {len(runs)} runs, {len(runs) - len(todo)} already in {results.path}, {len(todo)} to train")
    if args.jobs > 1:  # runs side by side, the cores split between them (valid.py and dist_train read it)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    lock = threading.Lock()
    start, done = time.perf_counter(), []
    left_weight = sum(run.size**2 for run in todo)  # a run's time grows with its pixels

    def train(run: Run) -> None:
        print(f"\n[ablation] start {run.key}", flush=True)
        folder = output / run.folder
        extra = [*opts[run.key], *args.opts]
        data_root = data[run.config][0] if data[run.config] else None
        summary = pipeline(run.config, folder, data_root, [*train_opts, *extra], [*valid, *extra], 0, nproc=args.nproc)
        if not summary["metrics"]:
            raise StepError(f"{run.key}: valid.py wrote no metrics under {folder}")
        if args.steps and summary["train_steps"] != args.steps:
            print(f"[ablation] WARNING: {run.key} trained {summary['train_steps']} steps, not {args.steps}: "
                  "its epochs are shorter than --steps / TRAIN.END_EPOCH", flush=True)  # fmt: skip
        keep = ("train_steps", "train_seconds", "valid_seconds", "metrics", "weights")
        with lock:
            results.add(run, {k: summary[k] for k in keep})
            done.append(run)
            weight = sum(r.size**2 for r in done)
            elapsed = time.perf_counter() - start
            eta = elapsed / weight * (left_weight - weight)
            print(f"[ablation] {run.key}: AP {summary['metrics']['AP']:.3f}; {len(done)}/{len(todo)} trained in "
                  f"{format_seconds(elapsed)}, about {format_seconds(eta)} left", flush=True)  # fmt: skip

    if args.jobs > 1:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train, todo))  # re-raises the first failure
    else:
        for run in todo:
            train(run)

    labels = list(dict.fromkeys(run.label for run in runs))
    finished = [results.runs[run.key] for run in runs if run.key in results.runs]
    table = summary_table(finished, labels, args.sizes)
    print("\n" + table)
    atomic_write(output / "ablation.md", lambda f: f.write(table + "\n"))
    plot(finished, labels, args.sizes, output / "ablation.png")
    print(f"\n[ablation] wrote {output / 'ablation.md'}, {output / 'ablation.png'} and {results.path}")
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    try:
        code = main()
    except (StepError, AblationError) as err:
        sys.exit(f"ablation: {err}")
    print(f"[ablation] {time.perf_counter() - start:.0f} s")
    sys.exit(code)
