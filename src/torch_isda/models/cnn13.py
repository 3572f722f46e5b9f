"""CNN-13, the standard network of deep semi-supervised learning (ISDA paper, Table 10).

Architecture (Wang et al., TPAMI 2021, Appendix B, Table 10; the same network as
Laine & Aila 2017, Tarvainen & Valpola 2017 and Miyato et al. 2018)::

    input 3x32x32
    3x3 conv 128, lReLU(0.1)  x3
    2x2 max-pool, dropout 0.5
    3x3 conv 256, lReLU(0.1)  x3
    2x2 max-pool, dropout 0.5
    3x3 conv 512 (no padding: 8x8 -> 6x6), lReLU(0.1)
    1x1 conv 256, lReLU(0.1)
    1x1 conv 128, lReLU(0.1)
    6x6 global average pool -> 128-d feature
    fully connected 128 -> C

Every convolution is followed by batch normalisation and then the leaky ReLU, as in
the VAT reference code (``takerum/vat_tf``, ``cnn.py``): convolutions carry no bias.
(Laine & Aila and Tarvainen & Valpola use mean-only BN with weight normalisation
instead; plain BN is the common PyTorch choice.)  The feature is 128-dimensional
and has ~3.1M parameters for 10 classes.

Small inputs: the global average pool adapts to any spatial size, and when the map
entering the unpadded 3x3 convolution is smaller than 3x3 (e.g. 1x8x8 digits give a
2x2 map there) it is zero-padded by one pixel first, so the network runs on 8x8
images with the same parameters.  32x32 inputs follow Table 10 exactly.

Optional input Gaussian noise (``noise_std``; 0.15 in Laine & Aila 2017 and in the
Mean Teacher code) is applied in training mode only; it is off by default because
Table 10 does not list it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["CNN13"]


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    ]


class CNN13(ISDANet):
    """The 13-layer CNN of Table 10.

    Args:
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images (3 for CIFAR/SVHN, 1 for digits).
        dropout: Dropout probability after each of the two max-pool stages (0.5 in
            Table 10; ``0`` removes the layers).
        noise_std: Standard deviation of additive Gaussian input noise in training
            mode (0 = off, the default; 0.15 in Laine & Aila / Tarvainen & Valpola).
    """

    family = "cnn13"
    default_input_size = (3, 32, 32)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.5,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__(in_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if noise_std < 0.0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        drop = (lambda: nn.Dropout(dropout)) if dropout > 0 else nn.Identity
        self.block1 = nn.Sequential(
            *_conv_bn(in_channels, 128, 3, 1),
            *_conv_bn(128, 128, 3, 1),
            *_conv_bn(128, 128, 3, 1),
            nn.MaxPool2d(2, 2),
            drop(),
        )
        self.block2 = nn.Sequential(
            *_conv_bn(128, 256, 3, 1),
            *_conv_bn(256, 256, 3, 1),
            *_conv_bn(256, 256, 3, 1),
            nn.MaxPool2d(2, 2),
            drop(),
        )
        self.block3 = nn.Sequential(
            *_conv_bn(256, 512, 3, 0),  # unpadded: 8x8 -> 6x6 on 32x32 inputs
            *_conv_bn(512, 256, 1, 0),
            *_conv_bn(256, 128, 1, 0),
        )
        self._build_classifier(128, num_classes)

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}" if self.noise_std else ""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        x = self.block2(self.block1(x))
        if min(x.shape[-2:]) < 3:  # small inputs (e.g. 8x8 digits): keep a valid 3x3 conv
            x = F.pad(x, (1, 1, 1, 1))
        return global_avg_pool(self.block3(x))


@register_model
def cnn13(
    num_classes: int, *, in_channels: int = 3, dropout: float = 0.5, noise_std: float = 0.0
) -> CNN13:
    """CNN-13 of the semi-supervised experiments (Table 10; ~3.1M parameters, 128-d features)."""
    return CNN13(num_classes, in_channels=in_channels, dropout=dropout, noise_std=noise_std)
