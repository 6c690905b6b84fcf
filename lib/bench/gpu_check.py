"""The GPU paths exercised on one GPU in a few minutes (``tools/gpu_check.py``): a report of what ran,
what failed and the figures of this machine.

Stages, each on its own (a failing stage is reported and the next one runs):

1. ``train_fp16``: ``dist_train.py`` on a small synthetic set, tiny HigherHRNet, 2 epochs in float16
   (GradScaler), weight average, gradient clipping, channels_last, validation after each epoch;
2. ``resume``: ``AUTO_RESUME`` one more epoch from stage 1's checkpoint;
3. ``train_bf16``: one epoch in bfloat16;
4. ``step_fp16`` / ``step_bf16``: training steps in this process: samples/s, the loss scale, peak
   memory and host syncs per step (``torch.cuda.set_sync_debug_mode``);
5. ``valid_*``: ``valid.py`` on stage 1's weights, with and without UDP: on the GPU and the CPU in
   fp32, and on the GPU with ``TEST.FP16``: AP, images/s, the largest keypoint difference (the GPU
   against the CPU; fp16 against fp32 on the GPU);
6. ``w32_512_amp`` / ``w32_512_fp32``: HigherHRNet-W32 forward + backward at 512, samples/s;
7. ``torchrun_train`` / ``torchrun_valid``: ``torchrun --nproc_per_node 2`` training (resuming from
   stage 2: rank 0's resume decision) and validation, both ranks on the one GPU through gloo (DDP
   ``device_ids``, SyncBN, collectives on CUDA tensors).

Tool commands run as subprocesses with small overrides; their logs land beside the report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "synthetic" / "higher_hrnet_tiny.yaml"
W32_512 = REPO / "experiments" / "coco" / "higher_hrnet" / "w32_512_adam_lr1e-3.yaml"
RUN_FOLDER = ("coco_kpt", "pose_higher_hrnet", "higher_hrnet_tiny")  # OUTPUT_DIR/<dataset>/<model>/<cfg>


def cuda_found() -> tuple[bool, str]:
    """``(usable, one line)``: the GPU, its driver and this PyTorch's CUDA, or why there is no CUDA."""
    import torch

    from higherpose.utils.distributed import cuda_unavailable_reason

    if not torch.cuda.is_available():
        return False, f"no CUDA: {cuda_unavailable_reason()}"
    driver = "unknown"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=30)
        driver = out.stdout.strip() or driver
    name = torch.cuda.get_device_name(0)
    return True, f"{name}, driver {driver}, PyTorch {torch.__version__} (CUDA {torch.version.cuda})"


def last_float(pattern: str, text: str) -> float | None:
    """The number of ``pattern``'s group 1 at its last match in ``text`` (a tool's log), or None."""
    found = re.findall(pattern, text)
    return float(found[-1]) if found else None


def _common(root: Path, out: Path) -> list[str]:
    data = ["DATASET.ROOT", str(root), "DATASET.SYNTHETIC", "True", "OUTPUT_DIR", str(out), "LOG_DIR", str(out / "tb")]
    return [*data, "MODEL.PRETRAINED", "", "PRINT_FREQ", "10", "DEBUG.DEBUG", "False", "WORKERS", "2"]


def _tool(name: str, args: list[str], log: Path, timeout_s: float, torchrun: int = 0) -> tuple[int, str, float]:
    """Run ``tools/<name>.py`` (under ``torchrun --nproc_per_node N`` when ``torchrun``); returns ``(exit
    code, output, seconds)`` and writes the output to ``log``."""
    cmd = [sys.executable]
    if torchrun:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)]
    cmd += [str(REPO / "tools" / f"{name}.py"), *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:  # its output comes as bytes whatever text= says
        partial = [o.decode(errors="replace") if isinstance(o, bytes) else (o or "") for o in (err.stdout, err.stderr)]
        code, text = 124, "".join(partial) + f"\ntimed out after {timeout_s:.0f} s"
    log.write_text(" ".join(cmd) + "\n\n" + text)
    return code, text, time.perf_counter() - start


def _train_stage(
    root: Path, out: Path, logs: Path, name: str, opts: list[str], timeout_s: float, nproc: int = 0
) -> dict:
    """``dist_train.py`` (under ``torchrun --nproc_per_node nproc`` when > 0): its exit code, the last
    samples/s and validation AP it logged, whether it resumed."""
    cfg = ["--cfg", str(TINY), *_common(root, out), "DEVICE", "cuda", "TRAIN.IMAGES_PER_GPU", "8", *opts]
    code, text, seconds = _tool("dist_train", cfg, logs / f"{name}.log", timeout_s, torchrun=nproc)
    return {
        "ok": code == 0,
        "exit_code": code,
        "seconds": round(seconds, 1),
        "samples_per_s": last_float(r"Speed ([\d.]+) samples/s", text),
        "val_ap": last_float(r"validation AP ([\d.]+)", text),
        "resumed": "=> resumed from" in text,
    }


def _valid(root: Path, out: Path, logs: Path, weights: Path, name: str, device: str, opts: list[str]) -> dict:
    """``valid.py`` on 20 images: exit code, AP, images/s (start-up included), its results."""
    args = ["--cfg", str(TINY), *_common(root, out / name), "DEVICE", device, "TEST.MODEL_FILE", str(weights)]
    args += ["TEST.SUBSET", "20", "TEST.LOG_PROGRESS", "False", *opts]
    code, _, seconds = _tool("valid", args, logs / f"{name}.log", 120)
    metrics = next((out / name).rglob("metrics_val.json"), None)
    found = next((out / name).rglob("keypoints_val_results.json"), None)
    return {
        "ok": code == 0,
        "exit_code": code,
        "ap": json.loads(metrics.read_text())["metrics"].get("AP") if metrics else None,
        "images_per_s": round(20 / seconds, 2),
        "results": json.loads(found.read_text()) if found else [],
    }


def _valid_stages(root: Path, out: Path, logs: Path, weights: Path) -> dict[str, dict]:
    """With and without UDP: the GPU against the CPU in fp32, and the GPU under ``TEST.FP16`` against the
    GPU in fp32; the largest keypoint difference of each pair."""
    stages = {}
    for udp in ("True", "False"):
        runs = {}
        for device, fp16 in (("cuda", "False"), ("cpu", "False"), ("cuda", "True")):
            opts = ["DATASET.USE_UDP", udp, "TEST.FP16", fp16]
            name = f"valid_udp{udp[0]}_{device}_fp16{fp16[0]}"
            runs[(device, fp16)] = _guarded(lambda n=name, d=device, o=opts: _valid(root, out, logs, weights, n, d, o))
        gpu = runs[("cuda", "False")]
        for (device, fp16), row in runs.items():
            reference = runs[("cpu", "False")] if row is gpu else gpu
            row["max_keypoint_diff_px"] = largest_keypoint_difference(
                row.get("results", []), reference.get("results", [])
            )
            row.pop("results", None)
            stages[f"valid_udp{udp[0]}_{device}_fp16{fp16[0]}"] = row
    return stages


def largest_keypoint_difference(a: list[dict], b: list[dict]) -> float | None:
    """Largest |x|, |y| difference between two results files' keypoints, persons matched by image and
    score order; None when the two found different numbers of persons."""
    import numpy as np

    def ordered(results: list[dict]) -> list[dict]:
        return sorted(results, key=lambda r: (r["image_id"], -r["score"]))

    if len(a) != len(b) or [r["image_id"] for r in ordered(a)] != [r["image_id"] for r in ordered(b)]:
        return None
    if not a:
        return 0.0
    ka = np.array([r["keypoints"] for r in ordered(a)], dtype=np.float64).reshape(len(a), -1, 3)[..., :2]
    kb = np.array([r["keypoints"] for r in ordered(b)], dtype=np.float64).reshape(len(b), -1, 3)[..., :2]
    return float(np.abs(ka - kb).max())


def step_probe(root: Path, dtype: str, steps: int = 30) -> dict:
    """Training steps of the tiny config in this process: samples/s, loss scale, peak memory, and the
    host syncs per step that ``torch.cuda.set_sync_debug_mode('warn')`` reports."""
    from types import SimpleNamespace

    import torch

    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config
    from higherpose.core import train_loop as T
    from higherpose.core.loss import MultiLossFactory
    from higherpose.dataset.build import make_dataloader
    from higherpose.models import build_model
    from higherpose.utils.distributed import DistContext
    from higherpose.utils.optim import get_optimizer

    cfg = default_cfg.clone()
    opts = [*_common(root, root.parent / "probe"), "DEVICE", "cuda", "WORKERS", "0", "TRAIN.IMAGES_PER_GPU", "8"]
    opts += ["FP16.ENABLED", "True", "FP16.DTYPE", dtype, "TRAIN.CLIP_GRAD", "1.0", "PRINT_FREQ", "100000"]
    update_config(cfg, SimpleNamespace(cfg=str(TINY), opts=opts))
    batch = next(iter(make_dataloader(cfg)))
    model = build_model(cfg, is_train=True).cuda()
    loss, optimizer = MultiLossFactory(cfg).cuda(), get_optimizer(cfg, model)
    scaler, ctx = T.make_grad_scaler(cfg, "cuda"), DistContext(device="cuda:0")
    state = T.TrainState()
    T.do_train(cfg, model, [batch] * 3, loss, optimizer, 0, "", None, True, scaler=scaler, state=state, ctx=ctx)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            start = time.perf_counter()
            T.do_train(
                cfg, model, [batch] * steps, loss, optimizer, 0, "", None, True, scaler=scaler, state=state, ctx=ctx
            )
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {
        "ok": state.nan_skipped == 0,
        "samples_per_s": round(batch[0].shape[0] * steps / seconds, 1),
        "loss_scale": scaler.get_scale() if scaler is not None else None,
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "host_syncs_per_step": round(syncs / steps, 2),
        "skipped_steps": state.nan_skipped,
    }


def w32_throughput(amp: bool, batch: int = 8, reps: int = 10) -> dict:
    """HigherHRNet-W32 at 512: forward + backward samples/s (AMP float16 or fp32) and peak memory."""
    from types import SimpleNamespace

    import torch

    from higherpose.config import cfg as default_cfg
    from higherpose.config import update_config
    from higherpose.models import build_model

    cfg = default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=str(W32_512), opts=["MODEL.PRETRAINED", ""]))
    model = build_model(cfg, is_train=True).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 512, 512, device="cuda").contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            outputs = model(x)
        sum(o.float().square().mean() for o in outputs).backward()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "ok": True,
        "samples_per_s": round(batch * reps / seconds, 1),
        "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def _guarded(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a failing stage is reported; the next one runs
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def run(out: Path) -> dict:
    """Every stage; the report (also written to ``out/report.json``)."""
    from higherpose.dataset.synthetic import ensure_synthetic

    out.mkdir(parents=True, exist_ok=True)
    logs, root, train = out / "logs", out / "synthetic", out / "train"
    logs.mkdir(exist_ok=True)
    ensure_synthetic(str(root), num_train=256, num_val=20, verbose=False)
    ok, found = cuda_found()
    report: dict[str, Any] = {"cuda": found, "stages": {}}
    stages = report["stages"]
    epoch = ["TRAIN.ITERS_PER_EPOCH", "30", "TRAIN.VAL_FREQ", "1", "TRAIN.VAL_SUBSET", "10", "TRAIN.SEED", "0"]
    fp16 = ["FP16.ENABLED", "True", "TRAIN.EMA_DECAY", "0.99", "TRAIN.CLIP_GRAD", "1.0", "TRAIN.CHANNELS_LAST", "True"]
    stages["train_fp16"] = _train_stage(root, train, logs, "train_fp16", [*epoch, *fp16, "TRAIN.END_EPOCH", "2"], 150)
    resume = [*epoch, *fp16, "AUTO_RESUME", "True", "TRAIN.END_EPOCH", "3"]
    stages["resume"] = _train_stage(root, train, logs, "resume", resume, 90)
    stages["resume"]["ok"] = stages["resume"]["ok"] and stages["resume"]["resumed"]
    bf16 = [*epoch, "FP16.ENABLED", "True", "FP16.DTYPE", "bfloat16", "AUTO_RESUME", "False", "TRAIN.END_EPOCH", "1"]
    stages["train_bf16"] = _train_stage(root, out / "train_bf16", logs, "train_bf16", bf16, 90)
    for dtype in ("float16", "bfloat16"):
        stages[f"step_{dtype}"] = _guarded(lambda d=dtype: step_probe(root, d))
    weights = train.joinpath(*RUN_FOLDER, "final_state.pth")
    stages.update(_valid_stages(root, out, logs, weights))
    for amp in (True, False):
        stages[f"w32_512_{'amp' if amp else 'fp32'}"] = _guarded(lambda a=amp: w32_throughput(a))
    two = out / "train_two"
    if train.exists():
        shutil.copytree(train, two, dirs_exist_ok=True)  # rank 0 decides to resume from stage 2's checkpoint
    dist = [*epoch, *fp16, "DIST_BACKEND", "gloo", "MODEL.SYNC_BN", "True", "AUTO_RESUME", "True"]
    stages["torchrun_train"] = _train_stage(root, two, logs, "torchrun_train", [*dist, "TRAIN.END_EPOCH", "4"], 120, 2)
    stages["torchrun_train"]["ok"] = stages["torchrun_train"]["ok"] and stages["torchrun_train"]["resumed"]
    valid = ["--cfg", str(TINY), *_common(root, out / "valid_two"), "DEVICE", "cuda", "DIST_BACKEND", "gloo"]
    valid += ["TEST.MODEL_FILE", str(weights), "TEST.SUBSET", "20", "TEST.LOG_PROGRESS", "False"]
    code, _, seconds = _tool("valid", valid, logs / "torchrun_valid.log", 120, torchrun=2)
    stages["torchrun_valid"] = {"ok": code == 0, "exit_code": code, "seconds": round(seconds, 1)}
    report["ok"] = ok and all(stage.get("ok") for stage in stages.values())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def table(report: dict) -> str:
    """The report as a short markdown table: one row a stage, its outcome and figures."""
    lines = [f"CUDA: {report['cuda']}", "", "| stage | ok | figures |", "|---|---|---|"]
    for name, stage in report["stages"].items():
        figures = ", ".join(f"{k} {v}" for k, v in stage.items() if k not in ("ok", "log") and v is not None)
        lines.append(f"| {name} | {'yes' if stage.get('ok') else 'NO'} | {figures} |")
    return "\n".join(lines)
