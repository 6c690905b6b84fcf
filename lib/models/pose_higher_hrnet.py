"""HigherHRNet: HRNet backbone + higher-resolution deconvolution head (the baseline model).

Module names and order are exactly the official ``pose_higher_hrnet.py``'s, so state dicts of the
official checkpoints load unchanged (see :mod:`higherpose.utils.checkpoint` for prefixes and fp16).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
from torch import nn

from higherpose.models.blocks import BLOCKS, BN_MOMENTUM, BasicBlock, Bottleneck, HighResolutionModule, make_layer

logger = logging.getLogger(__name__)

_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}  # kernel -> (padding, output_padding)


HEATMAP_PRIOR = 0.01  # initial heatmap probability under LOSS.HEATMAPS_LOSS_TYPE 'qfl'


def heatmaps_are_logits(cfg: Any) -> bool:
    """Whether the config's heatmap loss trains the heatmap channels as logits ('qfl')."""
    return cfg.LOSS.get("HEATMAPS_LOSS_TYPE", "mse") == "qfl"


def has_scale_maps(cfg: Any) -> bool:
    """Whether the config's heatmap loss is SWAHR's ('swahr'): the network grows scale branches."""
    return cfg.LOSS.get("HEATMAPS_LOSS_TYPE", "mse") == "swahr"


def heatmap_probabilities(output: torch.Tensor, num_joints: int) -> torch.Tensor:
    """(B, C, H, W) with heatmap logits in the first ``num_joints`` channels -> the same with their
    sigmoid (the tag channels untouched)."""
    return torch.cat((torch.sigmoid(output[:, :num_joints]), output[:, num_joints:]), dim=1)


class PoseHigherResolutionNet(nn.Module):
    """HRNet-W{C} with HigherHRNet heads.

    ``forward(x: (B, 3, H, W))`` returns ``[(B, K + K_tag, H/4, W/4), (B, K, H/2, W/2)]``
    (K heatmaps + K tag maps at 1/4, K heatmaps at 1/2) for the official two-stage configs.

    With ``LOSS.HEATMAPS_LOSS_TYPE 'swahr'`` each stage has SWAHR's scale branch ``conv_scale_layers[i]``
    (Conv1x1 C -> K with bias, BN, ReLU, depthwise Conv9x9 K -> K with bias, the last conv starting at
    zero) on the features that ``final_layers[i]`` reads; in training mode stage ``i`` returns
    ``cat([scale (K), heatmaps, tags])`` (SWAHR's layout), in eval mode the outputs above, since
    nothing at test time uses the scale maps. The deconv branch takes the heatmaps and tags either way.
    """

    def __init__(self, cfg: Any):
        super().__init__()
        extra = cfg.MODEL.EXTRA
        self.init_scheme = cfg.MODEL.get("INIT_SCHEME", "higherhrnet")
        # LOSS.HEATMAPS_LOSS_TYPE 'qfl' trains the heatmap channels as logits; in eval mode the model
        # returns their sigmoid, so grouping, the demo and ONNX see probabilities as with 'mse'.
        self.heatmaps_as_logits = heatmaps_are_logits(cfg)
        self.with_scale_maps = has_scale_maps(cfg)
        # HigherHRNet hard-codes the stem width (64) and layer1 (4 Bottlenecks of 64 planes) and ignores
        # STEM_INPLANES / STAGE1. We honour STEM_INPLANES and the optional STAGE1.NUM_BLOCKS /
        # NUM_CHANNELS so tiny CPU configs can shrink the stem, which dominates a narrow HRNet's cost;
        # every official YAML says 64 (or nothing), so the official architecture is unchanged.
        stem = extra.get("STEM_INPLANES", 64)
        stage1 = extra.get("STAGE1", {})
        layer1_blocks = stage1.get("NUM_BLOCKS", [4])[0]
        layer1_planes = stage1.get("NUM_CHANNELS", [64])[0]

        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, stem, layer1_planes, layer1_blocks)

        self.stage2_cfg = extra.STAGE2
        channels = self._stage_channels(self.stage2_cfg)
        self.transition1 = self._make_transition_layer([layer1_planes * Bottleneck.expansion], channels)
        self.stage2, pre = self._make_stage(self.stage2_cfg, channels)

        self.stage3_cfg = extra.STAGE3
        channels = self._stage_channels(self.stage3_cfg)
        self.transition2 = self._make_transition_layer(pre, channels)
        self.stage3, pre = self._make_stage(self.stage3_cfg, channels)

        self.stage4_cfg = extra.STAGE4
        channels = self._stage_channels(self.stage4_cfg)
        self.transition3 = self._make_transition_layer(pre, channels)
        self.stage4, pre = self._make_stage(self.stage4_cfg, channels, multi_scale_output=False)

        self.num_joints = cfg.MODEL.NUM_JOINTS
        self.dim_tag = cfg.MODEL.NUM_JOINTS if cfg.MODEL.TAG_PER_JOINT else 1
        self.with_ae_loss = list(cfg.LOSS.WITH_AE_LOSS)
        self.deconv_config = extra.DECONV
        self.pretrained_layers = list(extra.PRETRAINED_LAYERS)
        self.num_deconvs = extra.DECONV.NUM_DECONVS
        self.feature_channels = pre[0]

        self.final_layers = self._make_final_layers(extra, pre[0])
        self.deconv_layers = self._make_deconv_layers(extra, pre[0])
        if self.with_scale_maps:  # after the deconvs, as in SWAHR (parameter order)
            self.conv_scale_layers = self._make_scale_layers(extra, pre[0])

    # ----------------------------------------------------------------------------------------------
    # construction
    @staticmethod
    def _stage_channels(stage_cfg: Any) -> list[int]:
        block = BLOCKS[stage_cfg.BLOCK]
        return [c * block.expansion for c in stage_cfg.NUM_CHANNELS]

    def _head_channels(self, i: int) -> int:
        return self.num_joints + self.dim_tag if self.with_ae_loss[i] else self.num_joints

    def _make_final_layers(self, extra: Any, input_channels: int) -> nn.ModuleList:
        kernel = extra.FINAL_CONV_KERNEL
        padding = 1 if kernel == 3 else 0
        layers = [nn.Conv2d(input_channels, self._head_channels(0), kernel, 1, padding)]
        for i in range(extra.DECONV.NUM_DECONVS):
            channels = extra.DECONV.NUM_CHANNELS[i]
            layers.append(nn.Conv2d(channels, self._head_channels(i + 1), kernel, 1, padding))
        return nn.ModuleList(layers)

    def _make_scale_layers(self, extra: Any, input_channels: int) -> nn.ModuleList:
        """SWAHR's scale branch per stage, reading the features of ``final_layers[i]`` (C channels)."""
        k = self.num_joints
        layers = []
        for channels in [input_channels, *extra.DECONV.NUM_CHANNELS[: extra.DECONV.NUM_DECONVS]]:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(channels, k, 1, 1, 0),
                    nn.BatchNorm2d(k),  # PyTorch's default momentum, as SWAHR
                    nn.ReLU(inplace=True),
                    nn.Conv2d(k, k, 9, 1, 4, groups=k),
                )
            )
        self._zero_scale_outputs(layers)
        return nn.ModuleList(layers)

    @staticmethod
    def _zero_scale_outputs(layers: Any) -> None:
        """The scale maps start at 0: the targets start as the dataset's Gaussians."""
        for layer in layers:
            nn.init.zeros_(layer[-1].weight)
            nn.init.zeros_(layer[-1].bias)

    def _make_deconv_layers(self, extra: Any, input_channels: int) -> nn.ModuleList:
        deconv = extra.DECONV
        layers = []
        for i in range(deconv.NUM_DECONVS):
            if deconv.CAT_OUTPUT[i]:
                input_channels += self._head_channels(i)
            planes = deconv.NUM_CHANNELS[i]
            kernel = deconv.KERNEL_SIZE[i]
            if kernel not in _DECONV_PADDING:
                raise ValueError(f"MODEL.EXTRA.DECONV.KERNEL_SIZE = {kernel}: choose 2, 3 or 4")
            padding, output_padding = _DECONV_PADDING[kernel]
            block = [
                nn.Sequential(
                    nn.ConvTranspose2d(
                        input_channels, planes, kernel, 2, padding, output_padding=output_padding, bias=False
                    ),
                    nn.BatchNorm2d(planes, momentum=BN_MOMENTUM),
                    nn.ReLU(inplace=True),
                )
            ]
            block += [nn.Sequential(BasicBlock(planes, planes)) for _ in range(deconv.NUM_BASIC_BLOCKS)]
            layers.append(nn.Sequential(*block))
            input_channels = planes
        return nn.ModuleList(layers)

    @staticmethod
    def _make_transition_layer(pre: list[int], cur: list[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, channels in enumerate(cur):
            if i < len(pre):
                if channels != pre[i]:
                    layers.append(
                        nn.Sequential(
                            nn.Conv2d(pre[i], channels, 3, 1, 1, bias=False),
                            nn.BatchNorm2d(channels),
                            nn.ReLU(inplace=True),
                        )
                    )
                else:
                    layers.append(None)
            else:
                convs = []
                for j in range(i + 1 - len(pre)):
                    inch = pre[-1]
                    outch = channels if j == i - len(pre) else inch
                    convs.append(
                        nn.Sequential(
                            nn.Conv2d(inch, outch, 3, 2, 1, bias=False),
                            nn.BatchNorm2d(outch),
                            nn.ReLU(inplace=True),
                        )
                    )
                layers.append(nn.Sequential(*convs))
        return nn.ModuleList(layers)

    @staticmethod
    def _make_stage(
        stage_cfg: Any, num_inchannels: list[int], multi_scale_output: bool = True
    ) -> tuple[nn.Sequential, list[int]]:
        block = BLOCKS[stage_cfg.BLOCK]
        modules = []
        for i in range(stage_cfg.NUM_MODULES):
            # only the last module of the last stage drops the lower-resolution outputs
            last = not multi_scale_output and i == stage_cfg.NUM_MODULES - 1
            module = HighResolutionModule(
                stage_cfg.NUM_BRANCHES,
                block,
                list(stage_cfg.NUM_BLOCKS),
                num_inchannels,
                list(stage_cfg.NUM_CHANNELS),
                stage_cfg.FUSE_METHOD,
                not last,
            )
            modules.append(module)
            num_inchannels = module.get_num_inchannels()
        return nn.Sequential(*modules), num_inchannels

    # ----------------------------------------------------------------------------------------------
    # forward
    @staticmethod
    def _run_transition(transition: nn.ModuleList, x_list: list[torch.Tensor], num_branches: int) -> list:
        out = []
        for i in range(num_branches):
            if transition[i] is None:
                out.append(x_list[i])
            else:
                # a new branch is grown from the lowest-resolution existing branch
                out.append(transition[i](x_list[i] if i < len(x_list) else x_list[-1]))
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone: ``(B, 3, H, W)`` → stage-4 high-resolution branch ``(B, C, H/4, W/4)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        y_list = self._run_transition(self.transition1, [x], self.stage2_cfg.NUM_BRANCHES)
        y_list = self.stage2(y_list)
        y_list = self._run_transition(self.transition2, y_list, self.stage3_cfg.NUM_BRANCHES)
        y_list = self.stage3(y_list)
        y_list = self._run_transition(self.transition3, y_list, self.stage4_cfg.NUM_BRANCHES)
        y_list = self.stage4(y_list)
        return y_list[0]

    def forward_heads(self, x: torch.Tensor, extra_heatmaps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """HigherHRNet heads on the 1/4 features ``x``; ``extra_heatmaps (B, K, H/4, W/4)`` is added to
        the 1/4 heatmap channels before they feed the deconv branch (used by the SAT head). With SWAHR's
        scale branches, in training mode each output is ``(B, K + C_i, R_i, R_i)``: the scale maps first."""
        y = self.final_layers[0](x)
        if extra_heatmaps is not None:
            y = torch.cat((y[:, : self.num_joints] + extra_heatmaps, y[:, self.num_joints :]), dim=1)
        final_outputs = [y]
        features = [x]  # what the scale branches read
        for i in range(self.num_deconvs):
            if self.deconv_config.CAT_OUTPUT[i]:
                x = torch.cat((x, y), 1)
            x = self.deconv_layers[i](x)
            y = self.final_layers[i + 1](x)
            final_outputs.append(y)
            features.append(x)
        if self.with_scale_maps and self.training:
            return [torch.cat((layer(f), o), 1) for layer, f, o in zip(self.conv_scale_layers, features, final_outputs)]
        if self.heatmaps_as_logits and not self.training:  # the deconv branch above took the logits
            final_outputs = [heatmap_probabilities(o, self.num_joints) for o in final_outputs]
        return final_outputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_heads(self.forward_features(x))

    # ----------------------------------------------------------------------------------------------
    # weights
    def reset_parameters(self) -> None:
        """``MODEL.INIT_SCHEME``: ``higherhrnet`` = HigherHRNet's init, every conv and deconv ~ N(0, 0.001²);
        ``kaiming`` = Kaiming-normal (fan_out, ReLU) for every conv and deconv except the output convs
        (``final_layers``), which keep N(0, 0.001²) so the first heatmaps and tags are near 0.
        Biases 0, BN weight 1 / bias 0 in both; SWAHR's scale branches end in a zero conv (as SWAHR).

        HigherHRNet's init assumes an ImageNet backbone is loaded over it. Trained from scratch with
        Adam, its 0.001-scale weights take huge relative steps under BatchNorm at first: on the
        synthetic set a batch of 4 at LR 3e-3 never left the all-zero heatmaps, while Kaiming trained.
        """
        if self.init_scheme not in ("higherhrnet", "kaiming"):
            raise ValueError(f"MODEL.INIT_SCHEME = {self.init_scheme!r}: choose 'higherhrnet' or 'kaiming'")
        small = {id(m) for m in self.final_layers.modules()} if self.init_scheme == "kaiming" else None
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if small is None or id(m) in small:
                    nn.init.normal_(m.weight, std=0.001)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if self.heatmaps_as_logits:
            # Focal-loss prior (Lin et al.): every heatmap starts at probability 0.01, so the first
            # steps are not spent pushing the whole background from 0.5 down.
            for layer in self.final_layers:
                nn.init.constant_(layer.bias[: self.num_joints], -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
        if self.with_scale_maps:
            self._zero_scale_outputs(self.conv_scale_layers)

    def init_weights(self, pretrained: str = "", verbose: bool = True) -> None:
        """Reset all weights, then load the layers named in ``PRETRAINED_LAYERS`` from an ImageNet
        HRNet classification checkpoint (its classifier / incre / downsample keys are ignored)."""
        self.reset_parameters()
        if not pretrained:
            return
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"MODEL.PRETRAINED = {pretrained!r} does not exist; download the ImageNet HRNet weights "
                "(e.g. hrnet_w32-36af842e.pth) or set MODEL.PRETRAINED '' to train from scratch"
            )
        from higherpose.utils.checkpoint import load_imagenet_weights

        load_imagenet_weights(self, pretrained, self.pretrained_layers, verbose=verbose)


def get_pose_net(cfg: Any, is_train: bool, **kwargs: Any) -> PoseHigherResolutionNet:
    """Build HigherHRNet; for training with ``MODEL.INIT_WEIGHTS``, run :meth:`init_weights`."""
    model = PoseHigherResolutionNet(cfg, **kwargs)
    if is_train and cfg.MODEL.INIT_WEIGHTS:
        model.init_weights(cfg.MODEL.PRETRAINED, verbose=cfg.VERBOSE)
    return model
