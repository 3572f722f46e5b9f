"""Focal loss (Lin, Goyal, Girshick, He & Dollar, "Focal loss for dense object detection",
ICCV 2017), multi-class softmax form:

    FL_i = -alpha_t (1 - p_t)^gamma log p_t,   p_t = softmax(logits_i)[y_i].

ISDA paper (Appendix C, "Hyper-parameter selection for baselines"): ``alpha = 0.5`` and
``gamma = 1`` for all four CIFAR experiments; these are the defaults here.

Note on ``alpha``: Lin et al. define ``alpha_t`` as a class-balancing weight
(``alpha`` for the positive class, ``1 - alpha`` for the negative one in the binary
case).  With a *scalar* ``alpha`` in the multi-class softmax form it multiplies every
sample's loss, i.e. it only rescales the loss (equivalently the learning rate for the
whole network under plain SGD).  Pass a length-``C`` sequence/tensor to get per-class
weights ``alpha_t = alpha[y]``.  With ``gamma = 0`` and ``alpha = 1`` the loss is exactly the
cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

from .label_smoothing import check_logits_target, check_reduction, reduce, target_log_prob

__all__ = ["FocalLoss", "focal_loss"]

Alpha = Union[float, Sequence[float], Tensor]


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not gamma >= 0.0:  # also rejects NaN
        raise ValueError(f"gamma must be >= 0; got {gamma}")
    return gamma


def _check_alpha(alpha: Alpha) -> Union[float, Tensor]:
    if isinstance(alpha, (int, float)):
        alpha = float(alpha)
        if not alpha > 0.0:
            raise ValueError(f"a scalar alpha must be > 0; got {alpha}")
        return alpha
    t = torch.as_tensor(alpha, dtype=torch.float64).detach()
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"alpha must be a scalar or a 1-D per-class sequence; got shape {tuple(t.shape)}")
    if not bool(torch.all(t >= 0)):
        raise ValueError("per-class alpha weights must be >= 0")
    return t


def focal_loss(
    logits: Tensor,
    target: Tensor,
    alpha: Alpha = 0.5,
    gamma: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017).

    Args:
        logits: ``(N, C)`` unnormalized scores.
        target: ``(N,)`` integer class indices.
        alpha: scalar weight (> 0; scales every sample) or ``C`` per-class weights (>= 0).
        gamma: focusing parameter (>= 0); ``0`` gives ``alpha``-weighted cross-entropy.
        reduction: ``"mean"`` (over samples, not divided by the alpha weights), ``"sum"``
            or ``"none"``.
    """
    check_logits_target(logits, target)
    gamma = _check_gamma(gamma)
    alpha = _check_alpha(alpha)
    check_reduction(reduction)
    _, logp_t = target_log_prob(logits, target)
    per_sample = -logp_t
    if gamma != 0.0:
        # 1 - p_t computed as -expm1(log p_t): accurate for confident predictions.
        one_minus_p = (-torch.expm1(logp_t)).clamp_min(0.0)
        per_sample = per_sample * one_minus_p.pow(gamma)
    if isinstance(alpha, Tensor):
        if alpha.numel() != logits.shape[1]:
            raise ValueError(f"alpha has {alpha.numel()} entries but there are {logits.shape[1]} classes")
        per_sample = per_sample * alpha.to(logits.device, logits.dtype)[target.long()]
    elif alpha != 1.0:
        per_sample = per_sample * alpha
    return reduce(per_sample, reduction)


class FocalLoss(nn.Module):
    """Focal loss module, ``forward(logits, target)``; see :func:`focal_loss`.

    Defaults ``alpha = 0.5``, ``gamma = 1`` (ISDA paper, Appendix C).  A per-class
    ``alpha`` is stored as a buffer (moves with ``.to(device)``).
    """

    def __init__(self, alpha: Alpha = 0.5, gamma: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)
        self.reduction = check_reduction(reduction)
        a = _check_alpha(alpha)
        if isinstance(a, Tensor):
            self.register_buffer("alpha", a.to(torch.get_default_dtype()))
        else:
            self.alpha = a

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(logits, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        alpha = self.alpha if not isinstance(self.alpha, Tensor) else f"per-class[{self.alpha.numel()}]"
        return f"alpha={alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
