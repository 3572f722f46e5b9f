"""Balanced Softmax (Ren et al., "Balanced meta-softmax for long-tailed visual recognition",
NeurIPS 2020) and the logit-adjusted loss (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021).

Both train with the cross-entropy of logits shifted by the log class prior
``pi_c = n_c / sum_k n_k``::

    LA_i = -log softmax(z_i + tau * log pi)[y_i]

and predict with the plain logits ``z``. ``tau = 1`` is Balanced Softmax (Ren et al., Eq. 4:
``exp(z_y) n_y / sum_j exp(z_j) n_j``) and Menon et al.'s default; ``tau = 0`` is the plain
cross-entropy. Since a constant per-class offset leaves ``sigma2`` of ISDA unchanged, the
offset combines exactly with ISDA's augmented logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..logit_adjustment import prior_log_offset
from .class_balanced import Counts, class_count_tensor
from .label_smoothing import check_logits_target, check_reduction

__all__ = ["LogitAdjustedLoss", "log_prior", "logit_adjusted_loss"]


def log_prior(counts: Counts) -> Tensor:
    """``log pi_c = log(n_c / sum_k n_k)`` (float64): the core's
    :func:`~torch_isda.logit_adjustment.prior_log_offset` of checked counts."""
    return prior_log_offset(class_count_tensor(counts))


def logit_adjusted_loss(logits: Tensor, target: Tensor, log_prior: Tensor, tau: float = 1.0,
                        reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits + tau * log_prior`` (see the module docstring)."""
    check_logits_target(logits, target)
    check_reduction(reduction)
    if log_prior.dim() != 1 or log_prior.numel() != logits.shape[1]:
        raise ValueError(f"log_prior must hold one value per class ({logits.shape[1]}); got "
                         f"shape {tuple(log_prior.shape)}")
    shifted = logits + float(tau) * log_prior.to(logits.device, logits.dtype)
    return F.cross_entropy(shifted, target.long(), reduction=reduction)


class LogitAdjustedLoss(nn.Module):
    """Balanced Softmax / logit-adjusted cross-entropy, ``forward(logits, target)``.

    Args:
        counts: training images per class (the prior ``pi``).
        tau: strength of the adjustment (1: Balanced Softmax).
    """

    def __init__(self, counts: Counts, tau: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        tau = float(tau)
        if not tau >= 0.0:
            raise ValueError(f"tau must be >= 0; got {tau}")
        self.tau = tau
        self.reduction = check_reduction(reduction)
        self.register_buffer("log_prior", log_prior(counts))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return logit_adjusted_loss(logits, target, self.log_prior, self.tau, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.log_prior.numel()}, reduction={self.reduction!r}"
