"""Model speed: forward and forward+backward time, samples/s and peak-RSS growth, HigherHRNet vs higher_pose.

Batch 1 on the CPU (or the first GPU when there is one). Each case runs in a fresh spawned process,
so the peak-RSS delta (peak resident memory during the timed passes minus the resident memory after
building the model) belongs to that case alone. ``quick`` uses the tiny synthetic configs at 128 and
256; the full run uses the W32 COCO configs at 256 and 512.

    python -m higherpose.bench.model [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import statistics
import time
from typing import Any

# The checkout the package is installed from (editable): its experiments/.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = os.path.join(REPO, "experiments")

FULL = [
    ("HigherHRNet-W32", "coco/higher_hrnet/w32_512_adam_lr1e-3.yaml"),
    ("higher_pose-W32", "coco/higher_pose/w32_512_adam_lr1e-3.yaml"),
]
QUICK = [
    ("HigherHRNet-tiny", "synthetic/higher_hrnet_tiny.yaml"),
    ("higher_pose-tiny", "synthetic/higher_pose_tiny.yaml"),
]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak so far
        return _peak_rss_mb()


def _measure(cfg_path: str, size: int, reps: int) -> dict[str, float]:
    """Runs in a child process: median forward (no_grad) and forward+backward seconds."""
    from types import SimpleNamespace

    import torch

    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config
    from higherpose.models import build_model

    cfg = default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=cfg_path, opts=[]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, is_train=False).to(device)
    x = torch.randn(1, 3, size, size, device=device)
    rss_before = _current_rss_mb()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)
        sync()

    def forward_backward() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        sum(o.float().square().mean() for o in model(x)).backward()
        sync()

    out = {}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        fn()  # warm-up (allocator, kernels)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    out["rss_delta_mb"] = max(0.0, _peak_rss_mb() - rss_before)
    out["threads"] = torch.get_num_threads()
    out["device"] = str(device)
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    cases = QUICK if quick else FULL
    sizes = (128, 256) if quick else (256, 512)
    reps = 2 if quick else 3
    ctx = mp.get_context("spawn")
    rows: list[dict[str, Any]] = []
    for label, rel in cases:
        for size in sizes:
            with ctx.Pool(1) as pool:
                m = pool.apply(_measure, (os.path.join(EXPERIMENTS, rel), size, reps))
            detail = f"batch 1, {size}x{size}, {m['device']}, {m['threads']} threads, median of {reps}"
            rows += [
                {"name": f"{label} {size} forward", "value": m["forward"] * 1e3, "unit": "ms", "detail": detail},
                {
                    "name": f"{label} {size} forward+backward",
                    "value": m["forward_backward"] * 1e3,
                    "unit": "ms",
                    "detail": detail,
                },
                {
                    "name": f"{label} {size} train samples/s",
                    "value": 1.0 / m["forward_backward"],
                    "unit": "1/s",
                    "detail": detail,
                },  # fmt: skip
                {
                    "name": f"{label} {size} peak RSS delta",
                    "value": m["rss_delta_mb"],
                    "unit": "MiB",
                    "detail": "peak during the timed passes minus resident after building the model",
                },  # fmt: skip
            ]
    return rows


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(f"{row['name']:<45} {row['value']:>10.2f} {row['unit']:<5} {row['detail']}")
