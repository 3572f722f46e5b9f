"""Pure functions for the ISDA math (Wang et al., TPAMI 2021, Sections 4.2 and 5).

Notation follows the paper: ``N`` samples, ``C`` classes, ``A`` feature dimensions,
``W`` the ``C x A`` weight of the final linear layer, ``Sigma_c`` the feature covariance
of class ``c`` and ``lambda`` (``ratio`` here) the augmentation strength.

The central quantity is, for a sample of class ``y`` and every class ``j``::

    sigma2[j] = (w_j - w_y)^T Sigma_y (w_j - w_y)

which only depends on the class ``y``, not on the sample. Every function here therefore
computes it once per class *present* in the batch (``U <= C`` classes), never per sample:
no ``N x C x C`` matrix and no ``N`` copies of an ``A x A`` covariance are formed.

Covariance layouts (``kind``):

* ``"full"``: ``C x A x A``, one covariance per class (the paper's CIFAR setting);
* ``"diagonal"``: ``C x A``, per-class variances (the paper's ImageNet setting);
* ``"shared"``: ``A x A``, one covariance for all classes (Table 8 ablation);
* ``"identity"``: ``Sigma = I`` for all classes; ``covariance`` may be ``None``;
* ``"lowrank"``: a :class:`~torch_isda.lowrank.LowRankCovariance` ``(U, s, d)`` with
  ``Sigma_c = U_c diag(s_c) U_c^T + diag(d_c)`` (``C x A x k``, ``C x k``, ``C x A``); inferred
  from the type, and ``sigma2`` costs ``O(U C A k)`` (see :mod:`torch_isda.lowrank`).

The covariance is always treated as a constant (no gradient flows into it through the
fast path), as in the paper's Appendix A; if it requires grad, a plain autograd path is
used so that learned covariances (the "Cov" baseline) still receive gradients.
Computations run in the covariance's dtype (float32 or float64) with autocast disabled,
so bf16/fp16 training does not lose precision in the augmentation term.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .lowrank import LowRankCovariance, check_lowrank, lowrank_gram, lowrank_sigma2

__all__ = [
    "KINDS",
    "resolve_kind",
    "class_sigma2",
    "pairwise_sigma2",
    "augment_logits",
    "isda_cross_entropy",
    "isda_consistency_loss",
    "covariance_factor",
    "sample_augmented_features",
    "expected_cross_entropy_mc",
]

KINDS = ("full", "diagonal", "shared", "identity", "lowrank")


# --------------------------------------------------------------------------- helpers


def resolve_kind(
    covariance: Optional[Tensor], num_classes: int, num_features: int, kind: Optional[str] = None
) -> str:
    """Infer (or check) the covariance layout from its shape.

    ``C x A x A`` is ``"full"``; ``C x A`` is ``"diagonal"``; ``A x A`` is ``"shared"``;
    ``None`` is ``"identity"``; a :class:`~torch_isda.lowrank.LowRankCovariance` (or a tuple
    ``(U, s, d)`` with ``kind="lowrank"``) is ``"lowrank"``. When ``C == A`` a 2-D covariance
    is ambiguous and ``kind`` must be given. Raises ``ValueError`` naming the expected shape
    otherwise.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown covariance kind {kind!r}; expected one of {KINDS}")
    C, A = num_classes, num_features
    if isinstance(covariance, LowRankCovariance) or (kind == "lowrank" and isinstance(covariance, tuple)):
        if kind not in (None, "lowrank"):
            raise ValueError(f"a LowRankCovariance needs kind='lowrank' (or None); got kind={kind!r}")
        if len(covariance) != 3:
            raise ValueError("kind='lowrank' expects a LowRankCovariance(U, s, d)")
        check_lowrank(LowRankCovariance(*covariance), C, A)
        return "lowrank"
    if kind == "lowrank":
        raise ValueError(
            "kind='lowrank' expects a torch_isda.lowrank.LowRankCovariance(U, s, d) "
            f"(C x A x k, C x k, C x A); got {type(covariance).__name__}"
        )
    if kind == "identity" or (kind is None and covariance is None):
        return "identity"
    if covariance is None:
        raise ValueError(f"kind={kind!r} needs a covariance tensor, got None")
    shape = tuple(covariance.shape)
    expected = {"full": (C, A, A), "diagonal": (C, A), "shared": (A, A)}
    if kind is None:
        matches = [k for k, s in expected.items() if s == shape]
        if not matches:
            raise ValueError(
                f"covariance of shape {shape} fits none of the layouts for C={C} classes and "
                f"A={A} features: full {expected['full']}, diagonal {expected['diagonal']}, "
                f"shared {expected['shared']}"
            )
        if len(matches) > 1:
            raise ValueError(
                f"covariance of shape {shape} is ambiguous (C == A == {A}): pass kind='diagonal' "
                "or kind='shared'"
            )
        return matches[0]
    if shape != expected[kind]:
        raise ValueError(
            f"kind={kind!r} expects a covariance of shape {expected[kind]} for C={C}, A={A}; "
            f"got {shape}"
        )
    return kind


def _compute_dtype(covariance: Optional[Tensor], weight: Tensor) -> torch.dtype:
    if isinstance(covariance, tuple):  # low-rank factors (U, s, d)
        covariance = covariance[0]
    if covariance is not None and covariance.dtype in (torch.float32, torch.float64):
        return covariance.dtype
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _check_weight(weight: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be C x A (the final linear layer's weight); got shape {tuple(weight.shape)}")


def _check_classes(classes: Tensor, num_classes: int) -> None:
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in "
            f"[{int(classes.min())}, {int(classes.max())}]"
        )


# --------------------------------------------------------------------------- sigma2


class _FullSigma2(torch.autograd.Function):
    """``sigma2[u, j] = (w_j - w_{c_u})^T Sigma_{c_u} (w_j - w_{c_u})`` with a hand-written backward.

    Forward: one batched product ``V_u @ Sigma_u`` (``U x [C x A] @ [A x A]``, the floor) plus
    ``O(U C A)`` element-wise work. Backward reuses ``T = V Sigma`` (``Sigma`` symmetric), so it
    needs no second product: ``d sigma2[u, j] / d w_j = 2 T[u, j]`` and
    ``d sigma2[u, j] / d w_{c_u} = -2 T[u, j]``.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, covariance: Tensor, classes: Tensor) -> Tensor:
        W = weight.to(covariance.dtype)
        V = W.unsqueeze(0) - W.index_select(0, classes).unsqueeze(1)  # U x C x A
        T = per_class_bmm(V, covariance, classes)  # U x C x A
        sigma2 = torch.linalg.vecdot(T, V)  # U x C
        ctx.save_for_backward(T, classes)
        ctx.weight_dtype = weight.dtype
        return sigma2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sigma2: Tensor):
        T, classes = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        g = grad_sigma2.to(T.dtype)
        gT = T * g.unsqueeze(-1)  # U x C x A
        grad_weight = gT.sum(0).mul_(2.0)  # d/dw_j
        grad_weight.index_add_(0, classes, gT.sum(1), alpha=-2.0)  # d/dw_{c_u}
        return grad_weight.to(ctx.weight_dtype), None, None


class _DiagonalSigma2(torch.autograd.Function):
    """``sigma2[u, j] = sum_a d_u[a] (W[j, a] - W[c_u, a])^2`` with a hand-written backward.

    Forward: one ``[U x 2A] @ [2A x C]`` product of ``[d_u, -2 d_u * w_c]`` with
    ``[W * W, W]``, plus ``d_u . w_c^2``. Backward: ``g^T [D, D * W_c]`` (``C x 2A``) for the
    rows ``w_j`` and ``g W`` (``U x A``) for the rows ``w_{c_u}``.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, variances: Tensor, classes: Tensor) -> Tensor:
        W = weight.to(variances.dtype)
        D = variances.index_select(0, classes)  # U x A
        Wc = W.index_select(0, classes)
        DWc = D * Wc
        A = W.shape[1]
        left = torch.cat([D, DWc], 1)  # U x 2A
        right = torch.cat([W * W, W.mul(-2.0)], 1)  # C x 2A
        sigma2 = torch.addmm(torch.linalg.vecdot(DWc, Wc).unsqueeze(1), left, right.T)
        ctx.save_for_backward(W, left, classes)
        ctx.A = A
        ctx.weight_dtype = weight.dtype
        return sigma2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sigma2: Tensor):
        W, left, classes = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        A = ctx.A
        g = grad_sigma2.to(W.dtype)
        P = g.T @ left  # C x 2A: [g^T D, g^T (D * Wc)]
        grad_weight = (W * P[:, :A]).sub_(P[:, A:]).mul_(2.0)  # d/dw_j
        D, DWc = left[:, :A], left[:, A:]
        rows = D * (g @ W) - DWc * g.sum(1, keepdim=True)  # U x A, d/dw_{c_u} / (-2)
        grad_weight.index_add_(0, classes, rows, alpha=-2.0)
        return grad_weight.to(ctx.weight_dtype), None, None


# Above this many covariance elements (U x A x A) per-class products on views beat a
# gathered copy: a fresh multi-MB allocation costs page faults on every call.
_GATHER_MAX_ELEMENTS = 1 << 20


def per_class_bmm(V: Tensor, covariance: Tensor, classes: Tensor) -> Tensor:
    """``out[u] = V[u] @ covariance[classes[u]]`` without copying the covariances when large.

    ``classes`` must be sorted and distinct; when every class is present the whole
    covariance buffer is used as is.
    """
    U = classes.numel()
    if U == covariance.shape[0]:
        return torch.bmm(V, covariance)
    A = covariance.shape[-1]
    if U * A * A <= _GATHER_MAX_ELEMENTS:
        return torch.bmm(V, covariance.index_select(0, classes))
    out = V.new_empty(V.shape[0], V.shape[1], A)
    for u, c in enumerate(classes.tolist()):
        torch.mm(V[u], covariance[c], out=out[u])
    return out


def class_sigma2(
    weight: Tensor,
    covariance: Optional[Tensor],
    classes: Tensor,
    kind: Optional[str] = None,
) -> Tensor:
    """``sigma2[u, j] = (w_j - w_c)^T Sigma_c (w_j - w_c)`` for each class ``c = classes[u]``.

    Args:
        weight: ``C x A`` weight of the final linear layer.
        covariance: per :data:`KINDS` layout, or ``None`` for the identity (a
            :class:`~torch_isda.lowrank.LowRankCovariance` for ``"lowrank"``).
        classes: 1-D long tensor of ``U`` *sorted, distinct* class indices.
        kind: layout; inferred from the shape when ``None``.

    Returns:
        ``U x C`` tensor in the covariance's dtype (float32 at least).
    """
    _check_weight(weight)
    C, A = weight.shape
    kind = resolve_kind(covariance, C, A, kind)
    dtype = _compute_dtype(covariance if kind != "identity" else None, weight)
    with _no_autocast(weight.device):
        if kind == "full":
            cov = covariance.to(dtype)
            if cov.requires_grad:
                return _full_sigma2_autograd(weight.to(dtype), cov, classes)
            return _FullSigma2.apply(weight, cov, classes)
        if kind == "diagonal":
            var = covariance.to(dtype)
            if var.requires_grad:
                return _diagonal_sigma2_autograd(weight.to(dtype), var, classes)
            return _DiagonalSigma2.apply(weight, var, classes)
        if kind == "lowrank":
            return _lowrank_sigma2(weight, LowRankCovariance(*covariance).to(dtype), classes)
        W = weight.to(dtype)
        # shared / identity: M = W Sigma (C x A); sigma2 = q_j - 2 w_c^T Sigma w_j + q_c
        M = W if kind == "identity" else W @ covariance.to(dtype)
        q = torch.linalg.vecdot(M, W)  # C
        Mc = M.index_select(0, classes)  # U x A
        return q.unsqueeze(0) - 2.0 * (Mc @ W.T) + q.index_select(0, classes).unsqueeze(1)


def _lowrank_sigma2(weight: Tensor, cov: LowRankCovariance, classes: Tensor) -> Tensor:
    """Low-rank term through autograd (``O(U C A k)``) plus the diagonal term's fast path."""
    W = weight.to(cov.dtype)
    low = lowrank_sigma2(W, cov.U, cov.s, classes)
    if cov.d.requires_grad:
        return low + _diagonal_sigma2_autograd(W, cov.d, classes)
    return low + _DiagonalSigma2.apply(weight, cov.d, classes)


def _full_sigma2_autograd(W: Tensor, cov: Tensor, classes: Tensor) -> Tensor:
    V = W.unsqueeze(0) - W.index_select(0, classes).unsqueeze(1)
    return torch.linalg.vecdot(torch.bmm(V, cov.index_select(0, classes)), V)


def _diagonal_sigma2_autograd(W: Tensor, var: Tensor, classes: Tensor) -> Tensor:
    V = W.unsqueeze(0) - W.index_select(0, classes).unsqueeze(1)
    return (V * V * var.index_select(0, classes).unsqueeze(1)).sum(-1)


def pairwise_sigma2(
    weight: Tensor,
    covariance: Optional[Tensor],
    classes: Tensor,
    kind: Optional[str] = None,
) -> Tensor:
    """``Q[u, k, j] = (w_j - w_k)^T Sigma_c (w_j - w_k)`` for ``c = classes[u]`` (Eq. 15).

    Returns a ``U x C x C`` tensor (``U = 1`` for the shared and identity layouts, whose
    covariance does not depend on the class). Used by :func:`isda_consistency_loss`.
    """
    _check_weight(weight)
    C, A = weight.shape
    kind = resolve_kind(covariance, C, A, kind)
    dtype = _compute_dtype(covariance if kind != "identity" else None, weight)
    with _no_autocast(weight.device):
        W = weight.to(dtype)
        if kind == "lowrank":
            cov = LowRankCovariance(*covariance).to(dtype)
            G = lowrank_gram(W, cov.U, cov.s, cov.d, classes)  # U x C x C
            d = torch.diagonal(G, dim1=1, dim2=2)
            return d.unsqueeze(1) + d.unsqueeze(2) - 2.0 * G
        if kind == "full":
            M = torch.matmul(W.unsqueeze(0), covariance.to(dtype).index_select(0, classes))  # U x C x A
        elif kind == "diagonal":
            M = W.unsqueeze(0) * covariance.to(dtype).index_select(0, classes).unsqueeze(1)
        elif kind == "shared":
            M = (W @ covariance.to(dtype)).unsqueeze(0)
        else:
            M = W.unsqueeze(0)
        G = torch.matmul(M, W.T)  # U x C x C, G[u, k, j] = w_k^T Sigma w_j
        d = torch.diagonal(G, dim1=1, dim2=2)  # U x C
        return d.unsqueeze(1) + d.unsqueeze(2) - 2.0 * G


# --------------------------------------------------------------------------- losses


def _check_logits_target(logits: Tensor, weight: Tensor, target: Tensor) -> None:
    _check_weight(weight)
    if logits.dim() != 2:
        raise ValueError(f"logits must be N x C; got shape {tuple(logits.shape)}")
    if logits.shape[1] != weight.shape[0]:
        raise ValueError(
            f"logits have {logits.shape[1]} classes but weight has {weight.shape[0]} rows "
            "(weight must be the C x A weight of the layer that produced the logits)"
        )
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be a 1-D tensor of N={logits.shape[0]} class indices; got shape "
            f"{tuple(target.shape)}"
        )
    if target.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"target must hold integer class indices; got dtype {target.dtype}")


def augment_logits(
    logits: Tensor,
    weight: Tensor,
    target: Tensor,
    covariance: Optional[Tensor],
    ratio: float,
    kind: Optional[str] = None,
) -> Tensor:
    """ISDA-augmented logits of Eq. (7): ``logits + ratio / 2 * sigma2``.

    ``sigma2[i, j] = (w_j - w_{y_i})^T Sigma_{y_i} (w_j - w_{y_i})``. The cross-entropy of the
    result is the upper bound of the expected cross-entropy over features augmented with
    ``N(a_i, ratio * Sigma_{y_i})`` (Proposition 1). Gradients flow into ``logits`` and into
    ``weight``; the covariance is a constant.

    Args:
        logits: ``N x C`` output of the final linear layer (bias included).
        weight: ``C x A`` weight of that layer.
        target: ``N`` class indices in ``[0, C)``.
        covariance: ``C x A x A`` (full), ``C x A`` (diagonal), ``A x A`` (shared), ``None``
            (identity) or a :class:`~torch_isda.lowrank.LowRankCovariance` (lowrank).
        ratio: the augmentation strength ``lambda >= 0``.
        kind: covariance layout, inferred from the shape when ``None``.

    Returns:
        ``N x C`` augmented logits, float32 at least (half-precision logits are promoted).
    """
    _check_logits_target(logits, weight, target)
    ratio = float(ratio)
    if not ratio >= 0.0:
        raise ValueError(f"ratio (lambda) must be a non-negative number; got {ratio}")
    out = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if target.numel() == 0:
        return out
    classes, inverse = torch.unique(target, sorted=True, return_inverse=True)
    _check_classes(classes, weight.shape[0])
    if ratio == 0.0:
        resolve_kind(covariance, weight.shape[0], weight.shape[1], kind)  # still validate
        return out
    sigma2 = class_sigma2(weight, covariance, classes, kind)  # U x C
    return out + (0.5 * ratio) * sigma2.index_select(0, inverse).to(out.dtype)


def isda_cross_entropy(
    logits: Tensor,
    weight: Tensor,
    target: Tensor,
    covariance: Optional[Tensor],
    ratio: float,
    kind: Optional[str] = None,
    *,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> Tensor:
    """The ISDA bound of Eq. (7): cross-entropy of :func:`augment_logits`.

    Samples whose target equals ``ignore_index`` are left un-augmented and, as in
    :func:`torch.nn.functional.cross_entropy`, do not count in the loss.
    """
    _check_logits_target(logits, weight, target)
    valid = target != ignore_index
    if bool(valid.all()):
        aug = augment_logits(logits, weight, target, covariance, ratio, kind)
    else:
        idx = valid.nonzero().squeeze(1)
        base = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        part = augment_logits(
            logits.index_select(0, idx), weight, target.index_select(0, idx), covariance, ratio, kind
        )
        aug = base.index_copy(0, idx, part.to(base.dtype))
    return F.cross_entropy(
        aug, target, reduction=reduction, label_smoothing=label_smoothing, ignore_index=ignore_index
    )


def isda_consistency_loss(
    logits: Tensor,
    weight: Tensor,
    probs: Tensor,
    covariance: Optional[Tensor],
    ratio: float,
    kind: Optional[str] = None,
    *,
    reduction: str = "mean",
) -> Tensor:
    """Semi-supervised ISDA consistency bound of Eq. (15).

    For an unlabeled sample with logits ``z`` and (constant) soft target ``p``::

        loss = sum_k p_k * [ logsumexp_j(z_j + ratio/2 * (w_j - w_k)^T Sigma_y (w_j - w_k)) - z_k ]

    with ``y = argmax p`` the pseudo-label of Eq. (12). ``probs`` is detached (treated as a
    constant, as in the paper). Memory: ``N x C x C`` for the inner log-sum-exp.

    Args:
        logits: ``N x C`` logits of the unlabeled samples (bias included).
        weight: ``C x A`` weight of the final linear layer.
        probs: ``N x C`` predicted probabilities ``p`` (rows sum to one).
        covariance: as in :func:`augment_logits` (estimated from labeled data).
        ratio: augmentation strength ``lambda``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    _check_weight(weight)
    if logits.dim() != 2 or logits.shape[1] != weight.shape[0]:
        raise ValueError(
            f"logits must be N x C with C={weight.shape[0]} (rows of weight); got {tuple(logits.shape)}"
        )
    if probs.shape != logits.shape:
        raise ValueError(f"probs must have the shape of logits {tuple(logits.shape)}; got {tuple(probs.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    p = probs.detach().to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if z.shape[0] == 0:
        loss = z.sum(1)
    else:
        pseudo = p.argmax(1)
        kind = resolve_kind(covariance, weight.shape[0], weight.shape[1], kind)
        if float(ratio) == 0.0:
            lse = torch.logsumexp(z, 1, keepdim=True).expand_as(z)
        else:
            if kind in ("shared", "identity"):
                Q = pairwise_sigma2(weight, covariance, pseudo[:1], kind)  # 1 x C x C
                inverse = torch.zeros_like(pseudo)
            else:
                classes, inverse = torch.unique(pseudo, sorted=True, return_inverse=True)
                Q = pairwise_sigma2(weight, covariance, classes, kind)  # U x C x C
            aug = z.unsqueeze(1) + (0.5 * float(ratio)) * Q.index_select(0, inverse).to(z.dtype)
            lse = torch.logsumexp(aug, dim=2)  # N x C: one log-sum-exp per candidate class k
        loss = (p.to(z.dtype) * (lse - z)).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# --------------------------------------------------------------------------- Monte Carlo


def covariance_factor(covariance: Optional[Tensor], classes: Tensor, num_features: int, kind: str) -> Tensor:
    """Square-root factors ``L_c`` with ``L_c L_c^T = Sigma_c`` for ``classes`` (``U x A x A``).

    Uses a symmetric eigendecomposition, so singular (positive semi-definite) covariances,
    which the online estimate produces when a class has fewer samples than dimensions, work.
    """
    if kind == "identity":
        eye = torch.eye(num_features, device=classes.device)
        return eye.expand(classes.numel(), num_features, num_features)
    if kind == "diagonal":
        return torch.diag_embed(covariance.index_select(0, classes).clamp_min(0).sqrt())
    if kind == "shared":
        cov = covariance.unsqueeze(0).expand(classes.numel(), -1, -1)
    elif kind == "lowrank":
        cov = LowRankCovariance(*covariance).dense(classes)
    else:
        cov = covariance.index_select(0, classes)
    evals, evecs = torch.linalg.eigh(cov)
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


def _layout_of(covariance: Optional[Tensor], num_features: int, kind: Optional[str]) -> str:
    """Covariance layout when the number of classes is not known (sampling)."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"unknown covariance kind {kind!r}; expected one of {KINDS}")
        return kind
    if covariance is None:
        return "identity"
    if isinstance(covariance, LowRankCovariance):
        return "lowrank"
    if covariance.dim() == 3:
        return "full"
    if covariance.dim() == 2 and covariance.shape[1] == num_features:
        if covariance.shape[0] != num_features:
            return "diagonal"
        raise ValueError(
            f"covariance of shape {tuple(covariance.shape)} is ambiguous (diagonal with C == A, or "
            "shared): pass kind='diagonal' or kind='shared'"
        )
    raise ValueError(f"covariance of shape {tuple(covariance.shape)} does not fit A={num_features} features")


def sample_augmented_features(
    features: Tensor,
    target: Tensor,
    covariance: Optional[Tensor],
    ratio: float,
    samples: int,
    kind: Optional[str] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Draw ``samples`` augmented features ``a~ ~ N(a_i, ratio * Sigma_{y_i})`` per sample (Eq. 4).

    Returns a ``N x samples x A`` tensor in the covariance's dtype (float32 at least).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be N x A; got shape {tuple(features.shape)}")
    N, A = features.shape
    if target.shape != (N,):
        raise ValueError(f"target must have shape ({N},); got {tuple(target.shape)}")
    kind = _layout_of(covariance, A, kind)
    dtype = _compute_dtype(covariance if kind != "identity" else None, features)
    classes, inverse = torch.unique(target, sorted=True, return_inverse=True)
    if kind == "identity":
        cov = None
    elif kind == "lowrank":
        cov = LowRankCovariance(*covariance).to(dtype)
    else:
        cov = covariance.to(dtype)
    if kind in ("shared", "identity"):  # one factor serves every class
        classes, inverse = classes[:1], torch.zeros_like(inverse)
    L = covariance_factor(cov, classes, A, kind).to(dtype)
    eps = torch.randn(N, samples, A, dtype=dtype, device=features.device, generator=generator)
    noise = torch.matmul(eps, L.index_select(0, inverse).transpose(1, 2))  # N x S x A
    return features.detach().to(dtype).unsqueeze(1) + float(ratio) ** 0.5 * noise


def expected_cross_entropy_mc(
    features: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    covariance: Optional[Tensor],
    ratio: float,
    samples: int = 1000,
    kind: Optional[str] = None,
    generator: Optional[torch.Generator] = None,
    reduction: str = "mean",
    chunk_size: int = 250,
) -> Tensor:
    """Monte Carlo estimate of the expected cross-entropy of Eq. (6).

    Samples ``a~ ~ N(a_i, ratio * Sigma_{y_i})`` (Eq. 4) ``samples`` times per sample and
    averages the cross-entropy of ``W a~ + b``. Work is chunked over samples to bound
    memory. ``reduction="none"`` returns the per-sample estimate (``N``).
    """
    _check_weight(weight)
    C, A = weight.shape
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    kind = resolve_kind(covariance, C, A, kind)
    dtype = _compute_dtype(covariance if kind != "identity" else None, weight)
    W = weight.detach().to(dtype)
    b = None if bias is None else bias.detach().to(dtype)
    total = torch.zeros(features.shape[0], dtype=dtype, device=features.device)
    with torch.no_grad(), _no_autocast(features.device):
        done = 0
        while done < samples:
            s = min(chunk_size, samples - done)
            a = sample_augmented_features(features, target, covariance, ratio, s, kind, generator)
            z = a @ W.T
            if b is not None:
                z = z + b
            ce = torch.logsumexp(z, -1) - z.gather(-1, target.view(-1, 1, 1).expand(-1, s, 1)).squeeze(-1)
            total += ce.sum(1)
            done += s
    per_sample = total / samples
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
