"""Label smoothing (Szegedy et al., CVPR 2016; Mueller, Kornblith & Hinton, NeurIPS 2019).

The one-hot target is replaced by ``q = (1 - eps) * onehot(y) + eps / C`` and the loss is
the cross-entropy ``-sum_j q_j log p_j``, i.e.

    loss_i = (1 - eps) * (-log p_{i, y_i}) + eps * mean_j (-log p_{i, j}).

This equals ``F.cross_entropy(logits, target, label_smoothing=eps)``.  The paper's Table 5
baseline (ISDA paper ref. [64]) does not state ``eps``; the default ``0.1`` is the value of
Szegedy et al. and Mueller et al.

This module also holds the small validation/reduction helpers shared by the other loss
baselines of :mod:`torch_isda.baselines` (private, not part of the public API).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LabelSmoothingLoss", "label_smoothing_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    return reduction


def reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def check_logits_target(logits: Tensor, target: Tensor, name: str = "logits") -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (N, C); got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point; got {logits.dtype}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be (N,) with N = {logits.shape[0]}; got shape {tuple(target.shape)}"
        )
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"target must hold integer class indices; got {target.dtype}")


def target_log_prob(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(log_softmax(logits), log p_{i, y_i})``."""
    logp = F.log_softmax(logits, dim=1)
    return logp, logp.gather(1, target.long().unsqueeze(1)).squeeze(1)


def _check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1]; got {epsilon}")
    return epsilon


def label_smoothing_cross_entropy(
    logits: Tensor, target: Tensor, epsilon: float = 0.1, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy against the smoothed target ``(1 - eps) * onehot(y) + eps / C``.

    Args:
        logits: ``(N, C)`` unnormalized scores.
        target: ``(N,)`` integer class indices.
        epsilon: smoothing strength in ``[0, 1]`` (``0`` is plain cross-entropy).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    check_logits_target(logits, target)
    epsilon = _check_epsilon(epsilon)
    check_reduction(reduction)
    logp, logp_y = target_log_prob(logits, target)
    per_sample = -(1.0 - epsilon) * logp_y - epsilon * logp.mean(dim=1)
    return reduce(per_sample, reduction)


class LabelSmoothingLoss(nn.Module):
    """Label-smoothing cross-entropy, ``forward(logits, target)``.

    See :func:`label_smoothing_cross_entropy`.  Default ``epsilon = 0.1`` (Szegedy et al.;
    the ISDA paper does not report its value).
    """

    def __init__(self, epsilon: float = 0.1, reduction: str = "mean") -> None:
        super().__init__()
        self.epsilon = _check_epsilon(epsilon)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return label_smoothing_cross_entropy(logits, target, self.epsilon, self.reduction)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, reduction={self.reduction!r}"
