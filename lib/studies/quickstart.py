"""The quick start's steps, shared by ``tools/quickstart.py`` and ``tools/ablation.py``.

Each step is an ordinary project command (``tools/make_synthetic.py``, ``dist_train.py``,
``valid.py``, ``demo.py``) printed before it runs, so a user can re-run any of them. The commands
run from the root of the checkout the package is installed from (editable), where ``tools/`` is.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from higherpose.core.checkpointing import CHECKPOINT_NAME
from higherpose.utils.checkpoint import load_file

REPO = Path(__file__).resolve().parents[2]
SMOKE_TRAIN = ["TRAIN.END_EPOCH", "1", "TRAIN.ITERS_PER_EPOCH", "3", "TRAIN.IMAGES_PER_GPU", "2", "WORKERS", "0"]
SMOKE_TRAIN += ["PRINT_FREQ", "1", "TRAIN.WARMUP_ITERS", "0"]
SMOKE_VALID = ["TEST.FLIP_TEST", "False", "TEST.REFINE", "False"]
# One process: the tiny YAMLs' schedule counts epochs of one process's batch 4. Two gloo processes of
# one thread each train 1.2x more images per second on 2 cores, at a global batch of 8; within the
# same 15 minutes that did not give a higher AP (docs/experiments/quickstart.md, "Do two DDP processes
# help on two cores?").
DEFAULT_NPROC = 1

Runner = Callable[[list[str]], None]


class StepError(RuntimeError):
    """A step of the quick start failed; the message names its command."""


def run_step(cmd: list[str]) -> None:
    """Run one project command from the repo root, echoing it and its duration; :class:`StepError`
    when it fails."""
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode:
        raise StepError(f"step failed (exit {result.returncode}): {shlex.join(cmd)}")
    print(f"[quickstart] step took {time.perf_counter() - start:.0f} s", flush=True)


def make_data(root: Path, smoke: bool, run: Runner = run_step, scene: str = "plain") -> None:
    """Generate the synthetic set of preset ``scene`` at ``root`` unless a complete one is there (its
    statistics are printed; one of another preset there stops the step)."""
    sizes = ["--train", "16", "--val", "4"] if smoke else []
    run([sys.executable, "tools/make_synthetic.py", "--root", str(root), "--if-missing", "--scene", scene, *sizes])


def pipeline(
    cfg: str,
    output: Path,
    data_root: Path | None,
    train_opts: list[str],
    valid_opts: list[str],
    demo_images: int,
    nproc: int = DEFAULT_NPROC,
    run: Runner = run_step,
) -> dict:
    """Train ``cfg`` into ``output`` with ``nproc`` processes on the data at ``data_root``, validate
    it and draw ``demo_images`` validation pictures, each step through ``run``; returns a summary
    (weights, training seconds, the metrics valid.py wrote, the demo folder).
    :class:`StepError` when training wrote no weights."""
    py = sys.executable
    output = output.resolve()
    opts = ["OUTPUT_DIR", str(output), "LOG_DIR", str(output / "log")]
    if data_root is not None:  # None: the config's own DATASET.ROOT
        opts += ["DATASET.ROOT", str(data_root.resolve())]
    start = time.perf_counter()
    run([py, "tools/dist_train.py", "--nproc", str(nproc), "--cfg", cfg, *opts, *train_opts])
    train_s = time.perf_counter() - start

    weights = next(output.rglob("final_state.pth"), None)
    if weights is None:
        raise StepError(f"training wrote no final_state.pth under {output}")
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
    ckpt = next(output.rglob(CHECKPOINT_NAME), None)
    return int(load_file(str(ckpt)).get("global_step", 0)) if ckpt else None
