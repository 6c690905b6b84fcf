"""End-to-end validation speed (images/s of run_validation: resize, network, flip, grouping, refine,
back-projection, evaluation) for the tiny higher_pose config on the synthetic val split.

Uses the quick start's trained weights when they exist (output/quickstart/...): a trained model
finds a realistic number of people, which is what grouping and refine cost depends on. Otherwise
random weights are used and the row says so (they produce up to MAX_NUM_PEOPLE spurious people).

    python -m higherpose.core.bench_valid [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# The checkout the package is installed from (editable): its experiments/, data/ and output/.
REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "experiments" / "synthetic" / "higher_pose_tiny.yaml"


def _measure(opts: list[str], images: int) -> tuple[float, str]:
    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config
    from higherpose.core.evaluation import run_validation
    from higherpose.models import build_model
    from higherpose.utils.checkpoint import extract_state_dict, load_file, load_pose_state_dict

    cfg = default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=str(CFG), opts=[*opts, "TEST.LOG_PROGRESS", "False"]))
    model = build_model(cfg, is_train=False).eval()
    weights = next((REPO / "output" / "quickstart").rglob("final_state.pth"), None)
    if weights is not None:
        load_pose_state_dict(model, extract_state_dict(load_file(str(weights))))
    quiet = logging.getLogger("bench.valid")
    quiet.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as out:
        run_validation(cfg, model, out, quiet, subset=1)  # warm-up
        start = time.perf_counter()
        run_validation(cfg, model, out, quiet, subset=images)
        seconds = time.perf_counter() - start
    return images / seconds, "quick-start weights" if weights is not None else "random weights"


def run(quick: bool) -> list[dict[str, Any]]:
    from higherpose.dataset.synthetic import ensure_synthetic

    images = 5 if quick else 50
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_valid_") as tmp:
        # quick: a small throw-away set; full: the quick start's set (generated when missing)
        root = Path(tmp) / "synthetic" if quick else REPO / "data" / "synthetic"
        ensure_synthetic(str(root), num_train=2 if quick else 800, num_val=images if quick else 100, verbose=False)
        for name, extra in (
            ("flip + refine (quick-start protocol)", []),
            ("no flip, no refine", ["TEST.FLIP_TEST", "False", "TEST.REFINE", "False"]),
        ):
            rate, weights = _measure(["DATASET.ROOT", str(root), *extra], images)
            rows.append(
                {
                    "name": f"valid tiny higher_pose 256, {name}",
                    "value": rate,
                    "unit": "images/s",
                    "detail": f"{images} synthetic val images, 1 process, {weights}",
                }
            )
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
