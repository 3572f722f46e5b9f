"""The ISDA loss module (Algorithm 1 of the paper)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import functional as isda_f
from .estimator import CovarianceEstimator

__all__ = ["ISDALoss"]


class ISDALoss(nn.Module):
    """Cross-entropy of ISDA-augmented logits with an online covariance estimate.

    Each call (in training mode) first folds the detached features into the estimator
    (Algorithm 1, line 6), then returns the cross-entropy of
    ``logits + lambda / 2 * sigma2`` (Eq. 7, line 7).

    The strength follows the paper's schedule ``lambda = lambda0 * t / T``: call
    :meth:`set_progress` with ``t / T`` (e.g. ``epoch / epochs``) as training advances, or
    pass ``constant_lambda=True`` for ``lambda = lambda0`` (Table 8 ablation), or give
    ``ratio=`` to :meth:`forward` directly.

    Args:
        num_features: feature dimension ``A`` (input size of the final linear layer).
        num_classes: number of classes ``C``.
        lambda0: the paper's ``lambda_0`` (0.5 for CIFAR; 7.5 with the diagonal kind on
            ImageNet).
        kind: covariance layout, see :class:`CovarianceEstimator`.
        constant_lambda: use ``lambda0`` from the first step.
        reduction, label_smoothing, ignore_index: as in :class:`torch.nn.CrossEntropyLoss`.
            Samples with ``target == ignore_index`` neither update the estimator nor count.
        dtype, sync: passed to the estimator.
        rank: components kept per class by ``kind="lowrank"`` (default 32; see
            :mod:`torch_isda.lowrank`); ignored by the other kinds.

    In evaluation mode (``criterion.eval()``) the estimator is not updated.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        lambda0: float = 0.5,
        kind: str = "full",
        *,
        constant_lambda: bool = False,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        dtype: torch.dtype = torch.float32,
        sync: bool = True,
        rank: int = 32,
    ) -> None:
        super().__init__()
        if not float(lambda0) >= 0.0:
            raise ValueError(f"lambda0 must be non-negative; got {lambda0}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1]; got {label_smoothing}")
        self.estimator = CovarianceEstimator(
            num_features, num_classes, kind, dtype=dtype, sync=sync, rank=rank
        )
        self.lambda0 = float(lambda0)
        self.constant_lambda = bool(constant_lambda)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))

    @property
    def kind(self) -> str:
        return self.estimator.kind

    @property
    def num_features(self) -> int:
        return self.estimator.num_features

    @property
    def num_classes(self) -> int:
        return self.estimator.num_classes

    def extra_repr(self) -> str:
        return (
            f"lambda0={self.lambda0}, constant_lambda={self.constant_lambda}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}"
        )

    def set_progress(self, t_over_T: float) -> None:
        """Set the training progress ``t / T`` in ``[0, 1]`` that drives ``lambda``."""
        value = float(t_over_T)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"progress t/T must lie in [0, 1]; got {t_over_T}")
        self.progress.fill_(value)

    @property
    def ratio(self) -> float:
        """The current ``lambda``: ``lambda0`` or ``lambda0 * t / T``."""
        if self.constant_lambda:
            return self.lambda0
        return self.lambda0 * float(self.progress)

    def forward(
        self,
        features: Tensor,
        logits: Tensor,
        target: Tensor,
        weight: Tensor,
        ratio: Optional[float] = None,
    ) -> Tensor:
        """ISDA loss of a batch.

        Args:
            features: ``N x A`` deep features (the input of the final linear layer).
            logits: ``N x C`` output of that layer.
            target: ``N`` class indices (or ``ignore_index``).
            weight: ``C x A`` weight of that layer (gradient flows into it).
            ratio: ``lambda`` for this call; the schedule's value when ``None``.
        """
        isda_f._check_logits_target(logits, weight, target)
        C, A = self.num_classes, self.num_features
        if tuple(weight.shape) != (C, A):
            raise ValueError(f"weight must be C x A = ({C}, {A}) for this loss; got {tuple(weight.shape)}")
        if features.dim() != 2 or features.shape != (logits.shape[0], A):
            raise ValueError(
                f"features must be N x A = ({logits.shape[0]}, {A}) to match the logits; got "
                f"{tuple(features.shape)}"
            )
        valid = target != self.ignore_index
        all_valid = bool(valid.all())
        if self.training:
            if all_valid:
                self.estimator.update(features, target)
            else:
                self.estimator.update(features[valid], target[valid])
        lam = self.ratio if ratio is None else float(ratio)
        kind = self.kind
        cov = self.estimator.functional_covariance()
        return isda_f.isda_cross_entropy(
            logits,
            weight,
            target,
            cov,
            lam,
            kind,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )
