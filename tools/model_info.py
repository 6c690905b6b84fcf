"""Parameters and MACs of a pose model, split into HRNet body, HigherHRNet heads and SAT head.

    python tools/model_info.py --cfg experiments/coco/higher_pose/w32_256_adam_lr1e-3.yaml
    python tools/model_info.py --cfg X.yaml --size 512 704 MODEL.SAT.TOKEN_STRIDE 16
    python tools/model_info.py --cfg X.yaml --json info.json

MACs are for one image at the config's ``DATASET.INPUT_SIZE`` (or ``--size H W``), counted by
:func:`higherpose.utils.model_summary.count_macs`: conv-transposes at input resolution and attention
matmuls included. The HigherHRNet README convention (conv-transpose at output resolution, 4x its real
cost) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace
from typing import Any

import torch

from higherpose.config import cfg as default_cfg
from higherpose.config import update_config
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.models import build_model
from higherpose.utils.model_summary import count_macs, parameter_breakdown

# top-level module names of PoseHigherResolutionNet / HigherPoseNet per reported part
PARTS = {"sat_head": ["sat_head"], "heads": ["final_layers", "deconv_layers"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cfg_argument(parser)
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: INPUT_SIZE²)")
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    add_overrides_argument(parser)
    return parser.parse_args(argv)


def model_info(cfg: Any, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Parameter counts and GMACs of ``build_model(cfg)`` for one ``(H, W)`` image.

    Returns a flat dict: ``params_{total,backbone,heads,sat_head}``, ``gmacs`` (honest),
    ``gmacs_official_deconv``, ``gmacs_{backbone,heads,sat_head}``, ``gmacs_attention``, ``input``.
    """
    height, width = size or (cfg.DATASET.INPUT_SIZE, cfg.DATASET.INPUT_SIZE)
    model = build_model(cfg, is_train=False).eval()
    params = parameter_breakdown(model, PARTS)
    report = count_macs(model, torch.zeros(1, 3, height, width))
    macs = report.by_prefix(PARTS)
    return {
        "model": cfg.MODEL.NAME,
        "input": [height, width],
        "num_joints": cfg.MODEL.NUM_JOINTS,
        "params_total": params["total"],
        "params_backbone": params.get("other", 0),
        "params_heads": params["heads"],
        "params_sat_head": params["sat_head"],
        "gmacs": report.total / 1e9,
        "gmacs_official_deconv": report.total_official_deconv / 1e9,
        "gmacs_backbone": macs.get("other", 0) / 1e9,
        "gmacs_heads": macs["heads"] / 1e9,
        "gmacs_sat_head": macs["sat_head"] / 1e9,
        "gmacs_attention": report.by_kind["attention"] / 1e9,
        "gmacs_by_kind": {k: v / 1e9 for k, v in report.by_kind.items()},
    }


def format_info(info: dict[str, Any]) -> str:
    h, w = info["input"]
    lines = [
        f"model {info['model']}  (K = {info['num_joints']}, input 1x3x{h}x{w})",
        "parameters:",
        f"  HRNet backbone         {info['params_backbone']:>12,}",
        f"  HigherHRNet heads      {info['params_heads']:>12,}",
        f"  SAT head               {info['params_sat_head']:>12,}",
        f"  total                  {info['params_total']:>12,}",
        "GMACs (1e9 multiply-accumulates; conv-transpose at input resolution; attention counted):",
        f"  HRNet backbone         {info['gmacs_backbone']:>12.3f}",
        f"  HigherHRNet heads      {info['gmacs_heads']:>12.3f}",
        f"  SAT head               {info['gmacs_sat_head']:>12.3f}   (attention matmuls {info['gmacs_attention']:.3f})",
        f"  total                  {info['gmacs']:>12.3f}",
        f"  HigherHRNet README convention (conv-transpose at output resolution): {info['gmacs_official_deconv']:.3f}",
        "  by operator: " + ", ".join(f"{k} {v:.3f}" for k, v in info["gmacs_by_kind"].items() if v),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = default_cfg.clone()
    update_config(cfg, SimpleNamespace(cfg=args.cfg, opts=args.opts))
    info = model_info(cfg, tuple(args.size) if args.size else None)
    print(format_info(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
