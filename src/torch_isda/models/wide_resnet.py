"""Wide Residual Networks (Zagoruyko & Komodakis, BMVC 2016) for CIFAR.

WRN-d-k: a 3x3 stem with 16 channels, three stages of ``(d - 4) / 6``
pre-activation basic blocks with ``16k``, ``32k`` and ``64k`` channels, and a
final BN-ReLU before global pooling; the deep feature has ``64k`` dimensions
(512 for WRN-16-8, 640 for WRN-28-10).  Dropout, when enabled, sits between
the two convolutions of each block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["PreActBlock", "WideResNet"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-[dropout]-conv + shortcut.

    When the shape changes, the shortcut is a strided 1x1 convolution applied
    to the pre-activated input, as in the reference implementation.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + residual


class WideResNet(ISDANet):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (``depth = 6n + 4``).

    Args:
        depth: Total number of weighted layers, e.g. 16 or 28.
        widen_factor: Width multiplier ``k``.
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        dropout: Dropout probability between the two convolutions of a block.
    """

    family = "wide_resnet"

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_channels)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be positive, got {widen_factor}")
        blocks_per_stage = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages = []
        in_planes = 16
        for i, base in enumerate((16, 32, 64)):
            planes = base * widen_factor
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(PreActBlock(in_planes, planes, stride, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self._build_classifier(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return global_avg_pool(F.relu(self.bn(x)))


@register_model
def wrn16_8(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """Wide-ResNet-16-8 (11.0M parameters, 512-d features)."""
    return WideResNet(16, 8, num_classes, in_channels=in_channels, dropout=dropout)


@register_model
def wrn28_10(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """Wide-ResNet-28-10 (36.5M parameters, 640-d features)."""
    return WideResNet(28, 10, num_classes, in_channels=in_channels, dropout=dropout)
