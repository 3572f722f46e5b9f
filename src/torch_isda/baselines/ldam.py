"""LDAM loss with deferred re-weighting (LDAM-DRW; Cao, Wei, Gaidon, Arechiga & Ma,
"Learning imbalanced datasets with label-distribution-aware margin loss", NeurIPS 2019).

The label-distribution-aware margin of class ``c`` is ``Delta_c = K / n_c^(1/4)`` with
``K`` chosen so that the largest margin (the rarest class) is ``max_margin`` (0.5 in the
paper's code). The loss subtracts the margin from the true-class logit and scales by ``s``::

    LDAM_i = -w_{y_i} log softmax(s * (z_i - Delta_{y_i} e_{y_i}))[y_i],

reduced as :func:`torch.nn.functional.cross_entropy` with ``weight=w``: the weighted mean
``sum_i LDAM_i / sum_i w_{y_i}``. Deferred re-weighting (DRW): ``w = 1`` until the fraction
``drw_start`` of training (0.8: epoch 160 of 200), then the class-balanced weights of Cui
et al. 2019 with ``beta = 0.9999``
(:func:`~torch_isda.baselines.class_balanced.effective_number_weights`).

Cao et al. apply ``s = 30`` to cosine logits (a normalized classifier, ``|z| <= 1``). The
MetaSAug code (Li et al. 2021) applies the margins to the plain linear logits without a
scale, i.e. ``s = 1``; see the criterion's documentation for the default used in training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..logit_adjustment import adjust_logits
from ..logit_adjustment import ldam_margins as core_ldam_margins
from .class_balanced import Counts, class_count_tensor, effective_number_weights
from .label_smoothing import check_logits_target, check_reduction

__all__ = ["LDAMLoss", "ldam_logits", "ldam_loss", "ldam_margins"]


def ldam_margins(counts: Counts, max_margin: float = 0.5) -> Tensor:
    """``Delta_c`` proportional to ``n_c^(-1/4)`` with ``max_c Delta_c = max_margin`` (float64;
    :func:`torch_isda.logit_adjustment.ldam_margins` of checked counts)."""
    max_margin = float(max_margin)
    if not max_margin >= 0.0:
        raise ValueError(f"max_margin must be >= 0; got {max_margin}")
    return core_ldam_margins(class_count_tensor(counts), max_margin)


def ldam_logits(logits: Tensor, target: Tensor, margins: Tensor, s: float = 30.0) -> Tensor:
    """``s * (z - Delta_y e_y)``: the logits the LDAM cross-entropy is taken of."""
    check_logits_target(logits, target)
    if margins.dim() != 1 or margins.numel() != logits.shape[1]:
        raise ValueError(f"margins must hold one value per class ({logits.shape[1]}); got "
                         f"shape {tuple(margins.shape)}")
    return adjust_logits(logits, target, margins=margins, scale=float(s))


def ldam_loss(logits: Tensor, target: Tensor, margins: Tensor, s: float = 30.0,
              weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """The LDAM cross-entropy (module docstring); ``weight``: per-class weights or ``None``."""
    check_reduction(reduction)
    out = ldam_logits(logits, target, margins, s)
    if weight is not None:
        weight = weight.to(out.device, out.dtype)
    return F.cross_entropy(out, target.long(), weight=weight, reduction=reduction)


class LDAMLoss(nn.Module):
    """LDAM-DRW, ``forward(logits, target)``; :meth:`set_progress` switches the weights on.

    Args:
        counts: training images per class.
        max_margin: the largest margin (0.5).
        s: logit scale (30 in Cao et al. for cosine logits).
        drw_start: training fraction from which the class-balanced weights apply (0.8);
            ``1`` never re-weights (plain LDAM), ``0`` always.
        beta: effective-number ``beta`` of the DRW weights (0.9999).
    """

    def __init__(self, counts: Counts, max_margin: float = 0.5, s: float = 30.0,
                 drw_start: float = 0.8, beta: float = 0.9999, reduction: str = "mean") -> None:
        super().__init__()
        s, drw_start = float(s), float(drw_start)
        if not s > 0.0:
            raise ValueError(f"s must be > 0; got {s}")
        if not 0.0 <= drw_start <= 1.0:
            raise ValueError(f"drw_start must lie in [0, 1]; got {drw_start}")
        self.s, self.drw_start, self.max_margin = s, drw_start, float(max_margin)
        self.reduction = check_reduction(reduction)
        self.register_buffer("margins", ldam_margins(counts, max_margin))
        self.register_buffer("drw_weights", effective_number_weights(counts, beta))
        self.reweighting = drw_start == 0.0

    @property
    def num_classes(self) -> int:
        return int(self.margins.numel())

    def set_progress(self, t_over_T: float) -> None:
        """Training progress ``t / T``: re-weight from ``drw_start`` on."""
        self.reweighting = float(t_over_T) >= self.drw_start and self.drw_start < 1.0

    def class_weights(self) -> Tensor | None:
        """The current per-class weights (``None`` before DRW starts)."""
        return self.drw_weights if self.reweighting else None

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return ldam_loss(logits, target, self.margins, self.s, self.class_weights(),
                         self.reduction)

    def extra_repr(self) -> str:
        return (f"max_margin={self.max_margin}, s={self.s}, drw_start={self.drw_start}, "
                f"classes={self.num_classes}, reduction={self.reduction!r}")
