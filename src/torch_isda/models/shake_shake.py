"""Shake-Shake regularised ResNets for CIFAR (Gastaldi, 2017).

Shake-Shake-``depth`` 2x``w``d ("Shake-Shake-Image" variant): a 3x3 stem with
16 channels, three stages of ``(depth - 2) / 6`` blocks with ``w``, ``2w`` and
``4w`` channels.  Every block has two residual branches (ReLU-conv-BN-ReLU-
conv-BN) mixed by :class:`ShakeShake`; when the shape changes, the shortcut
concatenates two strided 1x1 convolutions, the second one on the input
shifted by one pixel.  The deep feature has ``4w`` dimensions (128 for 2x32d,
448 for 2x112d).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import ISDANet, global_avg_pool
from .registry import register_model

__all__ = ["ShakeBlock", "ShakeShake", "ShakeShakeResNet", "ShakeShortcut"]


def _per_sample_uniform(like: torch.Tensor) -> torch.Tensor:
    """Draw one U(0, 1) value per sample, shaped to broadcast against ``like``."""
    shape = (like.size(0),) + (1,) * (like.dim() - 1)
    return torch.rand(shape, dtype=like.dtype, device=like.device)


class ShakeShake(torch.autograd.Function):
    """Mix two branches ``alpha * x1 + (1 - alpha) * x2`` with the Shake-Shake rule.

    In training, the forward pass draws ``alpha ~ U(0, 1)`` per sample and the
    backward pass scales the incoming gradient by an independent
    ``beta ~ U(0, 1)`` per sample ("Shake-Shake-Image").  In evaluation, both
    passes use the deterministic expectation 0.5, so the backward pass is the
    true gradient of the forward one.

    Usage: ``ShakeShake.apply(x1, x2, training)``.
    """

    @staticmethod
    def forward(ctx: Any, x1: torch.Tensor, x2: torch.Tensor, training: bool) -> torch.Tensor:
        ctx.training = training
        if not training:
            return 0.5 * (x1 + x2)
        alpha = _per_sample_uniform(x1)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        if not ctx.training:
            half = 0.5 * grad_output
            return half, half, None
        beta = _per_sample_uniform(grad_output)
        return beta * grad_output, (1 - beta) * grad_output, None


class ShakeShortcut(nn.Module):
    """ReLU, then two strided 1x1 convolutions (one on the input shifted by a
    pixel) producing half of the output channels each, concatenated, then BN."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes % 2:
            raise ValueError(f"out_planes must be even, got {out_planes}")
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, out_planes // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_planes, out_planes // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        s = self.stride
        h1 = self.conv1(x[:, :, ::s, ::s])
        h2 = self.conv2(shifted[:, :, ::s, ::s])
        return self.bn(torch.cat((h1, h2), 1))


def _branch(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, planes, 3, padding=1, bias=False),
        nn.BatchNorm2d(planes),
    )


class ShakeBlock(nn.Module):
    """Two residual branches mixed by :class:`ShakeShake`, plus a shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.branch1 = _branch(in_planes, planes, stride)
        self.branch2 = _branch(in_planes, planes, stride)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ShakeShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = ShakeShake.apply(self.branch1(x), self.branch2(x), self.training)
        return mixed + self.shortcut(x)


class ShakeShakeResNet(ISDANet):
    """Shake-Shake-``depth`` 2x``base_width``d for 32x32 inputs (``depth = 6n + 2``).

    Args:
        depth: Total number of weighted layers along one path, e.g. 26.
        base_width: Channels ``w`` of the first stage (doubles per stage).
        num_classes: Number of classes of the final linear layer.
        in_channels: Channels of the input images.
    """

    family = "shake_shake"

    def __init__(
        self, depth: int, base_width: int, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__(in_channels)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"Shake-Shake depth must be 6n + 2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for i in range(3):
            planes = base_width * 2**i
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(ShakeBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self._build_classifier(in_planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return global_avg_pool(F.relu(x))


@register_model
def shake_shake_26_2x32d(num_classes: int, *, in_channels: int = 3) -> ShakeShakeResNet:
    """Shake-Shake-26 2x32d (3.0M parameters, 128-d features)."""
    return ShakeShakeResNet(26, 32, num_classes, in_channels=in_channels)


@register_model
def shake_shake_26_2x112d(num_classes: int, *, in_channels: int = 3) -> ShakeShakeResNet:
    """Shake-Shake-26 2x112d (36.4M parameters, 448-d features)."""
    return ShakeShakeResNet(26, 112, num_classes, in_channels=in_channels)
