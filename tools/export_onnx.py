"""Export the pose network (not the grouping) to ONNX and check it with onnxruntime against PyTorch.

    python tools/export_onnx.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml \\
        --output pose_higher_hrnet_w32_512.onnx --image photo.jpg \\
        TEST.MODEL_FILE models/pose_higher_hrnet_w32_512.pth

The graph has one input ``image`` (B, 3, H, W), ImageNet-normalised RGB, with dynamic batch, height and
width (multiples of 32; the test-time resize gives multiples of 64), and one output per stage, named
by content and resolution: ``heatmaps_tags_1_4`` (B, 2K, H/4, W/4) and ``heatmaps_1_2`` (B, K, H/2,
W/2) for the HigherHRNet / HigherPose layouts. The check runs the exported file with onnxruntime
(CPU) on a real image (``--image``; without it a generated test pattern, and the tool says so)
resized as at test time, as a batch of two (the image and its mirror image) at a size other than the
export example, prints the max abs difference per output and exits 1 when one is above ``--tol``.

The legacy TorchScript exporter (``dynamo=False``) is used: it keeps H and W symbolic through the
SAT head's ``scaled_dot_product_attention`` (opset >= 14) and its per-forward sine position
encodings, and it needs no extra package (the dynamo exporter needs onnxscript).

Grouping on onnxruntime outputs: wrap the session in :class:`OnnxPoseNet` and pass it to
``higherpose.core.inference.predict_image`` instead of the PyTorch model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.core.inference import eval_input_size
from higherpose.dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from higherpose.models import build_model
from higherpose.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_pose_state_dict
from higherpose.utils.transforms import resize_align_multi_scale

MIN_OPSET = 14  # scaled_dot_product_attention needs opset 14 in the TorchScript exporter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="experiment YAML")
    parser.add_argument("--output", default="", help="the .onnx file (default: OUTPUT_DIR/onnx/<cfg name>.onnx)")
    parser.add_argument("--image", default="", help="image for the onnxruntime check (default: a test pattern)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--tol", type=float, default=1e-3, help="largest max abs difference accepted")
    parser.add_argument(
        "--random-weights", action="store_true", help="no TEST.MODEL_FILE: export an untrained model (smoke test)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


class _TupleOutputs(nn.Module):
    """The pose network with a tuple of stage outputs (what the exporter names one by one)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(image))


class OnnxPoseNet(nn.Module):
    """An exported pose network run by onnxruntime, usable wherever the PyTorch model is called
    (``predict_image``, ``get_multi_stage_outputs``): ``(B, 3, H, W)`` tensor → list of stage tensors."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.session.run(None, {self.input_name: image.detach().cpu().float().numpy()})
        return [torch.from_numpy(o).to(image.device) for o in outputs]


def output_names(outputs: list[torch.Tensor], input_width: int, num_joints: int) -> list[str]:
    """``heatmaps_tags_1_4`` / ``heatmaps_1_2`` ...: content (tag channels beyond the K heatmaps or
    not) and resolution relative to the input, one per stage."""
    names = []
    for out in outputs:
        ratio = input_width / out.shape[-1]
        res = f"1_{round(ratio)}" if ratio >= 1 else f"{round(1 / ratio)}_1"
        names.append(("heatmaps_tags_" if out.shape[1] > num_joints else "heatmaps_") + res)
    if len(set(names)) != len(names):
        names = [f"{n}_stage{i}" for i, n in enumerate(names)]
    return names


def test_pattern(height: int = 360, width: int = 480) -> np.ndarray:
    """A deterministic RGB picture (gradient, shapes, stick figures): not a photograph."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width * 255, yy / height * 255, (xx + yy) % 97 * 2.6], axis=-1).astype(np.uint8)
    image = np.ascontiguousarray(image)
    for i, cx in enumerate(range(width // 6, width, width // 3)):
        color = (255, 80 + 60 * i, 40)
        cv2.circle(image, (cx, height // 4), height // 16, color, -1)
        cv2.line(image, (cx, height // 4), (cx, height * 2 // 3), color, 6)
        cv2.line(image, (cx - 40, height // 2 - 30), (cx + 40, height // 2 - 30), color, 6)
        cv2.line(image, (cx, height * 2 // 3), (cx - 30, height - 20), color, 6)
        cv2.line(image, (cx, height * 2 // 3), (cx + 30, height - 20), color, 6)
    return image


def load_model(cfg, random_weights: bool) -> nn.Module:
    """The configured network on the CPU, eval mode, with ``TEST.MODEL_FILE`` loaded strictly."""
    model = build_model(cfg, is_train=False)
    path = cfg.TEST.MODEL_FILE
    if path:
        load_pose_state_dict(model, extract_state_dict(load_file(path)), strict=True, source=path)
    elif random_weights:
        print("WARNING: --random-weights: exporting an UNTRAINED model (pipeline smoke test)", file=sys.stderr)
    else:
        raise CheckpointError(
            "TEST.MODEL_FILE is not set: pass the weights as `TEST.MODEL_FILE path/to/model.pth` "
            "(or --random-weights to export an untrained model)"
        )
    return model.eval()


def check_input(cfg, image_path: str) -> torch.Tensor:
    """The check batch (2, 3, h, w): the image resized as at test time (short side TEST.INPUT_SIZE, long
    side a multiple of 64) and its mirror image, ImageNet-normalised."""
    if image_path:
        bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"--image {image_path}: cannot read this image")
        rgb = bgr[..., ::-1]
        print(f"check image: {image_path} ({rgb.shape[1]}x{rgb.shape[0]})")
    else:
        rgb = test_pattern()
        print("NOTE: no --image given: checking on a generated test pattern, not a real photograph")
    resized, _, _ = resize_align_multi_scale(np.ascontiguousarray(rgb), eval_input_size(cfg), 1.0, 1.0)
    x = torch.from_numpy(np.stack([resized, resized[:, ::-1]])).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def export(model: nn.Module, path: str, example: torch.Tensor, names: list[str], opset: int) -> None:
    """TorchScript-based export with dynamic batch / height / width, written atomically."""
    dynamic_axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    for name in names:
        suffix = name.rsplit("_", 2)[-2:]
        dynamic_axes[name] = {0: "batch", 2: f"height_{'_'.join(suffix)}", 3: f"width_{'_'.join(suffix)}"}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp.onnx", dir=folder)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter announces its own deprecation; the dynamo one needs onnxscript
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\..*")
            torch.onnx.export(
                _TupleOutputs(model),
                (example,),
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        import onnx

        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    model = load_model(cfg, args.random_weights)

    x = check_input(cfg, args.image)
    with torch.no_grad():
        reference = list(model(x))
    names = output_names(reference, x.shape[-1], cfg.DATASET.NUM_JOINTS)
    # The export example differs from the check batch in every dynamic axis (batch 1 vs 2, +64 rows,
    # +128 columns), so a size frozen into the graph by tracing shows up in the check.
    h, w = x.shape[2] + 64, x.shape[3] + 128
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))

    start = time.perf_counter()
    export(model, output, example, names, args.opset)
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
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f"export_onnx.py: {err}")
