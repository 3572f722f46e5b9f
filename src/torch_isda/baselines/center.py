"""Center loss (Wen, Zhang, Li & Qiao, "A discriminative feature learning approach for deep
face recognition", ECCV 2016).

    L_C = lambda * 1/N * sum_i 1/2 ||a_i - c_{y_i}||^2

(``reduction="mean"``; Wen et al. write the mini-batch *sum*, their Caffe layer divides
by the batch size as here), added to the softmax loss.  ``a_i`` are the deep features
(inputs of the final linear layer) and ``c_j`` one learned center per class.

Two ways to learn the centers:

* as an ``nn.Parameter`` (:attr:`CenterLoss.centers`) owned by its own optimizer group,
  as in the ISDA paper (Appendix C: "initial learning rate [of the center loss module]
  set as 0.5"), see :meth:`CenterLoss.parameter_groups`;
* with the original update rule of Wen et al. (Algorithm 1, Eq. 4),
  :meth:`CenterLoss.update_centers`: ``c_j <- c_j - alpha * dc_j`` with
  ``dc_j = sum_{i: y_i = j} (c_j - a_i) / (1 + n_j)``.

``decouple_center_grad=True`` (default) makes the gradient reaching the centers that of
the *unweighted* loss ``1/N sum_i 1/2 ||a_i - c_{y_i}||^2``, while the features receive
``lambda`` times theirs: in Wen et al. the center step ``alpha`` does not depend on
``lambda`` (and the widely used PyTorch port rescales the center gradients by
``1/lambda`` for the same reason).  Without it, ``lambda = 0.003`` would make a
learning rate of 0.5 on the centers practically zero.  The loss *value* is
``lambda * L`` either way.

Default ``lambda = 0.003``: Wen et al.'s value (with ``alpha = 0.5``); the ISDA paper does
not report its ``lambda``.  Centers start at zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .label_smoothing import check_reduction, reduce

__all__ = ["CenterLoss", "center_loss"]


def _check_features_target(features: Tensor, target: Tensor, centers: Tensor) -> None:
    if features.dim() != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(
            f"features must be (N, {centers.shape[1]}); got shape {tuple(features.shape)}"
        )
    if target.dim() != 1 or target.shape[0] != features.shape[0]:
        raise ValueError(f"target must be (N,) with N = {features.shape[0]}; got {tuple(target.shape)}")


def center_loss(
    features: Tensor,
    target: Tensor,
    centers: Tensor,
    loss_weight: float = 0.003,
    reduction: str = "mean",
    decouple_center_grad: bool = False,
) -> Tensor:
    """``loss_weight * 1/2 ||a_i - c_{y_i}||^2`` reduced over the batch.

    With ``decouple_center_grad`` the gradient w.r.t. ``centers`` is that of the loss
    *without* ``loss_weight`` (the value and the feature gradient are unchanged).
    """
    _check_features_target(features, target, centers)
    check_reduction(reduction)
    lam = float(loss_weight)
    if not lam >= 0.0:
        raise ValueError(f"loss_weight must be >= 0; got {loss_weight}")
    c_y = centers.index_select(0, target.long())
    if not decouple_center_grad:
        per_sample = lam * 0.5 * (features - c_y).pow(2).sum(dim=1)
    else:
        feat_part = 0.5 * (features - c_y.detach()).pow(2).sum(dim=1)
        center_part = 0.5 * (features.detach() - c_y).pow(2).sum(dim=1)
        per_sample = lam * feat_part + (center_part - center_part.detach())
    return reduce(per_sample, reduction)


class CenterLoss(nn.Module):
    """Center loss with learnable class centers, ``forward(features, target)``.

    Args:
        num_classes: number of classes ``C``.
        num_features: feature dimension ``D``.
        loss_weight: ``lambda`` (default 0.003, Wen et al.).
        decouple_center_grad: centers get the gradient of the unweighted loss (see the
            module docstring); default ``True``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        dtype: dtype of :attr:`centers`.
    """

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        loss_weight: float = 0.003,
        *,
        decouple_center_grad: bool = True,
        reduction: str = "mean",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1 or int(num_features) < 1:
            raise ValueError(f"num_classes and num_features must be >= 1; got {num_classes}, {num_features}")
        if not float(loss_weight) >= 0.0:
            raise ValueError(f"loss_weight must be >= 0; got {loss_weight}")
        self.num_classes = int(num_classes)
        self.num_features = int(num_features)
        self.loss_weight = float(loss_weight)
        self.decouple_center_grad = bool(decouple_center_grad)
        self.reduction = check_reduction(reduction)
        self.centers = nn.Parameter(torch.zeros(self.num_classes, self.num_features, dtype=dtype))

    def forward(self, features: Tensor, target: Tensor) -> Tensor:
        return center_loss(
            features,
            target,
            self.centers,
            self.loss_weight,
            self.reduction,
            self.decouple_center_grad,
        )

    def parameter_groups(self, lr: float = 0.5, weight_decay: float = 0.0, **options: Any) -> list[dict]:
        """Optimizer parameter group(s) for the centers: ``[{"params": [centers], "lr": 0.5,
        "weight_decay": 0.0, **options}]`` (learning rate 0.5: ISDA paper, Appendix C)."""
        if not float(lr) > 0.0:
            raise ValueError(f"lr must be > 0; got {lr}")
        return [{"params": [self.centers], "lr": float(lr), "weight_decay": float(weight_decay), **options}]

    @torch.no_grad()
    def update_centers(self, features: Tensor, target: Tensor, alpha: float = 0.5) -> None:
        """Wen et al.'s update (Algorithm 1): ``c_j <- c_j - alpha * dc_j`` with
        ``dc_j = sum_{i: y_i = j} (c_j - a_i) / (1 + n_j)``; classes absent from the batch
        do not move.  Use it *instead of* an optimizer on :attr:`centers` (then also call
        ``centers.requires_grad_(False)`` or keep them out of every optimizer)."""
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {alpha}")
        c = self.centers
        _check_features_target(features, target, c)
        t = target.long().to(c.device)
        a = features.detach().to(c.device, c.dtype)
        sums = torch.zeros_like(c).index_add_(0, t, a)
        counts = torch.bincount(t, minlength=self.num_classes).to(c.dtype).unsqueeze(1)
        delta = (counts * c - sums) / (1.0 + counts)
        c.sub_(alpha * delta)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_features={self.num_features}, "
            f"loss_weight={self.loss_weight}, decouple_center_grad={self.decouple_center_grad}, "
            f"reduction={self.reduction!r}"
        )
