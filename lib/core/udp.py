"""Unbiased test-time processing (``DATASET.USE_UDP``, NEW): exact map alignment and sub-pixel decoding.

HigherHRNet aligns its maps with ``align_corners=False`` resizes and ``torch.flip`` and decodes a peak
at pixel ``m`` as ``m + 0.5 ± 0.25``. Together with its truncated training targets these conventions
disagree by fractions of a pixel from stage to stage and between the plain and the flipped pass, so
the averaged maps are blurred and the decoded joints biased (Huang et al., "The Devil is in the
Details", CVPR 2020). Here every map is resampled once, exactly, onto the destination grid:

* output pixel ``q`` of a stage with stride ``s`` sees input pixel ``s·q`` (the training targets of
  :class:`~higherpose.dataset.target_generators.HeatmapGenerator` with ``udp=True`` put a joint at
  input ``x`` on output ``x/s``); on the mirrored input, flipped back, it sees ``s·q + s - 1``;
* destination pixel ``m`` is base-input pixel ``d·m`` (``d = 1`` with ``TEST.PROJECT2IMAGE``, else the
  last stage's stride), which at another test scale is input pixel ``r·(d·m - W_b/2) + W_i/2``;
* a peak is decoded with the second-order Taylor expansion of the log heatmap (Zhang et al., DARK,
  CVPR 2020), exact for a Gaussian, without HigherHRNet's offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from higherpose.core.layout import OutputLayout


def sample_grid(maps: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Bicubic samples of maps (B, C, h, w) at source pixel coordinates ``xs`` (W',) x ``ys`` (H',)
    (pixel centres at integers, edge values beyond the border) -> float32 (B, C, H', W').

    Bicubic, because the Taylor decoding fits a quadratic to the log of the result: on bilinear
    upsampling (piecewise linear) it is pulled toward pixel centres. Its small undershoot below 0
    next to a peak is clamped away by the log. Runs in float32 whatever the autocast state: grid
    coordinates in half precision would step by up to a pixel on a few-hundred-pixel map.
    """
    h, w = maps.shape[2:]
    gx = xs * (2.0 / max(w - 1, 1)) - 1.0
    gy = ys * (2.0 / max(h - 1, 1)) - 1.0
    grid_y, grid_x = torch.meshgrid(gy, gx, indexing="ij")
    grid = torch.stack((grid_x, grid_y), dim=2).float()[None].expand(maps.size(0), -1, -1, -1)
    with torch.autocast(maps.device.type, enabled=False):
        return F.grid_sample(maps.float(), grid, mode="bicubic", padding_mode="border", align_corners=True)


def udp_multi_stage_outputs(
    layout: OutputLayout,
    model: nn.Module | Callable[[torch.Tensor], Sequence[torch.Tensor]],
    image: torch.Tensor,
    with_flip: bool,
    dst_size: Sequence[int],
    dst_stride: float,
    base_size: Sequence[int],
    ratio: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the model on image (B, 3, H_i, W_i) (and its mirror) and resample every stage onto the
    destination grid ``dst_size = (W', H')`` whose pixel ``m`` is base-input pixel ``dst_stride·m``.

    ``layout`` says which channels of each stage are heatmaps and tags. ``base_size = (W_b, H_b)`` is
    the scale-1 input size and ``ratio`` this input's size over it (the two affine factors' ratio).
    Returns ``(heatmaps, tags)`` as :func:`~higherpose.core.inference.get_multi_stage_outputs`: the
    stage-averaged heatmaps (B, K, H', W') (and the flipped pass's), and the tag maps of the AE stages
    (and the flipped ones).
    """
    in_h, in_w = image.shape[2:]
    device = image.device
    xb = torch.arange(dst_size[0], device=device, dtype=torch.float64) * dst_stride
    yb = torch.arange(dst_size[1], device=device, dtype=torch.float64) * dst_stride
    xi = (xb - base_size[0] / 2.0) * ratio + in_w / 2.0  # this scale's input pixels
    yi = (yb - base_size[1] / 2.0) * ratio + in_h / 2.0

    def resampled(outputs: Sequence[torch.Tensor], flipped: bool) -> Iterator[torch.Tensor]:
        for output in outputs:
            stride_x, stride_y = in_w / output.size(3), in_h / output.size(2)
            if flipped:
                output = torch.flip(output, [3])
            offset = stride_x - 1 if flipped else 0.0
            yield sample_grid(output, (xi - offset) / stride_x, yi / stride_y)

    heatmaps: list[torch.Tensor] = []
    tags: list[torch.Tensor] = []
    for flipped in (False, True) if with_flip else (False,):
        outputs = model(torch.flip(image, [3]) if flipped else image)
        heatmaps_avg, stage_tags = layout.test_maps(resampled(outputs, flipped), flipped)
        if heatmaps_avg is not None:
            heatmaps.append(heatmaps_avg)
        tags.extend(stage_tags)
    return layout.without_center(heatmaps), layout.without_center(tags)


HALF = 0.499  # largest |offset| from the peak pixel (see taylor_offsets)


def taylor_offsets(
    det: torch.Tensor, joint: np.ndarray, row: np.ndarray, col: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets of the peaks ``det[joint, row, col]`` from the second-order Taylor expansion of
    ``log det`` (DARK): ``-H^-1 g`` with central differences, clipped to just under half a pixel; 0 where the
    Hessian is not negative definite (flat or saddle) and along an axis whose neighbour is off the map.
    det: (K, H, W); indices (n,) -> two (n,) arrays.
    """
    _, h, w = det.shape
    if len(joint) == 0:
        return np.zeros(0), np.zeros(0)
    dev = det.device
    j = torch.as_tensor(joint, dtype=torch.long, device=dev)
    r = torch.as_tensor(row, dtype=torch.long, device=dev)
    c = torch.as_tensor(col, dtype=torch.long, device=dev)
    r0, r1 = (r - 1).clamp(min=0), (r + 1).clamp(max=h - 1)
    c0, c1 = (c - 1).clamp(min=0), (c + 1).clamp(max=w - 1)

    # The 3x3 neighbourhood of every peak in one gather (one device sync): centre, left, right, up,
    # down, then the four diagonals.
    rows = torch.stack((r, r, r, r0, r1, r1, r1, r0, r0))
    cols = torch.stack((c, c0, c1, c, c, c1, c0, c1, c0))
    vals = det[j.expand_as(rows), rows, cols].double().cpu().numpy()
    center, left, right, up, down, dr, dl, ur, ul = np.log(np.maximum(vals, 1e-10))
    dx, dy = 0.5 * (right - left), 0.5 * (down - up)
    dxx, dyy = right - 2 * center + left, down - 2 * center + up
    dxy = 0.25 * (dr - dl - ur + ul)
    # On the map's border a neighbour is missing: no offset along that axis (1-D Newton along the other).
    in_x = ((c > 0) & (c < w - 1)).cpu().numpy()
    in_y = ((r > 0) & (r < h - 1)).cpu().numpy()
    det_h = dxx * dyy - dxy**2
    both = in_x & in_y & (dxx < 0) & (det_h > 1e-12)
    safe = np.where(both, det_h, 1.0)
    ox = np.where(both, -(dyy * dx - dxy * dy) / safe, 0.0)
    oy = np.where(both, -(dxx * dy - dxy * dx) / safe, 0.0)
    only_x = in_x & ~in_y & (dxx < 0)
    only_y = in_y & ~in_x & (dyy < 0)
    ox = np.where(only_x, -dx / np.where(only_x, dxx, 1.0), ox)
    oy = np.where(only_y, -dy / np.where(only_y, dyy, 1.0), oy)
    # Strictly inside half a pixel, so rounding a decoded position gives back its peak pixel.
    return np.clip(ox, -HALF, HALF), np.clip(oy, -HALF, HALF)
