"""Layers of the SAT head (:mod:`higherpose.models.sat_head`): position codes, the token-to-map
upsampling, attention, the pixel-encoder layers (attention or its depthwise-conv control) and the
keypoint-decoder layer.

Geometry of the tokens on the 1/4 map (used by :func:`upsample_tokens`): the tokeniser's Conv 3x3
stride 2 padding 1 centres token ``i`` on map pixel ``2 i``; the stride-16 AvgPool2d(2) averages
tokens ``2 j`` and ``2 j + 1`` of that grid, so token ``j`` sits on map pixel ``4 j + 1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Map pixels per token and the map pixel of token 0, by token stride (w.r.t. the network input).
TOKEN_GEOMETRY = {8: (2, 0), 16: (4, 1)}


def sine_position_embedding(
    height: int,
    width: int,
    dim: int,
    temperature: float = 1e4,
    device: Any = None,
    dtype: Any = None,
    normalize: bool = True,
) -> torch.Tensor:
    """2-D sine encoding of a ``height x width`` token grid.

    With ``normalize`` (the version-1 head): ``y_i = (i + 1/2) / height * 2 pi`` (same for x), so the
    code depends on the grid size. Without it: ``y_i = i`` in token units, so two tokens ``n`` tokens
    apart get the same pair of codes on a training crop and on a larger test image. With
    ``n = dim / 4`` frequencies ``temperature^(k / n)``, the features are ``[sin y, cos y, sin x, cos x]``.

    Returns:
        ``(height * width, dim)``, row-major over the grid (the order of ``flatten(2)``).
    """
    if dim % 4:
        raise ValueError(f"sine position embedding: dim = {dim} must be divisible by 4")
    n = dim // 4
    freq = temperature ** (torch.arange(n, device=device, dtype=torch.float32) / n)
    y = torch.arange(height, device=device, dtype=torch.float32)
    x = torch.arange(width, device=device, dtype=torch.float32)
    if normalize:
        y = (y + 0.5) / height * (2 * math.pi)
        x = (x + 0.5) / width * (2 * math.pi)
    py = y[:, None] / freq  # (h, n)
    px = x[:, None] / freq  # (w, n)
    emb_y = torch.cat((py.sin(), py.cos()), dim=1)[:, None, :].expand(height, width, 2 * n)
    emb_x = torch.cat((px.sin(), px.cos()), dim=1)[None, :, :].expand(height, width, 2 * n)
    return torch.cat((emb_y, emb_x), dim=2).reshape(height * width, dim).to(dtype or torch.float32)


def upsample_tokens(y: torch.Tensor, size: tuple[int, int], token_stride: int) -> torch.Tensor:
    """Token grid ``y (B, d, h, w)`` -> ``(B, d, H, W)`` on the 1/4 map, bilinear between the tokens'
    own centres (:data:`TOKEN_GEOMETRY`): a token's value peaks on the map pixel it is centred on.

    ``F.interpolate(align_corners=False)`` instead puts token ``i`` at ``step i + (step - 1) / 2``:
    half a map pixel (stride 8) or 1.5 map pixels minus the pool's 1 (stride 16) off its centre."""
    step, offset = TOKEN_GEOMETRY[token_stride]
    height, width = size
    h, w = y.shape[-2:]
    # align_corners=True on (step (n - 1) + 1) pixels: pixel p is token p / step exactly
    y = F.interpolate(y, size=(step * (h - 1) + 1, step * (w - 1) + 1), mode="bilinear", align_corners=True)
    # shift by the first token's pixel and reach the map size: crop what lies beyond, repeat the border
    y = y[..., : height - offset, : width - offset]
    pad_bottom, pad_right = height - offset - y.shape[-2], width - offset - y.shape[-1]
    return F.pad(y, (offset, pad_right, offset, pad_bottom), mode="replicate")


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

    def forward(self, p: torch.Tensor, pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``grid``: the token grid ``(h, w)`` with ``h w = N`` (unused here; the conv control needs it)."""
        u = self.norm(p)
        qk = u + pos
        p = p + self.drop(self.attn(qk, qk, u))
        return p + self.ffn(p)


class ConvMixerLayer(nn.Module):
    """The pixel encoder layer with its attention replaced by a depthwise ``kernel x kernel`` conv of
    the same width: ``P <- P + DWConv(LN(P)); P <- P + FFN(LN(P))`` on ``P (B, N, d)`` laid out on the
    ``(h, w)`` grid. A control: it sees a fixed neighbourhood (7 x 7 tokens) where attention sees the
    whole image, with the FFN, the norms and the rest of the head unchanged."""

    def __init__(self, dim: int, ffn_hidden: int, kernel: int = 7, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.dwconv = nn.Conv2d(dim, dim, kernel, 1, kernel // 2, groups=dim)
        self.ffn = FeedForward(dim, ffn_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, p: torch.Tensor, pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``pos`` is unused: the convolution's taps know the offsets."""
        b, n, d = p.shape
        u = self.norm(p).transpose(1, 2).reshape(b, d, *grid)
        p = p + self.drop(self.dwconv(u).flatten(2).transpose(1, 2))
        return p + self.ffn(p)


class KeypointDecoderLayer(nn.Module):
    """Keypoint-type tokens ``T (B, K, d)``: cross-attention to the pixel memory, structure-biased
    self-attention, FFN (``image_first``); or, as the version-1 head, the self-attention first.

    The order matters in the first layer, whose input is the same learned vector for every image:
    self-attention first only re-parameterises that vector, and with one layer the skeleton prior never
    sees the image. Cross-attention first gives the prior image-conditioned tokens in every layer.

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
        image_first: bool = True,
    ):
        super().__init__()
        self.image_first = image_first
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
        if self.image_first:
            t = self._cross(t, query_pos, memory, memory_pos)
            t = self._self(t, query_pos, hop_index, sym_mask)
        else:
            t = self._self(t, query_pos, hop_index, sym_mask)
            t = self._cross(t, query_pos, memory, memory_pos)
        return t + self.ffn(t)

    def _self(
        self, t: torch.Tensor, query_pos: torch.Tensor, hop_index: torch.Tensor, sym_mask: torch.Tensor
    ) -> torch.Tensor:
        u = self.norm_self(t)
        qk = u + query_pos
        return t + self.drop(self.self_attn(qk, qk, u, self.attention_bias(hop_index, sym_mask)))

    def _cross(
        self, t: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor
    ) -> torch.Tensor:
        return t + self.drop(self.cross_attn(self.norm_cross(t) + query_pos, memory + memory_pos, memory))
