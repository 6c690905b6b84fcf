"""Data-pipeline benchmark: ``run(quick) -> list[dict]`` (name, value, unit, detail).

1. Target generation for one 512×512 training sample with 30 persons (heatmaps at 1/4 and 1/2
   resolution, the ignore mask from crowd / unlabelled-person polygons, AE joints): the vectorised
   generators against HigherHRNet's per-person, per-joint loops (``higherpose.bench.reference``, the
   reference the tests hold the fast code to), outputs checked equal.
2. ``__getitem__`` samples/s of the training dataset on the synthetic set at input 256 and 512,
   single process, one thread.

    python -m higherpose.bench.data [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from higherpose.bench.reference import heatmaps_loop, joints_loop, mask_loop
from higherpose.dataset.coco import get_mask
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator

# The checkout the package is installed from (editable): its experiments/ and data/.
REPO = Path(__file__).resolve().parents[2]


def _sample(rng: np.random.Generator, size: int = 512, people: int = 30):
    """30 persons with COCO-like visibility in a size×size image, plus 4 unlabelled persons' polygons."""
    joints = np.zeros((people, 17, 3))
    centres = rng.uniform(0, size, (people, 1, 2))
    joints[..., :2] = centres + rng.normal(0, size * 0.05, (people, 17, 2))
    joints[..., 2] = rng.choice([0, 1, 2], (people, 17), p=[0.2, 0.2, 0.6])
    anns = []
    for _ in range(4):
        c = rng.uniform(50, size - 50, 2)
        poly = (c + rng.normal(0, 25, (8, 2))).reshape(-1).tolist()
        anns.append({"iscrowd": 0, "num_keypoints": 0, "segmentation": [poly]})
    return joints, anns


def _time(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_targets(quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    joints_img, anns = _sample(rng)
    sizes = (128, 256)  # INPUT 512: 1/4 and 1/2
    gens = [(HeatmapGenerator(r, 17, 2), JointsGenerator(30, 17, r, True)) for r in sizes]

    def to_res(r: int) -> np.ndarray:
        j = joints_img.copy()
        j[..., :2] *= r / 512
        return j

    per_res = [to_res(r) for r in sizes]

    def fast():
        out = [get_mask(anns, 512, 512)]
        for (hm, jg), j in zip(gens, per_res):
            out += [hm(j), jg(j)]
        return out

    def loop():
        out = [mask_loop(anns, 512, 512)]
        for r, j in zip(sizes, per_res):
            out += [heatmaps_loop(j, r, 17, 2), joints_loop(j, 30, 17, r, True)]
        return out

    equal = all(np.array_equal(a, b) for a, b in zip(fast(), loop()))
    repeats = 3 if quick else 15
    t_fast, t_loop = _time(fast, repeats * 3), _time(loop, repeats)
    detail = "512x512 sample, 30 persons, heatmaps 128+256, mask, joints; 1 thread"
    return [
        {"name": "targets_vectorised", "value": round(t_fast * 1e3, 3), "unit": "ms/sample", "detail": detail},
        {"name": "targets_loop_reference", "value": round(t_loop * 1e3, 3), "unit": "ms/sample", "detail": detail},
        {
            "name": "targets_speedup",
            "value": round(t_loop / t_fast, 2),
            "unit": "x",
            "detail": f"outputs equal: {equal}",
        },
    ]


def bench_getitem(quick: bool, root: str) -> list[dict]:
    from types import SimpleNamespace

    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config
    from higherpose.dataset.build import build_dataset

    def load_cfg(path, *opts):
        cfg = default_cfg.clone()
        update_config(cfg, SimpleNamespace(cfg=str(path), opts=[str(o) for o in opts]))
        return cfg

    results = []
    n = 20 if quick else 100
    for size in (256, 512):
        cfg = load_cfg(
            REPO / "experiments" / "synthetic" / "higher_hrnet_tiny.yaml",
            "DATASET.ROOT",
            root,
            "DATASET.INPUT_SIZE",
            size,
            "DATASET.OUTPUT_SIZE",
            f"[{size // 4},{size // 2}]",
            "WORKERS",
            0,
        )
        ds = build_dataset(cfg, is_train=True)
        ds.reseed(0)
        ds[0]
        start = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        dt = time.perf_counter() - start
        results.append(
            {
                "name": f"dataset_getitem_{size}",
                "value": round(n / dt, 1),
                "unit": "samples/s",
                "detail": f"synthetic train set, input {size}, outputs {size // 4}+{size // 2}, 1 process, 1 thread",
            }
        )
    return results


def run(quick: bool = False) -> list[dict]:
    import torch

    from higherpose.dataset.synthetic import ensure_synthetic

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = bench_targets(quick)
    root = os.path.join(REPO, "data", "synthetic")
    tmp = None
    if not os.path.isdir(root):  # do not write a default set as a side effect: use a small temporary one
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        ensure_synthetic(root, num_train=40, num_val=2, verbose=False)
    else:
        ensure_synthetic(root)
    try:
        results += bench_getitem(quick, root)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:28s} {r['value']:>10} {r['unit']:10s} {r['detail']}")
