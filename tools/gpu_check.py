"""Exercise the GPU paths on one GPU in a few minutes and report: CUDA and the driver, fp16 / bf16
training with the weight average, clipping, channels_last, validation and resume, host syncs per step,
valid.py on the GPU against the CPU, HigherHRNet-W32 throughput at 512, and two processes on the GPU
under torchrun (gloo). Without CUDA it stops with one line and exit code 1.

    python tools/gpu_check.py [--output output/gpu_check]

Writes ``OUTPUT/report.json`` (every figure), the tool logs in ``OUTPUT/logs/`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from higherpose.bench import gpu_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/gpu_check", help="folder of the report and the logs")
    args = parser.parse_args(argv)
    usable, found = gpu_check.cuda_found()
    if not usable:
        print(f"gpu_check.py: {found}", file=sys.stderr)
        return 1
    print(f"gpu_check.py: {found}", flush=True)
    report = gpu_check.run(Path(args.output))
    print(gpu_check.table(report))
    print(f"gpu_check.py: report in {Path(args.output) / 'report.json'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
