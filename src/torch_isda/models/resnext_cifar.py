"""ResNeXt for CIFAR (Xie et al., CVPR 2017, Sec. 5.3).

ResNeXt-``depth``, ``C``x``d``: a 3x3 stem with 64 channels, then three stages
of ``(depth - 2) / 9`` bottleneck blocks.  Stage ``i`` (``i = 0, 1, 2``) has a
base width ``p = 64 * 2**i``; its blocks use ``C`` groups of ``d * 2**i``
channels in the grouped 3x3 convolution and output ``widen_factor * p``
channels.  ResNeXt-29, 8x64d therefore outputs a 1024-d deep feature and has
34.4M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["CifarResNeXt", "ResNeXtBottleneck"]


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce - grouped 3x3 - 1x1 expand (each followed by BN), + shortcut, ReLU."""

    def __init__(
        self, in_planes: int, width: int, out_planes: int, cardinality: int, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_group = nn.Conv2d(
            width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn_group = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn_group(self.conv_group(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(out + self.shortcut(x))


class CifarResNeXt(ISDANet):
    """ResNeXt-``depth``, ``cardinality``x``base_width``d for 32x32 inputs (``depth = 9n + 2``).

    Args:
        depth: Total number of weighted layers, e.g. 29.
        cardinality: Number of groups ``C`` of the 3x3 convolutions.
        base_width: Channels per group ``d`` in the first stage (doubles per stage).
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        widen_factor: Ratio of a block's output channels to its stage base
            width (64, 128, 256).
    """

    family = "resnext"

    def __init__(
        self,
        depth: int,
        cardinality: int,
        base_width: int,
        num_classes: int,
        in_channels: int = 3,
        widen_factor: int = 4,
    ) -> None:
        super().__init__(in_channels)
        if depth < 11 or (depth - 2) % 9 != 0:
            raise ValueError(f"ResNeXt depth must be 9n + 2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        in_planes = 64
        for i in range(3):
            width = cardinality * base_width * 2**i
            out_planes = widen_factor * 64 * 2**i
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(ResNeXtBottleneck(in_planes, width, out_planes, cardinality, stride))
                in_planes = out_planes
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self._build_classifier(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return global_avg_pool(x)


@register_model
def resnext29_8x64d(num_classes: int, *, in_channels: int = 3) -> CifarResNeXt:
    """ResNeXt-29, 8x64d (34.4M parameters, 1024-d features)."""
    return CifarResNeXt(29, 8, 64, num_classes, in_channels=in_channels)
