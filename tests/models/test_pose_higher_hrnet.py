"""HigherHRNet model: official parameter counts, state-dict names, output shapes, init."""

from __future__ import annotations

import pytest
import torch

from higherpose.models import build_model
from higherpose.models.pose_higher_hrnet import PoseHigherResolutionNet
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
