"""SAT head: the structure-aware transformer head of ``higher_pose``.

It sits between HRNet's stage-4 high-resolution output ``X (B, C, H, W)`` (1/4 of the input) and
HigherHRNet's unchanged heads, and returns ``X'`` (same shape) plus an optional dynamic heatmap term
``D (B, K, H, W)`` that is added to the 1/4 heatmaps:

1. tokeniser: Conv3x3 s2 + BN + ReLU (stride 8 w.r.t. the input; an AvgPool2d(2) more for stride 16),
   then a depthwise 3x3 conditional position encoding (PEG) and a 2-D sine encoding computed on every
   forward from normalised coordinates, so any H x W works;
2. pixel encoder: pre-LN self-attention layers over the pixel tokens;
3. keypoint decoder: K learned keypoint-type tokens; self-attention with a learned bias per skeleton
   hop distance and per left/right pair, cross-attention to the pixel tokens, FFN;
4. back-projection: pixels attend to the keypoint tokens (gate ``gamma1``), bilinear upsampling and a
   1x1 conv + BN back to C channels (gate ``gamma2``);
5. dynamic heatmap: each keypoint token predicts a 1x1 kernel and bias applied to ``X'``.

Both gates and the dynamic-heatmap Linear start at zero, so at initialisation the model computes
exactly HigherHRNet. All attention goes through ``F.scaled_dot_product_attention`` on batch-first
``(B, heads, N, d)`` tensors: tokens never attend across images (the original HigherPose code did).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from higherpose.models.blocks import BN_MOMENTUM


def sine_position_embedding(
    height: int, width: int, dim: int, temperature: float = 1e4, device: Any = None, dtype: Any = None
) -> torch.Tensor:
    """2-D sine encoding of a ``height x width`` grid from normalised coordinates.

    ``y_i = (i + 1/2) / height * 2 pi`` (same for x); with ``n = dim / 4`` frequencies
    ``temperature^(k / n)``, the features are ``[sin y, cos y, sin x, cos x]`` (n each).

    Returns:
        ``(height * width, dim)``, row-major over the grid (the order of ``flatten(2)``).
    """
    if dim % 4:
        raise ValueError(f"sine position embedding: dim = {dim} must be divisible by 4")
    n = dim // 4
    freq = temperature ** (torch.arange(n, device=device, dtype=torch.float32) / n)
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * (2 * math.pi)
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * (2 * math.pi)
    py = y[:, None] / freq  # (h, n)
    px = x[:, None] / freq  # (w, n)
    emb_y = torch.cat((py.sin(), py.cos()), dim=1)[:, None, :].expand(height, width, 2 * n)
    emb_x = torch.cat((px.sin(), px.cos()), dim=1)[None, :, :].expand(height, width, 2 * n)
    return torch.cat((emb_y, emb_x), dim=2).reshape(height * width, dim).to(dtype or torch.float32)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (4 x (d^2 + d) parameters).

    ``forward(query (B, Nq, d), key (B, Nk, d), value (B, Nk, d), bias (1|B, heads, Nq, Nk) | None)``
    returns ``(B, Nq, d)``. ``bias`` is added to the attention logits (SDPA's float ``attn_mask``).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: dim = {dim} must be divisible by num_heads = {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, h, N, d_h)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = query.shape
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        if bias is not None:
            bias = bias.to(q.dtype)  # SDPA wants the float mask in the query's dtype (autocast)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, Nq, d_h)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """Pre-LN FFN ``Linear(d, r d) -> GELU -> Linear(r d, d)`` (its LayerNorm included): ``(B, N, d)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm(x))))))


class PixelEncoderLayer(nn.Module):
    """``P <- P + MHSA(Q=K=LN(P)+E, V=LN(P)); P <- P + FFN(LN(P))`` on ``P (B, N, d)``, ``E (1, N, d)``."""

    def __init__(self, dim: int, num_heads: int, ffn_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, ffn_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, p: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        u = self.norm(p)
        qk = u + pos
        p = p + self.drop(self.attn(qk, qk, u))
        return p + self.ffn(p)


class KeypointDecoderLayer(nn.Module):
    """Keypoint-type tokens ``T (B, K, d)``: structure-biased self-attention, cross-attention to the
    pixel memory, FFN.

    The self-attention logits of head h get ``hop_bias[hop(i, j), h]`` (Graphormer spatial encoding;
    ``num_hops`` entries, None = off) and ``sym_bias[h]`` where ``(i, j)`` is a left/right pair
    (``sym`` False = off). Both tables start at zero and are the only way the skeleton enters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        num_hops: int | None,
        sym: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout)
        self.hop_bias = nn.Parameter(torch.zeros(num_hops, num_heads)) if num_hops else None
        self.sym_bias = nn.Parameter(torch.zeros(num_heads)) if sym else None
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, ffn_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def attention_bias(self, hop_index: torch.Tensor, sym_mask: torch.Tensor) -> torch.Tensor | None:
        """``(1, heads, K, K)`` logit bias from ``hop_index (K, K) long`` and ``sym_mask (K, K) float``,
        or None when both biases are off (shared by all images: broadcast over B)."""
        bias = None
        if self.hop_bias is not None:
            bias = self.hop_bias[hop_index].permute(2, 0, 1)  # (h, K, K)
        if self.sym_bias is not None:
            sym = self.sym_bias[:, None, None] * sym_mask
            bias = sym if bias is None else bias + sym
        return None if bias is None else bias[None]

    def forward(
        self,
        t: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        hop_index: torch.Tensor,
        sym_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``t (B, K, d)``, ``query_pos (1, K, d)``, ``memory (B, N, d)`` (already normalised),
        ``memory_pos (1, N, d)`` -> ``(B, K, d)``."""
        u = self.norm_self(t)
        qk = u + query_pos
        t = t + self.drop(self.self_attn(qk, qk, u, self.attention_bias(hop_index, sym_mask)))
        t = t + self.drop(self.cross_attn(self.norm_cross(t) + query_pos, memory + memory_pos, memory))
        return t + self.ffn(t)


class SATHead(nn.Module):
    """Structure-aware transformer head.

    Args:
        in_channels: C, channels of the HRNet 1/4 feature map (32 for W32).
        num_joints: K keypoint types.
        hop_distances: ``K x K`` skeleton hop counts (:func:`higherpose.dataset.specs.hop_distances`).
        flip_pairs: left/right joint pairs ``(i, j)``.
        d_model, num_heads, pixel_layers, kpt_layers, ffn_ratio, dropout: transformer sizes.
        token_stride: 8 or 16 (pixel-token stride w.r.t. the network input).
        graph_bias / max_hop: learned bias per hop distance, distances clamped to ``max_hop``.
        sym_bias: learned bias between left/right pairs.
        back_project: pixels attend back to the keypoint tokens (gate ``gamma1``).
        dyn_heatmap: the tokens predict a per-keypoint 1x1 heatmap kernel.

    ``kpt_layers = 0`` builds no keypoint tokens (and so no back-projection, biases or dynamic term).

    ``forward(x (B, C, H, W))`` -> ``(x' (B, C, H, W), D (B, K, H, W) | None)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_joints: int,
        hop_distances: Sequence[Sequence[int]],
        flip_pairs: Sequence[tuple[int, int]],
        *,
        d_model: int = 64,
        num_heads: int = 4,
        pixel_layers: int = 3,
        kpt_layers: int = 3,
        ffn_ratio: float = 4,
        token_stride: int = 8,
        graph_bias: bool = True,
        max_hop: int = 8,
        sym_bias: bool = True,
        back_project: bool = True,
        dyn_heatmap: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if token_stride not in (8, 16):
            raise ValueError(f"SAT head: token_stride = {token_stride}: choose 8 or 16")
        if kpt_layers > 0 and not (back_project or dyn_heatmap):
            # the tokens would reach no output: their parameters would get no gradient (and DDP fails)
            raise ValueError(
                "SAT head: KPT_LAYERS > 0 but BACK_PROJECT and DYN_HEATMAP are both off, so the keypoint "
                "tokens reach no output; set MODEL.SAT.KPT_LAYERS 0 or switch one of them on"
            )
        hops = torch.as_tensor(hop_distances, dtype=torch.long)
        if hops.shape != (num_joints, num_joints):
            raise ValueError(f"SAT head: hop_distances has shape {tuple(hops.shape)}, expected K x K = {num_joints}")
        self.in_channels = in_channels
        self.num_joints = num_joints
        self.d_model = d_model
        self.with_keypoints = kpt_layers > 0
        self.back_project = back_project and self.with_keypoints
        self.dyn_heatmap = dyn_heatmap and self.with_keypoints
        ffn_hidden = int(round(ffn_ratio * d_model))

        # 1. tokeniser (+ PEG); stride 16 pools once more before the PEG so it sees the final grid
        self.tokenizer = nn.Sequential(
            nn.Conv2d(in_channels, d_model, 3, 2, 1, bias=False),
            nn.BatchNorm2d(d_model, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if token_stride == 16 else nn.Identity()
        self.peg = nn.Conv2d(d_model, d_model, 3, 1, 1, groups=d_model)

        # 2. pixel encoder
        self.pixel_layers = nn.ModuleList(
            PixelEncoderLayer(d_model, num_heads, ffn_hidden, dropout) for _ in range(pixel_layers)
        )

        # 3. keypoint decoder (only what reaches an output is built)
        if self.with_keypoints:
            self.memory_norm = nn.LayerNorm(d_model)
            self.kpt_embed = nn.Parameter(torch.zeros(num_joints, d_model))
            self.kpt_pos = nn.Parameter(torch.zeros(num_joints, d_model))
            num_hops = max_hop + 1 if graph_bias else None
            self.kpt_layers = nn.ModuleList(
                KeypointDecoderLayer(d_model, num_heads, ffn_hidden, num_hops, sym_bias, dropout)
                for _ in range(kpt_layers)
            )
            self.kpt_norm = nn.LayerNorm(d_model)
            sym = torch.zeros(num_joints, num_joints)
            for i, j in flip_pairs:
                sym[i, j] = sym[j, i] = 1.0
            # derived from the dataset spec on every build: not saved in checkpoints
            self.register_buffer("hop_index", hops.clamp(max=max_hop), persistent=False)
            self.register_buffer("sym_mask", sym, persistent=False)

        # 4. back-projection to the 1/4 map
        if self.back_project:
            self.back_norm = nn.LayerNorm(d_model)
            self.back_attn = Attention(d_model, num_heads, dropout)
            self.gamma1 = nn.Parameter(torch.zeros(d_model))
        self.up_proj = nn.Sequential(
            nn.Conv2d(d_model, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels, momentum=BN_MOMENTUM)
        )
        self.gamma2 = nn.Parameter(torch.zeros(in_channels))

        # 5. dynamic heatmap: token k -> [w_k (C); c_k]
        if self.dyn_heatmap:
            self.dyn_linear = nn.Linear(d_model, in_channels + 1)

        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: Any, in_channels: int) -> dict[str, Any]:
        """Constructor arguments from ``MODEL.SAT`` and the dataset spec (read once, plain values)."""
        from higherpose.dataset.specs import hop_distances, spec_from_cfg

        spec = spec_from_cfg(cfg)
        if spec.num_joints != cfg.MODEL.NUM_JOINTS:
            raise ValueError(
                f"MODEL.NUM_JOINTS = {cfg.MODEL.NUM_JOINTS} but the dataset spec {spec.name} has "
                f"{spec.num_joints} joints (DATASET.NUM_JOINTS / WITH_CENTER)"
            )
        sat = cfg.MODEL.SAT
        return dict(
            in_channels=int(in_channels),
            num_joints=spec.num_joints,
            hop_distances=hop_distances(spec),
            flip_pairs=spec.flip_pairs,
            d_model=int(sat.D_MODEL),
            num_heads=int(sat.HEADS),
            pixel_layers=int(sat.PIXEL_LAYERS),
            kpt_layers=int(sat.KPT_LAYERS),
            ffn_ratio=float(sat.FFN_RATIO),
            token_stride=int(sat.TOKEN_STRIDE),
            graph_bias=bool(sat.GRAPH_BIAS),
            max_hop=int(sat.MAX_HOP),
            sym_bias=bool(sat.SYM_BIAS),
            back_project=bool(sat.BACK_PROJECT),
            dyn_heatmap=bool(sat.DYN_HEATMAP),
            dropout=float(sat.DROPOUT),
        )

    def reset_parameters(self) -> None:
        """Transformer init (Linears normal(0.02) truncated at 2 std, unit LayerNorms, Kaiming convs, unit
        BNs), then the zero gates, zero biases and zero dynamic-heatmap Linear that make the head start
        as identity.

        Run after HigherHRNet's ``reset_parameters`` (which sets every Conv2d to N(0, 0.001^2))."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.with_keypoints:
            nn.init.trunc_normal_(self.kpt_embed, std=0.02, a=-0.04, b=0.04)
            nn.init.trunc_normal_(self.kpt_pos, std=0.02, a=-0.04, b=0.04)
            for layer in self.kpt_layers:
                if layer.hop_bias is not None:
                    nn.init.zeros_(layer.hop_bias)
                if layer.sym_bias is not None:
                    nn.init.zeros_(layer.sym_bias)
        if self.back_project:
            nn.init.zeros_(self.gamma1)
        nn.init.zeros_(self.gamma2)
        if self.dyn_heatmap:
            nn.init.zeros_(self.dyn_linear.weight)
            nn.init.zeros_(self.dyn_linear.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, C, H, W)`` -> ``(x' (B, C, H, W), D (B, K, H, W) or None)``."""
        b, c, height, width = x.shape
        z = self.pool(self.tokenizer(x))
        z = z + self.peg(z)
        h, w = z.shape[-2:]
        p = z.flatten(2).transpose(1, 2)  # (B, N, d), N = h * w
        pos = sine_position_embedding(h, w, self.d_model, device=x.device, dtype=p.dtype)[None]  # (1, N, d)
        for layer in self.pixel_layers:
            p = layer(p, pos)

        tokens = None
        if self.with_keypoints:
            memory = self.memory_norm(p)
            query_pos = self.kpt_pos[None]  # (1, K, d)
            t = self.kpt_embed[None].expand(b, -1, -1)
            for layer in self.kpt_layers:
                t = layer(t, query_pos, memory, pos, self.hop_index, self.sym_mask)
            tokens = self.kpt_norm(t)  # (B, K, d): image-conditioned keypoint-type embeddings
            if self.back_project:
                p = p + self.gamma1 * self.back_attn(self.back_norm(p) + pos, tokens + query_pos, tokens)

        y = p.transpose(1, 2).reshape(b, self.d_model, h, w)
        y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
        x = x + self.gamma2[:, None, None] * self.up_proj(y)

        dyn = None
        if self.dyn_heatmap:
            kernel = self.dyn_linear(tokens)  # (B, K, C + 1)
            # 1/sqrt(C), as in attention logits: Adam moves every zero-initialised weight by ~lr in its
            # first steps, and an unscaled C-channel dot product then shocks the heatmaps.
            dyn = torch.einsum("bkc,bchw->bkhw", kernel[..., :c], x) * c**-0.5 + kernel[..., c, None, None]
        return x, dyn
