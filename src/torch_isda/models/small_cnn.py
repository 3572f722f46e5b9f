"""A small, fast CNN for 8x8 digit images (e.g. scikit-learn's ``load_digits``).

Not part of the ISDA paper: it exists so that end-to-end experiments and tests
train in seconds on a CPU.  Architecture: conv3x3(32)-BN-ReLU, 2x2 max-pool,
conv3x3(64)-BN-ReLU, global average pooling; the second convolution's
receptive field covers a whole 8x8 image.  The deep feature is 64-dimensional.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["DigitsCNN"]


class DigitsCNN(ISDANet):
    """Two conv-BN-ReLU blocks (``width`` and ``2 * width`` channels) and global pooling.

    Args:
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
        width: Channels of the first block; the feature dimension is ``2 * width``.
    """

    family = "small_cnn"
    default_input_size = (1, 8, 8)

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__(in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self._build_classifier(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(self.features(x))


@register_model
def digits_cnn(num_classes: int, *, in_channels: int = 1, width: int = 32) -> DigitsCNN:
    """Small CNN for 1x8x8 digits (~19k parameters, 64-d features by default)."""
    return DigitsCNN(num_classes, in_channels=in_channels, width=width)
