"""ModelEMA: the ramped decay, parameters and float buffers averaged, integer buffers copied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from higherpose.utils.ema import ModelEMA, ema_decay


def test_decay_ramps_up_to_the_configured_value():
    assert ema_decay(0.99, 0) == pytest.approx(0.1)
    assert ema_decay(0.99, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.99, 10_000) == 0.99
    with pytest.raises(ValueError, match="EMA_DECAY"):
        ModelEMA(nn.Linear(2, 2), 1.0)


def test_average_equals_plain_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(model, 0.9)
    ref = {k: v.clone().double() for k, v in model.state_dict().items()}  # first update copies
    for n in range(6):
        model.train()
        model(torch.randn(2, 3, 8, 8))  # changes the BN running statistics
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update_parameters(model)
        for k, v in model.state_dict().items():
            if n == 0 or not torch.is_floating_point(v):
                ref[k] = v.clone().double()
            else:
                d = ema_decay(0.9, n)
                ref[k] = d * ref[k] + (1 - d) * v.double()
    got = ema.module.state_dict()
    for k, v in ref.items():
        assert torch.allclose(got[k].double(), v, atol=1e-6), k
    assert got["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 6
    assert not torch.equal(got["0.weight"], model.state_dict()["0.weight"])


def test_first_update_copies_and_count_stays_on_the_model_device():
    """The count lives with the weights (no host read per update); ``n_averaged.zero_()`` (a resume
    from a checkpoint without an average) makes the next update an exact copy again."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(model, 0.5)
    assert ema.n_averaged.device == next(model.parameters()).device and ema.n_averaged.dtype == torch.long
    for restart in (False, True):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        if restart:
            ema.n_averaged.zero_()
        ema.update_parameters(model)
        for k, v in model.state_dict().items():
            assert torch.equal(ema.module.state_dict()[k], v), k
    assert int(ema.n_averaged) == 1
    assert set(ema.state_dict()) == {"n_averaged"} | {f"module.{k}" for k in model.state_dict()}
