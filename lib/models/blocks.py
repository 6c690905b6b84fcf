"""HRNet building blocks: BasicBlock, Bottleneck and the multi-branch HighResolutionModule.

Attribute names follow the official HRNet / HigherHRNet code exactly, so ``state_dict()`` keys match
the official checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

BN_MOMENTUM = 0.1


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection; ``expansion = 1``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 (×4 channels) with a residual connection; ``expansion = 4``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def make_layer(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int, stride: int = 1
) -> nn.Sequential:
    """``blocks`` blocks; the first gets a 1×1 conv + BN downsample when shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOMENTUM),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches at several resolutions followed by all-to-all fusion (sum).

    Input and output: a list of ``num_branches`` tensors ``(B, C_i, H/2^i, W/2^i)``; with
    ``multi_scale_output=False`` only the highest-resolution fused output is returned.
    """

    def __init__(
        self,
        num_branches: int,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: list[int],
        num_inchannels: list[int],
        num_channels: list[int],
        fuse_method: str,
        multi_scale_output: bool = True,
    ):
        super().__init__()
        if not (num_branches == len(num_blocks) == len(num_inchannels) == len(num_channels)):
            raise ValueError(
                f"HighResolutionModule: NUM_BRANCHES={num_branches} but NUM_BLOCKS={num_blocks}, "
                f"NUM_CHANNELS={num_channels}, inputs={num_inchannels}"
            )
        self.num_inchannels = list(num_inchannels)
        self.fuse_method = fuse_method
        self.num_branches = num_branches
        self.multi_scale_output = multi_scale_output
        self.branches = nn.ModuleList(
            [self._make_branch(i, block, num_blocks[i], num_channels[i]) for i in range(num_branches)]
        )
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(True)

    def _make_branch(
        self, i: int, block: type[BasicBlock] | type[Bottleneck], blocks: int, channels: int
    ) -> nn.Sequential:
        layer = make_layer(block, self.num_inchannels[i], channels, blocks)
        self.num_inchannels[i] = channels * block.expansion
        return layer

    def _make_fuse_layers(self) -> nn.ModuleList | None:
        if self.num_branches == 1:
            return None
        n = self.num_branches
        inch = self.num_inchannels
        fuse_layers = []
        for i in range(n if self.multi_scale_output else 1):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(inch[j], inch[i], 1, 1, 0, bias=False),
                            nn.BatchNorm2d(inch[i]),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    convs = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = inch[i] if last else inch[j]
                        layers: list[nn.Module] = [
                            nn.Conv2d(inch[j], out, 3, 2, 1, bias=False),
                            nn.BatchNorm2d(out),
                        ]
                        if not last:
                            layers.append(nn.ReLU(True))
                        convs.append(nn.Sequential(*layers))
                    row.append(nn.Sequential(*convs))
            fuse_layers.append(nn.ModuleList(row))
        return nn.ModuleList(fuse_layers)

    def get_num_inchannels(self) -> list[int]:
        return self.num_inchannels

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(xi) for branch, xi in zip(self.branches, x)]
        if self.fuse_layers is None:
            return x
        fused = []
        for i, row in enumerate(self.fuse_layers):
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, self.num_branches):
                y = y + (x[j] if i == j else row[j](x[j]))
            fused.append(self.relu(y))
        return fused
