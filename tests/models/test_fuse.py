"""BatchNorm folding: the folded network computes what the original computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from higherpose.models import build_model
from higherpose.models.fuse import fold_batchnorm
from tests.conftest import TINY_HRNET, TINY_SAT, load_cfg


def _with_random_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("cfg_path", [TINY_HRNET, TINY_SAT], ids=["pose_higher_hrnet", "higher_pose"])
def test_folded_network_equals_the_original(cfg_path) -> None:
    torch.manual_seed(0)
    model = _with_random_statistics(build_model(load_cfg(cfg_path), is_train=False))
    x = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        expected = model(x)
        batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        folded = fold_batchnorm(model)
        got = model(x)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # every BatchNorm follows a convolution or a deconvolution: none stays
    assert folded == batchnorms and left == 0
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_folding_needs_eval_mode() -> None:
    model = build_model(load_cfg(TINY_HRNET), is_train=False).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)
