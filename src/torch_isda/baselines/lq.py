"""L_q loss / generalized cross-entropy (Zhang & Sabuncu, "Generalized cross entropy loss
for training deep neural networks with noisy labels", NeurIPS 2018, Eq. 6):

    L_q(f(x), y) = (1 - p_y^q) / q,   q in (0, 1].

It is the negative Box-Cox transform of ``p_y``: ``q -> 0`` gives the cross-entropy
``-log p_y`` and ``q = 1`` gives (half of) the mean absolute error.  Zhang & Sabuncu
recommend ``q = 0.7``; the ISDA paper (Appendix C) uses ``q = 0.4``, the default here.
The truncated variant of Zhang & Sabuncu is not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .label_smoothing import check_logits_target, check_reduction, reduce, target_log_prob

__all__ = ["LqLoss", "lq_loss"]


def _check_q(q: float) -> float:
    q = float(q)
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must lie in (0, 1]; got {q}")
    return q


def lq_loss(logits: Tensor, target: Tensor, q: float = 0.4, reduction: str = "mean") -> Tensor:
    """``(1 - p_y^q) / q`` with ``p = softmax(logits)`` (Zhang & Sabuncu 2018).

    Computed as ``-expm1(q * log p_y) / q``, which is accurate for small ``q`` (and
    tends to the cross-entropy as ``q -> 0``).

    Args:
        logits: ``(N, C)`` unnormalized scores.
        target: ``(N,)`` integer class indices.
        q: Box-Cox exponent in ``(0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    check_logits_target(logits, target)
    q = _check_q(q)
    check_reduction(reduction)
    _, logp_y = target_log_prob(logits, target)
    per_sample = -torch.expm1(q * logp_y) / q
    return reduce(per_sample, reduction)


class LqLoss(nn.Module):
    """L_q loss module, ``forward(logits, target)``; see :func:`lq_loss`.

    Default ``q = 0.4`` (ISDA paper, Appendix C).
    """

    def __init__(self, q: float = 0.4, reduction: str = "mean") -> None:
        super().__init__()
        self.q = _check_q(q)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lq_loss(logits, target, self.q, self.reduction)

    def extra_repr(self) -> str:
        return f"q={self.q}, reduction={self.reduction!r}"
