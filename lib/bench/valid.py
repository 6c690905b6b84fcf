"""End-to-end validation speed (images/s of run_validation, what valid.py runs: resize, network, flip,
map resampling, grouping, refine, back-projection, evaluation) with the time per image split into
network / resampling / grouping.

Protocols:

* the quick start's: tiny higher_pose, ``TEST.INPUT_SIZE`` 256, scales [1.5, 1], flip, UDP, on the
  synthetic val split. Uses the quick start's trained weights when they exist (output/quickstart/...):
  a trained model finds a realistic number of people, which is what grouping and refine cost depends
  on. Otherwise random weights are used and the row says so (they produce up to MAX_NUM_PEOPLE
  spurious people);
* HigherHRNet W32 at 512 with flip on the COCO sample images (``../shared/data/coco_sample``, or
  ``HIGHERPOSE_SHARED_DATA``), random weights (the speed does not depend on them much); skipped with
  a row saying so when the sample data is absent.

The breakdown: ``network`` is the model's forward (forward hooks), ``resampling`` the rest of
:func:`~higherpose.core.inference.image_maps` (input resize and normalisation, flip, aligning,
resampling and averaging the maps), ``grouping`` :func:`~higherpose.core.inference.group_by_tags`
(grouping, adjust, refine, back-projection); all per image, validation in one process, in thread-seconds:
summed over the ``TEST.CPU_IMAGE_THREADS`` threads that predict images side by side. The full run
also runs the valid.py command itself with ``--nproc 1`` and ``--nproc 2`` (sharded validation): the
rate of its validation loop as it reports it, and that of the whole command's wall clock (process
start, model loading and evaluation included).

    python -m higherpose.bench.valid [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# The checkout the package is installed from (editable): its experiments/, data/ and output/.
REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "experiments" / "synthetic" / "higher_pose_tiny.yaml"
W32_CFG = REPO / "experiments" / "coco" / "higher_hrnet" / "w32_512_adam_lr1e-3.yaml"
SHARED_DATA = Path(os.environ.get("HIGHERPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))


@contextmanager
def _timed_stages(model: Any) -> Iterator[dict[str, float]]:
    """Seconds spent in the model's forward, in image_maps and in group_by_tags while the block runs,
    summed over the threads that run them (``TEST.CPU_IMAGE_THREADS``)."""
    import higherpose.core.inference as inference

    totals = {"network": 0.0, "maps": 0.0, "grouping": 0.0}
    lock = threading.Lock()
    local = threading.local()  # each thread's forward start

    def add(name: str, seconds: float) -> None:
        with lock:
            totals[name] += seconds

    def pre_hook(module: Any, args: Any) -> None:
        local.start = time.perf_counter()

    def post_hook(module: Any, args: Any, output: Any) -> None:
        add("network", time.perf_counter() - local.start)

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                add(name, time.perf_counter() - start)

        return wrapper

    handles = [model.register_forward_pre_hook(pre_hook), model.register_forward_hook(post_hook)]
    image_maps, group_by_tags = inference.image_maps, inference.group_by_tags
    inference.image_maps = timed("maps", image_maps)
    inference.group_by_tags = timed("grouping", group_by_tags)
    try:
        yield totals
    finally:
        inference.image_maps, inference.group_by_tags = image_maps, group_by_tags
        for handle in handles:
            handle.remove()


def _measure(cfg_path: Path, opts: list[str], images: int, weights: Path | None) -> dict[str, float]:
    """images/s of run_validation on the first ``images`` test images (after a one-image warm-up) and
    the seconds per image of network, resampling and grouping."""
    from higherpose.apis.estimator import PoseEstimator
    from higherpose.apis.eval_model import load_eval_model
    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config
    from higherpose.core.validation import run_validation
    from higherpose.utils.launch import keep_freed_memory

    cfg = default_cfg.clone()
    model_file = ["TEST.MODEL_FILE", str(weights)] if weights is not None else []
    update_config(cfg, SimpleNamespace(cfg=str(cfg_path), opts=[*opts, *model_file, "TEST.LOG_PROGRESS", "False"]))
    quiet = logging.getLogger("bench.valid")
    quiet.setLevel(logging.WARNING)
    # the network valid.py loads (BatchNorm folded, TEST.CHANNELS_LAST), on the CPU
    model, _, _ = load_eval_model(cfg, random_weights=weights is None, device="cpu", log=quiet, optimize=True)
    keep_freed_memory()  # as valid.py on the CPU
    with tempfile.TemporaryDirectory() as out:
        run_validation(cfg, model, out, quiet, subset=1)  # warm-up
        with _timed_stages(model) as totals:
            start = time.perf_counter()
            run_validation(cfg, model, out, quiet, subset=images)
            seconds = time.perf_counter() - start
    return {
        "images/s": images / seconds,
        "threads": PoseEstimator(cfg, model).image_threads,
        "network": totals["network"] / images,
        "resampling": (totals["maps"] - totals["network"]) / images,
        "grouping": totals["grouping"] / images,
    }


_PROGRESS = re.compile(r"valid: (\d+)/(\d+) images.*?, ([\d.]+) img/s")


def _valid_command(
    cfg_path: Path, opts: list[str], images: int, weights: Path | None, nproc: int
) -> tuple[float | None, float]:
    """``tools/valid.py --nproc N`` on the first ``images`` test images: the images/s of its validation
    loop as its last progress line reports it (all ranks together; None without that line) and the
    images/s of the whole command's wall clock (process start, model loading and evaluation included)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="bench_valid_cli_") as out:
        if weights is None:  # random weights, saved for the command to load
            from higherpose.config import cfg as default_cfg
            from higherpose.config import update_config
            from higherpose.models import build_model

            cfg = default_cfg.clone()
            update_config(cfg, SimpleNamespace(cfg=str(cfg_path), opts=list(opts)))
            weights = Path(out) / "random.pth"
            torch.save(build_model(cfg, is_train=False).state_dict(), weights)
        cmd = [sys.executable, str(REPO / "tools" / "valid.py"), "--nproc", str(nproc), "--cfg", str(cfg_path)]
        cmd += [*opts, "TEST.MODEL_FILE", str(weights), "TEST.SUBSET", str(images), "DEVICE", "cpu"]
        cmd += ["TEST.LOG_PROGRESS", "False", "OUTPUT_DIR", out, "LOG_DIR", os.path.join(out, "log")]
        start = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
        wall = images / (time.perf_counter() - start)
    lines = [m for m in _PROGRESS.finditer(done.stdout + done.stderr) if m[1] == m[2]]
    return (float(lines[-1][3]) if lines else None), wall


def _command_rows(name: str, cfg_path: Path, opts: list[str], images: int, weights: Path | None, what: str) -> list:
    import torch

    from higherpose.utils.launch import cpu_threads

    rows = []
    for nproc in (1, 2):
        try:
            loop, wall = _valid_command(cfg_path, opts, images, weights, nproc)
            threads = torch.get_num_threads() if nproc == 1 else cpu_threads(nproc)
            detail = f"{what}, tools/valid.py --nproc {nproc} ({threads} thread(s) a process): the loop's rate "
            detail += "as the command reports it; "
            detail += f"the whole command (start-up and evaluation included) {wall:.2f} images/s"
            if loop is None:
                detail = f"skipped: no progress line in the output of valid.py --nproc {nproc}; {detail}"
        except subprocess.CalledProcessError as err:
            loop, detail = None, f"valid.py --nproc {nproc} failed: {err.stderr[-300:]}"
        rows.append(
            {"name": f"{name}, valid.py {nproc} process(es)", "value": loop, "unit": "images/s", "detail": detail}
        )
    return rows


def _row(name: str, m: dict[str, float], detail: str) -> dict[str, Any]:
    breakdown = ", ".join(f"{k} {1000 * m[k]:.0f} ms" for k in ("network", "resampling", "grouping"))
    return {
        "name": name,
        "value": m["images/s"],
        "unit": "images/s",
        "detail": f"{detail}; per image, summed over {m['threads']:.0f} image thread(s): {breakdown}",
    }


def run(quick: bool) -> list[dict[str, Any]]:
    from higherpose.dataset.synthetic import ensure_synthetic

    images = 5 if quick else 50
    rows = []
    weights = next((REPO / "output" / "quickstart").rglob("final_state.pth"), None)
    kind = "quick-start weights" if weights is not None else "random weights"
    with tempfile.TemporaryDirectory(prefix="bench_valid_") as tmp:
        # quick: a small throw-away set; full: the quick start's set (generated when missing)
        root = Path(tmp) / "synthetic" if quick else REPO / "data" / "synthetic"
        ensure_synthetic(str(root), num_train=2 if quick else 800, num_val=images if quick else 100, verbose=False)
        for name, extra in (
            ("flip + refine (quick-start protocol)", []),
            ("no flip, no refine", ["TEST.FLIP_TEST", "False", "TEST.REFINE", "False"]),
        ):
            m = _measure(CFG, ["DATASET.ROOT", str(root), *extra], images, weights)
            what = f"{images} synthetic val images, {kind}"
            rows.append(_row(f"valid tiny higher_pose 256, {name}", m, f"{what}, 1 process"))
            if not quick and not extra:
                opts = ["DATASET.ROOT", str(root)]
                rows += _command_rows(f"valid tiny higher_pose 256, {name}", CFG, opts, images, weights, what)

    coco = SHARED_DATA / "coco_sample"
    name = "valid W32 512, flip (COCO sample)"
    if not (coco / "annotations" / "person_keypoints_val2017.json").exists():
        rows.append({"name": name, "value": None, "unit": "images/s", "detail": f"skipped: no sample data at {coco}"})
        return rows
    coco_images = 1 if quick else 4
    opts = ["DATASET.ROOT", str(coco), "DATASET.TEST", "val2017", "DATASET.SYNTHETIC", "False"]
    opts += ["TEST.FLIP_TEST", "True", "DEBUG.DEBUG", "False"]
    m = _measure(W32_CFG, opts, coco_images, None)
    what = f"{coco_images} COCO val2017 sample images, random weights"
    rows.append(_row(name, m, f"{what}, 1 process"))
    if not quick:
        rows += _command_rows(name, W32_CFG, opts, coco_images, None, what)
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
