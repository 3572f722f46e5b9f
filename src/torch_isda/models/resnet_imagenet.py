"""ImageNet ResNets (He et al., CVPR 2016) as in torchvision, for Table 1 of the ISDA paper.

A 7x7 stride-2 stem with 64 channels and a 3x3 stride-2 max pool, then four stages of
bottleneck blocks with base widths 64, 128, 256, 512 (expansion 4) and strides 1, 2, 2, 2,
global average pooling and the classifier ``fc``; the deep feature is 2048-dimensional.
The bottleneck is torchvision's "v1.5": the stride of a downsampling block sits on its
3x3 convolution (not on the first 1x1), and the projection shortcut is a strided 1x1
convolution plus batch norm.

The same :class:`ImageNetResNet` builds the ResNeXts of
:mod:`~torch_isda.models.resnext_imagenet` (``groups`` and ``width_per_group``).

``zero_init_residual=True`` sets the scale of the last batch norm of every residual
branch to zero, so each block starts as the identity (Goyal et al., 2017), as
torchvision's option of the same name.

Parameter counts (1000 classes): ResNet-50 25.56M, ResNet-101 44.55M, ResNet-152 60.19M
(Table 1 of the ISDA paper: 25.6M, 44.6M, 60.3M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["Bottleneck", "ImageNetResNet"]


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (stride, groups) - 1x1 expand (x4), each with BN, + shortcut, ReLU.

    The 3x3 convolution has ``width = planes * width_per_group / 64 * groups`` channels
    (``planes`` for a plain ResNet); the block outputs ``4 * planes`` channels.
    """

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


class ImageNetResNet(ISDANet):
    """Bottleneck ResNet / ResNeXt for 224x224 inputs (torchvision's architecture).

    Args:
        layers: Number of bottleneck blocks in each of the four stages, e.g.
            ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        groups: Cardinality of the grouped 3x3 convolutions (1 for ResNet).
        width_per_group: Channels per group in the first stage (64 for ResNet;
            4 for ResNeXt 32x4d), doubled every stage.
        zero_init_residual: Zero the scale of each block's last batch norm.
        dropout: Dropout probability before the classifier.
    """

    family = "resnet_imagenet"
    default_input_size = (3, 224, 224)

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_channels)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must give four positive block counts, got {tuple(layers)}")
        if groups < 1 or width_per_group < 1:
            raise ValueError(f"groups and width_per_group must be positive, got {groups}, {width_per_group}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        stages = []
        for i, blocks in enumerate(layers):
            planes = 64 * 2**i
            stage = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(Bottleneck(in_planes, planes, stride, groups, width_per_group))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._build_classifier(in_planes, num_classes)
        self.zero_init_residual = bool(zero_init_residual)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.dropout(global_avg_pool(x))


@register_model
def resnet50(
    num_classes: int, *, in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0
) -> ImageNetResNet:
    """ResNet-50 for ImageNet (25.6M parameters, 2048-d features)."""
    return ImageNetResNet(
        (3, 4, 6, 3), num_classes, in_channels=in_channels, zero_init_residual=zero_init_residual,
        dropout=dropout,
    )


@register_model
def resnet101(
    num_classes: int, *, in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0
) -> ImageNetResNet:
    """ResNet-101 for ImageNet (44.5M parameters, 2048-d features)."""
    return ImageNetResNet(
        (3, 4, 23, 3), num_classes, in_channels=in_channels, zero_init_residual=zero_init_residual,
        dropout=dropout,
    )


@register_model
def resnet152(
    num_classes: int, *, in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0
) -> ImageNetResNet:
    """ResNet-152 for ImageNet (60.2M parameters, 2048-d features)."""
    return ImageNetResNet(
        (3, 8, 36, 3), num_classes, in_channels=in_channels, zero_init_residual=zero_init_residual,
        dropout=dropout,
    )
