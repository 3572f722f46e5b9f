"""Large-margin softmax loss, L-Softmax (Liu, Wen, Yu & Yang, ICML 2016).

For sample ``x`` with label ``y`` and classifier rows ``w_j`` the ordinary logit of the
target class ``||w_y|| ||x|| cos(theta_y)`` is replaced by ``||w_y|| ||x|| psi(theta_y)``
with (Liu et al., Eq. 6)

    psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi / m, (k + 1) pi / m],
    k in {0, ..., m - 1},

an integer margin ``m >= 1``; ``psi`` is continuous and decreasing on ``[0, pi]`` and
``m = 1`` gives back the ordinary logit.  ``cos(m theta)`` is evaluated as the Chebyshev
polynomial ``T_m(cos theta)`` (as in the official Caffe layer), so gradients never go
through ``acos``.

Annealing (official code, ``largemargin_inner_product_layer.cpp``): training starts close
to the softmax loss and the margin is switched in gradually through

    f_y = (beta * ||w_y|| ||x|| cos(theta_y) + ||w_y|| ||x|| psi(theta_y)) / (1 + beta),
    beta = max(beta_min, base * (1 + gamma * it)^(-power)),

where ``it`` is the iteration counter, incremented *before* each training forward (the
first training step uses ``it = 1``).  Non-target logits are the ordinary ``w_j . x``.
Defaults are those of the official CIFAR-10 example
(``myexamples/cifar10/model/cifar_train_test.prototxt`` of wy1iu/LargeMargin_Softmax_Loss):
``m = 2`` (type DOUBLE), ``base = 1000``, ``gamma = 2e-5``, ``power = 45``,
``beta_min = 0`` (the cifar10+ example uses ``gamma = 1e-5``; the MNIST example
``m = 4``, ``gamma = 2.5e-5``, ``power = 35``).  The often-quoted ``gamma = 0.12,
power = 1, lambda_min = 5`` are SphereFace (A-Softmax) settings, not L-Softmax ones.
The official test network uses a plain inner product (type SINGLE); accordingly, in
``eval()`` mode :class:`LargeMarginSoftmaxLoss` returns the ordinary cross-entropy.

Bias: L-Softmax is defined for a bias-free classifier.  If the classifier has a bias
``b``, it is kept as an additive term outside the margin: ``f_j + b_j`` for every class
(target included).  With ``m = 1`` the loss therefore equals the cross-entropy of the
layer's ordinary logits, bias included.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .label_smoothing import check_reduction

__all__ = [
    "LargeMarginSoftmaxLoss",
    "large_margin_logits",
    "large_margin_softmax_loss",
    "lsoftmax_beta",
    "lsoftmax_psi",
]


def _check_margin(margin: int) -> int:
    if isinstance(margin, bool) or int(margin) != margin or int(margin) < 1:
        raise ValueError(f"margin must be an integer >= 1; got {margin!r}")
    return int(margin)


def lsoftmax_psi(cos_theta: Tensor, margin: int) -> Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` as a function of ``cos(theta)``.

    ``k = #{j in 1..m-1 : cos(theta) <= cos(j pi / m)}`` (the segment of
    ``theta = acos(cos_theta)``), ``cos(m theta) = T_m(cos theta)`` (Chebyshev).
    Differentiable in ``cos_theta`` (``k`` is piecewise constant; ``psi`` and its
    derivative are continuous at the segment boundaries).
    """
    m = _check_margin(margin)
    c = cos_theta
    if m == 1:
        return c
    t_prev, t_cur = torch.ones_like(c), c
    for _ in range(m - 1):
        t_prev, t_cur = t_cur, 2.0 * c * t_cur - t_prev
    k = torch.zeros_like(c)
    for j in range(1, m):
        k = k + (c <= math.cos(j * math.pi / m)).to(c.dtype)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
    return sign * t_cur - 2.0 * k


def lsoftmax_beta(
    iteration: int, base: float = 1000.0, gamma: float = 2e-5, power: float = 45.0, beta_min: float = 0.0
) -> float:
    """Annealing weight ``max(beta_min, base * (1 + gamma * iteration)^(-power))``
    (the ``lambda`` of the official L-Softmax Caffe layer)."""
    return max(float(beta_min), float(base) * (1.0 + float(gamma) * float(iteration)) ** (-float(power)))


def large_margin_logits(
    features: Tensor,
    weight: Tensor,
    target: Tensor,
    margin: int = 2,
    beta: float = 0.0,
    bias: Optional[Tensor] = None,
    eps: float = 1e-12,
) -> Tensor:
    """Logits of the L-Softmax layer: ordinary ``x w_j^T (+ b_j)`` for ``j != y`` and
    ``(beta * w_y.x + ||w_y|| ||x|| psi(theta_y)) / (1 + beta) (+ b_y)`` for the target.

    Args:
        features: ``(N, D)`` inputs of the final linear layer.
        weight: ``(C, D)`` classifier weight (``nn.Linear.weight``).
        target: ``(N,)`` integer class indices.
        margin: integer ``m >= 1`` (``1`` returns the ordinary logits).
        beta: annealing weight ``>= 0`` (``0``: full margin; large: close to softmax).
        bias: optional ``(C,)`` bias, added outside the margin.
        eps: lower clamp of ``||w_y|| ||x||`` when computing ``cos(theta)``.
    """
    m = _check_margin(margin)
    beta = float(beta)
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need features (N, D) and weight (C, D); got {tuple(features.shape)} and {tuple(weight.shape)}"
        )
    if target.dim() != 1 or target.shape[0] != features.shape[0]:
        raise ValueError(f"target must be (N,) with N = {features.shape[0]}; got {tuple(target.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},); got {tuple(bias.shape)}")
    plain = F.linear(features, weight)
    if m == 1:
        return plain if bias is None else plain + bias
    idx = target.long().unsqueeze(1)
    dot_y = plain.gather(1, idx).squeeze(1)
    w_y = weight.index_select(0, target.long())
    norm_prod = torch.linalg.vector_norm(features, dim=1) * torch.linalg.vector_norm(w_y, dim=1)
    cos_y = dot_y / norm_prod.clamp_min(eps)
    margin_logit = norm_prod * lsoftmax_psi(cos_y, m)
    target_logit = (beta * dot_y + margin_logit) / (1.0 + beta)
    logits = plain.scatter(1, idx, target_logit.unsqueeze(1))
    return logits if bias is None else logits + bias


def large_margin_softmax_loss(
    features: Tensor,
    weight: Tensor,
    target: Tensor,
    margin: int = 2,
    beta: float = 0.0,
    bias: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of :func:`large_margin_logits` (L-Softmax loss, Liu et al. Eq. 5)."""
    check_reduction(reduction)
    logits = large_margin_logits(features, weight, target, margin, beta, bias)
    return F.cross_entropy(logits, target.long(), reduction=reduction)


class LargeMarginSoftmaxLoss(nn.Module):
    """L-Softmax criterion with the official annealing schedule.

    ``forward(features, target, weight, bias=None)`` takes the *inputs* of the final
    linear layer and its parameters (e.g. ``fc = torch_isda.find_classifier(model)``;
    ``loss = crit(features, target, fc.weight, fc.bias)``).  In training mode every call
    first increments :attr:`iteration` and uses ``beta = lsoftmax_beta(iteration, ...)``;
    in eval mode it returns the ordinary cross-entropy (the official test net is a plain
    inner product) and leaves the counter alone.  ``iteration`` is a buffer, so it is
    saved in ``state_dict`` and resuming continues the schedule.

    Args:
        margin: integer ``m`` (default 2, official CIFAR-10 example).
        base, gamma, power, beta_min: annealing ``beta = max(beta_min, base (1 + gamma
            it)^-power)``; defaults 1000, 2e-5, 45, 0 (official CIFAR-10 example).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        margin: int = 2,
        *,
        base: float = 1000.0,
        gamma: float = 2e-5,
        power: float = 45.0,
        beta_min: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        for name, value in (("base", base), ("gamma", gamma), ("power", power), ("beta_min", beta_min)):
            if not float(value) >= 0.0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        self.base = float(base)
        self.gamma = float(gamma)
        self.power = float(power)
        self.beta_min = float(beta_min)
        self.reduction = check_reduction(reduction)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    @property
    def beta(self) -> float:
        """``beta`` at the current :attr:`iteration` (the value the last training call used)."""
        return lsoftmax_beta(int(self.iteration), self.base, self.gamma, self.power, self.beta_min)

    def set_iteration(self, iteration: int) -> None:
        """Set the annealing counter (the next training call uses ``iteration + 1``)."""
        if int(iteration) < 0:
            raise ValueError(f"iteration must be >= 0; got {iteration}")
        self.iteration.fill_(int(iteration))

    def forward(
        self, features: Tensor, target: Tensor, weight: Tensor, bias: Optional[Tensor] = None
    ) -> Tensor:
        if not self.training:
            return large_margin_softmax_loss(features, weight, target, 1, 0.0, bias, self.reduction)
        self.iteration += 1
        return large_margin_softmax_loss(
            features, weight, target, self.margin, self.beta, bias, self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, base={self.base}, gamma={self.gamma}, power={self.power}, "
            f"beta_min={self.beta_min}, reduction={self.reduction!r}"
        )
