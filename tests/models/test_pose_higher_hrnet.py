"""HigherHRNet model: official parameter counts, state-dict names, output shapes, init; SWAHR's scale
branches held to the official SWAHR code."""

from __future__ import annotations

import pytest
import torch

from higherpose.bench.reference_swahr import make_conv_scale_layers, swahr_heads_forward
from higherpose.models import build_model
from higherpose.models.pose_higher_hrnet import PoseHigherResolutionNet
from higherpose.utils.checkpoint import CheckpointError, load_pose_state_dict
from tests.conftest import EXPERIMENTS, TINY_HRNET, W32_COCO_512, load_cfg


@pytest.fixture(scope="module")
def w32() -> PoseHigherResolutionNet:
    return build_model(load_cfg(W32_COCO_512), is_train=False).eval()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_w32_parameter_count_and_state_dict(w32: PoseHigherResolutionNet) -> None:
    assert n_params(w32) == 28_645_331
    sd = w32.state_dict()
    assert len(sd) == 1810
    expected = {
        "transition1.0.0.weight": (32, 256, 3, 3),
        "transition1.1.0.0.weight": (64, 256, 3, 3),
        "transition3.3.0.0.weight": (256, 128, 3, 3),
        "stage4.2.fuse_layers.0.3.0.weight": (32, 256, 1, 1),
        "stage3.0.fuse_layers.2.0.1.0.weight": (128, 32, 3, 3),
        "final_layers.0.weight": (34, 32, 1, 1),
        "final_layers.0.bias": (34,),
        "final_layers.1.weight": (17, 32, 1, 1),
        "deconv_layers.0.0.0.weight": (66, 32, 4, 4),
        "deconv_layers.0.4.0.bn2.running_var": (32,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "stage3.0.branches.2.3.conv2.weight": (128, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # the last stage-4 module keeps only the high-resolution fuse row
    assert not any(k.startswith("stage4.2.fuse_layers.1") for k in sd)
    assert w32.transition2[0] is None and w32.transition2[1] is None


def test_w48_and_crowdpose_parameter_counts() -> None:
    w48 = build_model(load_cfg(EXPERIMENTS / "coco/higher_hrnet/w48_640_adam_lr1e-3.yaml"), is_train=False)
    assert n_params(w48) == 63_827_139
    crowd = build_model(load_cfg(EXPERIMENTS / "crowd_pose/higher_hrnet/w32_512_adam_lr1e-3.yaml"), is_train=False)
    assert n_params(crowd) == 28_641_962


@pytest.mark.parametrize(("h", "w"), [(256, 256), (512, 512), (512, 704)])
def test_w32_output_shapes(w32: PoseHigherResolutionNet, h: int, w: int) -> None:
    with torch.no_grad():
        out = w32(torch.zeros(1, 3, h, w))
    assert isinstance(out, list) and len(out) == 2
    assert out[0].shape == (1, 34, h // 4, w // 4)
    assert out[1].shape == (1, 17, h // 2, w // 2)


def test_tiny_model_trains_from_official_init() -> None:
    # HigherHRNet's init throughout: MSE heatmaps (the tiny YAML's qfl would set the focal prior biases).
    cfg = load_cfg(TINY_HRNET, "MODEL.INIT_SCHEME", "higherhrnet", "LOSS.HEATMAPS_LOSS_TYPE", "mse")
    model = build_model(cfg, is_train=True)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(abs(float(m.weight.detach().std()) - 0.001) < 0.0005 for m in convs if m.weight.numel() > 1000)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in convs if m.bias is not None)
    out = model(torch.randn(2, 3, 128, 192))
    assert out[0].shape == (2, 34, 32, 48) and out[1].shape == (2, 17, 64, 96)


def test_kaiming_init_scheme_keeps_small_output_convs() -> None:
    model = build_model(load_cfg(TINY_HRNET, "MODEL.INIT_SCHEME", "kaiming"), is_train=True)
    final = {id(m) for m in model.final_layers.modules()}
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    for m in convs:
        std = float(m.weight.detach().std())
        if id(m) in final:
            assert abs(std - 0.001) < 0.0005
        elif m.weight.numel() > 1000:
            # Kaiming normal, fan_out: std = sqrt(2 / fan_out); ConvTranspose2d's fan_out is dim 0 x kernel
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
            assert std == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.2), m
    with pytest.raises(Exception, match="INIT_SCHEME"):
        load_cfg(TINY_HRNET, "MODEL.INIT_SCHEME", "xavier")


def test_tag_per_joint_false_and_no_ae_head() -> None:
    cfg = load_cfg(TINY_HRNET, "MODEL.TAG_PER_JOINT", False)
    out = build_model(cfg, is_train=False).eval()(torch.zeros(1, 3, 64, 64))
    assert out[0].shape[1] == 17 + 1
    cfg = load_cfg(TINY_HRNET, "LOSS.WITH_AE_LOSS", "[False, False]")
    out = build_model(cfg, is_train=False).eval()(torch.zeros(1, 3, 64, 64))
    assert out[0].shape[1] == 17


def test_missing_pretrained_file_is_a_clear_error() -> None:
    cfg = load_cfg(TINY_HRNET, "MODEL.PRETRAINED", "/nowhere/hrnet_w32.pth")
    with pytest.raises(FileNotFoundError, match="/nowhere/hrnet_w32.pth"):
        build_model(cfg, is_train=True)


def test_qfl_heatmaps_are_logits_in_training_and_probabilities_in_eval() -> None:
    torch.manual_seed(0)
    cfg = load_cfg(TINY_HRNET, "LOSS.HEATMAPS_LOSS_TYPE", "qfl", "MODEL.INIT_SCHEME", "kaiming")
    model = build_model(cfg, is_train=True)
    k = cfg.MODEL.NUM_JOINTS
    x = torch.randn(2, 3, 64, 64)
    model.train()
    train_out = model(x)
    assert all(o[:, :k].max() < 0 for o in train_out)  # logits near the prior's -4.6 at init
    model.eval()
    with torch.no_grad():
        probs = model(x)
        model.heatmaps_as_logits = False
        logits = model(x)
    for p, z in zip(probs, logits):
        torch.testing.assert_close(p[:, :k], torch.sigmoid(z[:, :k]))
        torch.testing.assert_close(p[:, k:], z[:, k:])  # tags untouched
    # The focal prior: every heatmap starts near probability 0.01.
    for p in probs:
        torch.testing.assert_close(p[:, :k].mean(), torch.tensor(0.01), atol=2e-3, rtol=0)
    assert not build_model(load_cfg(TINY_HRNET, "LOSS.HEATMAPS_LOSS_TYPE", "mse"), is_train=False).heatmaps_as_logits


# -------------------------------------------------------------------------------------------------- SWAHR
W32_SWAHR = EXPERIMENTS / "coco/higher_hrnet/w32_512_swahr_adam_lr2e-3.yaml"


def swahr_state_dict(cfg_off, cfg_on) -> dict[str, torch.Tensor]:
    """A state dict with SWAHR's key names and shapes: HigherHRNet's (the switch off) plus the official
    ``_make_conv_scale_layers`` under ``conv_scale_layers.``."""
    extra = cfg_on.MODEL.EXTRA
    sd = build_model(cfg_off, is_train=False).state_dict()
    scale = make_conv_scale_layers(
        extra.STAGE4.NUM_CHANNELS[0], extra.DECONV.NUM_CHANNELS[: extra.DECONV.NUM_DECONVS], cfg_on.MODEL.NUM_JOINTS
    )
    sd.update({f"conv_scale_layers.{k}": v for k, v in scale.state_dict().items()})
    return sd


def test_w32_swahr_state_dict_has_swahr_names_and_shapes() -> None:
    """SWAHR's W32 checkpoint: 1,828 entries, 28,649,309 parameters (HigherHRNet's 1,810 and 28,645,331 plus
    18 entries of the two scale branches)."""
    cfg_on = load_cfg(W32_SWAHR)
    cfg_off = load_cfg(W32_SWAHR, "LOSS.HEATMAPS_LOSS_TYPE", "mse")
    with torch.device("meta"):
        model = build_model(cfg_on, is_train=False)
        want = swahr_state_dict(cfg_off, cfg_on)
    sd = model.state_dict()
    assert len(sd) == 1828 and n_params(model) == 28_649_309
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in want.items()}


def test_swahr_checkpoint_loads_strictly_and_names_the_switch() -> None:
    cfg_on = load_cfg(TINY_HRNET, "LOSS.HEATMAPS_LOSS_TYPE", "swahr")
    cfg_off = load_cfg(TINY_HRNET)
    torch.manual_seed(3)
    sd = {k: v.clone().normal_() if v.is_floating_point() else v for k, v in swahr_state_dict(cfg_off, cfg_on).items()}
    model = build_model(cfg_on, is_train=False)
    assert load_pose_state_dict(model, {f"module.{k}": v for k, v in sd.items()}, strict=True) == ([], [])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(CheckpointError, match="set LOSS.HEATMAPS_LOSS_TYPE swahr"):
        load_pose_state_dict(build_model(cfg_off, is_train=False), sd, strict=True)
    plain = build_model(cfg_off, is_train=False).state_dict()
    with pytest.raises(CheckpointError, match=r"scale branches \(LOSS.HEATMAPS_LOSS_TYPE swahr\)"):
        load_pose_state_dict(model, plain, strict=True)


def randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_swahr_heads_equal_the_official_forward() -> None:
    cfg = load_cfg(TINY_HRNET, "LOSS.HEATMAPS_LOSS_TYPE", "swahr")
    torch.manual_seed(0)
    model = build_model(cfg, is_train=True).train()
    randomise(model.conv_scale_layers, seed=1)  # the last convs start at zero: give them values
    x = model.forward_features(torch.randn(2, 3, 64, 96))
    ours = model.forward_heads(x)
    ref = swahr_heads_forward(
        x, model.final_layers, model.deconv_layers, model.conv_scale_layers,
        cfg.MODEL.EXTRA.DECONV.CAT_OUTPUT, cfg.MODEL.NUM_JOINTS,
    )  # fmt: skip
    assert len(ours) == len(ref) == 2 and ours[1].shape == (2, 2 * cfg.MODEL.NUM_JOINTS, 32, 48)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours[0][:, : cfg.MODEL.NUM_JOINTS].abs().max() > 0


@pytest.mark.parametrize("yaml", [TINY_HRNET, EXPERIMENTS / "synthetic/higher_pose_tiny.yaml"])
def test_swahr_eval_outputs_are_training_outputs_without_scale_maps(yaml) -> None:
    cfg = load_cfg(yaml, "LOSS.HEATMAPS_LOSS_TYPE", "swahr")
    k = cfg.MODEL.NUM_JOINTS
    torch.manual_seed(0)
    model = build_model(cfg, is_train=True)
    assert all(
        float((layer[-1].weight.abs().sum() + layer[-1].bias.abs().sum()).detach()) == 0
        for layer in model.conv_scale_layers
    )
    randomise(model.conv_scale_layers, seed=2)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    for m in model.modules():  # BatchNorm on its running statistics in both passes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    train = model(x)
    evaluated = model.eval()(x)
    assert [t.shape[1] for t in train] == [t.shape[1] + k for t in evaluated]
    for a, b in zip(train, evaluated):
        torch.testing.assert_close(a[:, k:], b, rtol=0, atol=0)
        assert a[:, :k].abs().max() > 0
    # the switch off: the same network without the branches gives the same eval outputs
    off = build_model(load_cfg(yaml, "LOSS.HEATMAPS_LOSS_TYPE", "mse"), is_train=False).eval()
    off.load_state_dict({k_: v for k_, v in model.state_dict().items() if not k_.startswith("conv_scale_layers.")})
    for a, b in zip(off(x), evaluated):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
