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

The resampling is bicubic, ``F.grid_sample``'s (:func:`sample_grid`, border padding, ``A = -0.75``). The
destination grid is a product of x and y coordinates, so it is computed as two matrix products per
map, ``wy @ map @ wx^T``, with bicubic weight matrices built once per map size and grid and cached;
the mirrored pass's flip is folded into its ``wx``. A bicubic row has four taps, so on the CPU the
matrices are kept as blocks of rows with only the columns the block reaches (:class:`Banded`); on
other devices, where tens of small products cost more launches than the zeros they skip, each is one
dense matrix (:meth:`Banded.whole`) and a map takes two products. The flip average of
the heatmaps is summed after the width products, the stage average after the height products, and
only the channels that are read are resampled (heatmaps of the ``TEST.WITH_HEATMAPS`` stages, tags of
the ``TEST.WITH_AE`` stages where the caller uses them). The image and its mirror run through the
network as one batch.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from higherpose.core.layout import OutputLayout
from higherpose.utils.host import to_host


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, enabled=False)``; nothing to turn off on a device type autocast does
    not know (``meta``, where the device paths are tested)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


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
    with no_autocast(maps.device.type):
        return F.grid_sample(maps.float(), grid, mode="bicubic", padding_mode="border", align_corners=True)


_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _cubic_taps(src: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The four taps of :func:`sample_grid` along one axis of ``size`` pixels at float64 source pixel
    coordinates ``src`` (n,) -> column indices (n, 4) and float32 weights (n, 4).

    Reproduces ``F.grid_sample(mode="bicubic", padding_mode="border", align_corners=True)`` on CPU: the
    coordinate normalised in float64, cast to float32 and unnormalised in float32; taps at
    ``floor(x) - 1 .. floor(x) + 2``, each clamped into ``[0, size - 1]`` (the border padding), with the
    cubic convolution weights of coefficient ``A = -0.75``."""
    grid = (src * (2.0 / max(size - 1, 1)) - 1.0).astype(np.float32)
    x = (grid + np.float32(1.0)) * np.float32((size - 1) / 2.0)
    x0 = np.floor(x)
    t = x - x0
    a = np.float32(_CUBIC_A)

    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    one = np.float32(1.0)
    weights = np.stack((far(t + one), near(t), near(one - t), far(one + (one - t))), axis=1)
    index = np.clip(x0.astype(np.int64)[:, None] + np.arange(-1, 3), 0, size - 1)
    return index, weights


def _weight_matrix(src: np.ndarray, size: int) -> np.ndarray:
    """Dense (n, size) float64 matrix of :func:`_cubic_taps`: row ``i`` samples source coordinate ``src[i]``."""
    index, weights = _cubic_taps(src, size)
    matrix = np.zeros((len(src), size))
    np.add.at(matrix, (np.repeat(np.arange(len(src)), 4), index.ravel()), weights.ravel().astype(np.float64))
    return matrix


def _destination_coords(n: int, dst_stride: float, base: float, ratio: float, in_size: int) -> np.ndarray:
    """This scale's input pixel of destination pixels ``0..n-1`` (see the module docstring), float64."""
    return (np.arange(n, dtype=np.float64) * dst_stride - base / 2.0) * ratio + in_size / 2.0


@functools.lru_cache(maxsize=64)
def _axis_matrices(
    out_size: int, in_size: int, dst_n: int, dst_stride: float, base: float, ratio: float, mirrored: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Along one axis, the (dst_n, out_size) bicubic matrices taking a stage output of ``out_size``
    pixels (input ``in_size``) onto the destination grid, for the plain pass and, with ``mirrored``, for
    the output of the mirrored image as the network returns it (sampled as flipped back, then read at
    ``s·q + s - 1``; the flip folded into the matrix's columns)."""
    coords = _destination_coords(dst_n, dst_stride, base, ratio, in_size)
    stride = in_size / out_size
    plain = _weight_matrix(coords / stride, out_size)
    flipped = _weight_matrix((coords - (stride - 1)) / stride, out_size)[:, ::-1] if mirrored else None
    return plain, flipped


_BAND_ROWS = 32  # rows of a Banded block: fewer columns per row against more, smaller products


class Banded(NamedTuple):
    """A float32 matrix (n_out, n_in) whose rows have their nonzeros in a few neighbouring columns
    (bicubic: 4 taps), stored as blocks of :data:`_BAND_ROWS` rows: ``(lo, hi, block)`` with ``block``
    (rows, hi - lo) the block's columns ``lo:hi``, outside which the block is zero (or, made by
    :meth:`whole`, as one block of all rows and columns).

    Its products skip the zero terms: the width product of a 192-pixel map onto 256 pixels reads about
    28 columns a row instead of 192."""

    blocks: tuple[tuple[int, int, torch.Tensor], ...]

    @classmethod
    def whole(cls, matrix: np.ndarray, device: torch.device | None = None) -> Banded:
        """The dense (n_out, n_in) matrix as one block: every product is a single matmul."""
        block = torch.as_tensor(np.ascontiguousarray(matrix), dtype=torch.float32, device=device)
        return cls(((0, matrix.shape[1], block),))

    @classmethod
    def from_dense(cls, matrix: np.ndarray, device: torch.device | None = None) -> Banded:
        """The blocks of a dense (n_out, n_in) matrix, each cut to the columns where it has nonzeros."""
        blocks = []
        for start in range(0, matrix.shape[0], _BAND_ROWS):
            rows = matrix[start : start + _BAND_ROWS]
            used = np.flatnonzero(np.any(rows != 0, axis=0))
            lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
            block = torch.as_tensor(np.ascontiguousarray(rows[:, lo:hi]), dtype=torch.float32, device=device)
            blocks.append((lo, hi, block))
        return cls(tuple(blocks))

    def right_of(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps @ matrix^T``: (..., n_in) -> (..., n_out) (resampling along the last axis)."""
        parts = [torch.matmul(maps[..., lo:hi], block.t()) for lo, hi, block in self.blocks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def left_of(self, maps: torch.Tensor) -> torch.Tensor:
        """``matrix @ maps``: (..., n_in, w) -> (..., n_out, w) (resampling along the second last axis)."""
        parts = [torch.matmul(block, maps[..., lo:hi, :]) for lo, hi, block in self.blocks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)


@functools.lru_cache(maxsize=64)
def _resampling_matrices(
    shapes: tuple[tuple[int, int], ...],
    in_hw: tuple[int, int],
    dst_size: tuple[int, int],
    dst_stride: float,
    base_size: tuple[float, float],
    ratio: float,
    device: torch.device,
    dense: bool = False,
) -> tuple[list[tuple[Banded, Banded]], list[tuple[Banded, Banded]]]:
    """The matrices on ``device`` for stage outputs of sizes ``shapes`` ((h, w) each): per stage
    ``(wy, wx)`` for the plain pass and ``(wy, wx_mirrored)`` for the mirrored one; banded, or with
    ``dense`` each one block (:meth:`Banded.whole`). Cached: built once per shape, grid and device."""
    build = Banded.whole if dense else Banded.from_dense
    plain, mirrored = [], []
    for h, w in shapes:
        wy, _ = _axis_matrices(h, in_hw[0], dst_size[1], dst_stride, base_size[1], ratio, False)
        wx, wx_m = _axis_matrices(w, in_hw[1], dst_size[0], dst_stride, base_size[0], ratio, True)
        wy_b = build(wy, device)
        plain.append((wy_b, build(wx, device)))
        mirrored.append((wy_b, build(wx_m, device)))
    return plain, mirrored


def _separable(maps: torch.Tensor, wy: Banded, wx: Banded) -> torch.Tensor:
    """``wy @ maps @ wx^T`` per channel: maps (B, C, h, w) -> float32 (B, C, H', W')."""
    return wy.left_of(wx.right_of(maps.float()))


def forward_with_mirror(
    model: nn.Module | Callable[[torch.Tensor], Sequence[torch.Tensor]], image: torch.Tensor, with_flip: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The stage outputs for image (B, 3, H, W) and, with ``with_flip``, for its mirror image (not
    flipped back), from one forward of the 2B images (the model in eval mode has nothing that depends
    on the batch)."""
    if not with_flip:
        return list(model(image)), None
    batch = image.size(0)
    outputs = list(model(torch.cat((image, torch.flip(image, [3])))))
    return [o[:batch] for o in outputs], [o[batch:] for o in outputs]


def udp_resampled_maps(
    layout: OutputLayout,
    outputs: Sequence[torch.Tensor],
    mirrored: Sequence[torch.Tensor] | None,
    in_hw: Sequence[int],
    dst_size: Sequence[int],
    dst_stride: float,
    base_size: Sequence[int],
    ratio: float,
    *,
    with_tags: bool = True,
    average_flip: bool = False,
    dense: bool | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Resample the stage outputs of one scale onto the destination grid (see
    :func:`udp_multi_stage_outputs`) with the separable bicubic ``wy @ map @ wx^T`` (:class:`Banded`),
    equal to :func:`sample_grid` on every map; only the channels read downstream are resampled.
    ``dense``: dense matrices instead of banded ones (default: off the CPU); equal up to float
    rounding (the banded products skip zero terms).

    ``outputs``: the stage outputs of the image (B, C_i, h_i, w_i), ``mirrored`` those of its mirror
    image as the network returned them (or None); ``in_hw``: the input's (H, W). The heatmaps of the
    ``test_heatmaps`` stages are averaged over the stages; with ``average_flip`` also over the two
    passes (one map, not two). The tags of the ``test_tags`` stages are returned (plain
    stages, then mirrored ones) only when ``with_tags``. Centre channels are dropped as
    :meth:`OutputLayout.without_center`. Returns ``(heatmaps, tags)``.
    """
    shapes = tuple((int(o.size(2)), int(o.size(3))) for o in outputs)
    if dense is None:
        dense = outputs[0].device.type != "cpu"
    plain_m, mirror_m = _resampling_matrices(
        shapes,
        (int(in_hw[0]), int(in_hw[1])),
        (int(dst_size[0]), int(dst_size[1])),
        float(dst_stride),
        (float(base_size[0]), float(base_size[1])),
        float(ratio),
        outputs[0].device,
        bool(dense),
    )
    num_joints = layout.num_joints - (1 if layout.drop_center else 0)
    joints = slice(0, num_joints)  # a view, no copy
    flip_joints = list(layout.flip_index[:num_joints])
    heat = [i for i in range(len(outputs)) if layout.stage(i).test_heatmaps]
    passes = [(outputs, plain_m, joints)]
    if mirrored is not None:
        passes.append((mirrored, mirror_m, flip_joints))

    with no_autocast(outputs[0].device.type):
        heatmaps: list[torch.Tensor] = []
        if heat:
            groups = [passes] if average_flip else [[p] for p in passes]
            for group in groups:
                # Per stage the passes' width products are summed, then its height product is added to
                # the other stages': the sum over stages and passes, one height product per stage.
                summed: torch.Tensor | None = None
                for i in heat:
                    rows: torch.Tensor | None = None
                    for o, m, channels in group:
                        part = m[i][1].right_of(o[i][:, channels].float())
                        rows = part if rows is None else rows.add_(part)
                    resampled = plain_m[i][0].left_of(rows)
                    summed = resampled if summed is None else summed.add_(resampled)
                heatmaps.append(summed / float(len(heat) * len(group)))
        tags: list[torch.Tensor] = []
        if with_tags:
            for stage_outputs, matrices, channels in passes:
                for i, output in enumerate(stage_outputs):
                    stage = layout.stage(i)
                    if not stage.test_tags:
                        continue
                    if layout.tag_per_joint and channels is joints:
                        maps = output[:, stage.tag_start : stage.tag_start + num_joints]
                    elif layout.tag_per_joint:
                        maps = output[:, [stage.tag_start + j for j in channels]]
                    else:  # one shared tag map: no renumbering
                        maps = layout.without_center([output[:, stage.tag_start :]])[0]
                    tags.append(_separable(maps, *matrices[i]))
    return heatmaps, tags


def udp_multi_stage_outputs(
    layout: OutputLayout,
    model: nn.Module | Callable[[torch.Tensor], Sequence[torch.Tensor]],
    image: torch.Tensor,
    with_flip: bool,
    dst_size: Sequence[int],
    dst_stride: float,
    base_size: Sequence[int],
    ratio: float,
    *,
    with_tags: bool = True,
    average_flip: bool = False,
    dense: bool | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the model on image (B, 3, H_i, W_i) (and its mirror, in the same batch) and resample every
    stage onto the destination grid ``dst_size = (W', H')`` whose pixel ``m`` is base-input pixel
    ``dst_stride·m``.

    ``layout`` says which channels of each stage are heatmaps and tags. ``base_size = (W_b, H_b)`` is
    the scale-1 input size and ``ratio`` this input's size over it (the two affine factors' ratio).
    Returns ``(heatmaps, tags)`` as :func:`~higherpose.core.inference.get_multi_stage_outputs`: the
    stage-averaged heatmaps (B, K, H', W') (and the flipped pass's), and the tag maps of the AE stages
    (and the flipped ones). The maps equal :func:`sample_grid` of each stage output (flipped back for
    the mirrored pass) at the destination's source coordinates. ``with_tags`` and ``average_flip`` as
    in :func:`udp_resampled_maps`, and ``dense`` as there.
    """
    outputs, mirrored = forward_with_mirror(model, image, with_flip)
    return udp_resampled_maps(
        layout,
        outputs,
        mirrored,
        image.shape[2:],
        dst_size,
        dst_stride,
        base_size,
        ratio,
        with_tags=with_tags,
        average_flip=average_flip,
        dense=dense,
    )


HALF = 0.499  # largest |offset| from the peak pixel (see taylor_offsets)


def peak_neighbourhood(det: torch.Tensor, joint: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """The 3x3 neighbourhoods of the peaks ``det[joint, row, col]`` in one gather, on det's device.

    det: (K, H, W); indices: (n,) long tensors on det's device -> (9, n) in det's dtype, rows: centre,
    left, right, up, down, then the diagonals down-right, down-left, up-right, up-left; a neighbour off
    the map is read at the nearest pixel in the map (clamped)."""
    _, h, w = det.shape
    r0, r1 = (row - 1).clamp(min=0), (row + 1).clamp(max=h - 1)
    c0, c1 = (col - 1).clamp(min=0), (col + 1).clamp(max=w - 1)
    rows = torch.stack((row, row, row, r0, r1, r1, r1, r0, r0))
    cols = torch.stack((col, c0, c1, col, col, c1, c0, c1, c0))
    return det[joint.expand_as(rows), rows, cols]


def device_indices(device: torch.device, *indices: np.ndarray) -> list[torch.Tensor]:
    """Integer arrays of one length (n,) as long tensors on ``device``, in one host-to-device copy."""
    stacked = torch.as_tensor(np.stack(indices).astype(np.int64, copy=False), device=device)
    return list(stacked)


def taylor_offsets(
    det: torch.Tensor, joint: np.ndarray, row: np.ndarray, col: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets of the peaks ``det[joint, row, col]`` from the second-order Taylor expansion of
    ``log det`` (DARK): ``-H^-1 g`` with central differences, clipped to just under half a pixel; 0 where the
    Hessian is not negative definite (flat or saddle) and along an axis whose neighbour is off the map.
    det: (K, H, W); indices (n,) -> two (n,) arrays.
    """
    if len(joint) == 0:
        return np.zeros(0), np.zeros(0)
    # The 3x3 neighbourhood of every peak in one gather and one read back (one device sync).
    (vals,) = to_host(peak_neighbourhood(det, *device_indices(det.device, joint, row, col)))
    return taylor_from_neighbourhood(vals, row, col, det.shape[1], det.shape[2])


def taylor_from_neighbourhood(
    vals: np.ndarray, row: np.ndarray, col: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`taylor_offsets` from the :func:`peak_neighbourhood` values (9, n) of peaks at ``row``,
    ``col`` (n,) on an (h, w) map."""
    if len(row) == 0:
        return np.zeros(0), np.zeros(0)
    center, left, right, up, down, dr, dl, ur, ul = np.log(np.maximum(vals.astype(np.float64), 1e-10))
    dx, dy = 0.5 * (right - left), 0.5 * (down - up)
    dxx, dyy = right - 2 * center + left, down - 2 * center + up
    dxy = 0.25 * (dr - dl - ur + ul)
    # On the map's border a neighbour is missing: no offset along that axis (1-D Newton along the other).
    in_x = (col > 0) & (col < w - 1)
    in_y = (row > 0) & (row < h - 1)
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
