"""Training benchmark: ``run(quick) -> list[dict]`` (name, value, unit, detail).

1. Train-step throughput (samples/s, forward + loss + backward + Adam step through ``do_train`` on a
   fixed in-memory batch) and peak memory (CUDA: ``max_memory_allocated``; CPU: the process' peak
   RSS, each configuration in its own fresh process so the numbers do not mix) for HigherHRNet-W32
   at input 256 and 512 and for the two tiny configs at their own training setting (the quick start's:
   ``DATASET.INPUT_SIZE`` crops, ``TRAIN.IMAGES_PER_GPU``); quick mode: the tiny HigherHRNet only.
2. Does the data loader keep ahead of the model? Loader-only samples/s with ``WORKERS`` workers,
   against the train-step samples/s above, and a real ``do_train`` epoch fed by that loader with the
   fraction of time spent waiting for data.

Data: a small synthetic set generated in a temporary folder (``higherpose.dataset.synthetic``).

    python -m higherpose.bench.train [--quick]   # this section alone; all: python tools/benchmark.py
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# The checkout the package is installed from (editable): its experiments/.
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "synthetic" / "higher_hrnet_tiny.yaml"
TINY_SAT = REPO / "experiments" / "synthetic" / "higher_pose_tiny.yaml"
W32_256 = REPO / "experiments" / "coco" / "higher_hrnet" / "w32_256_adam_lr1e-3.yaml"
W32_512 = REPO / "experiments" / "coco" / "higher_hrnet" / "w32_512_adam_lr1e-3.yaml"


def _cfg(path: Path, root: str, *opts: Any):
    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config

    common = ["DATASET.ROOT", root, "DATASET.TRAIN", "train", "DATASET.TEST", "val", "DATASET.SYNTHETIC", "True"]
    common += ["MODEL.PRETRAINED", "", "PRINT_FREQ", 10_000, "DEBUG.DEBUG", False, "TRAIN.SEED", 0]
    cfg = default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=str(path), opts=[str(o) for o in [*common, *opts]]))
    return cfg


def _own_setting(path: Path, root: str) -> tuple[int, int]:
    """``(DATASET.INPUT_SIZE, TRAIN.IMAGES_PER_GPU)`` of a config: the setting it trains with."""
    cfg = _cfg(path, root)
    return int(cfg.DATASET.INPUT_SIZE), int(cfg.TRAIN.IMAGES_PER_GPU)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _train_step_job(path: str, root: str, input_size: int, batch: int, steps: int, threads: int) -> dict:
    """In a fresh process: samples/s of ``steps`` training steps on one fixed batch, and peak memory."""
    import torch

    from higherpose.core import train_loop as T
    from higherpose.core.loss import MultiLossFactory
    from higherpose.dataset.build import make_dataloader
    from higherpose.models import build_model
    from higherpose.utils.distributed import DistContext
    from higherpose.utils.optim import get_optimizer

    torch.set_num_threads(threads)
    size = ["DATASET.INPUT_SIZE", input_size, "DATASET.OUTPUT_SIZE", f"[{input_size // 4}, {input_size // 2}]"]
    cfg = _cfg(Path(path), root, *size, "TRAIN.IMAGES_PER_GPU", batch, "WORKERS", 0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fixed = next(iter(make_dataloader(cfg)))
    base_rss = _peak_rss_mb()
    model = build_model(cfg, is_train=True).to(device)
    loss = MultiLossFactory(cfg).to(device)
    optimizer = get_optimizer(cfg, model)
    ctx = DistContext(device=device)
    state = T.TrainState()
    T.do_train(cfg, model, [fixed], loss, optimizer, 0, "", None, state=state, ctx=ctx)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    T.do_train(cfg, model, [fixed] * steps, loss, optimizer, 0, "", None, state=state, ctx=ctx)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {
        "load": os.getloadavg()[0],  # the machine may be shared: say how busy it was
        "samples_per_s": batch * steps / seconds,
        "device": device,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["memory"] = "CUDA max_memory_allocated"
    else:
        out["peak_mb"] = _peak_rss_mb()
        out["above_baseline_mb"] = _peak_rss_mb() - base_rss
        out["memory"] = "peak RSS of the process"
    return out


def _loader_job(path: str, root: str, batch: int, batches: int, threads: int) -> dict:
    """In a fresh process: loader-only samples/s with the config's WORKERS, then one real epoch of
    ``do_train`` fed by that loader (samples/s and the fraction of the step time spent waiting for data)."""
    import torch

    from higherpose.core import train_loop as T
    from higherpose.core.loss import MultiLossFactory
    from higherpose.dataset.build import make_dataloader
    from higherpose.models import build_model
    from higherpose.utils.optim import get_optimizer

    torch.set_num_threads(threads)
    cfg = _cfg(Path(path), root, "TRAIN.ITERS_PER_EPOCH", batches, "TRAIN.IMAGES_PER_GPU", batch)
    loader = make_dataloader(cfg)

    def endless():
        while True:
            yield from loader

    it = endless()
    # Worker start-up and the batches prefetched meanwhile (2 per worker) are not steady-state throughput.
    for _ in range(1 + 2 * max(1, cfg.WORKERS)):
        next(it)
    start = time.perf_counter()
    n = sum(next(it)[0].shape[0] for _ in range(batches))
    loader_sps = n / (time.perf_counter() - start)
    it.close()

    model = build_model(cfg, is_train=True)
    loss = MultiLossFactory(cfg)
    optimizer = get_optimizer(cfg, model)
    timings = {"wait": 0.0}

    class Timed:  # the real loader, timing how long the training loop waits for each batch
        def __len__(self):
            return len(loader)

        def __iter__(self):
            inner = iter(loader)
            while True:
                t0 = time.perf_counter()
                try:
                    b = next(inner)
                except StopIteration:
                    return
                timings["wait"] += time.perf_counter() - t0
                yield b

    wait_start = time.perf_counter()
    T.do_train(cfg, model, Timed(), loss, optimizer, 0, "", None, state=T.TrainState())
    total = time.perf_counter() - wait_start
    fed_sps = batches * cfg.TRAIN.IMAGES_PER_GPU / total
    return {
        "loader_samples_per_s": loader_sps,
        "fed_samples_per_s": fed_sps,
        "data_wait_fraction": timings["wait"] / total,
        "workers": cfg.WORKERS,
        "batch": cfg.TRAIN.IMAGES_PER_GPU,
    }


def _in_fresh_process(fn, *args) -> dict:
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run(quick: bool) -> list[dict]:
    threads = max(1, min(4, os.cpu_count() or 1))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = os.path.join(tmp, "synthetic")
        from higherpose.dataset.synthetic import ensure_synthetic

        ensure_synthetic(root, num_train=32 if quick else 96, num_val=2, verbose=False)
        tiny_size, tiny_batch = _own_setting(TINY, root)
        jobs = [("tiny", TINY, tiny_size, tiny_batch, 2 if quick else 8)]
        if not quick:
            sat_size, sat_batch = _own_setting(TINY_SAT, root)
            jobs += [("tiny higher_pose", TINY_SAT, sat_size, sat_batch, 8)]
            jobs += [("W32", W32_256, 256, 2, 3), ("W32", W32_512, 512, 1, 2), ("W32", W32_512, 512, 2, 2)]
        for name, path, size, batch, steps in jobs:
            r = _in_fresh_process(_train_step_job, str(path), root, size, batch, steps, threads)
            detail = f"{name} input {size}, batch {batch}, {steps} steps, {r['device']}, {threads} threads, Adam"
            detail += f", load avg {r['load']:.1f} during the run"
            rows.append(_row(f"train step {name} {size} b{batch}", r["samples_per_s"], "samples/s", detail))
            mem = r["memory"]
            if "above_baseline_mb" in r:
                mem += f", {r['above_baseline_mb']:.0f} MB above the post-import baseline"
            rows.append(_row(f"train peak memory {name} {size} b{batch}", r["peak_mb"], "MB", mem))

        train_sps = rows[0]["value"]
        r = _in_fresh_process(_loader_job, str(TINY), root, tiny_batch, 6 if quick else 12, threads)
        keeps = "keeps ahead of" if r["loader_samples_per_s"] > train_sps else "is SLOWER than"
        tiny = f"tiny {tiny_size}"
        detail = f"{tiny}, batch {tiny_batch}, WORKERS {r['workers']}: {keeps} the train step ({train_sps:.2f}/s)"
        rows.append(_row(f"loader only {tiny}", r["loader_samples_per_s"], "samples/s", detail))
        detail = f"WORKERS {r['workers']}, real loader, batch {tiny_batch}"
        rows.append(_row(f"train fed by loader {tiny}", r["fed_samples_per_s"], "samples/s", detail))
        detail = "share of the epoch spent waiting for batches"
        rows.append(_row(f"data wait fraction {tiny}", r["data_wait_fraction"], "fraction", detail))
    return rows


def _row(name: str, value: float, unit: str, detail: str) -> dict:
    return {"name": name, "value": float(value), "unit": unit, "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
