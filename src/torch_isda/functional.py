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

Host synchronizations. :func:`augment_logits` and :func:`isda_cross_entropy` find the
present classes and check the labels' range with one device-to-host transfer
(:func:`batch_classes`). With ``validate=False`` the diagonal, shared and identity layouts
(and any layout with ``static_shapes=True``) use all ``C`` classes instead: no transfer and
no data-dependent shape, so a step can be captured by ``torch.compile(fullgraph=True)``.
Each layout's math lives in :mod:`torch_isda.layouts`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import BatchClasses, scan_batch
from .kernels import per_class_bmm
from .layouts import KINDS, CovarianceLayout, get_layout
from .logit_adjustment import adjust_logits, ldam_margins, prior_log_offset
from .lowrank import LowRankCovariance

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
    "check_logits_target",
    "augment_static",
    "batch_classes",
    "per_class_bmm",
    "adjust_logits",
    "ldam_margins",
    "prior_log_offset",
]


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
    if kind is not None:
        get_layout(kind)  # unknown kinds raise here
    C, A = num_classes, num_features
    if isinstance(covariance, LowRankCovariance) or (kind == "lowrank" and isinstance(covariance, tuple)):
        if kind not in (None, "lowrank"):
            raise ValueError(f"a LowRankCovariance needs kind='lowrank' (or None); got kind={kind!r}")
        get_layout("lowrank").check(covariance, C, A)
        return "lowrank"
    if kind is not None:
        get_layout(kind).check(covariance, C, A)
        return kind
    if covariance is None:
        return "identity"
    shape = tuple(covariance.shape)
    expected = {k: get_layout(k).expected_shape(C, A) for k in KINDS}
    expected = {k: v for k, v in expected.items() if v is not None}
    matches = [k for k, v in expected.items() if v == shape]
    if not matches:
        layouts = ", ".join(f"{k} {v}" for k, v in expected.items())
        raise ValueError(
            f"covariance of shape {shape} fits none of the layouts for C={C} classes and A={A} features: "
            f"{layouts}"
        )
    if len(matches) > 1:
        raise ValueError(
            f"covariance of shape {shape} is ambiguous (C == A == {A}): pass kind='diagonal' "
            "or kind='shared'"
        )
    return matches[0]


def _compute_dtype(layout: CovarianceLayout, covariance, weight: Tensor) -> torch.dtype:
    dtype = layout.dtype(covariance)
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def _check_weight(weight: Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"weight must be C x A (the final linear layer's weight); got shape {tuple(weight.shape)}")


# --------------------------------------------------------------------------- sigma2


def class_sigma2(
    weight: Tensor,
    covariance: Optional[Tensor],
    classes: Tensor,
    kind: Optional[str] = None,
    *,
    host_classes: Optional[Sequence[int]] = None,
) -> Tensor:
    """``sigma2[u, j] = (w_j - w_c)^T Sigma_c (w_j - w_c)`` for each class ``c = classes[u]``.

    Args:
        weight: ``C x A`` weight of the final linear layer.
        covariance: per :data:`KINDS` layout, or ``None`` for the identity (a
            :class:`~torch_isda.lowrank.LowRankCovariance` for ``"lowrank"``).
        classes: 1-D long tensor of ``U`` *sorted, distinct* class indices (``arange(C)``
            for all classes).
        kind: layout; inferred from the shape when ``None``.
        host_classes: the same classes as Python ints, when known (lets the full layout
            avoid copying large covariances on the CPU).

    Returns:
        ``U x C`` tensor in the covariance's dtype (float32 at least).
    """
    _check_weight(weight)
    C, A = weight.shape
    layout = get_layout(resolve_kind(covariance, C, A, kind))
    dtype = _compute_dtype(layout, covariance, weight)
    with _no_autocast(weight.device):
        return layout.sigma2(weight.to(dtype), layout.cast(covariance, dtype), classes, host_classes, weight)


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
    layout = get_layout(resolve_kind(covariance, C, A, kind))
    dtype = _compute_dtype(layout, covariance, weight)
    with _no_autocast(weight.device):
        G = layout.gram(weight.to(dtype), layout.cast(covariance, dtype), classes)  # G[u, k, j] = w_k^T S w_j
        d = torch.diagonal(G, dim1=1, dim2=2)  # U x C
        return d.unsqueeze(1) + d.unsqueeze(2) - 2.0 * G


# --------------------------------------------------------------------------- losses


def check_logits_target(logits: Tensor, weight: Tensor, target: Tensor) -> None:
    """Raise ``ValueError`` naming the problem unless the shapes and dtypes fit (no data read)."""
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


def batch_classes(
    target: Tensor,
    num_classes: int,
    kind: str,
    *,
    ignore_index: Optional[int] = None,
    validate: bool = True,
    static_shapes: bool = False,
) -> BatchClasses:
    """The class set of ``target`` for :func:`augment_logits` / :func:`isda_cross_entropy`.

    With ``validate`` (default) the labels' range is checked and the present classes found in
    one host transfer (``ValueError`` naming the bad values). With ``validate=False`` the
    diagonal, shared and identity layouts (and any layout with ``static_shapes=True``) take
    the static all-class set: no host transfer, ``sigma2`` for all ``C`` classes.
    """
    static = get_layout(kind).static_path(validate, static_shapes, target.device.type, num_classes)
    batch, problems = scan_batch(target, num_classes, ignore_index=ignore_index, validate=validate, static=static)
    if batch.flags is not None and bool(batch.flags.any()):  # no state to defer to: read it now
        bad_labels, _ = batch.flags.tolist()
        problems = [f"labels must lie in [0, {num_classes}) (or equal ignore_index)"] if bad_labels else []
    if problems:
        raise ValueError("; ".join(problems))
    return batch


def _check_ratio(ratio):
    if isinstance(ratio, Tensor):  # a device value (torch.compile, CUDA graphs): not read back
        return ratio
    ratio = float(ratio)
    if not ratio >= 0.0:
        raise ValueError(f"ratio (lambda) must be a non-negative number; got {ratio}")
    return ratio


def _float_logits(logits: Tensor) -> Tensor:
    """``logits`` in float32 at least (half precision is promoted)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _augment(logits: Tensor, weight: Tensor, covariance, ratio, kind: str, batch: BatchClasses) -> Tensor:
    out = _float_logits(logits)
    if (not isinstance(ratio, Tensor) and ratio == 0.0) or batch.classes.shape[0] == 0:
        return out
    if batch.onehot is not None:
        return augment_static(out, weight, covariance, ratio, kind, batch.onehot)
    # host values only outside torch.compile (a traced tuple of classes would be a guard)
    host = None if torch.compiler.is_compiling() else batch.host_classes
    sigma2 = class_sigma2(weight, covariance, batch.classes, kind, host_classes=host)  # U x C
    rows = sigma2.index_select(0, batch.inverse)
    if batch.valid is not None:  # ignored samples stay un-augmented
        rows = rows * batch.valid.unsqueeze(1).to(rows.dtype)
    return out + (0.5 * ratio) * rows.to(out.dtype)


def augment_static(out: Tensor, weight: Tensor, covariance, ratio, kind: str, onehot: Tensor) -> Tensor:
    """The static path: ``out + ratio/2 * onehot @ sigma2`` for all ``C`` classes (rows of
    samples that do not count are zero in ``onehot``); the full and diagonal layouts fuse it."""
    layout = get_layout(kind)
    half = ratio * 0.5
    if layout.lean_static and not covariance.requires_grad:
        dtype = _compute_dtype(layout, covariance, weight)
        with _no_autocast(weight.device):
            return layout.static_augment(out, weight, layout.cast(covariance, dtype), onehot.to(dtype), half)
    sigma2 = class_sigma2(weight, covariance, torch.arange(weight.shape[0], device=weight.device), kind)
    return out + (onehot.to(sigma2.dtype) @ sigma2).mul_(half).to(out.dtype)


def augment_logits(
    logits: Tensor,
    weight: Tensor,
    target: Tensor,
    covariance: Optional[Tensor],
    ratio: float,
    kind: Optional[str] = None,
    *,
    validate: bool = True,
    static_shapes: bool = False,
    batch: Optional[BatchClasses] = None,
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
        validate, static_shapes: see :func:`batch_classes` (one host synchronization by
            default, none on the static path).
        batch: a precomputed class set of ``target`` (:func:`batch_classes`); then
            ``validate`` and ``static_shapes`` are not used.

    Returns:
        ``N x C`` augmented logits, float32 at least (half-precision logits are promoted).
    """
    return _checked_augment(logits, weight, target, covariance, ratio, kind, batch,
                            validate=validate, static_shapes=static_shapes)[0]


def _checked_augment(logits: Tensor, weight: Tensor, target: Tensor, covariance, ratio,
                     kind: Optional[str], batch: Optional[BatchClasses], **scan):
    """Checks, then :func:`_augment` (``scan``: the options of :func:`batch_classes`).

    Returns ``(augmented logits, target for the cross-entropy)``: on the static path with
    device-side checks, out-of-range labels are replaced by ``ignore_index``."""
    check_logits_target(logits, weight, target)
    ratio = _check_ratio(ratio)
    C, A = weight.shape
    kind = resolve_kind(covariance, C, A, kind)
    if target.shape[0] == 0:
        return _float_logits(logits), target
    if batch is None:
        batch = batch_classes(target, C, kind, **scan)
    safe_target = target if batch.target is None else batch.target
    return _augment(logits, weight, covariance, ratio, kind, batch), safe_target


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
    validate: bool = True,
    static_shapes: bool = False,
    batch: Optional[BatchClasses] = None,
) -> Tensor:
    """The ISDA bound of Eq. (7): cross-entropy of :func:`augment_logits`.

    Samples whose target equals ``ignore_index`` are left un-augmented (by a mask) and, as in
    :func:`torch.nn.functional.cross_entropy`, do not count in the loss. ``validate``,
    ``static_shapes`` and ``batch`` as in :func:`augment_logits` (``batch`` must have been
    computed with this ``ignore_index``).
    """
    aug, target = _checked_augment(logits, weight, target, covariance, ratio, kind, batch,
                                   ignore_index=ignore_index, validate=validate, static_shapes=static_shapes)
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
    static_shapes: bool = False,
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
        static_shapes: the quadratic forms of all ``C`` classes (``C x C x C``) instead of
            the pseudo-labels present (one host synchronization fewer, no data-dependent
            shape); the shared and identity layouts never need either.
    """
    _check_consistency_inputs(logits, weight, probs, reduction)
    p = probs.detach().to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    z = _float_logits(logits)
    if z.shape[0] == 0:
        loss = z.sum(1)
    else:
        lse = _augmented_logsumexp(z, weight, p.argmax(1), covariance, ratio, kind, static_shapes)
        loss = (p.to(z.dtype) * (lse - z)).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_consistency_inputs(logits: Tensor, weight: Tensor, probs: Tensor, reduction: str) -> None:
    """Shapes and reduction of :func:`isda_consistency_loss` (``ValueError`` naming the problem)."""
    _check_weight(weight)
    if logits.dim() != 2 or logits.shape[1] != weight.shape[0]:
        raise ValueError(
            f"logits must be N x C with C={weight.shape[0]} (rows of weight); got {tuple(logits.shape)}"
        )
    if probs.shape != logits.shape:
        raise ValueError(f"probs must have the shape of logits {tuple(logits.shape)}; got {tuple(probs.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


def _augmented_logsumexp(z: Tensor, weight: Tensor, pseudo: Tensor, covariance, ratio, kind: Optional[str],
                         static_shapes: bool) -> Tensor:
    """``N x C``: ``logsumexp_j(z_j + ratio/2 Q[y, k, j])`` for every candidate class ``k``,
    with ``y`` the pseudo-labels and ``Q`` the pairwise quadratic forms of Eq. (15)."""
    kind = resolve_kind(covariance, weight.shape[0], weight.shape[1], kind)
    if float(ratio) == 0.0:
        return torch.logsumexp(z, 1, keepdim=True).expand_as(z)
    if get_layout(kind).class_independent:
        Q = pairwise_sigma2(weight, covariance, pseudo[:1], kind)  # 1 x C x C
        inverse = torch.zeros_like(pseudo)
    else:
        batch, _ = scan_batch(pseudo, weight.shape[0], validate=False, static=static_shapes)
        inverse = batch.inverse
        Q = pairwise_sigma2(weight, covariance, batch.classes, kind)  # U x C x C
    aug = z.unsqueeze(1) + (0.5 * float(ratio)) * Q.index_select(0, inverse).to(z.dtype)
    return torch.logsumexp(aug, dim=2)  # N x C: one log-sum-exp per candidate class k


# --------------------------------------------------------------------------- Monte Carlo


def covariance_factor(covariance: Optional[Tensor], classes: Tensor, num_features: int, kind: str) -> Tensor:
    """Square-root factors ``L_c`` with ``L_c L_c^T = Sigma_c`` for ``classes`` (``U x A x A``).

    Uses a symmetric eigendecomposition, so singular (positive semi-definite) covariances,
    which the online estimate produces when a class has fewer samples than dimensions, work.
    """
    return get_layout(kind).factor(covariance, classes, num_features)


def _layout_of(covariance: Optional[Tensor], num_features: int, kind: Optional[str]) -> str:
    """Covariance layout when the number of classes is not known (sampling)."""
    if kind is not None:
        get_layout(kind)  # unknown kinds raise here
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
    layout = get_layout(_layout_of(covariance, A, kind))
    dtype = _compute_dtype(layout, covariance, features)
    cov = layout.cast(covariance, dtype)
    if layout.class_independent:  # one factor serves every class
        classes, inverse = target[:1].to(torch.long), torch.zeros_like(target, dtype=torch.long)
    else:
        classes, inverse = torch.unique(target, sorted=True, return_inverse=True)
    L = layout.factor(cov, classes, A).to(dtype)
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
    dtype = _compute_dtype(get_layout(kind), covariance, weight)
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
