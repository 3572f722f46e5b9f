"""CIFAR ResNets (He et al., CVPR 2016, Sec. 4.2) and SE-ResNets (Hu et al., 2018).

Three stages of ``(depth - 2) / 6`` basic blocks with 16, 32 and 64 channels
on 32x32, 16x16 and 8x8 maps; the deep feature is 64-dimensional.  When the
shape changes, the shortcut is a strided 1x1 convolution plus batch norm (as in
the ISDA reference code), which adds ~3k parameters to He et al.'s option-A
counts (ResNet-32: 0.47M, ResNet-110: 1.73M).  An optional dropout sits
between the two convolutions of each block (the "+ Dropout" rows of Table 5 of
the ISDA paper).  SE-ResNets insert a squeeze-and-excitation gate on the
residual branch of every block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "SqueezeExcitation"]


class SqueezeExcitation(nn.Module):
    """Channel gate ``x * sigmoid(W2 relu(W1 avgpool(x)))`` with bias-free FCs."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(global_avg_pool(x)))))
        return x * gate[:, :, None, None]


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-[dropout]-conv-BN-[SE] + shortcut, ReLU."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        dropout: float = 0.0,
        se_reduction: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcitation(planes, se_reduction) if se_reduction else nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.dropout(out)))
        return F.relu(self.se(out) + self.shortcut(x))


class CifarResNet(ISDANet):
    """ResNet-``depth`` for 32x32 inputs (``depth = 6n + 2``), optionally with SE gates.

    Args:
        depth: Total number of weighted layers, e.g. 20, 32, 44, 56, 110.
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        dropout: Dropout probability between the two convolutions of a block.
        se_reduction: If given, add squeeze-and-excitation gates with this
            reduction ratio; the family becomes ``"se_resnet"``.
        classifier: ``"linear"`` (default) or ``"cosine"``, the normalized classifier of
            LDAM (Cao et al. 2019) for ``ldam_drw(s=30)``; the ISDA family needs ``"linear"``.
    """

    family = "resnet"

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        se_reduction: int | None = None,
        classifier: str = "linear",
    ) -> None:
        super().__init__(in_channels)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if se_reduction:
            self.family = "se_resnet"
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, dropout, se_reduction))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self._build_classifier(in_planes, num_classes, classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(x)


@register_model
def resnet8(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0,
             classifier: str = "linear") -> CifarResNet:
    """ResNet-8 for CIFAR (78K parameters; not in the ISDA paper: one block per stage, the
    smallest member of the family, for CPU-minute experiments)."""
    return CifarResNet(8, num_classes, in_channels=in_channels, dropout=dropout,
                       classifier=classifier)


@register_model
def resnet20(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0,
             classifier: str = "linear") -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M parameters)."""
    return CifarResNet(20, num_classes, in_channels=in_channels, dropout=dropout,
                       classifier=classifier)


@register_model
def resnet32(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0,
             classifier: str = "linear") -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M parameters; ISDA Table 2 rounds to 0.5M)."""
    return CifarResNet(32, num_classes, in_channels=in_channels, dropout=dropout,
                       classifier=classifier)


@register_model
def resnet44(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0,
             classifier: str = "linear") -> CifarResNet:
    """ResNet-44 for CIFAR (0.66M parameters)."""
    return CifarResNet(44, num_classes, in_channels=in_channels, dropout=dropout,
                       classifier=classifier)


@register_model
def resnet56(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0,
             classifier: str = "linear") -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M parameters)."""
    return CifarResNet(56, num_classes, in_channels=in_channels, dropout=dropout,
                       classifier=classifier)


@register_model
def resnet110(num_classes: int, *, in_channels: int = 3, dropout: float = 0.0,
             classifier: str = "linear") -> CifarResNet:
    """ResNet-110 for CIFAR (1.7M parameters)."""
    return CifarResNet(110, num_classes, in_channels=in_channels, dropout=dropout,
                       classifier=classifier)


@register_model
def se_resnet110(
    num_classes: int, *, in_channels: int = 3, dropout: float = 0.0, reduction: int = 16
) -> CifarResNet:
    """SE-ResNet-110 for CIFAR (1.7M parameters), SE reduction ratio 16."""
    return CifarResNet(
        110, num_classes, in_channels=in_channels, dropout=dropout, se_reduction=reduction
    )
