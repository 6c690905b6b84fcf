"""The SAT head's learning-rate multiplier: its own optimiser group, scaled with the body by the schedule."""

from __future__ import annotations

import pytest
import torch

from higherpose.models import build_model
from higherpose.utils.optim import WarmupMultiStepLR, get_optimizer, param_groups
from tests.conftest import TINY_HRNET, TINY_SAT, load_cfg


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("mult", [0.25, 2.0])
def test_head_parameters_get_their_own_learning_rate(mult: float) -> None:
    cfg = load_cfg(TINY_SAT, "MODEL.SAT.LR_MULT", mult, "TRAIN.WARMUP_ITERS", 10)
    model = build_model(cfg, is_train=False)
    optimizer = get_optimizer(cfg, model)
    body, head = optimizer.param_groups
    assert _ids(head["params"]) == _ids(model.sat_head.parameters())
    assert _ids(body["params"]) | _ids(head["params"]) == _ids(model.parameters())
    assert (body["lr"], head["lr"]) == pytest.approx((cfg.TRAIN.LR, cfg.TRAIN.LR * mult))
    scheduler = WarmupMultiStepLR(optimizer, cfg.TRAIN.LR_STEP, cfg.TRAIN.LR_FACTOR, cfg.TRAIN.WARMUP_ITERS)
    scheduler.step_iter(4)  # half-way through the warm-up: both groups at half their LR
    assert (body["lr"], head["lr"]) == pytest.approx((cfg.TRAIN.LR / 2, cfg.TRAIN.LR * mult / 2))


def test_one_group_by_default_and_for_higher_hrnet() -> None:
    sat = build_model(load_cfg(TINY_SAT), is_train=False)
    assert len(get_optimizer(load_cfg(TINY_SAT), sat).param_groups) == 1
    hrnet_cfg = load_cfg(TINY_HRNET, "MODEL.SAT.LR_MULT", 0.5)  # no head: the key changes nothing
    assert len(get_optimizer(hrnet_cfg, build_model(hrnet_cfg, is_train=False)).param_groups) == 1


def test_groups_under_a_ddp_style_wrapper() -> None:
    model = build_model(load_cfg(TINY_SAT), is_train=False)
    wrapper = torch.nn.Module()
    wrapper.module = model  # DDP names every parameter module.<name>
    body, head = param_groups(wrapper, 1.0, 0.5)
    assert _ids(head["params"]) == _ids(model.sat_head.parameters()) and head["lr"] == 0.5
