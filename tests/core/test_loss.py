"""The vectorised AE loss equals HigherHRNet's per-person loop in value and gradient; MultiLossFactory
follows the official stage/offset/factor semantics."""

from __future__ import annotations

import pytest
import torch

from higherpose.bench.reference import loop_ae_loss
from higherpose.core.loss import AELoss, HeatmapLoss, MultiLossFactory
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
