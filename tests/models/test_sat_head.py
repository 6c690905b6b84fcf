"""The SAT head's geometry and order: the residual lands on the pixel its token covers, the skeleton prior
acts on image-conditioned tokens from the first layer on, position codes in token units; the version-1
head keeps the earlier behaviour for its checkpoints; the study's switches (RESIDUAL, PIXEL_MIXER)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from higherpose.config import ConfigError
from higherpose.models import build_model
from higherpose.models.higher_pose import HigherPoseNet
from higherpose.models.sat_head import SATHead
from higherpose.models.sat_layers import TOKEN_GEOMETRY, ConvMixerLayer, sine_position_embedding, upsample_tokens
from higherpose.utils.checkpoint import CheckpointError, load_pose_state_dict
from tests.conftest import TINY_SAT, load_cfg


def tiny(*opts: object) -> HigherPoseNet:
    torch.manual_seed(0)
    return build_model(load_cfg(TINY_SAT, *opts), is_train=False).eval()


def _centroid(weights: torch.Tensor) -> tuple[float, float]:
    """Centre of mass ``(row, col)`` of a non-negative ``(H, W)`` map."""
    weights = weights.double()
    rows = torch.arange(weights.shape[0], dtype=torch.float64)
    cols = torch.arange(weights.shape[1], dtype=torch.float64)
    total = weights.sum()
    return float((weights.sum(1) * rows).sum() / total), float((weights.sum(0) * cols).sum() / total)


def _token_centre(head: SATHead, size: tuple[int, int], i: int, j: int) -> tuple[float, float]:
    """The map pixel token ``(i, j)`` covers: the centre of its receptive field in the tokeniser (and pool)
    with uniform positive weights, found by back-propagating from the token."""
    tokenizer = nn.Sequential(
        nn.Conv2d(head.in_channels, head.d_model, 3, 2, 1, bias=False), nn.ReLU(), head.pool
    )  # the tokeniser's geometry, weights set to one
    nn.init.ones_(tokenizer[0].weight)
    x = torch.ones(1, head.in_channels, *size, requires_grad=True)
    tokenizer(x)[0, 0, i, j].backward()
    return _centroid(x.grad[0].sum(0))


def _residual_of_one_token(head: SATHead, size: tuple[int, int], i: int, j: int) -> torch.Tensor:
    """``x' - x (H, W)`` when the pixel tokens are a delta on token ``(i, j)``, with an identity-like
    up-projection (Conv1x1 of ones, BN the identity) and the gate at one."""
    with torch.no_grad():
        head.gamma2.fill_(1.0)
        nn.init.ones_(head.up_proj[0].weight)
        bn = head.up_proj[1]
        bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps), bn.weight.fill_(1.0), bn.bias.zero_()
    grid = {}

    def delta(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        h, w = args[2]
        grid["hw"] = (h, w)
        tokens = torch.zeros_like(out)
        tokens[:, i * w + j, 0] = 1.0
        return tokens

    handle = head.pixel_layers[-1].register_forward_hook(delta)
    try:
        x = torch.randn(1, head.in_channels, *size)
        with torch.no_grad():
            out, _ = head(x)
    finally:
        handle.remove()
    return (out - x)[0].mean(0)


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize("size", [(24, 32), (27, 37)], ids=["even", "odd"])
def test_residual_is_centred_on_the_pixel_its_token_covers(stride: int, size: tuple[int, int]) -> None:
    head = tiny("MODEL.SAT.TOKEN_STRIDE", stride).sat_head
    z = head.pool(head.tokenizer(torch.zeros(1, head.in_channels, *size)))
    h, w = z.shape[-2:]
    for i, j in ((h // 2, w // 2 - 1), (1, w - 2)):  # interior tokens: a whole tent on the map
        centre = _token_centre(head, size, i, j)
        residual = _residual_of_one_token(head, size, i, j)
        assert residual.min() >= 0 and residual.max() > 0
        got = _centroid(residual)
        assert got == pytest.approx(centre, abs=1e-6), (i, j)
        peak = divmod(int(residual.argmax()), size[1])
        assert peak == (round(centre[0]), round(centre[1]))


def test_version_1_places_tokens_off_their_pixels() -> None:
    """The earlier head's F.interpolate(align_corners=False): token i at 2 i + 0.5 on the 1/4 map."""
    head = tiny("MODEL.SAT.TOKEN_STRIDE", 8, "MODEL.SAT.VERSION", 1).sat_head
    size, (i, j) = (24, 32), (6, 7)
    row, col = _centroid(_residual_of_one_token(head, size, i, j))
    assert (row - 2 * i, col - 2 * j) == pytest.approx((0.5, 0.5), abs=1e-6)


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 5), (6, 4)])
def test_upsample_tokens_interpolates_between_token_centres(stride: int, h: int, w: int) -> None:
    step, offset = TOKEN_GEOMETRY[stride]
    height, width = step * h + 1, step * w - 1  # one map size longer, one shorter than the tokens reach
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).float()[None]  # (1, 2, h, w)
    up = upsample_tokens(coords, (height, width), stride)
    assert up.shape == (1, 2, height, width)
    rows = ((torch.arange(height) - offset) / step).clamp(0, h - 1)  # token coordinate of each map pixel
    cols = ((torch.arange(width) - offset) / step).clamp(0, w - 1)
    torch.testing.assert_close(up[0, 0], rows[:, None].expand(height, width), atol=1e-5, rtol=0)
    torch.testing.assert_close(up[0, 1], cols[None, :].expand(height, width), atol=1e-5, rtol=0)


def _first_layer_self_attention(model: HigherPoseNet, image: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The first keypoint layer's self-attention input, and the gradient of a fixed projection of its
    output with respect to the hop-distance and left/right bias tables."""
    layer = model.sat_head.kpt_layers[0]
    seen = {}

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen["input"], seen["output"] = args[0], out

    handle = layer.self_attn.register_forward_hook(keep)
    try:
        model(image)
    finally:
        handle.remove()
    weights = torch.linspace(-1.0, 1.0, seen["output"].numel()).view_as(seen["output"])
    grads = torch.autograd.grad((seen["output"] * weights).sum(), [layer.hop_bias, layer.sym_bias])
    return seen["input"].detach(), list(grads)


def test_skeleton_prior_acts_on_the_image_in_the_first_layer() -> None:
    model = tiny("MODEL.SAT.KPT_LAYERS", 1)
    with torch.no_grad():
        for layer in model.sat_head.kpt_layers:
            layer.hop_bias.copy_(torch.linspace(-1.0, 1.0, layer.hop_bias.numel()).view_as(layer.hop_bias))
            layer.sym_bias.fill_(0.5)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1, 3, 64, 64, generator=g) for _ in range(2))
    input_a, grads_a = _first_layer_self_attention(model, a)
    input_b, grads_b = _first_layer_self_attention(model, b)
    assert (input_a - input_b).abs().max() > 1e-3  # the prior's input depends on the image
    for ga, gb in zip(grads_a, grads_b):
        assert ga.abs().max() > 0 and (ga - gb).abs().max() > 1e-4 * ga.abs().max()


def test_version_1_applies_the_first_prior_to_a_constant() -> None:
    model = tiny("MODEL.SAT.KPT_LAYERS", 1, "MODEL.SAT.VERSION", 1)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(1, 3, 64, 64, generator=g) for _ in range(2))
    (input_a, grads_a), (input_b, grads_b) = (_first_layer_self_attention(model, x) for x in (a, b))
    torch.testing.assert_close(input_a, input_b, atol=0, rtol=0)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=0, rtol=0)


def _pixel_codes(model: HigherPoseNet, size: tuple[int, int]) -> torch.Tensor:
    """The position codes the pixel encoder gets, ``(h, w, d)``, for an input of ``size``."""
    seen = {}
    hook = model.sat_head.pixel_layers[0].register_forward_pre_hook(lambda m, args: seen.update(args=args))
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    hook.remove()
    _, pos, (h, w) = seen["args"]
    return pos[0].reshape(h, w, -1)


def test_position_codes_are_in_token_units() -> None:
    """A training crop (128 x 128: 8 x 8 tokens at stride 16) and a larger test image (256 x 384): the
    tokens they share get the same codes, so an offset of n tokens means the same at test."""
    model = tiny()
    crop, whole = _pixel_codes(model, (128, 128)), _pixel_codes(model, (256, 384))
    assert crop.shape[:2] == (8, 8) and whole.shape[:2] == (16, 24)
    torch.testing.assert_close(whole[:8, :8], crop, atol=1e-6, rtol=0)
    old = tiny("MODEL.SAT.VERSION", 1)
    assert (_pixel_codes(old, (256, 384))[:8, :8] - _pixel_codes(old, (128, 128))).abs().max() > 0.1


def test_sine_codes_in_token_units_match_formula() -> None:
    h, w, d = 3, 5, 16
    emb = sine_position_embedding(h, w, d, normalize=False).reshape(h, w, d)
    n = d // 4
    freq = 1e4 ** (torch.arange(n) / n)
    for i in range(h):
        for j in range(w):
            y, x = i / freq, j / freq
            ref = torch.cat((y.sin(), y.cos(), x.sin(), x.cos()))
            torch.testing.assert_close(emb[i, j], ref, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# checkpoints of the two versions
def test_checkpoints_of_the_other_version_are_refused_with_the_switch_named() -> None:
    old, new = tiny("MODEL.SAT.VERSION", 1), tiny()
    assert "sat_head.head_version" not in old.state_dict() and int(new.state_dict()["sat_head.head_version"]) == 2
    with pytest.raises(CheckpointError, match="set MODEL.SAT.VERSION 1"):
        load_pose_state_dict(new, old.state_dict(), strict=True)
    with pytest.raises(CheckpointError, match="drop MODEL.SAT.VERSION 1"):
        load_pose_state_dict(old, new.state_dict(), strict=True)
    with pytest.raises(ValueError, match="set MODEL.SAT.VERSION 1"):
        new.load_state_dict(old.state_dict(), strict=False)  # torch's own loader, non-strict
    load_pose_state_dict(tiny("MODEL.SAT.VERSION", 1), old.state_dict(), strict=True)  # with the switch, it loads


def test_version_1_loads_and_runs_the_earlier_checkpoint_unchanged() -> None:
    """Same parameters in both versions: the earlier head's weights, loaded into version 1, give that
    head's outputs; version 2 computes something else from them."""
    old = tiny("MODEL.SAT.VERSION", 1)
    with torch.no_grad():
        for name, p in old.sat_head.named_parameters():
            if any(k in name for k in ("gamma", "hop_bias", "sym_bias", "dyn_linear")):
                p.copy_(torch.randn(p.shape) * 0.5)
    new = tiny()
    state = {k: v for k, v in old.state_dict().items()}
    state["sat_head.head_version"] = torch.tensor(2)
    load_pose_state_dict(new, state, strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert (old(x)[0] - new(x)[0]).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------------
# the study's switches
def test_dynamic_heatmap_only_leaves_the_features_unchanged() -> None:
    model = tiny("MODEL.SAT.RESIDUAL", False, "MODEL.SAT.BACK_PROJECT", False)
    head = model.sat_head
    assert not any(k in n for n, _ in head.named_parameters() for k in ("up_proj", "gamma", "back_"))
    with torch.no_grad():
        head.dyn_linear.weight.normal_()
        x = torch.randn(2, head.in_channels, 16, 24)
        out, dyn = head(x)
    torch.testing.assert_close(out, x, atol=0, rtol=0)
    assert dyn.shape == (2, head.num_joints, 16, 24) and dyn.abs().max() > 0


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        (("MODEL.SAT.RESIDUAL", False), "MODEL.SAT.BACK_PROJECT"),
        (("MODEL.SAT.RESIDUAL", False, "MODEL.SAT.BACK_PROJECT", False, "MODEL.SAT.DYN_HEATMAP", False), "DYN_HEATMAP"),
        (("MODEL.SAT.RESIDUAL", False, "MODEL.SAT.BACK_PROJECT", False, "MODEL.SAT.KPT_LAYERS", 0), "KPT_LAYERS"),
        (("MODEL.SAT.PIXEL_MIXER", "mlp"), "MODEL.SAT.PIXEL_MIXER"),
        (("MODEL.SAT.VERSION", 3), "MODEL.SAT.VERSION"),
        (("MODEL.SAT.LR_MULT", 0.0), "MODEL.SAT.LR_MULT"),
    ],
)
def test_inconsistent_switches_name_the_key(opts: tuple, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_cfg(TINY_SAT, *opts)


def test_conv_control_replaces_attention_by_a_local_depthwise_conv() -> None:
    attn, conv = tiny(), tiny("MODEL.SAT.PIXEL_MIXER", "conv")
    layer = conv.sat_head.pixel_layers[0]
    assert isinstance(layer, ConvMixerLayer) and not any("attn" in n for n, _ in layer.named_parameters())
    d = conv.sat_head.d_model
    assert layer.dwconv.weight.shape == (d, 1, 7, 7) and layer.dwconv.groups == d
    # a token sees the 7 x 7 tokens around it, where attention sees them all
    h, w = 12, 12
    p = torch.randn(1, h * w, d, requires_grad=True)
    layer(p, torch.zeros(1, h * w, d), (h, w))[0, 5 * w + 5].sum().backward()
    reached = p.grad[0].abs().sum(1).view(h, w) > 0
    rows, cols = reached.nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 8, 2, 8)
    p.grad = None
    attn.sat_head.pixel_layers[0](p, torch.zeros(1, h * w, d), (h, w))[0, 5 * w + 5].sum().backward()
    assert bool((p.grad[0].abs().sum(1) > 0).all())
