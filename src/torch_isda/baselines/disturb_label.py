"""DisturbLabel (Xie, Wang, Wei, Wang & Tian, "DisturbLabel: Regularizing CNN on the loss
layer", CVPR 2016).

Each training label is, independently with probability ``alpha`` (the noise rate),
replaced by a label drawn uniformly from all ``C`` classes (possibly the true one), i.e.
the label follows ``P(c) = 1 - alpha (C - 1) / C`` for the true class and ``alpha / C``
for each other class; about ``alpha (C - 1) / C`` of the labels actually change.
ISDA paper (Appendix C): ``alpha = 0.05`` for Wide-ResNet-28-10 (CIFAR-10/100) and
ResNet-110 on CIFAR-10, ``alpha = 0.1`` for ResNet-110 on CIFAR-100.  Default 0.05.

Random numbers are drawn in a fixed order from ``generator`` (or the global RNG): ``N``
uniform floats (the replace decisions), then ``N`` integers in ``[0, C)`` (the new labels),
on the generator's device, then moved to the labels' device.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["DisturbLabel", "disturb_labels"]


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1]; got {rate}")
    return rate


def disturb_labels(
    target: Tensor, num_classes: int, rate: float = 0.05, generator: Optional[torch.Generator] = None
) -> Tensor:
    """A new label tensor where each label is, with probability ``rate``, replaced by one
    drawn uniformly from ``[0, num_classes)``.  ``rate = 0`` returns an unchanged copy."""
    rate = _check_rate(rate)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if target.dim() != 1:
        raise ValueError(f"target must be (N,); got shape {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices; got {target.dtype}")
    n = target.shape[0]
    if rate == 0.0 or n == 0:
        return target.clone()
    device = generator.device if generator is not None else target.device
    replace = torch.rand(n, generator=generator, device=device) < rate
    new = torch.randint(0, int(num_classes), (n,), generator=generator, device=device)
    return torch.where(replace.to(target.device), new.to(target.device, target.dtype), target)


class DisturbLabel(nn.Module):
    """Label-noise regularizer, ``forward(target, generator=None) -> target``.

    Active only in training mode (``eval()`` returns the labels unchanged).  Use it as the
    criterion's ``transform_target`` and compute the ordinary cross-entropy against the
    disturbed labels.

    Args:
        num_classes: number of classes ``C``.
        rate: noise rate ``alpha`` in ``[0, 1]`` (default 0.05, ISDA Appendix C).
    """

    def __init__(self, num_classes: int, rate: float = 0.05) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.num_classes = int(num_classes)
        self.rate = _check_rate(rate)

    def forward(self, target: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if not self.training:
            return target
        return disturb_labels(target, self.num_classes, self.rate, generator)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, rate={self.rate}"
