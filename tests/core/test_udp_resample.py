"""The separable bicubic resampling of DATASET.USE_UDP equals ``F.grid_sample`` (:func:`sample_grid`, the
reference) on every map: weight matrices, the stage/flip averaging folded into two products, the mirrored
pass in the same batch, and :func:`image_maps` against the per-stage reference path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from higherpose.core import udp
from higherpose.core.inference import _to_input, aggregate_results, image_maps
from higherpose.core.layout import OutputLayout
from higherpose.core.protocol import TestProtocol
from higherpose.core.udp import (
    Banded,
    _separable,
    _weight_matrix,
    sample_grid,
    udp_multi_stage_outputs,
    udp_resampled_maps,
)
from higherpose.dataset.build import output_sizes
from higherpose.utils.transforms import get_multi_scale_size, resize_align_multi_scale
from tests.conftest import TINY_HRNET, TINY_SAT, load_cfg


def _reference_udp_multi_stage_outputs(
    layout: OutputLayout,
    model,
    image: torch.Tensor,
    with_flip: bool,
    dst_size: Sequence[int],
    dst_stride: float,
    base_size: Sequence[int],
    ratio: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every stage output (flipped back for the mirrored pass, which runs as its own forward) through
    ``F.grid_sample`` at the destination's source coordinates, then the layout's stage averaging."""
    in_h, in_w = image.shape[2:]
    xb = torch.arange(dst_size[0], dtype=torch.float64) * dst_stride
    yb = torch.arange(dst_size[1], dtype=torch.float64) * dst_stride
    xi = (xb - base_size[0] / 2.0) * ratio + in_w / 2.0
    yi = (yb - base_size[1] / 2.0) * ratio + in_h / 2.0

    def resampled(outputs, flipped):
        for output in outputs:
            stride_x, stride_y = in_w / output.size(3), in_h / output.size(2)
            if flipped:
                output = torch.flip(output, [3])
            offset = stride_x - 1 if flipped else 0.0
            yield sample_grid(output, (xi - offset) / stride_x, yi / stride_y)

    heatmaps, tags = [], []
    for flipped in (False, True) if with_flip else (False,):
        outputs = model(torch.flip(image, [3]) if flipped else image)
        heatmaps_avg, stage_tags = layout.test_maps(resampled(outputs, flipped), flipped)
        if heatmaps_avg is not None:
            heatmaps.append(heatmaps_avg)
        tags.extend(stage_tags)
    return layout.without_center(heatmaps), layout.without_center(tags)


class _PixelModel(torch.nn.Module):
    """A per-image, batch-independent function of the input with HigherHRNet's output shapes: stage i is
    a fixed random 1x1 mixing of the input pooled by 4 and 2, plus a fixed random map."""

    def __init__(self, channels: Sequence[int], seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = [torch.randn(c, 3, generator=g) for c in channels]
        self.bias = [torch.rand(c, 1, 1, generator=g) for c in channels]
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, (mix, bias) in enumerate(zip(self.mix, self.bias)):
            pooled = torch.nn.functional.avg_pool2d(x, 4 // (2**i))
            outs.append(torch.einsum("cd,bdhw->bchw", mix, pooled) + bias)
        return outs


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_weight_matrices_equal_grid_sample_in_and_beyond_the_border(size: int) -> None:
    g = torch.Generator().manual_seed(size)
    maps = torch.rand(2, 3, size, size + 5, generator=g)
    # in range, on pixel centres, between them, and taps (and points) past both borders
    xs = torch.cat((torch.linspace(-3.3, size + 7.6, 41, dtype=torch.float64), torch.arange(size + 5.0)))
    ys = torch.linspace(-2.2, size + 1.7, 23, dtype=torch.float64)
    wy = Banded.from_dense(_weight_matrix(ys.numpy(), size))
    wx = Banded.from_dense(_weight_matrix(xs.numpy(), size + 5))
    torch.testing.assert_close(_separable(maps, wy, wx), sample_grid(maps, xs, ys), atol=2e-6, rtol=1e-5)
    # each row sums to one (the border padding repeats edge pixels instead of dropping taps)
    np.testing.assert_allclose(_weight_matrix(xs.numpy(), size + 5).sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("n_out,n_in", [(5, 3), (32, 40), (100, 37), (256, 192), (97, 300)])
def test_banded_products_equal_the_dense_ones(n_out: int, n_in: int) -> None:
    """Blocks of rows with only their nonzero columns: several blocks, a last partial one, upsampling and
    downsampling; the skipped columns are zeros, so the products are the dense ones."""
    g = torch.Generator().manual_seed(n_out)
    src = np.sort(np.random.default_rng(n_in).uniform(-2.0, n_in + 1.0, n_out))
    dense = _weight_matrix(src, n_in)
    band = Banded.from_dense(dense)
    assert sum(block.size(0) for _, _, block in band.blocks) == n_out
    wide = torch.rand(2, 3, 7, n_in, generator=g)
    tall = torch.rand(2, 3, n_in, 7, generator=g)
    w = torch.from_numpy(dense).float()
    torch.testing.assert_close(band.right_of(wide), wide @ w.t(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(band.left_of(tall), w @ tall, atol=1e-6, rtol=1e-6)
    # a block keeps the columns its rows' taps reach (4 around each source point) and skips only zeros
    start = 0
    for lo, hi, block in band.blocks:
        rows, span = dense[start : start + block.size(0)], src[start : start + block.size(0)]
        assert not rows[:, :lo].any() and not rows[:, hi:].any() and block.dtype == torch.float32
        assert hi - lo <= np.floor(span.max()) - np.floor(span.min()) + 4
        start += block.size(0)


def _layout(cfg_path, *opts) -> OutputLayout:
    return OutputLayout.from_config(load_cfg(cfg_path, *opts))


@pytest.mark.parametrize("with_flip", [False, True])
@pytest.mark.parametrize(
    "in_hw,dst_size,dst_stride,base_size,ratio",
    [
        ((64, 96), (96, 64), 1.0, (96, 64), 1.0),  # PROJECT2IMAGE at scale 1
        ((96, 128), (96, 64), 1.0, (96, 64), 1.5),  # another scale, onto the scale-1 grid
        ((64, 96), (48, 32), 2.0, (96, 64), 1.0),  # the last stage's stride
        ((128, 192), (40, 24), 2.0, (80, 48), 2.0),  # a crop: source points outside the input
    ],
)
@pytest.mark.parametrize(
    "opts", [(), ("DATASET.WITH_CENTER", True, "TEST.IGNORE_CENTER", True, "MODEL.NUM_JOINTS", 18)]
)
def test_udp_multi_stage_outputs_equal_the_grid_sample_reference(
    with_flip, in_hw, dst_size, dst_stride, base_size, ratio, opts
):
    layout = _layout(TINY_HRNET, *opts)
    k = layout.num_joints
    model = _PixelModel([2 * k, k])
    image = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(1))
    args = (layout, model, image, with_flip, dst_size, dst_stride, base_size, ratio)
    with torch.no_grad():
        heat, tags = udp_multi_stage_outputs(*args)
        ref_heat, ref_tags = _reference_udp_multi_stage_outputs(*args)
    assert len(heat) == len(ref_heat) == (2 if with_flip else 1)
    assert len(tags) == len(ref_tags) == (2 if with_flip else 1)
    for got, want in zip(heat + tags, ref_heat + ref_tags):
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # one map averaged over both passes, and no tags when they are not read
    outputs, mirrored = udp.forward_with_mirror(model, image, with_flip)
    avg, no_tags = udp_resampled_maps(
        layout, outputs, mirrored, in_hw, dst_size, dst_stride, base_size, ratio, with_tags=False, average_flip=True
    )
    assert len(avg) == 1 and no_tags == []
    torch.testing.assert_close(avg[0], sum(ref_heat) / len(ref_heat), atol=1e-5, rtol=1e-5)


def test_shared_tag_map_and_stages_without_test_maps_follow_the_layout() -> None:
    """One tag map (no TAG_PER_JOINT, no renumbering), tags on the second stage, heatmaps of one stage."""
    layout = _layout(
        TINY_HRNET,
        "MODEL.TAG_PER_JOINT",
        False,
        "LOSS.WITH_AE_LOSS",
        "[False, True]",
        "TEST.WITH_AE",
        "[False, True]",
        "TEST.WITH_HEATMAPS",
        "[False, True]",
    )
    k = layout.num_joints
    model = _PixelModel([k, k + 1])
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    args = (layout, model, image, True, (64, 64), 1.0, (64, 64), 1.0)
    with torch.no_grad():
        heat, tags = udp_multi_stage_outputs(*args)
        ref_heat, ref_tags = _reference_udp_multi_stage_outputs(*args)
    assert [t.size(1) for t in tags] == [1, 1]
    for got, want in zip(heat + tags, ref_heat + ref_tags):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _reference_image_maps(cfg, model, image):
    """image_maps of one image through the reference resampling and aggregate_results: the destination
    grid is the scale-1 input (PROJECT2IMAGE) or that grid at the last stage's stride."""
    scales = [float(s) for s in cfg.TEST.SCALE_FACTOR]
    input_size = int(cfg.TEST.INPUT_SIZE) or int(cfg.DATASET.INPUT_SIZE)
    base_size, _, base_scale = get_multi_scale_size(image, input_size, 1.0, min(scales))
    if cfg.TEST.PROJECT2IMAGE:
        stride, dst_size = 1.0, tuple(base_size)
    else:
        stride = float(cfg.DATASET.INPUT_SIZE) / output_sizes(cfg)[-1]
        dst_size = (int(round(base_size[0] / stride)), int(round(base_size[1] / stride)))
    layout = OutputLayout.from_config(cfg)
    final, tags_list = None, []
    for s in sorted(scales, reverse=True):
        resized, _, scale = resize_align_multi_scale(image, input_size, s, min(scales))
        x = _to_input([resized], torch.device("cpu"))
        ratio = (x.shape[3] / float(scale[0])) / (base_size[0] / float(base_scale[0]))
        heatmaps, tags = _reference_udp_multi_stage_outputs(
            layout, model, x, cfg.TEST.FLIP_TEST, dst_size, stride, base_size, ratio
        )
        final, tags_list = aggregate_results(cfg, s, final, tags_list, heatmaps, tags)
    return final / float(len(scales)), torch.cat(tags_list, dim=4)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("project", [False, True])
def test_image_maps_equal_the_per_stage_grid_sample_path(flip, project) -> None:
    from higherpose.models import build_model

    cfg = load_cfg(
        TINY_SAT,
        "TEST.FLIP_TEST",
        flip,
        "TEST.PROJECT2IMAGE",
        project,
        "TEST.INPUT_SIZE",
        64,
        "DATASET.INPUT_SIZE",
        64,
        "DATASET.OUTPUT_SIZE",
        "[16, 32]",
    )
    torch.manual_seed(0)
    model = build_model(cfg, is_train=False).eval()
    image = np.random.RandomState(0).randint(0, 256, (70, 90, 3), dtype=np.uint8)
    with torch.no_grad():
        got = image_maps(TestProtocol.from_config(cfg), model, [image], torch.device("cpu"))
        want_det, want_tags = _reference_image_maps(cfg, model, image)
    torch.testing.assert_close(got.det, want_det, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.tags, want_tags, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_out,n_in", [(5, 3), (100, 37), (97, 300)])
def test_whole_matrix_products_are_the_dense_products(n_out: int, n_in: int) -> None:
    g = torch.Generator().manual_seed(n_in)
    dense = _weight_matrix(np.sort(np.random.default_rng(n_out).uniform(-2.0, n_in + 1.0, n_out)), n_in)
    whole = Banded.whole(dense)
    assert len(whole.blocks) == 1 and whole.blocks[0][2].shape == (n_out, n_in)
    wide, tall = torch.rand(2, 3, 7, n_in, generator=g), torch.rand(2, 3, n_in, 7, generator=g)
    w = torch.from_numpy(dense).float()
    torch.testing.assert_close(whole.right_of(wide), wide @ w.t(), atol=0, rtol=0)
    torch.testing.assert_close(whole.left_of(tall), w @ tall, atol=0, rtol=0)


@pytest.mark.parametrize("with_flip", [False, True])
@pytest.mark.parametrize(
    "in_hw,dst_size,dst_stride,base_size,ratio",
    [((96, 128), (96, 64), 1.0, (96, 64), 1.5), ((128, 192), (40, 24), 2.0, (80, 48), 2.0)],
)
def test_dense_resampling_equals_the_banded_one(
    monkeypatch, with_flip, in_hw, dst_size, dst_stride, base_size, ratio
) -> None:
    """The dense path (the default off the CPU) forced on the CPU: the banded maps up to float rounding,
    and the grid_sample reference as closely as the banded ones."""
    built = {"whole": 0, "banded": 0}
    for name in built:
        method = getattr(Banded, name if name == "whole" else "from_dense")

        def counted(matrix, device=None, _method=method, _name=name):
            built[_name] += 1
            return _method(matrix, device)

        monkeypatch.setattr(Banded, name if name == "whole" else "from_dense", counted)
    udp._resampling_matrices.cache_clear()
    layout = _layout(TINY_HRNET)
    k = layout.num_joints
    model = _PixelModel([2 * k, k])
    image = torch.randn(2, 3, *in_hw, generator=torch.Generator().manual_seed(3))
    args = (layout, model, image, with_flip, dst_size, dst_stride, base_size, ratio)
    with torch.no_grad():
        banded = udp_multi_stage_outputs(*args)
        dense = udp_multi_stage_outputs(*args, dense=True)
        reference = _reference_udp_multi_stage_outputs(*args)
    assert built == {"whole": 6, "banded": 6}  # wy, wx and the mirrored wx of each of two stages
    for got, want, ref in zip(dense[0] + dense[1], banded[0] + banded[1], reference[0] + reference[1]):
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
