"""Trainer: loss combination, LR schedule, one-epoch loop, resume, atomic checkpoints, non-finite
losses, bf16 autocast, the faults a user must act on (failed validation, unwritable folders, too many
persons, unreadable images), rank 0's resume checkpoint and MODEL.PRETRAINED verdict reaching ranks that
cannot read them (2 gloo processes) — on the tiny HRNet at 128 px with the real COCO sample images."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil

import pytest
import torch

from higherpose.bench.reference_swahr import swahr_lr
from higherpose.core import train_loop as loop
from higherpose.core import trainer as T
from higherpose.core.checkpointing import BEST_NAME, CHECKPOINT_NAME, FINAL_NAME, LEGACY_CHECKPOINT_NAME
from higherpose.utils import distributed as du
from higherpose.utils.checkpoint import load_file, load_pose_state_dict
from higherpose.utils.meters import AverageMeter, eta_seconds, format_seconds
from higherpose.utils.optim import WarmupMultiStepLR, build_scheduler, get_optimizer
from tests.conftest import TINY_HRNET, load_cfg

torch.set_num_threads(1)

FAST = ["DATASET.INPUT_SIZE", 128, "DATASET.OUTPUT_SIZE", "[32, 64]", "TRAIN.IMAGES_PER_GPU", 2, "WORKERS", 0]
FAST += ["TRAIN.SEED", 0, "PRINT_FREQ", 1, "DEBUG.DEBUG", False, "TRAIN.LR_STEP", "[1]", "TRAIN.WARMUP_ITERS", 0]


def sample_cfg(root, *opts):
    """Tiny config training and testing on the 4 real COCO sample images."""
    data = ["DATASET.ROOT", root, "DATASET.TRAIN", "val2017", "DATASET.TEST", "val2017", "DATASET.SYNTHETIC", False]
    return load_cfg(TINY_HRNET, *data, *FAST, *opts)


def run_fit(cfg, out, **kw):
    return T.fit(cfg, du.DistContext(), str(out), str(out / "tb"), logging.getLogger("test_trainer"), **kw)


def fixed_batch(cfg):
    from higherpose.dataset.build import make_dataloader

    return next(iter(make_dataloader(cfg)))


# ----------------------------------------------------------------------------------------------- units
def test_combine_losses_matches_plain_sum():
    torch.manual_seed(0)
    hm = [torch.rand(3), torch.rand(3)]
    push, pull = [torch.rand(3), None], [torch.rand(3), None]
    total, terms = loop.combine_losses(hm, push, pull, ae_scale=4.0)
    ref = hm[0].mean() + 4 * push[0].mean() + 4 * pull[0].mean() + hm[1].mean()
    assert torch.allclose(total, ref)
    assert [n for n, _ in terms] == ["stage0_heatmaps", "stage0_push", "stage0_pull", "stage1_heatmaps"]
    with pytest.raises(ValueError, match="disabled"):
        loop.combine_losses([None], [None], [None])


def test_ae_warmup_scale(coco_sample):
    cfg = sample_cfg(coco_sample, "TRAIN.AE_WARMUP_ITERS", 3, "TRAIN.AE_WARMUP_FACTOR", 10.0)
    assert [loop._ae_scale(cfg, s) for s in range(5)] == [10.0, 10.0, 10.0, 1.0, 1.0]


def test_scheduler_equals_multisteplr_and_warms_up():
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = WarmupMultiStepLR(torch.optim.SGD(params, lr=0.1), [2, 4], 0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD(params, lr=0.1), [2, 4], 0.1)
    for _ in range(6):
        assert math.isclose(ours.get_last_lr()[0], ref.get_last_lr()[0], rel_tol=1e-12)
        ours.optimizer.step()
        ref.optimizer.step()
        ours.step()
        ref.step()
    warm = WarmupMultiStepLR(torch.optim.SGD(params, lr=1.0), [1], 0.5, warmup_iters=4)
    lrs = []
    for step in range(6):
        warm.step_iter(step)
        lrs.append(warm.optimizer.param_groups[0]["lr"])
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    warm.optimizer.step()
    warm.step()  # epoch 1: decayed
    assert warm.get_last_lr() == [0.5]
    # state round trip (resume)
    again = WarmupMultiStepLR(torch.optim.SGD(params, lr=1.0), [1], 0.5, warmup_iters=4)
    again.load_state_dict(warm.state_dict())
    assert again.optimizer.param_groups[0]["lr"] == 0.5 and again.global_step == 5


def test_cosine_schedule_per_step_with_warmup(coco_sample):
    params = [torch.nn.Parameter(torch.zeros(1))]
    sched = WarmupMultiStepLR(torch.optim.SGD(params, lr=1.0), [1], 0.1, warmup_iters=2, cosine_iters=8)
    lrs = []
    for step in range(10):
        sched.step_iter(step)
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        if step % 4 == 3:
            sched.step()  # epoch ends do not touch a cosine schedule (LR_STEP is ignored)
    ref = [0.5 * (1 + math.cos(math.pi * min(s, 8) / 8)) * min(1.0, (s + 1) / 2) for s in range(10)]
    assert lrs == pytest.approx(ref, abs=1e-12)
    assert lrs[0] == 0.5 and lrs[4] == pytest.approx(0.5) and lrs[8] == lrs[9] == 0.0
    cfg = sample_cfg(coco_sample, "TRAIN.LR_SCHEDULER", "cosine", "TRAIN.END_EPOCH", 3)
    assert build_scheduler(cfg, torch.optim.SGD(params, lr=1.0), steps_per_epoch=5).cosine_iters == 15
    with pytest.raises(ValueError, match="steps per epoch"):
        build_scheduler(cfg, torch.optim.SGD(params, lr=1.0))


def test_warmup_linear_schedule_equals_swahr(coco_sample):
    """SWAHR's LR at each step: its per-GPU LR x WORLD_SIZE 8 is HigherPose's TRAIN.LR; the same per-step
    values from 0.1 x LR through WARM_UP_EPOCH epochs of warm-up down to 0 at END_EPOCH."""
    steps, end, warm, per_gpu = 5, 6, 2, 0.00025
    cfg = sample_cfg(
        coco_sample, "TRAIN.LR_SCHEDULER", "warmup_linear", "TRAIN.WARM_UP_EPOCH", warm,
        "TRAIN.END_EPOCH", end, "TRAIN.LR", per_gpu * 8,
    )  # fmt: skip
    params = [torch.nn.Parameter(torch.zeros(1))]
    sched = build_scheduler(cfg, torch.optim.Adam(params, lr=cfg.TRAIN.LR), steps_per_epoch=steps)
    lrs = []
    for step in range(end * steps):
        sched.step_iter(step)
        lrs.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        if step % steps == steps - 1:
            sched.step()  # epoch ends do not touch a per-step schedule
    ref = [swahr_lr(per_gpu, 8, warm, end, steps, t) for t in range(end * steps)]
    assert lrs == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert lrs[0] == pytest.approx(0.1 * cfg.TRAIN.LR) and max(lrs) == pytest.approx(cfg.TRAIN.LR)
    again = build_scheduler(cfg, torch.optim.Adam(params, lr=cfg.TRAIN.LR), steps_per_epoch=steps)
    again.load_state_dict(sched.state_dict())  # resume
    assert again.linear_iters == end * steps and again.linear_warmup_iters == warm * steps


def test_get_optimizer_kinds(coco_sample):
    model = torch.nn.Linear(2, 2)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)):
        opt = get_optimizer(sample_cfg(coco_sample, "TRAIN.OPTIMIZER", name), model)
        assert type(opt) is cls
    adam = get_optimizer(sample_cfg(coco_sample, "TRAIN.WD", 0.5), model)
    assert adam.param_groups[0]["weight_decay"] == 0  # HigherHRNet's Adam ignores TRAIN.WD
    sgd = get_optimizer(sample_cfg(coco_sample, "TRAIN.OPTIMIZER", "sgd", "TRAIN.WD", 0.5), model)
    assert sgd.param_groups[0]["weight_decay"] == 0.5 and sgd.param_groups[0]["momentum"] == 0.9
    sched = build_scheduler(sample_cfg(coco_sample, "TRAIN.WARMUP_ITERS", 10), adam)
    assert sched.warmup_iters == 10 and sched.milestones == [1]


def test_meters_and_eta():
    m = AverageMeter()
    m.update(2.0, 3)
    m.update(4.0, 1)
    assert m.val == 4.0 and m.avg == pytest.approx(2.5) and m.count == 4
    assert format_seconds(3725.4) == "1:02:05" and format_seconds(2 * 86400 + 3661) == "2d 01:01:01"
    assert eta_seconds(0.5, 10, 2, 20) == (5.0, 25.0)


def test_grad_scaler_settings(coco_sample):
    assert loop.make_grad_scaler(sample_cfg(coco_sample), "cpu") is None
    bf16 = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.DTYPE", "bfloat16")
    assert loop.make_grad_scaler(bf16, "cpu") is None  # bfloat16 needs no loss scaling
    fp16 = sample_cfg(coco_sample, "FP16.ENABLED", True, "FP16.STATIC_LOSS_SCALE", 128.0)
    assert loop.make_grad_scaler(fp16, "cpu").get_scale() == 128.0


# ----------------------------------------------------------------------------------------------- loop
def test_training_lowers_loss_on_fixed_batch(coco_sample):
    from higherpose.core.loss import MultiLossFactory
    from higherpose.models import build_model

    cfg = sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 10)
    batch = fixed_batch(cfg)
    torch.manual_seed(0)
    model, loss = build_model(cfg, is_train=True), MultiLossFactory(cfg)
    optimizer = get_optimizer(cfg, model)

    def current_loss():  # train-mode BN (batch statistics), as the loss the optimiser sees
        with torch.no_grad():
            return loop.combine_losses(*loss(model(batch[0]), *batch[1:]))[0].item()

    before = current_loss()
    stats = loop.do_train(cfg, model, [batch] * 10, loss, optimizer, 0, "", None, state=loop.TrainState())
    after = current_loss()
    assert set(stats) == {"stage0_heatmaps", "stage0_push", "stage0_pull", "stage1_heatmaps", "loss"}
    # 10 Adam steps at LR 3e-3 from HigherHRNet's N(0, 0.001) init: measured 0.0173 -> ~0.012
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_step_on_cpu(coco_sample, dtype):
    """bf16 autocast (no scaler) and fp16 autocast with a GradScaler (initial scale from
    STATIC_LOSS_SCALE, gradients unscaled before clipping) both train on the CPU."""
    from higherpose.core.loss import MultiLossFactory
    from higherpose.models import build_model

    size = ["DATASET.INPUT_SIZE", 64, "DATASET.OUTPUT_SIZE", "[16, 32]"]  # low-precision convs are slow on CPUs
    amp = ["FP16.ENABLED", True, "FP16.DTYPE", dtype, "FP16.STATIC_LOSS_SCALE", 1024.0, "TRAIN.CLIP_GRAD", 1.0]
    cfg = sample_cfg(coco_sample, *amp, *size)
    batch = fixed_batch(cfg)
    model = build_model(cfg, is_train=True)
    dtypes = []
    model.final_layers[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = loop.TrainState()
    opt = get_optimizer(cfg, model)
    scaler = loop.make_grad_scaler(cfg, "cpu")
    assert (scaler is None) == (dtype == "bfloat16")
    loss = MultiLossFactory(cfg)
    stats = loop.do_train(cfg, model, [batch] * 2, loss, opt, 0, "", None, True, scaler=scaler, state=state)
    assert dtypes == [getattr(torch, dtype)] * 2
    assert state.global_step == 2 and math.isfinite(stats["loss"])
    w = model.state_dict()["final_layers.0.weight"]
    assert w.dtype == torch.float32 and not torch.equal(w, before["final_layers.0.weight"])
    if scaler is not None:
        assert scaler.get_scale() == 1024.0  # no overflow in two steps: the scale is kept


def test_clip_warmup_channels_last_and_ae_warmup(coco_sample):
    from higherpose.core.loss import MultiLossFactory
    from higherpose.models import build_model

    size = ["DATASET.INPUT_SIZE", 64, "DATASET.OUTPUT_SIZE", "[16, 32]", "TRAIN.OPTIMIZER", "sgd"]
    size += [
        "TRAIN.MOMENTUM",
        0.0,
        "TRAIN.WD",
        0.0,
        "TRAIN.LR",
        1.0,
        "TRAIN.CHANNELS_LAST",
        True,
        "TRAIN.WARMUP_ITERS",
        0,
    ]
    batch = fixed_batch(sample_cfg(coco_sample, *size))

    def one_step(*opts):
        cfg = sample_cfg(coco_sample, *size, *opts)
        torch.manual_seed(0)
        model = build_model(cfg, is_train=True).to(memory_format=torch.channels_last)
        before = [p.detach().clone() for p in model.parameters()]
        opt = get_optimizer(cfg, model)
        sched = build_scheduler(cfg, opt)
        stats = loop.do_train(cfg, model, [batch], MultiLossFactory(cfg), opt, 0, "", None, scheduler=sched)
        step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        return stats, step.norm().item(), opt.param_groups[0]["lr"]

    plain, norm, lr = one_step()
    assert lr == 1.0 and norm > 1e-3
    _, clipped, _ = one_step("TRAIN.CLIP_GRAD", 1e-4)  # SGD, LR 1: the step IS the clipped gradient
    assert clipped == pytest.approx(1e-4, rel=1e-3)
    _, warm, lr = one_step("TRAIN.WARMUP_ITERS", 4)
    assert lr == 0.25 and warm == pytest.approx(norm / 4, rel=1e-3)
    boosted, _, _ = one_step("TRAIN.AE_WARMUP_ITERS", 1, "TRAIN.AE_WARMUP_FACTOR", 10.0)
    assert boosted["stage0_push"] == pytest.approx(10 * plain["stage0_push"], rel=1e-5)
    assert boosted["stage0_pull"] == pytest.approx(10 * plain["stage0_pull"], rel=1e-5)
    assert boosted["stage0_heatmaps"] == pytest.approx(plain["stage0_heatmaps"], rel=1e-6)


def test_debug_images_written_on_rank0(coco_sample, tmp_path):
    opts = ["TRAIN.ITERS_PER_EPOCH", 1, "TRAIN.END_EPOCH", 1, "DEBUG.DEBUG", True, "DEBUG.SAVE_BATCH_IMAGES_GT", True]
    run_fit(sample_cfg(coco_sample, *opts), tmp_path)
    names = {p.name for p in tmp_path.glob("train_0_output_*.jpg")}
    assert {"train_0_output_32_hm_gt.jpg", "train_0_output_64_hm_pred.jpg", "train_0_output_32_gt.jpg"} <= names
    assert "train_0_output_32_tag_pred.jpg" in names and "train_0_output_64_tag_pred.jpg" not in names


# ----------------------------------------------------------------------------------------------- runs
def _assert_same_state(a: dict, b: dict, atol: float = 1e-7):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_state(a[k], b[k], atol)
        elif isinstance(a[k], torch.Tensor):
            assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k
        else:
            assert a[k] == b[k], k


def test_resume_reproduces_uninterrupted_run(coco_sample, tmp_path):
    opts = ["TRAIN.ITERS_PER_EPOCH", 2, "AUTO_RESUME", True]
    straight = run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2), tmp_path / "a")
    run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 1), tmp_path / "b")
    first = load_file(str(tmp_path / "b" / CHECKPOINT_NAME))
    assert first["epoch"] == 1 and first["global_step"] == 2
    resumed = run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2), tmp_path / "b")
    assert resumed.epoch == straight.epoch == 2 and resumed.global_step == straight.global_step == 4

    a, b = load_file(str(tmp_path / "a" / CHECKPOINT_NAME)), load_file(str(tmp_path / "b" / CHECKPOINT_NAME))
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["optimizer"]["state"], b["optimizer"]["state"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2
    # LR_STEP [1]: epoch 1 ran at LR x 0.1 in both runs
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003 * 0.1**1)
    # the two runs did not just stand still
    assert not torch.equal(a["model"]["final_layers.0.weight"], first["model"]["final_layers.0.weight"])


def test_ema_and_cosine_resume_exactly(coco_sample, tmp_path, monkeypatch):
    opts = ["TRAIN.ITERS_PER_EPOCH", 2, "AUTO_RESUME", True, "TRAIN.EMA_DECAY", 0.9, "TRAIN.LR_SCHEDULER", "cosine"]
    cfg = sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2)
    run_fit(cfg, tmp_path / "a")
    # run b is killed when epoch 1 starts (the cosine depends on END_EPOCH, so the config stays the same)
    real_do_train = loop.do_train

    def killed_at_epoch_1(*args, **kwargs):
        if args[5] == 1:
            raise KeyboardInterrupt
        return real_do_train(*args, **kwargs)

    monkeypatch.setattr(loop, "do_train", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run_fit(cfg, tmp_path / "b")
    monkeypatch.setattr(loop, "do_train", real_do_train)
    run_fit(cfg, tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / CHECKPOINT_NAME)), load_file(str(tmp_path / "b" / CHECKPOINT_NAME))
    assert int(a["ema"]["n_averaged"]) == int(b["ema"]["n_averaged"]) == 4
    _assert_same_state(a["ema"], b["ema"])
    final = load_file(str(tmp_path / "a" / FINAL_NAME))
    # final_state.pth holds the average (plain keys), not the last weights
    _assert_same_state(final, {k[len("module.") :]: v for k, v in a["ema"].items() if k.startswith("module.")})
    assert not torch.equal(final["final_layers.0.weight"], a["model"]["final_layers.0.weight"])


def test_checkpoint_contents_and_final_weights(coco_sample, tmp_path):
    from higherpose.models import build_model

    cfg = sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 1, "TRAIN.END_EPOCH", 1)
    run_fit(cfg, tmp_path)
    ckpt = load_file(str(tmp_path / CHECKPOINT_NAME))
    for key in ("model", "state_dict", "optimizer", "scheduler", "scaler", "epoch", "global_step", "best_perf"):
        assert key in ckpt
    assert ckpt["config"].startswith("AUTO_RESUME") and set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert not any(k.startswith("module.") for k in ckpt["model"])
    final = load_file(str(tmp_path / FINAL_NAME))
    assert all(isinstance(v, torch.Tensor) for v in final.values())
    model = build_model(cfg, is_train=False)
    model.load_state_dict(final, strict=True)  # plain keys: HigherHRNet-style code loads it as is
    load_pose_state_dict(model, final, strict=True)
    assert not (tmp_path / BEST_NAME).exists()  # no validation ran: no 'best'


def test_legacy_higherhrnet_checkpoint_resumes(coco_sample, tmp_path):
    """HigherHRNet's checkpoint.pth.tar (module.-prefixed state_dict, 'perf' = epoch) is accepted."""
    from higherpose.models import build_model

    cfg = sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 1, "TRAIN.END_EPOCH", 3, "AUTO_RESUME", True)
    model = build_model(cfg, is_train=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.TRAIN.LR)
    legacy = {"epoch": 2, "model": cfg.MODEL.NAME, "perf": 2, "optimizer": opt.state_dict()}
    legacy["state_dict"] = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(legacy, tmp_path / LEGACY_CHECKPOINT_NAME)
    state = run_fit(cfg, tmp_path)
    assert state.epoch == 3 and state.global_step == 1 and state.best_perf is None
    assert load_file(str(tmp_path / CHECKPOINT_NAME))["scheduler"]["last_epoch"] == 3


def test_killed_save_keeps_previous_checkpoint(coco_sample, tmp_path, monkeypatch):
    opts = ["TRAIN.ITERS_PER_EPOCH", 1, "AUTO_RESUME", True]
    run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 1), tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2), tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_file(str(path))["epoch"] == 1  # the previous checkpoint is intact
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2), tmp_path).epoch == 2


class NaNAt:
    """Wraps the real loss; makes stage-0 push NaN at the listed global steps (counted per call)."""

    def __init__(self, loss, bad_calls):
        self.loss, self.bad_calls, self.calls = loss, set(bad_calls), 0

    def to(self, device):
        return self

    def __call__(self, *args):
        hm, push, pull = self.loss(*args)
        if self.calls in self.bad_calls:
            push = [push[0] * float("nan"), *push[1:]]
        self.calls += 1
        return hm, push, pull


def test_nan_loss_stops_with_message_and_keeps_checkpoint(coco_sample, tmp_path):
    from higherpose.core.loss import MultiLossFactory

    cfg = sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 2, "TRAIN.END_EPOCH", 3)
    with pytest.raises(loop.NonFiniteLossError) as err:
        run_fit(cfg, tmp_path, loss_factory=NaNAt(MultiLossFactory(cfg), {3}))
    msg = str(err.value)
    assert "epoch 1 step 1/2" in msg and "global step 3" in msg and "in stage0_push" in msg, msg
    assert f"the last checkpoint ({tmp_path / CHECKPOINT_NAME}, after epoch 0) is intact" in msg, msg
    ckpt = load_file(str(tmp_path / CHECKPOINT_NAME))
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # a restart (AUTO_RESUME, e.g. after lowering the LR) redoes epoch 1 from that checkpoint
    state = run_fit(
        sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 2, "TRAIN.END_EPOCH", 3, "AUTO_RESUME", True), tmp_path
    )
    assert state.epoch == 3 and state.global_step == 6


class TwoStageConv(torch.nn.Module):
    """1x1 conv heads at 1/4 (K heatmaps + K tags) and 1/2 (K heatmaps) of the input."""

    def __init__(self, joints: int = 17):
        super().__init__()
        self.quarter, self.halfres = torch.nn.Conv2d(3, 2 * joints, 1), torch.nn.Conv2d(3, joints, 1)

    def forward(self, x):
        return [self.quarter(x[:, :, ::4, ::4]), self.halfres(x[:, :, ::2, ::2])]


def test_nan_skip_policy_counts_and_gives_up(coco_sample, tmp_path):
    from higherpose.core.loss import MultiLossFactory

    cfg = sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 2, "TRAIN.END_EPOCH", 2, "TRAIN.NAN_POLICY", "skip")
    state = run_fit(cfg, tmp_path / "a", loss_factory=NaNAt(MultiLossFactory(cfg), {0, 2}))
    assert state.nan_skipped == 2 and state.global_step == 2  # 4 batches, 2 skipped
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "a" / FINAL_NAME)).values())

    cfg = sample_cfg(coco_sample, "TRAIN.NAN_POLICY", "skip")
    model = TwoStageConv()  # cheap stand-in: the give-up path does not need a real model
    loss = NaNAt(MultiLossFactory(cfg), range(100))
    state = loop.TrainState()
    with pytest.raises(loop.NonFiniteLossError, match="20 non-finite steps in a row"):
        loop.do_train(cfg, model, [fixed_batch(cfg)] * 30, loss, get_optimizer(cfg, model), 0, "", None, state=state)
    assert state.nan_skipped == loop.MAX_NAN_IN_A_ROW


def test_validation_writes_best_and_tensorboard(coco_sample, tmp_path):
    opts = ["TRAIN.ITERS_PER_EPOCH", 1, "TRAIN.END_EPOCH", 1, "TRAIN.VAL_FREQ", 1, "TRAIN.VAL_SUBSET", 1]
    opts += ["TEST.FLIP_TEST", False]
    state = run_fit(sample_cfg(coco_sample, *opts), tmp_path)
    assert state.best_perf is not None and state.best_epoch == 0
    best = load_file(str(tmp_path / BEST_NAME))
    assert not any(k.startswith("module.") for k in best)
    tags = tensorboard_tags(tmp_path / "tb")
    assert {"train/stage0_heatmaps_loss", "train/stage1_heatmaps_loss", "train/stage0_push_loss"} <= tags
    assert {"train/stage0_pull_loss", "train/lr", "val/AP"} <= tags
    assert not any(t.startswith("train/stage2") for t in tags)


def tensorboard_tags(folder) -> set[str]:
    """Scalar tags in the tensorboardX event files of ``folder`` (TFRecord framing, read by hand)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags = set()
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + length + 4
    return tags


def test_time_budget_cuts_epochs_keeps_schedule_and_resumes(coco_sample, tmp_path, monkeypatch):
    from higherpose.core import time_budget

    # A slow machine: every clock reading is 10 s later. Budget 0.5 min for 2 epochs: epoch 0 may use
    # 15 s and stops after its second step (after the first, one more step of >= 10 s would end past
    # 15 s); that spends the 30 s, so epoch 1 takes the one step every epoch takes. Without the
    # budget each epoch takes all 4 images at batch 1.
    now = [0.0]

    def slow_clock() -> float:
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr(time_budget, "_clock", slow_clock)
    opts = ["TRAIN.IMAGES_PER_GPU", 1, "TRAIN.END_EPOCH", 2, "AUTO_RESUME", True]
    full = run_fit(sample_cfg(coco_sample, *opts), tmp_path / "full")
    assert full.global_step == 8 and full.train_seconds > 0
    budgeted = run_fit(sample_cfg(coco_sample, *opts, "TRAIN.TIME_BUDGET", 0.5), tmp_path / "budget")
    assert budgeted.epoch == 2 and budgeted.global_step == 3
    ckpt = load_file(str(tmp_path / "budget" / CHECKPOINT_NAME))
    assert ckpt["train_state"]["train_seconds"] == pytest.approx(budgeted.train_seconds)
    assert budgeted.train_seconds >= 30.0  # the fake clock's time, spent
    # LR_STEP [1]: the last epoch still ran at LR x 0.1 (the schedule is the config's, only shorter)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003 * 0.1)
    assert os.path.isfile(tmp_path / "budget" / FINAL_NAME)
    # resumed with one more epoch: the spent budget comes from the checkpoint, the new epoch takes one step
    more = ["TRAIN.TIME_BUDGET", 0.5, "TRAIN.END_EPOCH", 3]
    resumed = run_fit(sample_cfg(coco_sample, *opts, *more), tmp_path / "budget")
    assert resumed.epoch == 3 and resumed.global_step == 4 and resumed.train_seconds > budgeted.train_seconds


# ----------------------------------------------------------------------------------------------- faults
def test_nan_loss_before_any_checkpoint_says_none_exists(coco_sample, tmp_path):
    from higherpose.core.loss import MultiLossFactory

    cfg = sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 2, "TRAIN.END_EPOCH", 2)
    with pytest.raises(loop.NonFiniteLossError) as err:
        run_fit(cfg, tmp_path, loss_factory=NaNAt(MultiLossFactory(cfg), {0}))
    msg = str(err.value)
    assert "epoch 0 step 0/2" in msg and msg.endswith("no checkpoint was written yet"), msg
    assert "intact" not in msg and "\n" not in msg
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_non_finite_weights_are_never_saved(coco_sample, tmp_path, monkeypatch):
    from higherpose.core.checkpointing import NonFiniteWeightsError, save_checkpoint, save_weights

    cfg = sample_cfg(coco_sample)
    model = TwoStageConv()
    with torch.no_grad():
        model.halfres.weight[0, 0] = float("nan")
        model.halfres.bias[3] = float("inf")  # after halfres.weight in the state dict: not the one named
    opt = get_optimizer(cfg, model)
    path = tmp_path / CHECKPOINT_NAME
    with pytest.raises(NonFiniteWeightsError, match=r"halfres\.weight has 1 of 51 values NaN/inf"):
        save_checkpoint(str(path), cfg, model, opt, None, None, loop.TrainState())
    with pytest.raises(NonFiniteWeightsError, match="halfres.weight"):
        save_weights(model, str(tmp_path / FINAL_NAME))
    assert os.listdir(tmp_path) == []  # not even a temporary file

    # In a run: weights that turn NaN without a NaN loss (the epoch's last step) are refused at the save.
    real_do_train = loop.do_train

    def poisoned_epoch(*args, **kwargs):
        stats = real_do_train(*args, **kwargs)
        with torch.no_grad():
            args[1].final_layers[0].weight.view(-1)[0] = float("nan")
        return stats

    monkeypatch.setattr(loop, "do_train", poisoned_epoch)
    with pytest.raises(NonFiniteWeightsError) as err:
        run_fit(sample_cfg(coco_sample, "TRAIN.ITERS_PER_EPOCH", 1, "TRAIN.END_EPOCH", 1), tmp_path / "run")
    msg = str(err.value)
    assert f"refusing to write {tmp_path / 'run' / CHECKPOINT_NAME}: final_layers.0.weight" in msg, msg
    assert msg.endswith("no checkpoint was written yet") and isinstance(err.value, loop.NonFiniteLossError)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_failed_validation_keeps_the_epoch_and_the_best(coco_sample, tmp_path, monkeypatch):
    """The checkpoint of an epoch is written before its validation: a validation that raises costs no
    training, the run resumes at the next epoch, and model_best / best AP stay right."""
    aps = iter([0.5, RuntimeError("validation crashed"), 0.4])

    def fake_validate(cfg, model, output_dir, logger):
        ap = next(aps)
        if isinstance(ap, Exception):
            raise ap
        return {"AP": ap}

    monkeypatch.setattr(T, "validate", fake_validate)
    opts = ["TRAIN.ITERS_PER_EPOCH", 1, "TRAIN.VAL_FREQ", 1, "AUTO_RESUME", True]
    with pytest.raises(RuntimeError, match="validation crashed"):
        run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2), tmp_path)
    ckpt = load_file(str(tmp_path / CHECKPOINT_NAME))  # loads: written whole before the validation
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2
    assert ckpt["best_perf"] == 0.5 and ckpt["train_state"]["best_epoch"] == 0
    best = load_file(str(tmp_path / BEST_NAME))
    assert not torch.equal(best["final_layers.0.weight"], ckpt["model"]["final_layers.0.weight"])  # epoch 0's

    state = run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 3), tmp_path)
    assert state.epoch == 3 and state.global_step == 3  # epoch 1 was not trained again
    assert state.best_perf == 0.5 and state.best_epoch == 0  # 0.4 at epoch 2 is no better
    _assert_same_state(load_file(str(tmp_path / BEST_NAME)), best)


def _epoch_summaries(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.match(r"=> epoch \d+ done", r.getMessage())]


def test_persons_over_max_num_people_are_counted_across_workers(coco_sample, tmp_path, caplog):
    # Images of the sample hold up to 5 persons; with one DataLoader worker the counting happens in
    # another process. Each epoch sees all 4 images (2 steps of 2).
    opts = ["DATASET.MAX_NUM_PEOPLE", 1, "WORKERS", 1, "TRAIN.END_EPOCH", 2]
    with caplog.at_level(logging.INFO, logger="test_trainer"):
        run_fit(sample_cfg(coco_sample, *opts), tmp_path)
    summaries = _epoch_summaries(caplog)
    assert len(summaries) == 2, summaries
    for line in summaries:
        count = re.search(r"persons over DATASET.MAX_NUM_PEOPLE \(1\): (\d+)", line)
        assert count and int(count.group(1)) > 0, line
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "MAX_NUM_PEOPLE = 1" in r.getMessage()]
    assert len(warnings) == 1 and "push/pull" in warnings[0].getMessage()


def test_unreadable_images_are_counted_in_the_epoch_summary(coco_sample, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(coco_sample, data)
    broken = data / "images" / "val2017" / "000000040083.jpg"
    os.chmod(broken, 0o644)
    broken.write_bytes(b"")
    cfg = sample_cfg(data, "TRAIN.END_EPOCH", 1)  # 2 steps of 2: every image once
    with caplog.at_level(logging.INFO, logger="test_trainer"):
        run_fit(cfg, tmp_path / "out")
    (line,) = _epoch_summaries(caplog)
    assert "unreadable images skipped: 1" in line and "persons over DATASET.MAX_NUM_PEOPLE (30): 0" in line, line


def _output_cfg(coco_sample, output_dir, log_dir):
    return sample_cfg(coco_sample, "OUTPUT_DIR", output_dir, "LOG_DIR", log_dir)


def test_unwritable_output_folder_fails_in_one_line_before_any_work(coco_sample, tmp_path, monkeypatch):
    from higherpose.config import ConfigError
    from higherpose.utils.logging import create_logger

    a_file = tmp_path / "not_a_folder"
    a_file.write_text("")
    # a regular file where a folder must be: fails even for root
    with pytest.raises(ConfigError) as err:
        create_logger(_output_cfg(coco_sample, a_file, tmp_path / "log"), "tiny.yaml")
    msg = str(err.value)
    assert msg.startswith("OUTPUT_DIR: cannot create the folder") and str(a_file) in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=f"LOG_DIR: cannot create the folder {re.escape(str(a_file))}"):
        create_logger(_output_cfg(coco_sample, tmp_path / "out", a_file), "tiny.yaml")
    assert not list((tmp_path / "out").rglob("*.log"))  # nothing written before the check

    # fit checks the folders it is given before building anything
    monkeypatch.setattr(T, "_prepare_model", lambda *a: pytest.fail("work started"))
    with pytest.raises(ConfigError, match=f"OUTPUT_DIR: cannot create the folder {re.escape(str(a_file / 'x'))}"):
        run_fit(sample_cfg(coco_sample), a_file / "x")

    # a folder without write permission (os.access stands in for the permission bits, which root ignores)
    real_access = os.access
    locked = tmp_path / "locked"
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).startswith(str(locked)) and real_access(p, mode))
    with pytest.raises(ConfigError) as err:
        create_logger(_output_cfg(coco_sample, locked, tmp_path / "log"), "tiny.yaml")
    msg = str(err.value)
    assert msg.startswith(f"OUTPUT_DIR: the folder {locked}") and "not writable" in msg and "\n" not in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_in_one_line(coco_sample, tmp_path):
    from higherpose.config import ConfigError
    from higherpose.utils.logging import create_logger

    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        with pytest.raises(ConfigError, match=f"OUTPUT_DIR: cannot create the folder {re.escape(str(locked))}"):
            create_logger(_output_cfg(coco_sample, locked, tmp_path / "log"), "tiny.yaml")
    finally:
        os.chmod(locked, 0o700)


# ------------------------------------------------------------------- distributed start (2 gloo processes)
def _resume_rank(rank: int, init: str, cfg, dirs: list[str], out: str) -> None:
    """One rank resuming with its own OUTPUT_DIR (no shared file system): only rank 0's holds the
    checkpoint. Saves what it trained with, for the test to compare across ranks."""
    torch.set_num_threads(1)
    du.init_distributed("gloo", rank, 2, init, timeout_min=1)  # a rank out of step fails fast
    try:
        from higherpose.models import build_model

        optimizers = []
        real = T.get_optimizer
        T.get_optimizer = lambda c, m: optimizers.append(real(c, m)) or optimizers[-1]
        torch.manual_seed(100 + rank)  # different inits per rank: only the resume makes them agree
        model = build_model(cfg, is_train=True)
        ctx = du.DistContext(rank, 2, rank, "cpu", "gloo")
        state = T.fit(cfg, ctx, dirs[rank], os.path.join(dirs[rank], "tb"), logging.getLogger("resume"), model=model)
        result = {"epoch": state.epoch, "global_step": state.global_step, "model": model.state_dict()}
        result["optimizer"] = optimizers[0].state_dict()
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        du.cleanup()


def test_rank_without_the_checkpoint_resumes_from_rank0s(coco_sample, tmp_path):
    """Rank 1 cannot see rank 0's checkpoint.pth; it still resumes at the same epoch with the same
    model, optimiser and schedule, and both ranks stay equal after a step."""
    import torch.multiprocessing as mp

    opts = ["TRAIN.ITERS_PER_EPOCH", 1, "AUTO_RESUME", True]
    run_fit(sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 1), tmp_path / "rank0")
    assert (tmp_path / "rank0" / CHECKPOINT_NAME).is_file()
    (tmp_path / "rank1").mkdir()
    cfg = sample_cfg(coco_sample, *opts, "TRAIN.END_EPOCH", 2)
    store, init = du.serve_rendezvous(1.0)  # the rendezvous: kept until the processes have ended
    dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.spawn(_resume_rank, nprocs=2, args=(init, cfg, dirs, str(tmp_path)), join=True)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # epoch 0 came from the checkpoint (1 step), epoch 1 ran here (4 images, 2 ranks, batch 2: 1 step)
    assert r0["epoch"] == r1["epoch"] == 2 and r0["global_step"] == r1["global_step"] == 2
    _assert_same_state(r0["model"], r1["model"])
    _assert_same_state(r0["optimizer"]["state"], r1["optimizer"]["state"])
    assert r0["optimizer"]["param_groups"] == r1["optimizer"]["param_groups"]
    assert int(r1["optimizer"]["state"][0]["step"]) == 2  # Adam's moments were resumed, not restarted
    assert not (tmp_path / "rank1" / CHECKPOINT_NAME).exists()  # rank 1 writes nothing


def _pretrained_rank(rank: int, init: str, path: str, out: str) -> None:
    """Rank 1 cannot read ``path``, then rank 0 cannot; records what each rank got."""
    from higherpose.config import ConfigError
    from higherpose.core import checkpointing

    du.init_distributed("gloo", rank, 2, init, timeout_min=1)
    try:
        real_isfile = os.path.isfile
        checkpointing.os.path.isfile = lambda p: rank == 0 and real_isfile(p)
        results: list[str] = [checkpointing.pretrained_for_this_rank(path, rank == 0)]
        checkpointing.os.path.isfile = lambda p: rank == 1 and real_isfile(p)
        try:
            checkpointing.pretrained_for_this_rank(path, rank == 0)
            results.append("no error")
        except ConfigError as err:
            results.append(str(err))
        torch.save(results, os.path.join(out, f"pretrained{rank}.pt"))
    finally:
        du.cleanup()


def test_pretrained_verdict_is_rank0s_on_every_rank(tmp_path):
    """A rank that cannot read MODEL.PRETRAINED takes rank 0's weights (through DDP); when rank 0
    cannot, every rank stops with the file named instead of waiting for rank 0."""
    import torch.multiprocessing as mp

    from higherpose.config import ConfigError
    from higherpose.core.checkpointing import pretrained_for_this_rank

    path = tmp_path / "hrnet_w32.pth"
    torch.save({}, path)
    assert pretrained_for_this_rank(str(path), True) == str(path) and pretrained_for_this_rank("", True) == ""
    with pytest.raises(ConfigError, match="does not exist on rank 0"):
        pretrained_for_this_rank(str(tmp_path / "missing.pth"), True)
    store, init = du.serve_rendezvous(1.0)  # the rendezvous: kept until the processes have ended
    mp.spawn(_pretrained_rank, nprocs=2, args=(init, str(path), str(tmp_path)), join=True)
    (got0, stop0), (got1, stop1) = (torch.load(tmp_path / f"pretrained{r}.pt") for r in (0, 1))
    assert got0 == str(path) and got1 == ""
    assert stop0 == stop1 and f"MODEL.PRETRAINED = {str(path)!r} does not exist on rank 0" in stop0
