"""ImageNet ResNeXts (Xie et al., CVPR 2017) as in torchvision, for Table 1 of the ISDA paper.

ResNeXt-``depth``, ``C``x``d``d is :class:`~torch_isda.models.resnet_imagenet.ImageNetResNet`
with ``groups = C`` and ``width_per_group = d``: the grouped 3x3 convolution of a stage
with base width ``p`` (64, 128, 256, 512) has ``C * d * p / 64`` channels, the block
outputs ``4 p``; the deep feature is 2048-dimensional.

Parameter counts (1000 classes): ResNeXt-50 32x4d 25.03M, ResNeXt-101 32x8d 88.79M
(Table 1 of the ISDA paper: 25.0M, 88.8M).
"""

from __future__ import annotations

from collections.abc import Sequence

from .registry import register_model
from .resnet_imagenet import ImageNetResNet

__all__ = ["ImageNetResNeXt"]


class ImageNetResNeXt(ImageNetResNet):
    """ResNeXt for 224x224 inputs: an :class:`ImageNetResNet` with grouped 3x3 convolutions.

    Args:
        layers: Bottleneck blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNeXt-50.
        cardinality: Number of groups ``C``.
        base_width: Channels per group ``d`` in the first stage.
        num_classes, in_channels, zero_init_residual, dropout: see :class:`ImageNetResNet`.
    """

    family = "resnext_imagenet"

    def __init__(
        self,
        layers: Sequence[int],
        cardinality: int,
        base_width: int,
        num_classes: int,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            layers,
            num_classes,
            in_channels=in_channels,
            groups=cardinality,
            width_per_group=base_width,
            zero_init_residual=zero_init_residual,
            dropout=dropout,
        )
        self.cardinality = cardinality
        self.base_width = base_width


@register_model
def resnext50_32x4d(
    num_classes: int, *, in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0
) -> ImageNetResNeXt:
    """ResNeXt-50, 32x4d for ImageNet (25.0M parameters, 2048-d features)."""
    return ImageNetResNeXt(
        (3, 4, 6, 3), 32, 4, num_classes, in_channels=in_channels,
        zero_init_residual=zero_init_residual, dropout=dropout,
    )


@register_model
def resnext101_32x8d(
    num_classes: int, *, in_channels: int = 3, zero_init_residual: bool = False, dropout: float = 0.0
) -> ImageNetResNeXt:
    """ResNeXt-101, 32x8d for ImageNet (88.8M parameters, 2048-d features)."""
    return ImageNetResNeXt(
        (3, 4, 23, 3), 32, 8, num_classes, in_channels=in_channels,
        zero_init_residual=zero_init_residual, dropout=dropout,
    )
