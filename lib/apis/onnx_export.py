"""The pose network (not the grouping) as ONNX, and an onnxruntime session usable as the network.

The graph has one input ``image`` (B, 3, H, W), ImageNet-normalised RGB, with dynamic batch, height
and width (multiples of 32; the test-time resize gives multiples of 64), and one output per stage,
named by content and resolution (:func:`output_names`): ``heatmaps_tags_1_4`` (B, 2K, H/4, W/4) and
``heatmaps_1_2`` (B, K, H/2, W/2) for the HigherHRNet / HigherPose layouts.

The legacy TorchScript exporter (``dynamo=False``) is used: it keeps H and W symbolic through the
SAT head's ``scaled_dot_product_attention`` (opset >= 14) and its per-forward sine position
encodings, and it needs no extra package (the dynamo exporter needs onnxscript). ``onnx`` and
``onnxruntime`` are imported only where they are used, so the rest of the package runs without them.

Grouping on onnxruntime outputs: pass :class:`OnnxPoseNet` to
``higherpose.core.inference.predict_image`` instead of the PyTorch model.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from higherpose.core.protocol import eval_input_size
from higherpose.dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from higherpose.utils.atomic import atomic_write
from higherpose.utils.transforms import resize_align_multi_scale

MIN_OPSET = 14  # scaled_dot_product_attention needs opset 14 in the TorchScript exporter


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
    not) and resolution relative to the input, one per stage output (B, C, h, w)."""
    names = []
    for out in outputs:
        ratio = input_width / out.shape[-1]
        res = f"1_{round(ratio)}" if ratio >= 1 else f"{round(1 / ratio)}_1"
        names.append(("heatmaps_tags_" if out.shape[1] > num_joints else "heatmaps_") + res)
    if len(set(names)) != len(names):
        names = [f"{n}_stage{i}" for i, n in enumerate(names)]
    return names


def test_pattern(height: int = 360, width: int = 480) -> np.ndarray:
    """A deterministic RGB picture (H, W, 3) uint8 (gradient, shapes, stick figures): not a photograph."""
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


def check_batch(cfg: Any, rgb: np.ndarray) -> torch.Tensor:
    """The batch (2, 3, h, w) to compare the export on: ``rgb`` (H, W, 3) resized as at test time (short
    side ``TEST.INPUT_SIZE``, long side a multiple of 64) and its mirror image, ImageNet-normalised."""
    resized, _, _ = resize_align_multi_scale(np.ascontiguousarray(rgb), eval_input_size(cfg), 1.0, 1.0)
    x = torch.from_numpy(np.stack([resized, resized[:, ::-1]])).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def export_onnx(model: nn.Module, path: str, example: torch.Tensor, names: list[str], opset: int) -> None:
    """Export ``model`` traced on ``example`` (B, 3, H, W) to ``path``, with dynamic batch / height /
    width and one output per entry of ``names``; checked by ``onnx.checker`` and written atomically."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset}: needs >= {MIN_OPSET} (scaled_dot_product_attention)")
    dynamic_axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    for name in names:
        suffix = name.rsplit("_", 2)[-2:]
        dynamic_axes[name] = {0: "batch", 2: f"height_{'_'.join(suffix)}", 3: f"width_{'_'.join(suffix)}"}
    # Exported into memory and checked there, so only a checked model reaches ``path`` (atomically:
    # an interrupted export leaves the previous file, and a temporary remove_stale_temporaries knows).
    buffer = io.BytesIO()
    # The wrapper takes the model's mode: the exporter restores the wrapper's mode afterwards, and a
    # fresh module is in training mode, which would leave ``model`` training (BN on batch statistics).
    wrapper = _TupleOutputs(model).train(model.training)
    with warnings.catch_warnings():
        # the TorchScript exporter announces its own deprecation; the dynamo one needs onnxscript
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\..*")
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    import onnx

    serialized = buffer.getvalue()
    onnx.checker.check_model(onnx.load_model_from_string(serialized))
    atomic_write(path, lambda f: f.write(serialized), binary=True)
