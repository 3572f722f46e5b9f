"""MetaSAug: meta-learned covariance for ISDA on long-tailed data (Li, Gong, Liu, Wang,
Qiao & Cheng, "MetaSAug: Meta semantic augmentation for long-tailed visual recognition",
CVPR 2021; authors' code: github BIT-DA/MetaSAug, ``MetaSAug_LDAM_train.py``, ``loss.py``).

The training loss is the ISDA bound with optional LDAM margins and per-class weights::

    L(theta, Sigma) = CE_w( z + lambda/2 * sigma2(Sigma) - Delta_y e_y ),
    sigma2[i, j] = (w_j - w_{y_i})^T Sigma_{y_i} (w_j - w_{y_i}).

Each step of the MetaSAug phase (Algorithm 1 of the paper):

1. virtual SGD step of a functional copy of the network under the current covariance,
   ``theta'(Sigma) = theta - alpha * grad_theta L(theta, Sigma)`` (kept differentiable in
   ``Sigma``; ``alpha`` is the current learning rate, as in the authors' code);
2. meta loss: the plain cross-entropy of the virtual network on a batch of the balanced
   meta set, ``M(Sigma) = CE(f(x_meta; theta'(Sigma)), y_meta)``;
3. meta update of the covariance, ``Sigma' = Sigma - beta * dM/dSigma`` (``beta = 0.1``);
4. the real step minimizes ``L(theta, Sigma')``.

As in the authors' code ``Sigma'`` is used for this step only: the online estimate goes on
from ``Sigma`` with the batch's features. Unlike their code, the batch's features are folded
into the estimate *before* the meta step (the order of ISDA's Algorithm 1), so with
``meta_lr = 0``, no margins and no weights a step is exactly an ISDA step. The authors' CIFAR
schedule is 160 epochs of plain cross-entropy, then MetaSAug for the last 40 of 200 (the
estimate starts at zero then), LDAM margins (``max_margin = 0.5``, no scale) and class-
balanced weights (``beta = 0.9999``) in the MetaSAug phase, ``lambda0 = 0.75``.

Everything here is torch only; the network is any module ``net(x) -> (features, logits)``
whose classifier weight is the parameter named ``weight_name``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .. import functional as isda_f
from ..logit_adjustment import adjust_logits
from ..estimator import CovarianceEstimator
from .class_balanced import Counts, effective_number_weights
from .ldam import ldam_margins

__all__ = ["META_KINDS", "MetaSAugLoss", "MetaStep", "meta_covariance_step",
           "parameter_name"]

#: Covariance layouts MetaSAug supports (the covariance is a dense tensor to differentiate).
META_KINDS = ("full", "diagonal")

#: ``loss_fn(features, logits, weight, target, covariance) -> scalar`` of the virtual step.
LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


class MetaStep(NamedTuple):
    """Result of :func:`meta_covariance_step` (all detached)."""

    #: ``Sigma' = Sigma - meta_lr * gradient``.
    covariance: Tensor
    #: ``dM / dSigma`` (after ``grad_hook``, e.g. averaged over ranks).
    gradient: Tensor
    #: The meta loss ``M(Sigma)`` of this rank's meta batch.
    meta_loss: Tensor


def parameter_name(net: nn.Module, parameter: Tensor) -> str:
    """The name of ``parameter`` in ``net.named_parameters()`` (``ValueError`` if absent)."""
    for name, p in net.named_parameters():
        if p is parameter:
            return name
    raise ValueError("the classifier weight is not a parameter of the network")


def meta_covariance_step(net: nn.Module, weight_name: str, loss_fn: LossFn, images: Tensor,
                         labels: Tensor, meta_images: Tensor, meta_labels: Tensor,
                         covariance: Tensor, inner_lr: float, meta_lr: float,
                         grad_hook: Optional[Callable[[Tensor], Tensor]] = None) -> MetaStep:
    """Steps 1-3 of MetaSAug (module docstring) for ``net(x) -> (features, logits)``.

    The virtual network is ``torch.func.functional_call`` on ``net`` with the virtual
    parameters and *copies* of its buffers (BatchNorm running statistics of ``net`` are not
    touched); ``net``'s parameters get no gradient.

    Args:
        weight_name: name of the ``C x A`` classifier weight among ``net``'s parameters.
        loss_fn: the training loss of the virtual step, given the covariance to use.
        covariance: the current estimate (``C x A x A`` or ``C x A``; not modified).
        inner_lr: step size of the virtual SGD step (the current learning rate).
        meta_lr: step size of the covariance update (0.1 in the paper).
        grad_hook: applied to ``dM / dSigma`` before the update (DDP: the average over ranks).
    """
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    if weight_name not in params:
        raise ValueError(f"{weight_name!r} is not a trainable parameter of the network")
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    cov = covariance.detach().clone().requires_grad_(True)
    features, logits = functional_call(net, (params, buffers), (images,))
    loss = loss_fn(features, logits, params[weight_name], labels, cov)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True,
                                allow_unused=True)
    virtual = {n: p if g is None else p - inner_lr * g for (n, p), g in zip(params.items(), grads)}
    _, meta_logits = functional_call(net, (virtual, buffers), (meta_images,))
    meta_loss = F.cross_entropy(meta_logits, meta_labels)
    (gradient,) = torch.autograd.grad(meta_loss, cov, allow_unused=True)
    if gradient is None:  # lambda = 0: the meta loss does not depend on the covariance
        gradient = torch.zeros_like(cov)
    if grad_hook is not None:
        gradient = grad_hook(gradient)
    return MetaStep((cov - meta_lr * gradient).detach(), gradient.detach(), meta_loss.detach())


class MetaSAugLoss(nn.Module):
    """The MetaSAug loss with its online covariance estimate (module docstring).

    Call :meth:`meta_step` (steps 1-3) and then the module (step 4) with the covariance it
    returned; without a meta step the module is the ISDA loss with margins and weights.

    Args:
        num_features, num_classes: ``A`` and ``C``.
        lambda0: ISDA strength (``lambda = lambda0 * t / T``; 0.75 in the authors' command).
        kind: ``"full"`` or ``"diagonal"`` (many classes).
        meta_lr: step size ``beta`` of the covariance update (0.1).
        counts: training images per class, for the margins and weights (``None``: neither).
        max_margin: largest LDAM margin (0.5; ``0`` for MetaSAug with cross-entropy).
        beta: class-balanced ``beta`` of the weights (0.9999; ``0`` for none).
        sync: all-reduce the estimator's statistics under ``torch.distributed``.
    """

    def __init__(self, num_features: int, num_classes: int, lambda0: float = 0.75,
                 kind: str = "full", meta_lr: float = 0.1, counts: Optional[Counts] = None,
                 max_margin: float = 0.5, beta: float = 0.9999, sync: bool = True) -> None:
        super().__init__()
        if kind not in META_KINDS:
            raise ValueError(f"MetaSAug supports kind in {META_KINDS}; got {kind!r}")
        for name, value in (("lambda0", lambda0), ("meta_lr", meta_lr)):
            if not float(value) >= 0.0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        self.lambda0, self.meta_lr = float(lambda0), float(meta_lr)
        self.estimator = CovarianceEstimator(num_features, num_classes, kind, sync=sync)
        if counts is not None and len(counts) != num_classes:
            raise ValueError(f"counts has {len(counts)} entries for {num_classes} classes")
        use_margins = counts is not None and float(max_margin) > 0.0
        use_weights = counts is not None and float(beta) > 0.0
        self.register_buffer("margins", ldam_margins(counts, max_margin) if use_margins else None)
        self.register_buffer("class_weights",
                             effective_number_weights(counts, beta) if use_weights else None)
        self.ratio = 0.0
        self.scanned: Optional[tuple[Tensor, Any]] = None  # (target, class set) of fold()

    @property
    def kind(self) -> str:
        return self.estimator.kind

    def set_progress(self, t_over_T: float) -> None:
        """``lambda = lambda0 * t / T``."""
        self.ratio = self.lambda0 * float(t_over_T)

    def augmented_loss(self, features: Tensor, logits: Tensor, weight: Tensor, target: Tensor,
                       covariance: Tensor) -> Tensor:
        """``CE_w(z + lambda/2 sigma2(Sigma) - Delta_y e_y)`` (differentiable in ``Sigma``
        when it requires grad)."""
        if self.margins is not None:
            logits = adjust_logits(logits, target, margins=self.margins)
        batch = self.scanned[1] if self.scanned is not None and self.scanned[0] is target \
            else None  # the class set found by fold(): no second host synchronization
        augmented = isda_f.augment_logits(logits, weight, target, covariance, self.ratio,
                                          self.kind, batch=batch)
        weights = None if self.class_weights is None else self.class_weights.to(augmented.dtype)
        return F.cross_entropy(augmented, target, weight=weights)

    def fold(self, features: Tensor, target: Tensor) -> None:
        """Fold the batch's features into the estimate (Algorithm 1, line 6): one host
        synchronization, whose class set the step's losses of the same ``target`` reuse
        (``ValueError`` on bad labels or features, the estimate unchanged)."""
        features = features.detach()
        batch, problems = self.estimator.scan(features, target)
        self.estimator.update_scanned(features, target, batch, problems)
        self.scanned = (target, batch)

    def meta_step(self, net: nn.Module, weight_name: str, images: Tensor, labels: Tensor,
                  meta_images: Tensor, meta_labels: Tensor, inner_lr: float,
                  grad_hook: Optional[Callable[[Tensor], Tensor]] = None) -> MetaStep:
        """Steps 1-3 with the current estimate and :meth:`augmented_loss`."""
        return meta_covariance_step(net, weight_name, self.augmented_loss, images, labels,
                                    meta_images, meta_labels, self.estimator.covariance,
                                    inner_lr, self.meta_lr, grad_hook)

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, weight: Tensor,
                covariance: Optional[Tensor] = None) -> Tensor:
        """Step 4: the loss with ``covariance`` (the estimate's when ``None``)."""
        cov = self.estimator.covariance if covariance is None else covariance
        return self.augmented_loss(features, logits, weight, target, cov)

    def extra_repr(self) -> str:
        return (f"lambda0={self.lambda0}, meta_lr={self.meta_lr}, "
                f"margins={self.margins is not None}, weights={self.class_weights is not None}")
