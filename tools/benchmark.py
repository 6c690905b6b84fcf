"""Every speed measurement of the project in one command.

    python tools/benchmark.py [--quick] [--only data core model train] [--output benchmark.json]

Each section is a module ``higherpose.bench.<section>`` whose ``run(quick)`` returns rows
``{name, value, unit, detail}`` (medians over several repetitions after a warm-up). The table is
printed as markdown and written, with the machine description, to a JSON file (atomically).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from typing import Any

import torch

from higherpose.utils.atomic import write_json_atomic

SECTIONS = ("data", "core", "model", "train", "valid")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| section | measurement | value | unit | detail |", "|---|---|---|---|---|"]
    for r in rows:
        value = r["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {r['section']} | {r['name']} | {shown} | {r['unit']} | {r.get('detail', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (CI smoke run)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--output", default="output/benchmark.json", help="JSON file for the results")
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for section in args.only or SECTIONS:
        try:
            module = importlib.import_module(f"higherpose.bench.{section}")
        except ModuleNotFoundError as err:
            print(f"[benchmark] section {section}: not available ({err})", file=sys.stderr)
            failed.append(section)
            continue
        start = time.perf_counter()
        print(f"[benchmark] {section} ...", file=sys.stderr, flush=True)
        for row in module.run(quick=args.quick):
            rows.append({"section": section, **row})
        print(f"[benchmark] {section} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    info = machine()
    print(f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, CUDA: {info['cuda'] or 'none'}")
    print(to_markdown(rows))
    write_json_atomic({"machine": info, "quick": args.quick, "rows": rows}, args.output, indent=1)
    print(f"written to {args.output}", file=sys.stderr)
    return 1 if failed and not rows else 0


if __name__ == "__main__":
    sys.exit(main())
