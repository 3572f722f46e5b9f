"""Class-balanced loss (Cui, Jia, Lin, Song & Belongie, "Class-balanced loss based on
effective number of samples", CVPR 2019).

The *effective number* of a class with ``n_c`` images is ``E_c = (1 - beta^n_c) / (1 - beta)``;
each sample is weighted by the inverse, normalized so that the weights sum to ``C``::

    w_c = C * (1 / E_c) / sum_k (1 / E_k),      CB_i = w_{y_i} * CE(z_i, y_i),

and the batch loss is the mean over the ``N`` samples, ``(1/N) sum_i CB_i`` (the authors'
softmax code weights each sample and divides by the number of samples). ``beta = 0`` gives
uniform weights (plain cross-entropy); ``beta -> 1`` gives inverse class frequency. The
paper's CIFAR-LT values are ``beta`` in ``{0.9, 0.99, 0.999, 0.9999}``; ``0.9999`` is the
one LDAM-DRW (Cao et al. 2019) uses for its deferred re-weighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .label_smoothing import check_logits_target, check_reduction, reduce

__all__ = ["ClassBalancedLoss", "class_balanced_loss", "class_count_tensor",
           "effective_number_weights"]

Counts = Union[Sequence[int], Tensor]


def class_count_tensor(counts: Counts) -> Tensor:
    """The per-class training counts as a float64 CPU tensor, or ``ValueError`` unless they
    are a non-empty 1-D sequence of positive integers."""
    t = torch.as_tensor(counts).detach().to("cpu")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"class counts must be a non-empty 1-D sequence; got shape "
                         f"{tuple(t.shape)}")
    t = t.to(torch.float64)
    if not bool(torch.all(t >= 1)) or not bool(torch.all(t == t.round())):
        raise ValueError("class counts must be positive integers (every class needs a "
                         "training image)")
    return t


def effective_number_weights(counts: Counts, beta: float = 0.9999) -> Tensor:
    """``w_c = C (1 - beta) / (1 - beta^n_c)``, normalized to sum to ``C`` (float64)."""
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1); got {beta}")
    n = class_count_tensor(counts)
    if beta == 0.0:
        inverse = torch.ones_like(n)
    else:  # 1 - beta^n as -expm1(n log beta): accurate for beta close to 1
        inverse = (1.0 - beta) / -torch.expm1(n * torch.log(torch.tensor(beta, dtype=n.dtype)))
    return inverse / inverse.sum() * n.numel()


def class_balanced_loss(logits: Tensor, target: Tensor, weights: Tensor,
                        reduction: str = "mean") -> Tensor:
    """``w_{y_i} CE(z_i, y_i)`` with the :func:`effective_number_weights` ``weights``
    (``"mean"`` divides by the number of samples)."""
    check_logits_target(logits, target)
    check_reduction(reduction)
    if weights.dim() != 1 or weights.numel() != logits.shape[1]:
        raise ValueError(f"weights must hold one value per class ({logits.shape[1]}); got "
                         f"shape {tuple(weights.shape)}")
    per_sample = F.cross_entropy(logits, target.long(), reduction="none")
    per_sample = per_sample * weights.to(logits.device, per_sample.dtype)[target.long()]
    return reduce(per_sample, reduction)


class ClassBalancedLoss(nn.Module):
    """Class-balanced softmax cross-entropy (Cui et al. 2019), ``forward(logits, target)``.

    Args:
        counts: training images per class.
        beta: the effective-number hyper-parameter in ``[0, 1)`` (default 0.9999).
    """

    def __init__(self, counts: Counts, beta: float = 0.9999, reduction: str = "mean") -> None:
        super().__init__()
        self.beta = float(beta)
        self.reduction = check_reduction(reduction)
        self.register_buffer("weights", effective_number_weights(counts, beta))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return class_balanced_loss(logits, target, self.weights, self.reduction)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, classes={self.weights.numel()}, reduction={self.reduction!r}"
