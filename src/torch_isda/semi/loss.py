"""Semi-supervised ISDA objective, Eq. (19) of the paper.

    L = L^L_ISDA(labeled) + eta1 * L^U_ISDA(unlabeled) + eta2 * L_reg

* ``L^L_ISDA`` is the supervised ISDA bound (Eq. 7) on the labeled batch; the
  class-conditional covariance estimator is updated from the *labeled* features only
  (Section 5: "the covariance matrix is estimated using the deep features of labeled
  data").
* ``L^U_ISDA`` is the consistency bound of Eq. (15)
  (:func:`torch_isda.functional.isda_consistency_loss`) on the student logits of the
  unlabeled batch, with ``p`` the base method's target prediction (a constant), the
  pseudo-label ``argmax p`` (Eq. 12) selecting ``Sigma`` from the labeled estimator,
  and the same ``lambda`` (``lambda0 * t / T``) as the supervised term.
* ``L_reg`` is the base method's regulariser (:mod:`torch_isda.semi.methods`), whose
  coefficient ``eta2`` normally follows the base method's ramp-up.

``use_isda=False`` gives the base method alone: plain cross-entropy on the labeled
batch + ``eta2 * L_reg``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as isda_f
from ..loss import ISDALoss
from ..options import ISDAOptions, merge_options
from .methods import ConsistencyMethod

__all__ = ["SemiISDALoss", "SemiLossOutput", "semi_supervised_loss"]


class SemiLossOutput(NamedTuple):
    """Total loss and its (unweighted) parts; ``consistency`` is 0 without ISDA."""

    loss: Tensor
    supervised: Tensor
    consistency: Tensor
    regularizer: Tensor


class SemiISDALoss(nn.Module):
    """Eq. (19): supervised ISDA + ``eta1`` x ISDA consistency + ``eta2`` x base regulariser.

    Args:
        num_features: Feature dimension ``A`` (128 for CNN-13).
        num_classes: ``C``.
        lambda0: ISDA strength ``lambda_0`` (paper grid {0.1, 0.25, 0.5, 0.75, 1}).
        kind: Covariance layout of the estimator (``"full"`` in the paper's CIFAR runs).
        eta1: Weight of the ISDA consistency term (paper grid {0.5, 1, 2}).
        eta2: Default weight of the base regulariser (usually passed per step, ramped).
        use_isda: ``False``: base method only (cross-entropy + ``eta2 * L_reg``).
        options, **option_values: the supervised term's :class:`~torch_isda.ISDAOptions` (as
            in :class:`~torch_isda.ISDALoss`: ``constant_lambda``, ``total_steps``,
            ``label_smoothing``, ``dtype``, ``sync``, ``rank``, ...; ``reduction`` must stay
            ``"mean"``). ``validate`` and ``static_shapes`` apply to the supervised term; the
            static path (``static_shapes=True``, or ``"auto"`` on an accelerator) also makes
            the consistency term use all ``C`` classes (``C x C x C`` quadratic forms) instead
            of the pseudo-labels present.

    In evaluation mode the estimator is not updated.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        lambda0: Optional[float] = None,
        kind: Optional[str] = None,
        *,
        eta1: float = 1.0,
        eta2: float = 1.0,
        use_isda: bool = True,
        options: Optional[ISDAOptions] = None,
        **option_values: Any,
    ) -> None:
        super().__init__()
        for name, value in (("eta1", eta1), ("eta2", eta2)):
            if not float(value) >= 0.0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        opts = merge_options(options, ISDAOptions(), lambda0=lambda0, kind=kind, **option_values)
        if opts.reduction != "mean":
            raise ValueError(f"SemiISDALoss averages its terms: reduction must be 'mean'; got {opts.reduction!r}")
        self.num_features = int(num_features)
        self.num_classes = int(num_classes)
        self.eta1 = float(eta1)
        self.eta2 = float(eta2)
        self.use_isda = bool(use_isda)
        self.label_smoothing = opts.label_smoothing
        self.isda: Optional[ISDALoss] = ISDALoss(num_features, num_classes, options=opts) if self.use_isda else None

    def extra_repr(self) -> str:
        return f"eta1={self.eta1}, eta2={self.eta2}, use_isda={self.use_isda}"

    # ------------------------------------------------------------------ schedule

    def set_progress(self, t_over_T: float) -> None:
        """Training progress ``t / T`` driving ``lambda = lambda0 * t / T`` (no-op without ISDA)."""
        if self.isda is not None:
            self.isda.set_progress(t_over_T)

    @property
    def ratio(self) -> float:
        """The current ``lambda`` (0 without ISDA)."""
        return 0.0 if self.isda is None else self.isda.ratio

    @property
    def covariance(self):
        """The labeled-data covariance used by both ISDA terms, as :mod:`torch_isda.functional`
        takes it (``None`` for the identity kind, a ``LowRankCovariance`` for the low-rank one)."""
        if self.isda is None:
            raise RuntimeError("use_isda=False: there is no covariance estimate")
        return self.isda.estimator.functional_covariance()

    # ------------------------------------------------------------------ terms

    def supervised(self, features: Tensor, logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """Labeled term: ISDA bound (updating the estimator in training mode) or plain CE."""
        if self.isda is None:
            return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        return self.isda(features, logits, target, weight)

    def consistency(
        self,
        logits: Tensor,
        weight: Tensor,
        probs: Tensor,
        *,
        mask: Optional[Tensor] = None,
        ratio: Optional[float] = None,
    ) -> Tensor:
        """Unlabeled ISDA term of Eq. (15), unweighted, averaged over the (masked) samples.

        ``probs`` is the base method's target ``p`` (detached inside); ``Sigma`` comes
        from the labeled estimator.
        """
        if self.isda is None:
            raise RuntimeError("use_isda=False: there is no ISDA consistency term")
        lam = self.isda.ratio if ratio is None else float(ratio)
        per_sample = isda_f.isda_consistency_loss(
            logits, weight, probs, self.covariance, lam, self.isda.kind, reduction="none",
            static_shapes=self.isda.static_path,
        )
        if mask is None:
            return per_sample.mean() if per_sample.numel() else per_sample.sum()
        # masked mean without boolean indexing (no host synchronization); 0 for an empty mask
        keep = mask.to(per_sample.device, torch.bool)
        total = torch.where(keep, per_sample, torch.zeros((), dtype=per_sample.dtype, device=per_sample.device))
        return total.sum() / keep.sum().clamp_min(1).to(per_sample.dtype)

    def forward(
        self,
        features: Tensor,
        logits: Tensor,
        target: Tensor,
        weight: Tensor,
        logits_u: Optional[Tensor] = None,
        probs_u: Optional[Tensor] = None,
        regularizer: Optional[Tensor] = None,
        *,
        mask: Optional[Tensor] = None,
        eta1: Optional[float] = None,
        eta2: Optional[float] = None,
        ratio: Optional[float] = None,
    ) -> SemiLossOutput:
        """Eq. (19) for one step.

        Args:
            features, logits, target: Labeled batch (``N x A``, ``N x C``, ``N``).
            weight: ``C x A`` weight of the final linear layer (gradients flow into it).
            logits_u, probs_u: Student logits and the base method's target ``p`` on the
                unlabeled batch (``M x C``); the ISDA consistency term is skipped when
                either is ``None`` or ISDA is off.
            regularizer: The base method's ``L_reg`` (scalar) or ``None``.
            mask: Optional ``M`` bool mask of the unlabeled samples entering Eq. (15).
            eta1, eta2: Per-call weights (default: the module's).
            ratio: Per-call ``lambda`` (default: the schedule's).
        """
        w1 = self.eta1 if eta1 is None else float(eta1)
        w2 = self.eta2 if eta2 is None else float(eta2)
        sup = self.supervised(features, logits, target, weight)
        zero = sup.new_zeros(())
        loss = sup
        cons = zero
        if self.isda is not None and logits_u is not None and probs_u is not None:
            cons = self.consistency(logits_u, weight, probs_u, mask=mask, ratio=ratio)
            if w1 != 0.0:
                loss = loss + w1 * cons
        reg = zero if regularizer is None else regularizer
        if regularizer is not None and w2 != 0.0:
            loss = loss + w2 * regularizer
        return SemiLossOutput(loss, sup.detach(), cons.detach(), reg.detach())


def semi_supervised_loss(
    model: nn.Module,
    criterion: SemiISDALoss,
    method: ConsistencyMethod,
    x_labeled: Tensor,
    y_labeled: Tensor,
    unlabeled_views: Union[Tensor, Sequence[Tensor]],
    *,
    indices: Optional[Tensor] = None,
    eta1: Optional[float] = None,
    eta2: Optional[float] = None,
) -> SemiLossOutput:
    """One step's Eq. (19) loss for an ISDA-style model (``forward_features`` + ``get_classifier()``).

    Runs the labeled pass (features for the estimator), then the base method on the
    unlabeled views, then combines. Call ``out.loss.backward()``, step the optimizer,
    then ``method.after_step(model, global_step)``.
    """
    fc = model.get_classifier()
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"the semi-supervised ISDA loss needs a model ending in an nn.Linear "
                        f"(Eq. 15 uses its weights); get_classifier() is {type(fc).__name__}")
    features = model.forward_features(x_labeled)
    logits = fc(features)
    out = method.consistency(model, unlabeled_views, indices=indices)
    return criterion(
        features,
        logits,
        y_labeled,
        fc.weight,
        out.logits,
        out.target_probs,
        out.loss,
        eta1=eta1,
        eta2=eta2,
    )
