"""RISDA: reasoning-based implicit semantic data augmentation for long-tailed data (Chen,
Zhou, Wu, Zhang, Zhou, Li & Wang, "Imagine by reasoning", AAAI 2022; authors' code: github
xiaohua-chen/RISDA, ``RISDA.py`` and ``loss.py``).

Tail classes have too few images to estimate their covariance, so RISDA borrows the
semantic directions of the classes they are confused with. Stage I trains with plain
cross-entropy. At the switch, one pass over the training images gives the *knowledge graph*
``K`` (the row-normalised confusion matrix: ``K[c, j]`` is the share of class ``c``'s
training images predicted ``j``) and the class *prototypes* ``mu_c`` (mean features).
Stage II trains with::

    Sigma'_c = Sigma_c                     (head: the most frequent classes)
    Sigma'_c = sum_j K[c, j] Sigma_j       (tail: the covariance reasoned from the graph)
    delta_c  = sum_j K[c, j] mu_j - mu_c   (every class: the reasoned prototype shift)
    a'_i     = a_i + alpha * delta_{y_i}   (the feature complemented by the shift)
    z'_i     = W a'_i + b
    s_ij     = z'_ij + beta / 2 * (w_j - w_{y_i})^T Sigma'_{y_i} (w_j - w_{y_i})
                     + alpha * (w_j - w_{y_i})^T delta_{y_i}
    L        = CE_w(s, y)

with ``alpha = alpha0 * t / T``, ``beta = beta0 * t / T``, class-balanced weights ``w``
(Cui et al. 2019, ``beta = 0.9999``) and ``Sigma`` the online ISDA estimate of the features
``a'`` from the start of Stage II. ``CE_w`` of ``s`` upper-bounds the expected weighted
cross-entropy over features ``N(a'_i + alpha delta_{y_i}, beta Sigma'_{y_i})`` (ISDA's
Proposition 1 with a mean shift).

Faithful to the authors' code: the shift enters twice (their network adds
``alpha * delta_y`` to the features, their loss adds it again in the bound), the head is
the most frequent ``head_fraction`` of the classes (their ``--head 20`` of CIFAR-100's 100),
the weights are the class-balanced ones, and Stage II retrains the classifier only (the
training criterion's option). Different, and said so: ``K`` comes from the last Stage I
model, not rounded (their code keeps the confusion matrix of the Stage I epoch of best
training accuracy, rounded to 2 decimals), and ``Sigma'`` is recomputed from the estimate
every step, which keeps each class's own statistics (their code writes ``Sigma'`` back into
the estimator every step, so the tail estimates drift towards mixtures of the head's).

Everything here is torch only.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as isda_f
from ..estimator import CovarianceEstimator
from .class_balanced import Counts, class_count_tensor, effective_number_weights

__all__ = ["RISDA_KINDS", "RISDALoss", "knowledge_graph", "prototype_shift",
           "reasoned_covariance", "risda_logits", "tail_classes"]

#: Covariance layouts RISDA supports (a per-class covariance that a graph can mix).
RISDA_KINDS = ("full", "diagonal")


def knowledge_graph(confusion: Tensor) -> Tensor:
    """The row-normalised ``C x C`` confusion counts (rows: true class, columns: predicted);
    a class with no image keeps itself (an identity row)."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"the confusion matrix must be C x C; got shape {tuple(confusion.shape)}")
    confusion = confusion.to(torch.float64)
    if not bool(torch.isfinite(confusion).all()) or bool((confusion < 0).any()):
        raise ValueError("the confusion matrix must hold finite counts >= 0")
    rows = confusion.sum(1, keepdim=True)
    eye = torch.eye(confusion.shape[0], dtype=confusion.dtype, device=confusion.device)
    return torch.where(rows > 0, confusion / rows.clamp_min(1e-300), eye)


def tail_classes(counts: Counts, head_fraction: float = 0.2) -> Tensor:
    """``C`` booleans: ``True`` for every class but the ``round(head_fraction * C)`` (at least
    one) with the most training images (ties: the lower class index is the head's)."""
    n = class_count_tensor(counts)
    if not 0.0 < float(head_fraction) <= 1.0:
        raise ValueError(f"head_fraction must lie in (0, 1]; got {head_fraction}")
    num_head = max(1, round(float(head_fraction) * n.numel()))
    order = sorted(range(n.numel()), key=lambda c: (-float(n[c]), c))
    tail = torch.ones(n.numel(), dtype=torch.bool)
    tail[order[:num_head]] = False
    return tail


def reasoned_covariance(covariance: Tensor, graph: Tensor, tail: Tensor) -> Tensor:
    """``Sigma'``: ``sum_j K[c, j] Sigma_j`` for the tail classes, ``Sigma_c`` for the head
    (``covariance``: ``C x A x A`` or ``C x A``)."""
    num_classes = covariance.shape[0]
    mixed = (graph.to(covariance.dtype) @ covariance.reshape(num_classes, -1)).view_as(covariance)
    mask = tail.to(covariance.device).view(num_classes, *([1] * (covariance.dim() - 1)))
    return torch.where(mask, mixed, covariance)


def prototype_shift(graph: Tensor, means: Tensor) -> Tensor:
    """``delta = K mu - mu`` (``C x A``): each class's reasoned prototype minus its own."""
    return graph.to(means.dtype) @ means - means


def risda_logits(features: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor,
                 covariance: Tensor, shift: Tensor, alpha: float, beta: float,
                 kind: Optional[str] = None, batch: Optional[Any] = None) -> Tensor:
    """``s`` of the module docstring, from the unshifted ``features`` ``a`` (``N x A``), the
    classifier ``weight``/``bias``, the *reasoned* ``covariance`` ``Sigma'`` and ``shift``
    ``delta`` (one host synchronization, ISDA's class set of ``target``, unless ``batch``
    gives it: :func:`torch_isda.functional.batch_classes`)."""
    delta = shift[target].to(features.dtype)  # N x A
    logits = F.linear(features + alpha * delta, weight, bias)
    augmented = isda_f.augment_logits(logits, weight, target, covariance, beta, kind,
                                      batch=batch)
    moved = delta @ weight.t()  # N x C: w_j^T delta_{y_i}
    return augmented + alpha * (moved - moved.gather(1, target.view(-1, 1)))


class RISDALoss(nn.Module):
    """The RISDA Stage II loss with its online covariance estimate (module docstring).

    Give it the knowledge graph and prototypes with :meth:`set_reasoning` (the training
    loop's pass over its training images), then call it with the *unshifted* features.

    Args:
        num_features, num_classes: ``A`` and ``C``.
        counts: training images per class (the head/tail split and the weights).
        alpha0: strength of the prototype shift (``alpha = alpha0 t / T``; 0.5 in the
            authors' CIFAR-100-LT commands).
        beta0: strength of the covariance (``beta = beta0 t / T``; 0.75 for rho = 100).
        head_fraction: share of the classes, the most frequent, that keep their own
            covariance (0.2: the authors' 20 of 100).
        kind: ``"full"`` or ``"diagonal"``.
        class_beta: class-balanced ``beta`` of the weights (0.9999; ``0`` for none).
        sync: all-reduce the estimator's statistics under ``torch.distributed``.
    """

    def __init__(self, num_features: int, num_classes: int, counts: Counts,
                 alpha0: float = 0.5, beta0: float = 0.75, head_fraction: float = 0.2,
                 kind: str = "full", class_beta: float = 0.9999, sync: bool = True) -> None:
        super().__init__()
        if kind not in RISDA_KINDS:
            raise ValueError(f"RISDA supports kind in {RISDA_KINDS}; got {kind!r}")
        for name, value in (("alpha0", alpha0), ("beta0", beta0)):
            if not (math.isfinite(float(value)) and float(value) >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value}")
        if len(counts) != num_classes:
            raise ValueError(f"counts has {len(counts)} entries for {num_classes} classes")
        self.alpha0, self.beta0 = float(alpha0), float(beta0)
        self.alpha = self.beta = 0.0
        self.estimator = CovarianceEstimator(num_features, num_classes, kind, sync=sync)
        self.register_buffer("tail", tail_classes(counts, head_fraction))
        self.register_buffer("class_weights", effective_number_weights(counts, class_beta)
                             if float(class_beta) > 0.0 else None)
        self.register_buffer("graph", torch.eye(num_classes))
        self.register_buffer("shift", torch.zeros(num_classes, num_features))
        self.register_buffer("reasoning_ready", torch.tensor(False))
        self.reasoned = False  # host copy of ``reasoning_ready``: no read in the step

    @property
    def kind(self) -> str:
        return self.estimator.kind

    def set_progress(self, t_over_T: float) -> None:
        """``alpha = alpha0 t / T`` and ``beta = beta0 t / T``."""
        self.alpha, self.beta = self.alpha0 * float(t_over_T), self.beta0 * float(t_over_T)

    def set_reasoning(self, confusion: Tensor, means: Tensor) -> None:
        """The knowledge graph from the ``C x C`` confusion counts and the shift from the
        ``C x A`` class means (``ValueError`` on bad input, nothing changed)."""
        graph = knowledge_graph(confusion)
        if tuple(graph.shape) != tuple(self.graph.shape):
            raise ValueError(f"the confusion matrix is {tuple(graph.shape)}; this loss has "
                             f"{self.graph.shape[0]} classes")
        if tuple(means.shape) != tuple(self.shift.shape):
            raise ValueError(f"the class means are {tuple(means.shape)}; expected "
                             f"{tuple(self.shift.shape)}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("the class means hold NaN or infinite values")
        shift = prototype_shift(graph, means.to(torch.float64))
        self.graph.copy_(graph.to(self.graph.dtype))
        self.shift.copy_(shift.to(self.shift.dtype))
        self.reasoning_ready.fill_(True)
        self.reasoned = True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any
                              ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.reasoned = bool(self.reasoning_ready)  # once, at load time

    def covariance(self) -> Tensor:
        """``Sigma'`` of the current estimate."""
        return reasoned_covariance(self.estimator.covariance, self.graph, self.tail)

    def forward(self, features: Tensor, target: Tensor, weight: Tensor,
                bias: Optional[Tensor] = None) -> Tensor:
        """Fold the shifted features into the estimate, then the loss ``CE_w(s, y)`` (one
        host synchronization: the class set of ``target``, shared by the fold and the bound;
        ``ValueError`` on bad labels or features, the estimate unchanged)."""
        if not self.reasoned:
            raise RuntimeError("RISDALoss needs the knowledge graph and prototypes first "
                               "(set_reasoning)")
        shifted = features.detach() + self.alpha * self.shift[target].to(features.dtype)
        batch, problems = self.estimator.scan(shifted, target)
        self.estimator.update_scanned(shifted, target, batch, problems)
        scores = risda_logits(features, weight, bias, target, self.covariance(), self.shift,
                              self.alpha, self.beta, self.kind, batch=batch)
        weights = None if self.class_weights is None else self.class_weights.to(scores.dtype)
        return F.cross_entropy(scores, target, weight=weights)

    def extra_repr(self) -> str:
        return (f"alpha0={self.alpha0}, beta0={self.beta0}, tail={int(self.tail.sum())} "
                f"classes, weights={self.class_weights is not None}")
