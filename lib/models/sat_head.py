"""SAT head: the structure-aware transformer head of ``higher_pose``.

It sits between HRNet's stage-4 high-resolution output ``X (B, C, H, W)`` (1/4 of the input) and
HigherHRNet's unchanged heads, and returns ``X'`` (same shape) plus an optional dynamic heatmap term
``D (B, K, H, W)`` that is added to the 1/4 heatmaps:

1. tokeniser: Conv3x3 s2 + BN + ReLU (stride 8 w.r.t. the input; an AvgPool2d(2) more for stride 16),
   then a depthwise 3x3 conditional position encoding (PEG) and a 2-D sine encoding in token units
   computed on every forward, so any H x W works and a token offset means the same in training and
   at test;
2. pixel encoder: pre-LN self-attention layers over the pixel tokens (or, as a control, a depthwise
   7x7 conv in place of the attention);
3. keypoint decoder: K learned keypoint-type tokens; cross-attention to the pixel tokens, then
   self-attention with a learned bias per skeleton hop distance and per left/right pair, FFN;
4. back-projection: pixels attend to the keypoint tokens (gate ``gamma1``), bilinear upsampling with
   every token on the map pixel it is centred on, and a 1x1 conv + BN back to C channels (gate
   ``gamma2``): the residual;
5. dynamic heatmap: each keypoint token predicts a 1x1 kernel and bias applied to ``X'``.

Both gates and the dynamic-heatmap Linear start at zero, so at initialisation the model computes
exactly HigherHRNet. All attention goes through ``F.scaled_dot_product_attention`` on batch-first
``(B, heads, N, d)`` tensors: tokens never attend across images (the original HigherPose code did).

``version 1`` is the earlier head, kept for its checkpoints: ``F.interpolate(align_corners=False)``
back to the map (the residual half a 1/4-map pixel off at stride 8, 0.5 pixel at 16), the skeleton
self-attention before the cross-attention, and sine codes normalised to the token grid. Its state
dict has no ``head_version`` entry; version 2's has one, so each refuses the other's checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from higherpose.models.blocks import BN_MOMENTUM
from higherpose.models.sat_layers import (
    Attention,
    ConvMixerLayer,
    FeedForward,
    KeypointDecoderLayer,
    PixelEncoderLayer,
    sine_position_embedding,
    upsample_tokens,
)

# The head's version (MODEL.SAT.VERSION): 2 is the default; 1 reproduces the earlier head for its checkpoints.
HEAD_VERSIONS = (1, 2)
PIXEL_MIXERS = ("attention", "conv")
# Kernel of the depthwise conv that replaces the pixel attention in the 'conv' control.
CONV_MIXER_KERNEL = 7

__all__ = ["HEAD_VERSIONS", "PIXEL_MIXERS", "Attention", "FeedForward", "SATHead", "sine_position_embedding"]


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
        residual: the pixel tokens are upsampled and added to ``x`` (False: ``x`` passes unchanged and
            the dynamic heatmap is the head's only output).
        pixel_mixer: ``'attention'``, or ``'conv'``: a depthwise 7x7 conv of the same width in place of
            the pixel self-attention (a control that separates attention from local context).
        version: 2, or 1 for the earlier head (module docstring).

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
        residual: bool = True,
        pixel_mixer: str = "attention",
        version: int = 2,
    ):
        super().__init__()
        if token_stride not in (8, 16):
            raise ValueError(f"SAT head: token_stride = {token_stride}: choose 8 or 16")
        if version not in HEAD_VERSIONS:
            raise ValueError(f"SAT head: version = {version}: choose one of {HEAD_VERSIONS}")
        if pixel_mixer not in PIXEL_MIXERS:
            raise ValueError(f"SAT head: pixel_mixer = {pixel_mixer!r}: choose one of {PIXEL_MIXERS}")
        if not residual and back_project and kpt_layers > 0:
            raise ValueError(
                "SAT head: RESIDUAL False but BACK_PROJECT True: the back-projection only changes the residual; "
                "set MODEL.SAT.BACK_PROJECT False"
            )
        if not residual and not (dyn_heatmap and kpt_layers > 0):
            raise ValueError(
                "SAT head: RESIDUAL False leaves the dynamic heatmap as the only output, which needs "
                "MODEL.SAT.DYN_HEATMAP True and KPT_LAYERS > 0"
            )
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
        self.token_stride = token_stride
        self.version = version
        self.residual = residual
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
        if pixel_mixer == "conv":
            layers = [ConvMixerLayer(d_model, ffn_hidden, CONV_MIXER_KERNEL, dropout) for _ in range(pixel_layers)]
        else:
            layers = [PixelEncoderLayer(d_model, num_heads, ffn_hidden, dropout) for _ in range(pixel_layers)]
        self.pixel_layers = nn.ModuleList(layers)

        # 3. keypoint decoder (only what reaches an output is built)
        if self.with_keypoints:
            self.memory_norm = nn.LayerNorm(d_model)
            self.kpt_embed = nn.Parameter(torch.zeros(num_joints, d_model))
            self.kpt_pos = nn.Parameter(torch.zeros(num_joints, d_model))
            num_hops = max_hop + 1 if graph_bias else None
            self.kpt_layers = nn.ModuleList(
                KeypointDecoderLayer(d_model, num_heads, ffn_hidden, num_hops, sym_bias, dropout, version >= 2)
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
        if residual:
            self.up_proj = nn.Sequential(
                nn.Conv2d(d_model, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels, momentum=BN_MOMENTUM)
            )
            self.gamma2 = nn.Parameter(torch.zeros(in_channels))

        # 5. dynamic heatmap: token k -> [w_k (C); c_k]
        if self.dyn_heatmap:
            self.dyn_linear = nn.Linear(d_model, in_channels + 1)

        if version >= 2:  # marks the checkpoint (version 1's state dict is the earlier head's, unchanged)
            self.register_buffer("head_version", torch.tensor(version, dtype=torch.long))
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
            residual=bool(sat.RESIDUAL),
            pixel_mixer=str(sat.PIXEL_MIXER),
            version=int(sat.VERSION),
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
        if self.residual:
            nn.init.zeros_(self.gamma2)
        if self.dyn_heatmap:
            nn.init.zeros_(self.dyn_linear.weight)
            nn.init.zeros_(self.dyn_linear.bias)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Refuse a checkpoint of the other head version (a HigherHRNet one, without any head key, loads)."""
        if any(k.startswith(prefix) for k in state_dict):
            stored = state_dict.get(prefix + "head_version")
            stored = 1 if stored is None else int(stored)
            if stored != self.version:
                raise ValueError(
                    f"the checkpoint holds the SAT head of MODEL.SAT.VERSION {stored}, the model is version "
                    f"{self.version}: set MODEL.SAT.VERSION {stored} to load it (docs/higher_pose.md)"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, C, H, W)`` -> ``(x' (B, C, H, W), D (B, K, H, W) or None)``."""
        b, c, height, width = x.shape
        z = self.pool(self.tokenizer(x))
        z = z + self.peg(z)
        h, w = z.shape[-2:]
        p = z.flatten(2).transpose(1, 2)  # (B, N, d), N = h * w
        normalize = self.version == 1
        pos = sine_position_embedding(h, w, self.d_model, device=x.device, dtype=p.dtype, normalize=normalize)
        pos = pos[None]  # (1, N, d)
        for layer in self.pixel_layers:
            p = layer(p, pos, (h, w))

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

        if self.residual:
            y = p.transpose(1, 2).reshape(b, self.d_model, h, w)
            if self.version == 1:
                y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
            else:
                y = upsample_tokens(y, (height, width), self.token_stride)
            x = x + self.gamma2[:, None, None] * self.up_proj(y)

        dyn = None
        if self.dyn_heatmap:
            kernel = self.dyn_linear(tokens)  # (B, K, C + 1)
            # 1/sqrt(C), as in attention logits: Adam moves every zero-initialised weight by ~lr in its
            # first steps, and an unscaled C-channel dot product then shocks the heatmaps.
            dyn = torch.einsum("bkc,bchw->bkhw", kernel[..., :c], x) * c**-0.5 + kernel[..., c, None, None]
        return x, dyn
