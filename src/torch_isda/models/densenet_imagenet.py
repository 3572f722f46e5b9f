"""ImageNet DenseNet-BCs (Huang et al., CVPR 2017) as in torchvision, for Table 1 of the ISDA paper.

A 7x7 stride-2 stem with ``2k`` channels (``k`` the growth rate) and a 3x3 stride-2 max
pool, four dense blocks of bottleneck layers (BN-ReLU-1x1 conv to ``4k`` channels,
BN-ReLU-3x3 conv to ``k`` channels, concatenated to the block's running input) separated
by transitions (BN-ReLU-1x1 conv halving the channels, 2x2 average pooling), and a final
BN-ReLU before global pooling.

* DenseNet-BC-121: ``k = 32``, blocks ``(6, 12, 24, 16)``, 1024-d feature, 7.98M parameters;
* DenseNet-BC-265: ``k = 32``, blocks ``(6, 12, 64, 48)``, 2688-d feature, 33.34M parameters

(1000 classes; Table 1 of the ISDA paper: 8.0M and 33.3M).

``memory_efficient=True`` recomputes the concatenation + BN + ReLU + 1x1 convolution of
each layer in the backward pass (``torch.utils.checkpoint``) instead of storing them,
as torchvision's option of the same name: slower, but the activation memory of a dense
block becomes linear instead of quadratic in its depth. DenseNets have no residual
branch, so they have no ``zero_init_residual`` option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["ImageNetDenseBlock", "ImageNetDenseLayer", "ImageNetDenseNet", "ImageNetTransition"]


class ImageNetDenseLayer(nn.Module):
    """Bottleneck layer producing ``growth_rate`` new channels from all previous ones."""

    def __init__(
        self,
        in_planes: int,
        growth_rate: int,
        bn_size: int = 4,
        dropout: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        inter = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.conv1(F.relu(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            out = cp.checkpoint(self._bottleneck, *inputs, use_reentrant=False)
        else:
            out = self._bottleneck(*inputs)
        return self.dropout(self.conv2(F.relu(self.norm2(out))))


class ImageNetDenseBlock(nn.ModuleList):
    """``num_layers`` dense layers; returns the input concatenated with every layer's output."""

    def __init__(
        self,
        num_layers: int,
        in_planes: int,
        growth_rate: int,
        bn_size: int = 4,
        dropout: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__(
            ImageNetDenseLayer(in_planes + i * growth_rate, growth_rate, bn_size, dropout, memory_efficient)
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


class ImageNetTransition(nn.Sequential):
    """BN-ReLU-1x1 conv followed by 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_planes, out_planes, 1, bias=False),
            nn.AvgPool2d(2, stride=2),
        )


class ImageNetDenseNet(ISDANet):
    """DenseNet-BC for 224x224 inputs (torchvision's architecture).

    Args:
        block_config: Number of dense layers in each of the four blocks.
        growth_rate: Channels ``k`` added by each dense layer.
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        num_init_features: Channels of the stem (``2k`` when ``None``).
        bn_size: Bottleneck width factor (the 1x1 convolution outputs ``bn_size * k``).
        compression: Channel reduction factor of the transitions.
        dropout: Dropout probability after each 3x3 convolution.
        memory_efficient: Checkpoint the bottleneck of each layer (see module docs).
    """

    family = "densenet_imagenet"
    default_input_size = (3, 224, 224)

    def __init__(
        self,
        block_config: Sequence[int],
        growth_rate: int,
        num_classes: int,
        in_channels: int = 3,
        num_init_features: int | None = None,
        bn_size: int = 4,
        compression: float = 0.5,
        dropout: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__(in_channels)
        if len(block_config) < 1 or min(block_config) < 1:
            raise ValueError(f"block_config must give positive layer counts, got {tuple(block_config)}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        planes = 2 * growth_rate if num_init_features is None else num_init_features
        self.conv1 = nn.Conv2d(in_channels, planes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks: list[nn.Module] = []
        for i, num_layers in enumerate(block_config):
            blocks.append(
                ImageNetDenseBlock(num_layers, planes, growth_rate, bn_size, dropout, memory_efficient)
            )
            planes += num_layers * growth_rate
            if i < len(block_config) - 1:
                out_planes = int(planes * compression)
                blocks.append(ImageNetTransition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(planes)
        self._build_classifier(planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.features(x)
        return global_avg_pool(F.relu(self.bn(x)))


@register_model
def densenet121(
    num_classes: int, *, in_channels: int = 3, dropout: float = 0.0, memory_efficient: bool = False
) -> ImageNetDenseNet:
    """DenseNet-BC-121 (k = 32) for ImageNet (8.0M parameters, 1024-d features)."""
    return ImageNetDenseNet(
        (6, 12, 24, 16), 32, num_classes, in_channels=in_channels, dropout=dropout,
        memory_efficient=memory_efficient,
    )


@register_model
def densenet265(
    num_classes: int, *, in_channels: int = 3, dropout: float = 0.0, memory_efficient: bool = False
) -> ImageNetDenseNet:
    """DenseNet-BC-265 (k = 32) for ImageNet (33.3M parameters, 2688-d features)."""
    return ImageNetDenseNet(
        (6, 12, 64, 48), 32, num_classes, in_channels=in_channels, dropout=dropout,
        memory_efficient=memory_efficient,
    )
