"""Parameter and MAC counting: hand-computed values, conv-transpose conventions, attention, attribution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from higherpose.models import build_model
from higherpose.utils.model_summary import count_macs, count_parameters, parameter_breakdown
from tests.conftest import TINY_HRNET, TINY_SAT, load_cfg


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.grouped = nn.Conv2d(8, 16, 3, 2, 1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 4, 4, 2, 1, bias=False)
        self.fc = nn.Linear(4 * 10 * 10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.grouped(self.conv(x))))
        return self.fc(self.up(x).flatten(1))


def test_tiny_net_macs_by_hand() -> None:
    report = count_macs(TinyNet().eval(), torch.zeros(2, 3, 10, 10))
    conv = 8 * 3 * 3 * 3 * 10 * 10  # out x in x k x k x output pixels
    grouped = 16 * (8 // 2) * 3 * 3 * 5 * 5  # groups divide the input channels
    up_in = 16 * 4 * 4 * 4 * 5 * 5  # every INPUT pixel times the whole kernel
    up_out = 16 * 4 * 4 * 4 * 10 * 10  # HigherHRNet's summary: times the OUTPUT pixels (4x)
    fc = 400 * 10
    assert report.by_kind["conv"] == 2 * (conv + grouped)
    assert report.by_kind["conv_transpose"] == 2 * up_in
    assert report.by_kind["linear"] == 2 * fc
    assert report.total == 2 * (conv + grouped + up_in + fc)
    assert report.total_official_deconv == 2 * (conv + grouped + up_out + fc)
    assert report.by_module == {"conv": 2 * conv, "grouped": 2 * grouped, "up": 2 * up_in, "fc": 2 * fc}


def test_functional_matmuls_and_attention() -> None:
    class Fn(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            a = F.scaled_dot_product_attention(q, k, v)  # (2, 4, 10, 8)
            b = torch.einsum("bhnd,bhmd->bhnm", q, k)  # (2, 4, 10, 6)
            return (b @ v).sum() + torch.bmm(a.flatten(0, 1), a.flatten(0, 1).transpose(1, 2)).sum()

    q, k, v = torch.zeros(2, 4, 10, 16), torch.zeros(2, 4, 6, 16), torch.zeros(2, 4, 6, 8)
    report = count_macs(Fn(), q, k, v)
    assert report.by_kind["attention"] == 2 * 4 * 10 * 6 * (16 + 8)  # Q K^T + A V
    assert report.by_kind["einsum"] == 2 * 4 * 10 * 6 * 16
    assert report.by_kind["matmul"] == 2 * 4 * 10 * 6 * 8 + 8 * 10 * 10 * 8
    assert report.by_module == {"": report.total}  # issued outside any submodule


def _official_summary_reference(model: nn.Module, x: torch.Tensor) -> int:
    """HigherHRNet ``get_model_summary``'s Conv formula (its model has no Linear): every module whose
    class name contains 'Conv' adds prod(weight.shape) * prod(output spatial)."""
    total = 0

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if "Conv" in type(module).__name__ and hasattr(module, "weight"):
            total += math.prod(module.weight.shape) * math.prod(out.shape[2:])

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def test_hrnet_counts_match_official_summary_and_flop_counter() -> None:
    model = build_model(load_cfg(TINY_HRNET), is_train=False).eval()
    x = torch.zeros(1, 3, 128, 128)
    report = count_macs(model, x)
    assert report.total_official_deconv == _official_summary_reference(model, x)
    # torch's FlopCounterMode counts conv-transposes at input resolution too (FLOPs = 2 MACs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert 2 * report.total == counter.get_total_flops()
    parts = report.by_prefix({"heads": ["final_layers", "deconv_layers"]})
    assert parts["heads"] > 0 and parts["heads"] + parts["other"] == report.total


def test_sat_head_attention_is_counted_and_attributed() -> None:
    model = build_model(load_cfg(TINY_SAT, "MODEL.SAT.TOKEN_STRIDE", 8), is_train=False).eval()
    report = count_macs(model, torch.zeros(1, 3, 128, 128))
    head = model.sat_head
    n, k, d = (128 // 8) ** 2, head.num_joints, head.d_model
    pixel = len(head.pixel_layers) * n * n * 2 * d  # self-attention over the N pixel tokens
    kpt = len(head.kpt_layers) * (k * k + k * n) * 2 * d  # keypoint self- and cross-attention
    back = n * k * 2 * d  # pixels attend to the keypoint tokens
    assert report.by_kind["attention"] == pixel + kpt + back
    # ops are attributed to the innermost module: SDPA to the attention block, projections to their Linear
    assert report.by_module["sat_head.pixel_layers.0.attn"] == n * n * 2 * d
    assert report.by_module["sat_head.pixel_layers.0.attn.q_proj"] == n * d * d
    assert report.by_kind["einsum"] == k * head.in_channels * 32 * 32  # dynamic heatmap on the 1/4 map


def test_parameter_breakdown() -> None:
    model = build_model(load_cfg(TINY_SAT), is_train=False)
    parts = parameter_breakdown(model, {"sat_head": ["sat_head"], "heads": ["final_layers", "deconv_layers"]})
    assert parts["total"] == count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert parts["sat_head"] + parts["heads"] + parts["other"] == parts["total"]
    assert parts["sat_head"] == sum(p.numel() for p in model.sat_head.parameters())
    model.sat_head.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == parts["total"] - parts["sat_head"]


def test_model_info_tool(tmp_path, capsys) -> None:
    import json

    from tools.model_info import main

    out = tmp_path / "info.json"
    assert main(["--cfg", str(TINY_SAT), "--size", "128", "192", "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["input"] == [128, 192]
    assert info["params_backbone"] + info["params_heads"] + info["params_sat_head"] == info["params_total"]
    parts = info["gmacs_backbone"] + info["gmacs_heads"] + info["gmacs_sat_head"]
    assert abs(parts - info["gmacs"]) < 1e-9 and info["gmacs_official_deconv"] > info["gmacs"]
    assert "SAT head" in capsys.readouterr().out
