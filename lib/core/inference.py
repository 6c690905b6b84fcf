"""Test-time inference: multi-stage outputs, flip, multi-scale aggregation (HigherHRNet
``lib/core/inference.py``) and :func:`predict_image` / :func:`predict_images`, the whole path from an
RGB image to poses in image pixels (used by valid.py, demo.py and validation during training).

Every function here reads its settings from a :class:`~higherpose.core.protocol.TestProtocol` built
once from the config. HigherHRNet's names (:func:`get_multi_stage_outputs`, :func:`aggregate_results`,
:func:`predict_image`, :func:`predict_images`) keep its ``cfg``-first call and also take a protocol in
that place; the path that valid.py and the estimator run passes the protocol.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from higherpose.core.group import HeatmapParser
from higherpose.core.layout import OutputLayout
from higherpose.core.protocol import TestProtocol
from higherpose.core.udp import no_autocast, udp_multi_stage_outputs
from higherpose.dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from higherpose.utils.transforms import get_multi_scale_size, resize_align_multi_scale, transform_preds

INPUT_MULTIPLE = 32  # HRNet halves the resolution five times (stem 4x, then branches down to 1/32)

Forward = Callable[[torch.Tensor], Sequence[torch.Tensor]]  # image (B, 3, h, w) -> stage outputs [(B, C_i, h_i, w_i)]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _aligned(outputs: Sequence[torch.Tensor], flip: bool) -> list[torch.Tensor]:
    """Stage outputs (B, C_i, h_i, w_i) resized to the last stage's size (bilinear, as HigherHRNet) and,
    for the mirrored pass, flipped back along the width."""
    last = outputs[-1].shape[2:]
    aligned = []
    for i, output in enumerate(outputs):
        if len(outputs) > 1 and i != len(outputs) - 1:
            output = _resize(output, last)
        aligned.append(torch.flip(output, [3]) if flip else output)
    return aligned


def get_multi_stage_outputs(
    cfg: TestProtocol | Any,
    model: nn.Module | Forward,
    image: torch.Tensor,
    with_flip: bool = False,
    project2image: bool = False,
    size_projected: Sequence[int] | None = None,
    *,
    layout: OutputLayout | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Run the model on image (B, 3, h, w) (and its mirror image when ``with_flip``).

    Returns ``(outputs, heatmaps, tags)``: ``heatmaps`` = [stage-averaged (B, K, h', w')] (+ the flipped
    one, channels permuted by the dataset's flip index), ``tags`` = the tag maps of the AE stages
    (+ flipped). With ``project2image`` and ``size_projected = (w, h)`` all maps are resized
    (bilinear, align_corners=False) to that size, as HigherHRNet. ``cfg``: the test protocol (or a
    config); ``layout``: an :class:`OutputLayout` to use instead of the protocol's.
    """
    if layout is None:
        layout = TestProtocol.of(cfg).layout
    outputs = list(model(image))
    heatmaps_avg, tags = layout.test_maps(_aligned(outputs, False))
    heatmaps = [heatmaps_avg] if heatmaps_avg is not None else []
    if with_flip:
        outputs_flip = _aligned(list(model(torch.flip(image, [3]))), True)
        heatmaps_avg, tags_flip = layout.test_maps(outputs_flip, flipped=True)
        heatmaps.append(heatmaps_avg)
        tags.extend(tags_flip)
        outputs.extend(outputs_flip)

    heatmaps, tags = layout.without_center(heatmaps), layout.without_center(tags)

    if project2image and size_projected:
        size = (size_projected[1], size_projected[0])
        heatmaps = [_resize(hms, size) for hms in heatmaps]
        tags = [_resize(tms, size) for tms in tags]
    return outputs, heatmaps, tags


def aggregate_results(
    cfg: TestProtocol | Any,
    scale_factor: float,
    final_heatmaps: torch.Tensor | None,
    tags_list: list[torch.Tensor],
    heatmaps: list[torch.Tensor],
    tags: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Accumulate one scale's maps: heatmaps (flip-averaged) are summed into ``final_heatmaps``; tags
    (each as (B, K, H, W, 1)) are collected only at scale 1 (or when a single scale is used).
    ``cfg``: the test protocol (or a config)."""
    protocol = TestProtocol.of(cfg)
    if scale_factor == 1 or len(protocol.scales) == 1:
        if final_heatmaps is not None and not protocol.project2image:
            tags = [_resize(tms, final_heatmaps.shape[2:]) for tms in tags]
        for tms in tags:
            tags_list.append(torch.unsqueeze(tms, dim=4))

    heatmaps_avg = (heatmaps[0] + heatmaps[1]) / 2.0 if protocol.flip else heatmaps[0]
    if final_heatmaps is None:
        final_heatmaps = heatmaps_avg
    elif protocol.project2image:
        final_heatmaps += heatmaps_avg
    else:
        final_heatmaps += _resize(heatmaps_avg, final_heatmaps.shape[2:])
    return final_heatmaps, tags_list


def model_device(model: nn.Module | Forward) -> torch.device:
    """The device of a network's first parameter (or buffer); the CPU for a plain callable."""
    if not isinstance(model, nn.Module):  # a plain callable (e.g. a wrapped runtime): CPU tensors in
        return torch.device("cpu")
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_input(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """RGB uint8 images (h, w, 3) of one size -> normalised (B, 3, h, w) float32 on ``device``."""
    batch = torch.from_numpy(np.stack(images))
    if device.type == "cuda":  # from pinned pages the copy is queued without waiting for the GPU
        batch = batch.pin_memory()
    x = batch.to(device=device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean, std = _imagenet_statistics(device)
    return (x - mean) / std


@functools.lru_cache(maxsize=8)
def _imagenet_statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std (1, 3, 1, 1) on ``device``, copied there once (a blocking copy to a GPU
    waits for the work queued before it). Normal tensors even when first asked for in inference mode."""
    with torch.inference_mode(False):
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def _udp_outputs(
    protocol: TestProtocol,
    model: nn.Module | Forward,
    x: torch.Tensor,
    base_size: Sequence[int],
    base_scale: np.ndarray,
    scale: np.ndarray,
    *,
    with_tags: bool = True,
    average_flip: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DATASET.USE_UDP: this scale's maps resampled exactly onto the scale-1 input grid
    (``TEST.PROJECT2IMAGE``) or onto that grid at the last stage's stride (the output size there).

    One forward runs the image and its mirror (``TEST.FLIP_TEST``) together. ``with_tags=False`` skips
    the tag maps; ``average_flip`` returns one heatmap averaged over both passes instead of two
    (:func:`~higherpose.core.udp.udp_resampled_maps`)."""
    if protocol.project2image:
        stride, dst_size = 1.0, tuple(base_size)
    else:
        stride = protocol.output_stride  # the network's, whatever the test size
        dst_size = (int(round(base_size[0] / stride)), int(round(base_size[1] / stride)))
    # Input pixels per image pixel at this scale over those at scale 1 (get_affine_transform's factor).
    ratio = (x.shape[3] / float(scale[0])) / (base_size[0] / float(base_scale[0]))
    return udp_multi_stage_outputs(
        protocol.layout,
        model,
        x,
        protocol.flip,
        dst_size,
        stride,
        base_size,
        ratio,
        with_tags=with_tags,
        average_flip=average_flip,
    )


def eval_forward(model: nn.Module | Forward, device: torch.device, amp_dtype: torch.dtype | None) -> Forward:
    """``model``'s forward as the test loop runs it: under autocast in ``amp_dtype`` (None: none), its
    outputs cast to float32, so stage/flip/scale averaging, resizing and grouping always run in fp32."""

    def forward(image: torch.Tensor) -> list[torch.Tensor]:
        amp = no_autocast(device.type) if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype)
        with amp:
            outputs = model(image)
        return [o.float() for o in outputs]

    return forward


@dataclass
class ImageMaps:
    """The aggregated test-time maps of a batch of same-size images, before grouping.

    ``det``: (B, K, H, W) heatmaps averaged over stages, flips and scales; ``tags``: (B, K, H, W, L)
    tag maps (L = flips x scales that carry tags); ``centers`` / ``scales`` (per image, (2,) each) and
    ``heatmap_size`` ([W, H]) map a heatmap pixel back to the image (:func:`transform_preds`).
    """

    det: torch.Tensor
    tags: torch.Tensor
    centers: list[np.ndarray]
    scales: list[np.ndarray]
    heatmap_size: list[int]

    def to_image(self, b: int, keypoints: np.ndarray) -> np.ndarray:
        """Image ``b``'s keypoints (N, >=2) in heatmap pixels -> original-image pixels (a copy)."""
        return transform_preds(keypoints, self.centers[b], self.scales[b], self.heatmap_size)


def image_maps(
    protocol: TestProtocol, model: nn.Module, images: Sequence[np.ndarray], device: torch.device
) -> ImageMaps:
    """The HigherHRNet test loop (valid.py) up to grouping, for images whose resized sizes agree at
    every scale: resize per ``TEST.SCALE_FACTOR`` (largest first), flip, stage/flip/scale averaging."""
    scales = list(protocol.scales)
    min_scale = min(scales)
    input_size = protocol.input_size
    base_size, _, base_scale = get_multi_scale_size(images[0], input_size, 1.0, min_scale)
    forward = eval_forward(model, device, protocol.amp_dtype)

    final_heatmaps, tags_list = None, []
    centers, scales_px = [], []
    for s in sorted(scales, reverse=True):
        resized = []
        centers, scales_px = [], []
        for image in images:
            image_resized, center, scale = resize_align_multi_scale(image, input_size, s, min_scale)
            resized.append(image_resized)
            centers.append(center)
            scales_px.append(scale)
        x = _to_input(resized, device)
        if protocol.udp:
            # All scales land on one grid: aggregate_results's sums without its resizes, the flip average
            # inside the resampling, and tags only where aggregate_results keeps them.
            with_tags = s == 1 or len(scales) == 1
            heatmaps, tags = _udp_outputs(
                protocol, forward, x, base_size, base_scale, scales_px[0], with_tags=with_tags, average_flip=True
            )
            tags_list.extend(torch.unsqueeze(tms, dim=4) for tms in tags)
            final_heatmaps = heatmaps[0] if final_heatmaps is None else final_heatmaps + heatmaps[0]
            continue
        _, heatmaps, tags = get_multi_stage_outputs(
            protocol, forward, x, protocol.flip, protocol.project2image, base_size
        )
        final_heatmaps, tags_list = aggregate_results(protocol, s, final_heatmaps, tags_list, heatmaps, tags)

    final_heatmaps = final_heatmaps / float(len(scales))
    if protocol.udp:  # the maps lie on the scale-1 grid (HigherHRNet maps back with the last scale's)
        bases = [get_multi_scale_size(image, input_size, 1.0, min_scale) for image in images]
        centers, scales_px = [b[1] for b in bases], [b[2] for b in bases]
    heatmap_size = [final_heatmaps.size(3), final_heatmaps.size(2)]
    return ImageMaps(final_heatmaps, torch.cat(tags_list, dim=4), centers, scales_px, heatmap_size)


def group_by_tags(
    protocol: TestProtocol, maps: ImageMaps, parser: HeatmapParser
) -> list[tuple[list[np.ndarray], list[float]]]:
    """Grouping by tags (``TEST.ADJUST``, ``TEST.REFINE``) and the inverse affine map: per image of
    ``maps``, what :func:`predict_image` returns."""
    grouped, scores = parser.parse_batch(maps.det, maps.tags, protocol.adjust, protocol.refine)
    return [
        ([maps.to_image(b, person) for person in people], person_scores)
        for b, (people, person_scores) in enumerate(zip(grouped, scores))
    ]


def _predict_same_size(
    protocol: TestProtocol, model: nn.Module, images: Sequence[np.ndarray], parser: HeatmapParser, device: torch.device
) -> list[tuple[list[np.ndarray], list[float]]]:
    return group_by_tags(protocol, image_maps(protocol, model, images, device), parser)


def predict_images(
    cfg: TestProtocol | Any,
    model: nn.Module,
    images_rgb: Sequence[np.ndarray],
    parser: HeatmapParser | None = None,
    batch_size: int = 1,
) -> list[tuple[list[np.ndarray], list[float]]]:
    """Poses for several RGB uint8 images (H, W, 3); images whose network input sizes agree at every
    test scale run together, at most ``batch_size`` per forward. Returns, per image in order, what
    :func:`predict_image` returns. ``cfg``: the test protocol (or a config)."""
    protocol = TestProtocol.of(cfg)
    parser = parser or HeatmapParser.from_protocol(protocol)
    device = model_device(model)
    results: list[Any] = [None] * len(images_rgb)
    with torch.no_grad():
        for chunk in same_size_chunks(protocol, images_rgb, batch_size):
            preds = _predict_same_size(protocol, model, [images_rgb[i] for i in chunk], parser, device)
            for i, pred in zip(chunk, preds):
                results[i] = pred
    return results


def same_size_chunks(protocol: TestProtocol, images_rgb: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """The indices of ``images_rgb`` in forwards of at most ``batch_size`` images whose network input
    sizes agree at every test scale (in order of each size's first image); a scale whose input is not
    a multiple of the network's stride is an error that names it."""
    scales = list(protocol.scales)
    min_scale = min(scales)
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images_rgb):
        key = tuple(get_multi_scale_size(image, protocol.input_size, s, min_scale)[0] for s in scales)
        for s, size in zip(scales, key):
            if size[0] % INPUT_MULTIPLE or size[1] % INPUT_MULTIPLE:
                raise ValueError(
                    f"TEST.SCALE_FACTOR {s}: the network input for a {image.shape[1]}x{image.shape[0]} image would be "
                    f"{size[0]}x{size[1]}, not a multiple of {INPUT_MULTIPLE} (HRNet's stride); use scales that are "
                    "multiples of half the smallest one, e.g. [1], [1.5, 1], [2, 1], [1, 0.5]"
                )
        groups.setdefault(key, []).append(i)
    step = max(1, batch_size)
    return [indices[start : start + step] for indices in groups.values() for start in range(0, len(indices), step)]


def predict_image(
    cfg: TestProtocol | Any, model: nn.Module, image_rgb: np.ndarray, parser: HeatmapParser | None = None
) -> tuple[list[np.ndarray], list[float]]:
    """Multi-person poses for one RGB uint8 image (H, W, 3), on the model's device, no gradients.

    Resize keeping the aspect ratio for every ``TEST.SCALE_FACTOR`` (largest first), ImageNet
    normalisation, flip (``TEST.FLIP_TEST``), stage/flip/scale averaging, grouping (``TEST.ADJUST``,
    ``TEST.REFINE``) and the inverse affine map. Returns ``(poses, scores)``: ``poses[p]`` is
    ``(K, 3+L)`` = (x, y, heat value, tags...) in original-image pixels, ``scores[p]`` a float.
    The model is expected in eval mode.
    """
    return predict_images(cfg, model, [image_rgb], parser)[0]
