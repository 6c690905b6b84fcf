"""The training step's non-finite loss handling: float16 overflows skip the step and lower the GradScaler's
scale (and give up when they persist); bfloat16/fp32 keep TRAIN.NAN_POLICY; a skipped step leaves the run
exactly as if its batch had not been there; SWAHR (LOSS.HEATMAPS_LOSS_TYPE swahr) trains its scale maps
and logs and draws them on their own."""

from __future__ import annotations

import logging

import pytest
import torch

from higherpose.core import train_loop as loop
from higherpose.core.loss import MultiLossFactory
from higherpose.models import build_model
from higherpose.utils.optim import get_optimizer
from tests.conftest import EXPERIMENTS, load_cfg
from tests.core.test_trainer import FAST, TwoStageConv, fixed_batch, sample_cfg

torch.set_num_threads(1)


class NonFiniteAt:
    """Wraps the real loss: stage-0 heatmaps become inf at the listed calls; records the model's weights
    as each call sees them (the weights the previous step left)."""

    def __init__(self, loss: MultiLossFactory, model: torch.nn.Module, bad_calls) -> None:
        self.loss, self.model, self.bad_calls = loss, model, set(bad_calls)
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, *args):
        self.weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        hm, push, pull = self.loss(*args)
        if len(self.weights) - 1 in self.bad_calls:
            hm = [hm[0] * float("inf"), *hm[1:]]
        return hm, push, pull


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _run(cfg, bad_calls, steps: int, fp16: bool = False, scaler=None, state=None):
    torch.manual_seed(0)
    model = TwoStageConv()
    loss = NonFiniteAt(MultiLossFactory(cfg), model, bad_calls)
    state = state if state is not None else loop.TrainState()
    opt = get_optimizer(cfg, model)
    batches = [fixed_batch(cfg)] * steps
    log = logging.getLogger("test_train_loop")
    try:
        loop.do_train(cfg, model, batches, loss, opt, 0, "", None, fp16, scaler=scaler, state=state, logger=log)
    finally:
        loss.weights.append({k: v.clone() for k, v in model.state_dict().items()})
    return loss.weights, state


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(coco_sample, caplog):
    cfg = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.STATIC_LOSS_SCALE", 1024.0)
    assert cfg.TRAIN.NAN_POLICY == "stop"  # the default does not end a float16 run on an overflow
    scaler = loop.make_grad_scaler(cfg, "cpu")
    with caplog.at_level(logging.WARNING, logger="test_train_loop"):
        weights, state = _run(cfg, {1}, 3, fp16=True, scaler=scaler)
    assert not _same(weights[0], weights[1]) and _same(weights[1], weights[2])  # step 1 left the weights alone
    assert not _same(weights[2], weights[3])  # and training went on
    assert state.global_step == 2 and state.nan_skipped == 1 and state.nan_in_a_row == 0
    assert scaler.get_scale() == 512.0
    assert scaler.state_dict()["_growth_tracker"] == 1  # reset by the overflow, then one good step
    assert "step 1/3" in caplog.text and "loss scale lowered to 512 (1 skipped so far)" in caplog.text


def test_fp16_overflow_that_persists_stops_the_run(coco_sample):
    cfg = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.STATIC_LOSS_SCALE", 1024.0)
    scaler = loop.make_grad_scaler(cfg, "cpu")
    state = loop.TrainState()
    with pytest.raises(loop.NonFiniteLossError, match="20 non-finite steps in a row although the loss scale"):
        _run(cfg, range(100), 30, fp16=True, scaler=scaler, state=state)
    assert state.nan_skipped == state.nan_in_a_row == loop.MAX_NAN_IN_A_ROW
    assert scaler.get_scale() == 1024.0 * 0.5**loop.MAX_NAN_IN_A_ROW


def test_bf16_keeps_the_nan_policy(coco_sample):
    cfg = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.DTYPE", "bfloat16")
    assert loop.make_grad_scaler(cfg, "cpu") is None
    with pytest.raises(loop.NonFiniteLossError, match=r"step 2/4 \(global step 2\) in stage0_heatmaps.*'stop'"):
        _run(cfg, {2}, 4, fp16=True)


@pytest.mark.parametrize("bad_calls", [{1, 3}, {0}, {4}])
def test_skipped_steps_are_as_if_their_batch_was_absent(coco_sample, bad_calls):
    """NAN_POLICY 'skip': the weights after steps with non-finite losses at ``bad_calls`` equal a clean
    run over the other batches (Adam's state and the LR schedule only move on taken steps)."""
    cfg = sample_cfg(coco_sample, "TRAIN.NAN_POLICY", "skip")
    weights, state = _run(cfg, bad_calls, 5)
    clean, clean_state = _run(cfg, set(), 5 - len(bad_calls))
    assert state.nan_skipped == len(bad_calls) and state.global_step == clean_state.global_step
    for k in bad_calls:
        assert _same(weights[k], weights[k + 1])
    assert _same(weights[-1], clean[-1])


def test_stop_policy_stops_at_the_bad_step(coco_sample):
    cfg = sample_cfg(coco_sample)
    state = loop.TrainState()
    with pytest.raises(loop.NonFiniteLossError, match=r"step 2/5 \(global step 2\) in stage0_heatmaps"):
        _run(cfg, {2}, 5, state=state)
    assert state.global_step == 2 and state.nan_skipped == 0


def test_back_off_matches_grad_scaler_own_overflow_update():
    """:func:`back_off_loss_scale` leaves the scaler as its update after an inf gradient does."""
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    theirs = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3)
    ours = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=3)
    for scaler in (theirs, ours):  # two good steps: the growth tracker counts 2
        for _ in range(2):
            scaler.scale(p.sum()).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    theirs.scale(p.sum() * float("inf")).backward()
    theirs.step(opt)
    theirs.update()
    opt.zero_grad()
    ours.scale(p.sum()).backward()  # ours skips without looking at the gradients
    assert loop.back_off_loss_scale(ours) == 128.0
    assert ours.state_dict() == theirs.state_dict()


def swahr_cfg(root, *opts):
    """The tiny synthetic SWAHR config on the real COCO sample images, small maps."""
    data = ["DATASET.ROOT", root, "DATASET.TRAIN", "val2017", "DATASET.TEST", "val2017", "DATASET.SYNTHETIC", False]
    return load_cfg(EXPERIMENTS / "synthetic/higher_hrnet_tiny_swahr.yaml", *data, *FAST, *opts)


def test_swahr_training_lowers_the_loss_and_moves_the_scale_maps(coco_sample):
    cfg = swahr_cfg(coco_sample)
    k = cfg.MODEL.NUM_JOINTS
    batch = fixed_batch(cfg)
    torch.manual_seed(0)
    model, loss = build_model(cfg, is_train=True), MultiLossFactory(cfg)
    optimizer = get_optimizer(cfg, model)

    def current():  # train-mode BN (batch statistics), as the loss the optimiser sees
        with torch.no_grad():
            outputs = model(batch[0])
            hm, scale, push, pull = loss(outputs, *batch[1:])
            return loop.combine_losses(hm, push, pull, scale_losses=scale)[0].item(), outputs

    before, outputs = current()
    assert all(float(o[:, :k].abs().max()) == 0 for o in outputs)  # the scale maps start at 0
    stats = loop.do_train(cfg, model, [batch] * 10, loss, optimizer, 0, "", None, state=loop.TrainState())
    after, outputs = current()
    assert {"stage0_scale", "stage1_scale", "stage0_heatmaps", "stage1_heatmaps", "loss"} <= set(stats)
    assert after < 0.9 * before, (before, after)
    assert all(float(o[:, :k].abs().max()) > 0 for o in outputs)  # and move


def test_swahr_debug_pictures_draw_scale_maps_apart(coco_sample, tmp_path):
    cfg = swahr_cfg(coco_sample, "DEBUG.DEBUG", True)
    batch = fixed_batch(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, is_train=True).train()
    with torch.no_grad():
        outputs = model(batch[0])
    loop._save_debug(cfg, batch, outputs, str(tmp_path), 0, None, 0)
    names = {p.name for p in tmp_path.glob("train_0_output_*.jpg")}
    assert {"train_0_output_32_scale_pred.jpg", "train_0_output_64_scale_pred.jpg"} <= names
    # the scale maps are not taken for tag maps: the 1/2 output has heatmaps only
    assert "train_0_output_32_tag_pred.jpg" in names and "train_0_output_64_tag_pred.jpg" not in names
    off = swahr_cfg(coco_sample, "DEBUG.DEBUG", True, "DEBUG.SAVE_SCALEMAPS_PRED", False)
    loop._save_debug(off, batch, outputs, str(tmp_path / "off"), 0, None, 0)
    assert not list((tmp_path).glob("off_*scale_pred.jpg")) and not list(tmp_path.glob("off/*scale_pred.jpg"))
