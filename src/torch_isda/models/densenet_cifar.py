"""DenseNet-BC for CIFAR (Huang et al., CVPR 2017).

DenseNet-BC-``depth``-``k``: a 3x3 stem with ``2k`` channels, three dense blocks
of ``(depth - 4) / 6`` bottleneck layers (BN-ReLU-1x1 conv to ``4k`` channels,
BN-ReLU-3x3 conv to ``k`` channels, concatenated to the input), separated by
transitions (BN-ReLU-1x1 conv compressing by ``compression``, 2x2 average
pooling), and a final BN-ReLU before global pooling.  DenseNet-BC-100-12 has
0.77M parameters and a 342-d deep feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["DenseLayer", "DenseNetBC", "Transition"]


class DenseLayer(nn.Module):
    """Bottleneck layer that appends ``growth_rate`` new channels to its input."""

    def __init__(self, in_planes: int, growth_rate: int, dropout: float = 0.0) -> None:
        super().__init__()
        inter = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.dropout(self.conv2(F.relu(self.bn2(out))))
        return torch.cat((x, out), 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv followed by 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, out_planes, 1, bias=False),
            nn.AvgPool2d(2),
        )


class DenseNetBC(ISDANet):
    """DenseNet-BC-``depth``-``growth_rate`` for 32x32 inputs (``depth = 6n + 4``).

    Args:
        depth: Total number of weighted layers, e.g. 100.
        growth_rate: Channels ``k`` added by each dense layer.
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        compression: Channel reduction factor of the transitions.
        dropout: Dropout probability after each 3x3 convolution.
    """

    family = "densenet"

    def __init__(
        self,
        depth: int,
        growth_rate: int,
        num_classes: int,
        in_channels: int = 3,
        compression: float = 0.5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_channels)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4 with n >= 1, got {depth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        layers_per_block = (depth - 4) // 6
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for i in range(3):
            for _ in range(layers_per_block):
                blocks.append(DenseLayer(planes, growth_rate, dropout))
                planes += growth_rate
            if i < 2:
                out_planes = int(planes * compression)
                blocks.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(planes)
        self._build_classifier(planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv1(x))
        return global_avg_pool(F.relu(self.bn(x)))


@register_model
def densenet_bc_100_12(
    num_classes: int, *, in_channels: int = 3, dropout: float = 0.0
) -> DenseNetBC:
    """DenseNet-BC-100, k = 12 (0.8M parameters, 342-d features)."""
    return DenseNetBC(100, 12, num_classes, in_channels=in_channels, dropout=dropout)
