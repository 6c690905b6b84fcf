"""Export the pose network (not the grouping) to ONNX and check it with onnxruntime against PyTorch.

    python tools/export_onnx.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml \\
        --output pose_higher_hrnet_w32_512.onnx --image photo.jpg \\
        TEST.MODEL_FILE models/pose_higher_hrnet_w32_512.pth

The graph (one input ``image`` (B, 3, H, W) with dynamic batch, height and width; one output per
stage, ``heatmaps_tags_1_4`` and ``heatmaps_1_2``) is described in ``higherpose.apis.onnx_export``.
The check runs the exported file with onnxruntime (CPU) on a real image (``--image``; without it a
generated test pattern, and the tool says so) resized as at test time, as a batch of two (the image
and its mirror image) at a size other than the export example, prints the max abs difference per
output and exits 1 when one is above ``--tol``. Then the whole inference (``higherpose.PoseEstimator``
with the config's test protocol) runs on the check image with each network: it exits 1 when they find
a different number of persons or a keypoint moves by more than ``--pose-tol`` pixels.

Grouping on onnxruntime outputs: ``PoseEstimator(cfg, OnnxPoseNet("model.onnx"))``
(``higherpose.apis.onnx_export.OnnxPoseNet`` wraps the session).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from higherpose.apis.estimator import PoseEstimator
from higherpose.apis.eval_model import load_eval_model
from higherpose.apis.onnx_export import MIN_OPSET, OnnxPoseNet, check_batch, export_onnx, output_names, test_pattern
from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.utils.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cfg_argument(parser)
    parser.add_argument("--output", default="", help="the .onnx file (default: OUTPUT_DIR/onnx/<cfg name>.onnx)")
    parser.add_argument("--image", default="", help="image for the onnxruntime check (default: a test pattern)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest max abs difference accepted")
    parser.add_argument("--pose-tol", type=float, default=0.05, help="largest keypoint difference accepted (px)")
    parser.add_argument(
        "--random-weights", action="store_true", help="no TEST.MODEL_FILE: export an untrained model (smoke test)"
    )
    add_overrides_argument(parser)
    return parser.parse_args(argv)


def check_input(cfg: Any, image_path: str) -> torch.Tensor:
    """The check batch (2, 3, h, w) of :func:`check_batch`: the image at ``image_path`` (a generated test
    pattern when empty) resized as at test time and its mirror image, ImageNet-normalised."""
    return check_batch(cfg, check_image(image_path))


def check_image(image_path: str) -> np.ndarray:
    """The RGB check image (H, W, 3): the file at ``image_path``, or a generated test pattern."""
    if image_path:
        bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"--image {image_path}: cannot read this image")
        rgb = bgr[..., ::-1]
        print(f"check image: {image_path} ({rgb.shape[1]}x{rgb.shape[0]})")
    else:
        rgb = test_pattern()
        print("NOTE: no --image given: checking on a generated test pattern, not a real photograph")
    return rgb


def compare_poses(cfg: Any, reference: Any, got: Any, rgb: np.ndarray) -> tuple[int, int, float]:
    """Persons found in ``rgb`` by PoseEstimator with the ``reference`` and the ``got`` network, and
    the largest keypoint distance in pixels between them (inf when the counts differ)."""
    (ref_poses, _), (got_poses, _) = (PoseEstimator(cfg, net).predict_rgb([rgb])[0] for net in (reference, got))
    if len(ref_poses) != len(got_poses):
        return len(ref_poses), len(got_poses), float("inf")
    worst = max((float(np.abs(a[:, :2] - b[:, :2]).max()) for a, b in zip(ref_poses, got_poses)), default=0.0)
    return len(ref_poses), len(got_poses), worst


def compare(names: list[str], reference: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Print the max abs difference per output; return the largest (inf for a shape or count mismatch)."""
    worst = 0.0 if len(reference) == len(got) else float("inf")
    for name, ref, out in zip(names, reference, got):
        if tuple(ref.shape) != tuple(out.shape):
            print(f"  {name}: shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}")
            worst = float("inf")
            continue
        diff = float((ref - out).abs().max())
        worst = max(worst, diff)
        print(f"  {name} {tuple(out.shape)}: max abs diff {diff:.3g} (max |value| {float(ref.abs().max()):.3g})")
    return worst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.opset < MIN_OPSET:
        raise ValueError(f"--opset {args.opset}: needs >= {MIN_OPSET} (scaled_dot_product_attention)")
    cfg = default_cfg.clone()
    update_config(cfg, args)
    output = args.output or os.path.join(cfg.OUTPUT_DIR or "output", "onnx", Path(args.cfg).stem + ".onnx")
    model, _, _ = load_eval_model(cfg, random_weights=args.random_weights, device="cpu", optimize=True)

    x = check_input(cfg, args.image)
    with torch.no_grad():
        reference = list(model(x))
    names = output_names(reference, x.shape[-1], cfg.DATASET.NUM_JOINTS)
    # The export example differs from the check batch in every dynamic axis (batch 1 vs 2, +64 rows,
    # +128 columns), so a size frozen into the graph by tracing shows up in the check.
    h, w = x.shape[2] + 64, x.shape[3] + 128
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))

    start = time.perf_counter()
    export_onnx(model, output, example, names, args.opset)
    print(
        f"exported {cfg.MODEL.NAME} to {output} ({os.path.getsize(output) / 2**20:.1f} MiB, opset {args.opset}, "
        f"example {tuple(example.shape)}, {time.perf_counter() - start:.1f} s)"
    )

    with torch.no_grad():
        got = OnnxPoseNet(output)(x)
    print(f"onnxruntime vs PyTorch on input {tuple(x.shape)}:")
    worst = compare(names, reference, got)
    if not worst <= args.tol:
        print(f"FAILED: max abs difference {worst:.3g} > --tol {args.tol:g}", file=sys.stderr)
        return 1
    print(f"OK: max abs difference {worst:.3g} <= {args.tol:g}")

    n_ref, n_got, moved = compare_poses(cfg, model, OnnxPoseNet(output), check_image(args.image))
    print(f"poses (PoseEstimator, the config's test protocol): PyTorch {n_ref} persons, onnxruntime {n_got}, "
          f"largest keypoint difference {moved:.3g} px")  # fmt: skip
    if not moved <= args.pose_tol:
        print(f"FAILED: the poses differ (more than --pose-tol {args.pose_tol:g} px)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f"export_onnx.py: {err}")
