"""The vectorised AE loss equals HigherHRNet's per-person loop in value and gradient; MultiLossFactory
follows the official stage/offset/factor semantics; its SWAHR loss equals SWAHR's official code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from higherpose.bench.reference import loop_ae_loss
from higherpose.bench.reference_swahr import swahr_multi_loss, swahr_total_loss
from higherpose.core.loss import AELoss, HeatmapLoss, MultiLossFactory
from higherpose.core.train_loop import combine_losses
from higherpose.dataset.target_generators import HeatmapGenerator, JointsGenerator
from tests.conftest import TINY_HRNET, load_cfg


def random_joints(b, m, k, res, persons, seed=0):
    """(B, M, K, 2) like JointsGenerator: flat index j*R*R + y*R + x, visibility; persons[i] per image."""
    g = torch.Generator().manual_seed(seed)
    joints = torch.zeros(b, m, k, 2, dtype=torch.int64)
    for i, n in enumerate(persons):
        for p in range(n):
            vis = torch.rand(k, generator=g) < 0.7
            pix = torch.randint(0, res * res, (k,), generator=g)
            slot = 0
            for j in range(k):
                if vis[j]:
                    joints[i, p, slot] = torch.tensor([j * res * res + pix[j], 1])
                    slot += 1
    return joints


@pytest.mark.parametrize("loss_type", ["exp", "max"])
@pytest.mark.parametrize("persons", [[0, 1, 2, 5], [30, 3]])
def test_ae_loss_equals_loop(loss_type, persons):
    b, m, k, res = len(persons), 30, 17, 16
    joints = random_joints(b, m, k, res, persons)
    base = torch.randn(b, k * res * res, 1, dtype=torch.float64) * 2
    t1 = base.clone().requires_grad_(True)
    t2 = base.clone().requires_grad_(True)
    push, pull = AELoss(loss_type)(t1, joints)
    push_ref, pull_ref = loop_ae_loss(t2, joints, loss_type)
    torch.testing.assert_close(push, push_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pull, pull_ref, rtol=1e-12, atol=1e-12)
    w = torch.rand(b, dtype=torch.float64)
    ((push * w).sum() + (pull * w * 3).sum()).backward()
    ((push_ref * w).sum() + (pull_ref * w * 3).sum()).backward()
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-10, atol=1e-12)


def test_ae_loss_zero_and_one_person():
    k, res = 17, 8
    joints = random_joints(2, 30, k, res, [0, 1], seed=3)
    tags = torch.randn(2, k * res * res, 1, requires_grad=True)
    push, pull = AELoss("exp")(tags, joints)
    assert push.tolist() == [0.0, 0.0]
    assert pull[0].item() == 0.0 and pull[1].item() > 0
    assert push.device == tags.device and push.shape == (2,)
    pull.sum().backward()
    assert torch.isfinite(tags.grad).all()


def test_ae_loss_rejects_unknown_type():
    with pytest.raises(ValueError, match="AE_LOSS_TYPE"):
        AELoss("l2")


def test_heatmap_loss_official_normalisation():
    pred, gt = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    mask = (torch.rand(2, 4, 5) > 0.5).float()
    want = ((pred - gt) ** 2 * mask[:, None]).sum(dim=(1, 2, 3)) / (3 * 4 * 5)  # masked pixels count
    torch.testing.assert_close(HeatmapLoss()(pred, gt, mask), want)


def test_heatmap_loss_wahr_weights():
    """SWAHR's weight |1 - p| g^0.01 + |p| (1 - g^0.01), element by element, then the same masked mean."""
    pred = torch.tensor([[[[0.2, -0.1], [0.9, 0.0]]]])
    gt = torch.tensor([[[[0.0, 0.0], [1.0, 0.5]]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    weights = [0.2, 0.1, 0.1, 0.5**0.01 + 0.0]  # background |p|, foreground ~|1 - p|
    errors = [0.2**2, 0.1**2, 0.1**2, 0.5**2]
    want = sum(w * e * m for w, e, m in zip(weights, errors, [1, 1, 1, 0])) / 4
    torch.testing.assert_close(HeatmapLoss("wahr")(pred, gt, mask), torch.tensor([want]))
    # A false positive costs |p| p^2: weaker than MSE's p^2, a missed peak (1 - p)^3 near MSE's.
    assert HeatmapLoss("wahr")(pred, gt, mask) < HeatmapLoss("mse")(pred, gt, mask)
    with pytest.raises(ValueError, match="HEATMAPS_LOSS_TYPE"):
        HeatmapLoss("l1")


def test_heatmap_loss_qfl_is_focal_weighted_cross_entropy_on_logits():
    """GFL's quality focal loss, element by element: -(g log p + (1 - g) log(1 - p)) |p - g|^2, p = sigmoid."""
    logits = torch.tensor([[[[-3.0, 0.5], [2.0, -1.0]]]], dtype=torch.float64)
    gt = torch.tensor([[[[0.0, 0.3], [1.0, 0.5]]]], dtype=torch.float64)
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)
    p = torch.sigmoid(logits)
    bce = -(gt * torch.log(p) + (1 - gt) * torch.log(1 - p))
    want = (bce * (p - gt) ** 2 * mask[:, None]).sum(dim=(1, 2, 3)) / 4  # masked pixels count, as 'mse'
    torch.testing.assert_close(HeatmapLoss("qfl")(logits, gt, mask), want)
    # A prediction equal to its target costs nothing, whatever the target's value.
    exact = torch.logit(torch.tensor([[[[0.2, 0.7]]]], dtype=torch.float64))
    assert HeatmapLoss("qfl")(exact, torch.sigmoid(exact), torch.ones(1, 1, 2)).item() < 1e-12
    # A false positive of 0.3 on the background costs what a peak predicted 0.3 too low does.
    background = HeatmapLoss("qfl")(
        torch.logit(torch.full((1, 1, 1, 1), 0.3)), torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1)
    )
    peak = HeatmapLoss("qfl")(torch.logit(torch.full((1, 1, 1, 1), 0.7)), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1))
    torch.testing.assert_close(background, peak)  # symmetric in (p, g) <-> (1 - p, 1 - g)


def test_multi_loss_factory_stages_offsets_factors():
    cfg = load_cfg(
        TINY_HRNET,
        "LOSS.PUSH_LOSS_FACTOR", "[0.5, 0.001]",
        "LOSS.PULL_LOSS_FACTOR", "[0.25, 0.001]",
        "LOSS.HEATMAPS_LOSS_FACTOR", "[2.0, 0.5]",
    )  # fmt: skip
    k = cfg.MODEL.NUM_JOINTS
    factory = MultiLossFactory(cfg)
    assert factory.push_loss_factor == [0.5, 0.001] and factory.heatmaps_loss_factor == [2.0, 0.5]
    b = 3
    outputs = [torch.randn(b, 2 * k, 8, 8, requires_grad=True), torch.randn(b, k, 16, 16)]
    heatmaps = [torch.rand(b, k, 8, 8), torch.rand(b, k, 16, 16)]
    masks = [torch.ones(b, 8, 8), torch.ones(b, 16, 16)]
    joints = [random_joints(b, 30, k, 8, [2, 0, 4]), random_joints(b, 30, k, 16, [2, 0, 4])]
    hm, push, pull = factory(outputs, heatmaps, masks, joints)
    assert push[1] is None and pull[1] is None and all(h.shape == (b,) for h in hm)
    want = HeatmapLoss(cfg.LOSS.HEATMAPS_LOSS_TYPE)(outputs[0][:, :k], heatmaps[0], masks[0])  # the YAML's type
    torch.testing.assert_close(hm[0], want * 2.0)
    want_1 = HeatmapLoss(cfg.LOSS.HEATMAPS_LOSS_TYPE)(outputs[1], heatmaps[1], masks[1])
    torch.testing.assert_close(hm[1], want_1 * 0.5)
    ref_push, ref_pull = loop_ae_loss(outputs[0][:, k:].reshape(b, -1, 1), joints[0], "exp")
    torch.testing.assert_close(push[0], ref_push * 0.5)
    torch.testing.assert_close(pull[0], ref_pull * 0.25)
    factory.push_loss_factor[0] = 1.0  # a trainer's AE warm-up may rescale
    torch.testing.assert_close(factory(outputs, heatmaps, masks, joints)[1][0], ref_push)


def test_multi_loss_factory_tag_offset_without_heatmap_loss():
    cfg = load_cfg(TINY_HRNET, "LOSS.WITH_HEATMAPS_LOSS", "[False, True]", "LOSS.PUSH_LOSS_FACTOR", "[0.001, 0.001]")
    k = cfg.MODEL.NUM_JOINTS
    outputs = [torch.randn(1, k, 8, 8), torch.randn(1, k, 16, 16)]  # stage 0: tags only, offset 0
    joints = [random_joints(1, 30, k, 8, [3]), random_joints(1, 30, k, 16, [3])]
    hm, push, _ = MultiLossFactory(cfg)(
        outputs, [None, torch.rand(1, k, 16, 16)], [None, torch.ones(1, 16, 16)], joints
    )
    assert hm[0] is None
    ref_push, _ = loop_ae_loss(outputs[0].reshape(1, -1, 1), joints[0], "exp")
    torch.testing.assert_close(push[0], ref_push * 0.001)


def test_multi_loss_factory_checks_lengths():
    cfg = load_cfg(TINY_HRNET)
    with pytest.raises(ValueError, match="NUM_STAGES"):
        MultiLossFactory(cfg)([torch.zeros(1)], [None], [None], [None])


# -------------------------------------------------------------------------------------------------- SWAHR
def swahr_batch(cfg, persons: list[int], seed: int, resolutions=(12, 24)):
    """Random ``[scale | heatmaps | tags]`` outputs and targets from the project's generators: persons[i]
    persons in image i (joints partly outside the map or unlabelled), masks with rectangular holes."""
    rng = np.random.default_rng(seed)
    k = cfg.MODEL.NUM_JOINTS
    people = []
    for n in persons:
        xy = rng.uniform(-1, resolutions[0] + 1, size=(n, k, 2))
        vis = rng.integers(0, 3, size=(n, k, 1)).astype(float)
        people.append(np.concatenate([xy, vis], axis=2))
    outputs, heatmaps, masks, joints = [], [], [], []
    for s, res in enumerate(resolutions):
        scaled = [np.concatenate([p[..., :2] * res / resolutions[0], p[..., 2:]], axis=2) for p in people]
        heatmaps.append(torch.from_numpy(np.stack([HeatmapGenerator(res, k, 2.0)(p) for p in scaled])).double())
        gen = JointsGenerator(30, k, res, cfg.MODEL.TAG_PER_JOINT)
        joints.append(torch.from_numpy(np.stack([gen(p) for p in scaled])))
        mask = np.ones((len(persons), res, res))
        for i in range(len(persons)):
            y, x = rng.integers(0, res - 4, size=2)
            mask[i, y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = 0
        masks.append(torch.from_numpy(mask))
        tags = k if cfg.LOSS.WITH_AE_LOSS[s] else 0
        out = torch.cat(
            [
                torch.from_numpy(rng.normal(0, 0.5, size=(len(persons), k, res, res))),  # scale
                torch.from_numpy(rng.uniform(-0.2, 1.1, size=(len(persons), k, res, res))),  # heatmaps
                torch.from_numpy(rng.normal(0, 1, size=(len(persons), tags, res, res))),  # tags
            ],
            dim=1,
        )
        outputs.append(out.requires_grad_(True))
    return outputs, heatmaps, masks, joints


@pytest.mark.parametrize("persons", [[0], [1], [0, 1, 12]])
@pytest.mark.parametrize("factors", [("[1.0, 1.0]", "[0.001, 0.001]"), ("[2.0, 0.5]", "[0.5, 0.25]")])
def test_swahr_loss_equals_official(persons: list[int], factors: tuple[str, str]) -> None:
    """The four per-stage lists and the gradient of SWAHR's total equal the official code's."""
    cfg = load_cfg(
        TINY_HRNET, "LOSS.HEATMAPS_LOSS_TYPE", "swahr", "LOSS.HEATMAPS_LOSS_FACTOR", factors[0],
        "LOSS.PUSH_LOSS_FACTOR", factors[1], "LOSS.PULL_LOSS_FACTOR", factors[1],
    )  # fmt: skip
    outputs, heatmaps, masks, joints = swahr_batch(cfg, persons, seed=len(persons))
    ours = MultiLossFactory(cfg)(outputs, heatmaps, masks, joints)
    assert len(ours) == 4
    copies = [o.detach().clone().requires_grad_(True) for o in outputs]
    loss = cfg.LOSS
    ref = swahr_multi_loss(
        copies, heatmaps, masks, joints, cfg.MODEL.NUM_JOINTS, loss.WITH_HEATMAPS_LOSS, loss.WITH_AE_LOSS,
        loss.HEATMAPS_LOSS_FACTOR, loss.PUSH_LOSS_FACTOR, loss.PULL_LOSS_FACTOR, loss.AE_LOSS_TYPE,
    )  # fmt: skip
    for mine, theirs in zip(ours, ref):
        assert [m is None for m in mine] == [t is None for t in theirs]
        for m, t in zip(mine, theirs):
            if m is not None:
                torch.testing.assert_close(m, t, rtol=1e-6, atol=1e-6)
    assert ours[1][0].abs().sum() > 0 or sum(persons) == 0  # the scale loss sees the Gaussians
    hm, scale, push, pull = ours
    total, _ = combine_losses(hm, push, pull, scale_losses=scale)
    total.backward()
    swahr_total_loss(*ref).backward()
    for mine, theirs in zip(outputs, copies):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-6, atol=1e-6 * float(theirs.grad.abs().max()))


def test_swahr_target_is_the_expansion_of_a_narrower_gaussian() -> None:
    """With scale s the target is g + g ln(g) s + g ln(g)^2 s^2 / 2, close to g^(1+s) for small s;
    s acts on the Gaussians only (0 where g = 0), and s = 0 is SWAHR's 'wahr' loss."""
    g = torch.tensor([[[[1.0, 0.6], [0.05, 0.0]]]], dtype=torch.float64)
    mask = torch.ones(1, 2, 2, dtype=torch.float64)
    s = torch.full_like(g, 0.1) * (g > 0)
    exact = g ** (1 + s)
    loss = HeatmapLoss("swahr")(exact, g, mask, s)
    assert 0 < loss.item() < 1e-6  # second order: the remainder is O(s^3 ln(g)^3)
    pred = torch.rand_like(g)
    torch.testing.assert_close(
        HeatmapLoss("swahr")(pred, g, mask, torch.zeros_like(g)), HeatmapLoss("wahr")(pred, g, mask)
    )
    with pytest.raises(ValueError, match="swahr"):
        HeatmapLoss("wahr")(pred, g, mask, s)
    with pytest.raises(ValueError, match="swahr"):
        HeatmapLoss("swahr")(pred, g, mask)


def test_swahr_factory_refuses_eval_outputs_and_stages_without_heatmaps() -> None:
    cfg = load_cfg(TINY_HRNET, "LOSS.HEATMAPS_LOSS_TYPE", "swahr")
    k = cfg.MODEL.NUM_JOINTS
    outputs, heatmaps, masks, joints = swahr_batch(cfg, [1], seed=0)
    with pytest.raises(ValueError, match="scale maps"):  # an eval-mode stage 1 has no scale maps
        MultiLossFactory(cfg)([outputs[0], outputs[1][:, k:]], heatmaps, masks, joints)
    unchecked = cfg.clone()
    unchecked.defrost()
    unchecked.LOSS.WITH_HEATMAPS_LOSS = [True, False]
    with pytest.raises(ValueError, match="WITH_HEATMAPS_LOSS"):
        MultiLossFactory(unchecked)
