"""The training step's non-finite loss handling: float16 forward overflows skip the step and keep the
GradScaler's scale (and give up when they persist), overflowing gradients lower it as GradScaler does; one
host read per step; bfloat16/fp32 keep TRAIN.NAN_POLICY; a skipped step leaves the run
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


def test_fp16_non_finite_loss_skips_the_step_and_keeps_the_scale(coco_sample, caplog):
    """A forward overflow: the loss scale neither causes nor cures it, so it stays (halving it for each
    would leave the gradients to underflow long after)."""
    cfg = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.STATIC_LOSS_SCALE", 1024.0)
    assert cfg.TRAIN.NAN_POLICY == "stop"  # the default does not end a float16 run on an overflow
    scaler = loop.make_grad_scaler(cfg, "cpu")
    with caplog.at_level(logging.WARNING, logger="test_train_loop"):
        weights, state = _run(cfg, {1}, 3, fp16=True, scaler=scaler)
    assert not _same(weights[0], weights[1]) and _same(weights[1], weights[2])  # step 1 left the weights alone
    assert not _same(weights[2], weights[3])  # and training went on
    assert state.global_step == 2 and state.nan_skipped == 1 and state.nan_in_a_row == 0
    assert scaler.get_scale() == 1024.0
    assert scaler.state_dict()["_growth_tracker"] == 2  # the skipped step neither counts nor resets
    assert "step 1/3" in caplog.text and "loss scale kept at 1024 (1 skipped so far)" in caplog.text


def test_fp16_overflow_that_persists_stops_the_run(coco_sample):
    cfg = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.STATIC_LOSS_SCALE", 1024.0)
    scaler = loop.make_grad_scaler(cfg, "cpu")
    state = loop.TrainState()
    with pytest.raises(loop.NonFiniteLossError, match="20 non-finite steps in a row in the float16 forward"):
        _run(cfg, range(100), 30, fp16=True, scaler=scaler, state=state)
    assert state.nan_skipped == state.nan_in_a_row == loop.MAX_NAN_IN_A_ROW
    assert scaler.get_scale() == 1024.0


class _InfGradient(torch.autograd.Function):
    """Identity forward (a finite loss); an inf gradient backward, as an fp16 gradient overflow."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class InfGradientAt(NonFiniteAt):
    """The loss is finite at every call; at the listed calls its gradient is inf."""

    def __call__(self, *args):
        self.weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        hm, push, pull = self.loss(*args)
        if len(self.weights) - 1 in self.bad_calls:
            hm = [_InfGradient.apply(hm[0]), *hm[1:]]
        return hm, push, pull


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_fp16_non_finite_gradient_lowers_the_scale_as_grad_scaler_does(coco_sample, clip):
    """The overflow check is read with the step's flags; the outcome is GradScaler's own: no step, the scale
    times the backoff factor, the growth count reset."""
    cfg = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.STATIC_LOSS_SCALE", 1024.0, "TRAIN.CLIP_GRAD", clip)
    runs = {}
    for ours in (True, False):
        torch.manual_seed(0)
        model = TwoStageConv()
        loss = InfGradientAt(MultiLossFactory(cfg), model, {1})
        scaler, state, opt = loop.make_grad_scaler(cfg, "cpu"), loop.TrainState(), get_optimizer(cfg, model)
        if not ours:  # GradScaler's own step, which reads the inf check itself
            loop.grads_overflowed = lambda *a: None
        try:
            loop.do_train(cfg, model, [fixed_batch(cfg)] * 3, loss, opt, 0, "", None, True, scaler=scaler, state=state)
        finally:
            loop.grads_overflowed = GRADS_OVERFLOWED
        loss.weights.append({k: v.clone() for k, v in model.state_dict().items()})
        runs[ours] = loss.weights, scaler.state_dict(), state
    (weights, scaler_state, state), (ref_weights, ref_state, _) = runs[True], runs[False]
    assert _same(weights[1], weights[2]) and not _same(weights[2], weights[3])  # step 1 taken by no one
    assert scaler_state["scale"] == 512.0 and scaler_state["_growth_tracker"] == 1
    assert state.nan_skipped == 0 and state.global_step == 3
    assert scaler_state == ref_state and all(_same(a, b) for a, b in zip(weights, ref_weights))


GRADS_OVERFLOWED = loop.grads_overflowed


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts what makes the host wait for the device: reading values back (``item``, ``tolist``, ``cpu``,
    ``numpy``, a tensor's truth or number value) and making tensors from Python values (a blocking copy
    to the device). ``host_resident``: tensors that live on the CPU whatever the device (the optimiser's
    step counters), whose reads cost nothing."""

    READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}
    MADE = {"tensor", "as_tensor", "new_tensor"}

    def __init__(self, host_resident=()) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.host_resident = {id(t) for t in host_resident}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        on_host = bool(args) and id(args[0]) in self.host_resident
        if (name in self.READS and not on_host) or name in self.MADE:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("opts", [[], ["FP16.ENABLED", True, "TRAIN.CLIP_GRAD", 1.0], ["TRAIN.TIME_BUDGET", 60.0]])
def test_a_training_step_reads_the_device_once(coco_sample, opts):
    cfg = sample_cfg(coco_sample, "PRINT_FREQ", 100, *opts)
    torch.manual_seed(0)
    model = TwoStageConv()
    fp16 = bool(cfg.FP16.ENABLED)
    scaler, opt, loss = loop.make_grad_scaler(cfg, "cpu"), get_optimizer(cfg, model), MultiLossFactory(cfg)
    batches = [fixed_batch(cfg)] * 4
    loop.do_train(cfg, model, batches[:1], loss, opt, 0, "", None, fp16, scaler=scaler)  # lazy state made
    with HostReads([st["step"] for st in opt.state.values()]) as reads:
        loop.do_train(cfg, model, batches, loss, opt, 0, "", None, fp16, scaler=scaler, state=loop.TrainState())
    assert reads.calls == ["cpu", "tolist"] * len(batches), reads.calls


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
