"""higher_pose (HigherHRNet + SAT head): init equality, batch independence, any input size, structure
biases, gradients, training, parameter counts and checkpoint compatibility.

W32 models are built only for parameter / MAC / state-dict checks; everything that runs forwards
uses the tiny synthetic config (SAT d = 32, 1 + 1 layers).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from higherpose.core.loss import MultiLossFactory
from higherpose.dataset.specs import COCO, CROWDPOSE, hop_distances
from higherpose.models import build_model
from higherpose.models.higher_pose import HigherPoseNet
from higherpose.models.sat_head import SATHead, sine_position_embedding
from higherpose.utils.checkpoint import load_pose_state_dict
from higherpose.utils.model_summary import count_macs
from tests.conftest import EXPERIMENTS, TINY_SAT, load_cfg

W32_SAT_COCO = EXPERIMENTS / "coco/higher_pose/w32_256_adam_lr1e-3.yaml"
W32_SAT_CROWD = EXPERIMENTS / "crowd_pose/higher_pose/w32_256_adam_lr1e-3.yaml"
HEAD_PARAMS_COCO = 393_081  # measured; the design note's table says 393,113 (see docs/higher_pose.md)
HEAD_PARAMS_CROWD = 392_697  # = the design note's CrowdPose number
HRNET_W32_COCO, HRNET_W32_CROWD = 28_645_331, 28_641_962


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(*opts: object, is_train: bool = False) -> HigherPoseNet:
    torch.manual_seed(0)
    return build_model(load_cfg(TINY_SAT, *opts), is_train=is_train)


def nudge(head: SATHead, scale: float = 0.5, seed: int = 1) -> None:
    """Give every zero-initialised gate / bias table a random value, so the head changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if any(k in name for k in ("gamma", "hop_bias", "sym_bias", "dyn_linear")):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def randomise_bn(model: nn.Module, seed: int = 2) -> None:
    """Non-trivial BN statistics, so eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# --------------------------------------------------------------------------------------------------
# equality with HigherHRNet, batch independence, sizes
def test_init_outputs_equal_higher_hrnet_with_copied_weights() -> None:
    torch.manual_seed(0)
    hrnet = build_model(load_cfg(TINY_SAT, "MODEL.NAME", "pose_higher_hrnet"), is_train=False).eval()
    randomise_bn(hrnet)
    model = tiny().eval()
    missing, unexpected = load_pose_state_dict(model, hrnet.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("sat_head.") for k in missing)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref, out = hrnet(x), model(x)
    assert len(out) == len(ref) == 2
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # ... and the head is not a no-op once its gates open
    nudge(model.sat_head)
    with torch.no_grad():
        assert (model(x)[0] - ref[0]).abs().max() > 1e-3


def test_get_pose_net_train_init_keeps_zero_gates_and_transformer_init() -> None:
    # init_weights: HigherHRNet's N(0, 0.001^2) conv reset, then the head's
    model = tiny("MODEL.INIT_SCHEME", "higherhrnet", is_train=True)
    head = model.sat_head
    for p in (head.gamma1, head.gamma2, head.dyn_linear.weight, head.dyn_linear.bias):
        assert torch.count_nonzero(p) == 0
    for layer in head.kpt_layers:
        assert torch.count_nonzero(layer.hop_bias) == 0 and torch.count_nonzero(layer.sym_bias) == 0
    assert model.conv1.weight.std() < 0.002  # the body got HigherHRNet's init
    assert head.tokenizer[0].weight.std() > 0.01  # the head's convs were re-initialised afterwards
    q = head.pixel_layers[0].attn.q_proj.weight
    assert 0.01 < q.std() < 0.03 and q.abs().max() <= 0.04 + 1e-6  # trunc-normal(0.02)
    assert torch.all(head.memory_norm.weight == 1)


def test_batch_independence() -> None:
    model = tiny().eval()
    randomise_bn(model)
    nudge(model.sat_head)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(x)
        for i in range(3):
            alone = model(x[i : i + 1])
            for a, b in zip(alone, batched):
                torch.testing.assert_close(a[0], b[i], atol=1e-5, rtol=1e-5)
        # changing one image leaves the others untouched (the original HigherPose attended across the batch)
        x2 = x.clone()
        x2[0] = torch.randn(3, 64, 64)
        changed = model(x2)
    for a, b in zip(changed, batched):
        torch.testing.assert_close(a[1:], b[1:], atol=1e-5, rtol=1e-5)
        assert (a[0] - b[0]).abs().max() > 1e-4


@pytest.mark.parametrize("stride", [8, 16])
@pytest.mark.parametrize(("h", "w"), [(256, 256), (512, 512), (512, 704)])
def test_forward_any_size(stride: int, h: int, w: int) -> None:
    model = tiny("MODEL.SAT.TOKEN_STRIDE", stride).eval()
    nudge(model.sat_head)
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out[0].shape == (1, 34, h // 4, w // 4)
    assert out[1].shape == (1, 17, h // 2, w // 2)
    assert all(torch.isfinite(o).all() for o in out)


def test_token_grid_follows_stride() -> None:
    grids = {}
    for stride in (8, 16):
        head = tiny("MODEL.SAT.TOKEN_STRIDE", stride).sat_head
        z = head.pool(head.tokenizer(torch.zeros(1, head.in_channels, 128, 176)))
        grids[stride] = tuple(z.shape[-2:])
    assert grids == {8: (64, 88), 16: (32, 44)}  # 1/4 map of a 512 x 704 input


def test_sine_position_embedding_matches_formula() -> None:
    h, w, d = 3, 5, 16
    emb = sine_position_embedding(h, w, d)
    assert emb.shape == (h * w, d)
    n = d // 4
    for i in range(h):
        for j in range(w):
            y, x = (i + 0.5) / h * 2 * math.pi, (j + 0.5) / w * 2 * math.pi
            row = emb[i * w + j]
            for k in range(n):
                f = 1e4 ** (k / n)
                ref = (math.sin(y / f), math.cos(y / f), math.sin(x / f), math.cos(x / f))
                got = (row[k], row[n + k], row[2 * n + k], row[3 * n + k])
                for a, b in zip(got, ref):
                    assert abs(float(a) - b) < 1e-5


# --------------------------------------------------------------------------------------------------
# structure biases
@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_hop_distances(spec) -> None:
    hops = torch.tensor(hop_distances(spec))
    k = spec.num_joints
    assert hops.shape == (k, k)
    assert torch.equal(hops, hops.T)
    assert torch.all(hops.diagonal() == 0)
    assert hops.max() == 6 and hops[~torch.eye(k, dtype=torch.bool)].min() == 1
    for a, b in spec.skeleton:
        assert hops[a, b] == 1


def test_attention_bias_matches_tables() -> None:
    head = tiny("MODEL.SAT.MAX_HOP", 4).sat_head
    nudge(head)
    layer = head.kpt_layers[0]
    bias = layer.attention_bias(head.hop_index, head.sym_mask)
    heads, k = layer.sym_bias.numel(), head.num_joints
    assert bias.shape == (1, heads, k, k)
    hops = hop_distances(COCO)
    pairs = set(COCO.flip_pairs) | {(j, i) for i, j in COCO.flip_pairs}
    for h in range(heads):
        for i in range(k):
            for j in range(k):
                ref = layer.hop_bias[min(hops[i][j], 4), h] + layer.sym_bias[h] * ((i, j) in pairs)
                assert torch.isclose(bias[0, h, i, j], ref)


@pytest.mark.parametrize(
    ("key", "param", "per_layer"), [("GRAPH_BIAS", "hop_bias", 9 * 4), ("SYM_BIAS", "sym_bias", 4)]
)
def test_structure_bias_acts_only_through_its_table(key: str, param: str, per_layer: int) -> None:
    on = tiny().eval()
    off = tiny(f"MODEL.SAT.{key}", False).eval()
    assert not any(param in n for n, _ in off.named_parameters())
    assert n_params(on) - n_params(off) == per_layer * len(on.sat_head.kpt_layers)
    nudge(on.sat_head)
    with torch.no_grad():
        for layer in on.sat_head.kpt_layers:
            getattr(layer, param).zero_()  # table at zero: the bias is switched on but has no effect
    missing, unexpected = load_pose_state_dict(off, on.state_dict(), strict=False)
    assert not missing and all(param in k for k in unexpected) and unexpected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(on(x), off(x)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        for layer in on.sat_head.kpt_layers:
            table = getattr(layer, param)  # not constant: a constant bias on every logit would cancel
            table.copy_(torch.linspace(-2.0, 2.0, table.numel()).view_as(table))
        assert (on(x)[0] - off(x)[0]).abs().max() > 1e-5


# --------------------------------------------------------------------------------------------------
# switches
@pytest.mark.parametrize(
    "opts",
    [
        ("MODEL.SAT.PIXEL_LAYERS", 0),
        ("MODEL.SAT.KPT_LAYERS", 0),
        ("MODEL.SAT.BACK_PROJECT", False),
        ("MODEL.SAT.DYN_HEATMAP", False),
        ("MODEL.SAT.GRAPH_BIAS", False, "MODEL.SAT.SYM_BIAS", False),
        ("MODEL.SAT.PIXEL_LAYERS", 0, "MODEL.SAT.KPT_LAYERS", 0),
        ("MODEL.SAT.HEADS", 2, "MODEL.SAT.FFN_RATIO", 4, "MODEL.SAT.PIXEL_LAYERS", 2, "MODEL.SAT.KPT_LAYERS", 2),
    ],
    ids=lambda o: " ".join(map(str, o)),
)
def test_ablation_switches_build_and_train(opts: tuple) -> None:
    model = tiny(*opts).train()
    nudge(model.sat_head)
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    # every parameter of the head takes part (DDP without find_unused_parameters needs that)
    assert all(p.grad is not None for p in model.sat_head.parameters())
    names = {n for n, _ in model.sat_head.named_parameters()}
    if dict(zip(opts[::2], opts[1::2])).get("MODEL.SAT.KPT_LAYERS") == 0:
        assert not any(k in n for n in names for k in ("kpt", "gamma1", "back_", "dyn_"))


def test_keypoint_tokens_without_an_output_are_rejected() -> None:
    with pytest.raises(ValueError, match="KPT_LAYERS"):
        tiny("MODEL.SAT.BACK_PROJECT", False, "MODEL.SAT.DYN_HEATMAP", False)


def test_dropout_is_train_only() -> None:
    """MODEL.SAT.DROPOUT randomises the outputs in train mode and is off in eval mode.

    A twin built with DROPOUT 0 gets the same weights (dropout has no parameters), so in eval mode the two
    must agree exactly; in train mode the twin is deterministic (BN uses the batch statistics), so two
    forwards of the dropout model that differ from each other and from the twin show the dropout acting.
    Eval runs first: train-mode forwards move the BN running statistics."""
    model = tiny("MODEL.SAT.DROPOUT", 0.5)
    nudge(model.sat_head)
    twin = tiny("MODEL.SAT.DROPOUT", 0.0)
    twin.load_state_dict(model.state_dict())
    torch.manual_seed(6)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        twin.eval()
        for a, b in zip(model(x), twin(x)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        for a, b in zip(model(x), model(x)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)

        model.train()
        twin.train()
        plain = twin(x)
        for a, b in zip(twin(x), plain):  # no dropout: train mode is deterministic
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.manual_seed(7)
        first, second = model(x), model(x)
    for i in range(2):  # both resolutions go through the head
        assert (first[i] - second[i]).abs().max() > 1e-3, i
        assert (first[i] - plain[i]).abs().max() > 1e-3, i


# --------------------------------------------------------------------------------------------------
# gradients and training
def test_gradients_reach_every_head_parameter() -> None:
    model = tiny().train()
    nudge(model.sat_head, scale=0.1)
    torch.manual_seed(4)
    out = model(torch.randn(2, 3, 64, 64))
    weights = [torch.randn_like(o) for o in out]
    sum((o * w).mean() for o, w in zip(out, weights)).backward()
    for name, p in model.sat_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _synthetic_batch(batch: int, size: int, out_sizes: list[int], k: int, people: int = 2, sigma: float = 1.5):
    """Random images, Gaussian heatmaps at random joints, all-ones masks, AE joint indices."""
    g = torch.Generator().manual_seed(5)
    images = torch.randn(batch, 3, size, size, generator=g)
    points = torch.rand(batch, people, k, 2, generator=g) * 0.8 + 0.1  # normalised (x, y)
    heatmaps, masks, joints = [], [], []
    for r in out_sizes:
        xy = points * r
        grid = torch.arange(r, dtype=torch.float32)
        gx = torch.exp(-((grid[None, None, None, :] - xy[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, P, K, R)
        gy = torch.exp(-((grid[None, None, None, :] - xy[..., 1:2]) ** 2) / (2 * sigma**2))
        heatmaps.append((gy[..., :, None] * gx[..., None, :]).amax(dim=1))  # (B, K, R, R)
        masks.append(torch.ones(batch, r, r))
        flat = torch.arange(k)[None, None, :] * r * r + xy[..., 1].long() * r + xy[..., 0].long()
        joints.append(torch.stack((flat, torch.ones_like(flat)), dim=-1))  # (B, P, K, 2)
    return images, heatmaps, masks, joints


def test_training_steps_lower_the_loss() -> None:
    cfg = load_cfg(TINY_SAT, "DATASET.INPUT_SIZE", 64, "DATASET.OUTPUT_SIZE", "[16, 32]")
    torch.manual_seed(0)
    model = build_model(cfg, is_train=True).train()
    loss_fn = MultiLossFactory(cfg)
    images, heatmaps, masks, joints = _synthetic_batch(2, 64, [16, 32], cfg.MODEL.NUM_JOINTS)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step() -> float:
        outputs = model(images)
        hm, push, pull = loss_fn(outputs, heatmaps, masks, joints)
        loss = sum(t.mean() for t in hm + push + pull if t is not None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    # the first loss is HigherHRNet's at init (near-zero outputs); 8 Adam steps on the same batch
    losses = [step() for _ in range(8)]
    assert losses[-1] < 0.85 * losses[0], losses
    assert model.sat_head.gamma2.abs().sum() > 0  # the head's gates opened


# --------------------------------------------------------------------------------------------------
# W32: parameter counts, MACs, checkpoint compatibility
@pytest.fixture(scope="module")
def w32_coco() -> HigherPoseNet:
    return build_model(load_cfg(W32_SAT_COCO), is_train=False).eval()


def test_w32_parameter_counts(w32_coco: HigherPoseNet) -> None:
    head = n_params(w32_coco.sat_head)
    assert head == HEAD_PARAMS_COCO and 0.35e6 <= head <= 0.45e6
    total = n_params(w32_coco)
    assert total == HRNET_W32_COCO + HEAD_PARAMS_COCO and 28.9e6 <= total <= 29.2e6
    # the component budget of the design note (section 2.3), d = 64, K = 17
    parts = {name: n_params(m) for name, m in w32_coco.sat_head.named_children()}
    assert parts["tokenizer"] == 18_560 and parts["peg"] == 640
    assert parts["pixel_layers"] == 3 * 49_984 and parts["kpt_layers"] == 3 * 66_792
    assert parts["up_proj"] == 2_112 and parts["dyn_linear"] == 2_145 and parts["back_attn"] == 16_640
    assert w32_coco.sat_head.kpt_embed.numel() + w32_coco.sat_head.kpt_pos.numel() == 2 * 17 * 64


def test_w32_crowdpose_and_stride16_counts() -> None:
    crowd = build_model(load_cfg(W32_SAT_CROWD), is_train=False)
    assert n_params(crowd.sat_head) == HEAD_PARAMS_CROWD
    assert n_params(crowd) == HRNET_W32_CROWD + HEAD_PARAMS_CROWD
    assert crowd.sat_head.hop_index.shape == (14, 14)
    stride16 = build_model(load_cfg(W32_SAT_COCO, "MODEL.SAT.TOKEN_STRIDE", 16), is_train=False)
    assert n_params(stride16.sat_head) == HEAD_PARAMS_COCO  # pooling adds no parameters


def test_w32_head_macs_at_256(w32_coco: HigherPoseNet) -> None:
    report = count_macs(w32_coco, torch.zeros(1, 3, 256, 256))
    parts = report.by_prefix({"sat_head": ["sat_head"]})
    assert parts["sat_head"] == 629_407_168  # the design note: +0.63 G at 256
    assert report.total == 11_550_851_072 + 629_407_168  # HigherHRNet-W32 at 256 + head


def test_higher_hrnet_checkpoint_loads_with_only_head_keys_missing(w32_coco: HigherPoseNet) -> None:
    hrnet = build_model(load_cfg(EXPERIMENTS / "coco/higher_hrnet/w32_256_adam_lr1e-3.yaml"), is_train=False)
    sd = {f"module.{k}": v for k, v in hrnet.state_dict().items()}  # as saved from DDP
    missing, unexpected = load_pose_state_dict(w32_coco, sd, strict=False)
    assert not unexpected
    assert set(missing) == {k for k in w32_coco.state_dict() if k.startswith("sat_head.")}
    assert torch.equal(
        w32_coco.state_dict()["stage4.2.fuse_layers.0.3.0.weight"], hrnet.stage4[2].fuse_layers[0][3][0].weight
    )
