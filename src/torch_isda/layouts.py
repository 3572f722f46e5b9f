"""Covariance layouts: one class per ``kind``, owning everything that depends on it.

==============  ===================================  ============================================
``kind``        state (buffers of the estimator)     ``Sigma_c``
==============  ===================================  ============================================
``"full"``      ``covariance`` ``C x A x A``         one covariance per class (paper, CIFAR)
``"diagonal"``  ``covariance`` ``C x A``             per-class variances (paper, ImageNet)
``"shared"``    ``covariance`` ``A x A``             one pooled covariance (Table 8 ablation)
``"identity"``  ``covariance`` ``A x A`` (``I``)     ``I`` for every class, never updated
``"lowrank"``   ``covariance`` ``C x A`` (variances) ``U_c diag(s_c) U_c^T + diag(d_c)``
                + ``components`` ``C x k x A``,      (:mod:`torch_isda.lowrank`)
                ``eigenvalues`` ``C x k``,
                ``residual`` ``C x A``
==============  ===================================  ============================================

Each layout owns its buffers, the online update of Eqs. (1)-(3), the Eq. (7) term
``sigma2`` for given classes, the Gram matrices of the pairwise form of Eq. (15), the Monte
Carlo square-root factor and the dense view. :class:`~torch_isda.CovarianceEstimator`,
:mod:`torch_isda.functional` and the losses call the layout (:func:`get_layout`) instead of
switching on the ``kind`` string.

The *functional covariance* of a layout is what :mod:`torch_isda.functional` takes as its
``covariance`` argument: the ``covariance`` tensor, ``None`` for the identity, a
:class:`~torch_isda.lowrank.LowRankCovariance` for the low-rank kind.

Updates run for a set of classes (a :class:`Fold`): either the classes present in the batch
(sizes known on the host after one transfer) or, on the *static* path, all ``C`` classes
through a one-hot matrix (no data-dependent shape, no host synchronization; absent classes
come out unchanged). The static update of the full and low-rank layouts costs ``C x`` the
flops of the present-class one (a ``C x A x (N + 1)`` block product).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .kernels import (
    DiagonalAugment,
    DiagonalSigma2,
    FullAugment,
    FullSigma2,
    diagonal_sigma2_autograd,
    full_sigma2_autograd,
    per_class_views,
)
from .lowrank import LowRankCovariance, check_lowrank, lowrank_gram, lowrank_sigma2, streaming_lowrank_update

__all__ = [
    "KINDS",
    "AUTO_STATIC_MAX_ELEMENTS",
    "AUTO_STATIC_MAX_BLOCK",
    "static_moments",
    "checked_static_shapes",
    "Fold",
    "CovarianceLayout",
    "FullLayout",
    "DiagonalLayout",
    "SharedLayout",
    "IdentityLayout",
    "LowRankLayout",
    "get_layout",
    "class_blocks",
]


#: ``static_shapes="auto"`` on an accelerator takes the static path for the full and
#: low-rank kinds up to this many covariance elements (``C x A x A``); above it (e.g. ImageNet's
#: C = 1000, A = 2048) the present-class path, whose update costs ``U / C`` of the static one.
#: The largest full shape measured on a GPU (C = 100, A = 640: 4.1e7) was faster static.
AUTO_STATIC_MAX_ELEMENTS = 1 << 27

#: ... and up to this many elements of the static update's block (``C x N x A`` for ``N``
#: rows, e.g. the pixels of a segmentation batch: 1 GiB in float32).
AUTO_STATIC_MAX_BLOCK = 1 << 28


def checked_static_shapes(value):
    """``value`` if it is ``True``, ``False`` or ``"auto"``; ``ValueError`` otherwise."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"static_shapes must be True, False or 'auto'; got {value!r}")
        return value
    return bool(value)


def static_moments(est, x: Tensor, onehot: Tensor, counts: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The shared part of the lean static update of all ``C`` classes (few kernels).

    Moves ``count`` and ``mean`` and returns ``(d, total, keep)``: the rows
    ``d_i = x_i - p_{c_i}`` (zero for samples that do not count) centred on
    ``p_c = mu'_c + sqrt(1 - w_c) (mu'_c - mu_c)``, ``total = max(n + m, 1)`` and
    ``keep = 1 - w = n / (n + m)`` (exactly 1 for absent classes). With that centre
    ``sum_i d_i d_i^T = M2 + m (1 - w) delta delta^T``, so Eq. (2) reads
    ``Sigma <- keep * Sigma + sum_i d_i d_i^T / total``: the mean-shift term needs no row of
    its own. ``x`` must be finite where ``onehot`` is zero.
    """
    dtype = x.dtype
    est.count.add_(counts)
    total = est.count.to(dtype).clamp_min(1)
    m = counts.to(dtype)
    w = m / total
    keep = 1 - w
    batch_mean = (onehot.T @ x).div_(m.clamp_min(1).unsqueeze(1))
    centre = torch.addcmul(batch_mean, keep.sqrt().unsqueeze(1), batch_mean - est.mean)
    d = torch.addmm(x, onehot, centre, alpha=-1.0)
    est.mean.lerp_(batch_mean, w.unsqueeze(1))  # mu - w (mu - mu'); absent classes unchanged
    return d, total, keep


class Fold(NamedTuple):
    """One batch's per-class quantities for the update ``Sigma <- (1 - w) Sigma + B^T B``.

    For ``U`` classes (the present ones, or all ``C`` when ``static``) and the ``N`` rows
    ``x`` folded in: ``xc`` the rows centred within their class (zero rows for samples that
    do not count), ``inverse`` each row's position in ``classes``, ``counts`` (``m``, long)
    and ``host_counts`` (Python ints, present path only), ``n`` the samples seen before
    (float), ``total = n + m``, ``w = m / (n + m)``, ``delta = mu_old - mu_batch``;
    ``onehot`` (``N x U``, static path only) the row-to-class matrix with zero rows for
    samples that do not count; ``host_seen`` the samples seen before as Python ints (present
    path, when the estimator read them back with the class set).
    """

    xc: Tensor
    inverse: Tensor
    classes: Tensor
    counts: Tensor
    host_counts: Optional[Tuple[int, ...]]
    host_classes: Optional[Tuple[int, ...]]
    n: Tensor
    total: Tensor
    w: Tensor
    delta: Tensor
    onehot: Optional[Tensor]
    host_seen: Optional[Tuple[int, ...]] = None

    @property
    def static(self) -> bool:
        return self.onehot is not None

    def class_sum(self, rows: Tensor) -> Tensor:
        """``U x A`` sum of ``rows`` (``N x A``) over each class's rows."""
        if self.onehot is not None:
            return self.onehot.T @ rows
        return rows.new_zeros(self.classes.shape[0], rows.shape[1]).index_add_(0, self.inverse, rows)


def class_blocks(fold: Fold, lead: int = 0) -> Tensor:
    """The rows ``B`` of each class's update ``Sigma <- (1 - w) Sigma + B^T B``, zero-padded.

    Present path: each class's centred rows (scaled by ``1/sqrt(n+m)``) in a
    ``U x (lead + max m + 1) x A`` block. Static path: every row masked to its class,
    ``C x (lead + N + 1) x A``. The last row of each block is ``sqrt(w (1 - w)) delta``;
    ``lead`` zero rows are reserved in front.
    """
    xc, U, A = fold.xc, fold.classes.shape[0], fold.xc.shape[1]
    scale = fold.total.clamp_min(1).rsqrt()
    shift = (fold.delta * (fold.w * (1 - fold.w)).sqrt().unsqueeze(1)).unsqueeze(1)  # U x 1 x A
    if fold.onehot is not None:
        rows = xc.unsqueeze(0) * (fold.onehot.T * scale.unsqueeze(1)).unsqueeze(-1)  # C x N x A
        parts = [rows, shift]
        if lead:
            parts.insert(0, xc.new_zeros(U, lead, A))
        return torch.cat(parts, 1)
    order = torch.argsort(fold.inverse, stable=True)
    starts = torch.cumsum(fold.counts, 0) - fold.counts
    inv_sorted = fold.inverse.index_select(0, order)
    pos = torch.arange(order.shape[0], device=xc.device) - starts.index_select(0, inv_sorted) + lead
    width = (max(fold.host_counts) if fold.host_counts else 0) + 1 + lead
    block = xc.new_zeros(U, width, A)
    block[inv_sorted, pos] = xc.index_select(0, order) * scale.index_select(0, inv_sorted).unsqueeze(1)
    block[:, width - 1] = shift.squeeze(1)
    return block


class CovarianceLayout:
    """Base class of the covariance layouts (one instance per kind, stateless).

    Attributes:
        kind: the ``kind`` string.
        class_independent: ``Sigma`` is the same for every class (shared, identity): one
            class stands for all in :meth:`gram` and :meth:`factor`.
        cheap_static_update: the all-class (static) update costs about as much as the
            present-class one, so it is the default when values are not validated
            (``False`` for full and low-rank: ``C x`` the flops).
        split_padded_batches: the present-class update pads every class to the largest
            class count and splitting a batch into groups of classes gives exactly the same
            statistics (full), so a batch dominated by one class may be folded in groups.
    """

    kind: str = ""
    class_independent: bool = False
    cheap_static_update: bool = True
    split_padded_batches: bool = False

    #: :meth:`static_update` and :meth:`static_augment` exist (fewer kernels on the static path)
    lean_static: bool = False

    def static_path(self, validate: bool, static_shapes, device_type: str = "cpu",
                    num_classes: int = 0, num_features: int = 0, num_rows: int = 0) -> bool:
        """Whether a step with these options takes the all-class (static) path.

        ``static_shapes=True``: always (with ``validate`` the checks stay on the device).
        ``"auto"``: on an accelerator (``device_type`` not ``"cpu"``), unless the kind's
        static update is costly and ``C A^2`` exceeds :data:`AUTO_STATIC_MAX_ELEMENTS` or
        ``C N A`` (``num_rows`` = N, when known) :data:`AUTO_STATIC_MAX_BLOCK`; on the CPU as
        ``False``. ``False``: only without validation, for the kinds whose static update is
        cheap (diagonal, shared, identity).
        """
        if static_shapes == "auto":
            if device_type != "cpu":
                C, A = num_classes, num_features
                return self.cheap_static_update or (C * A * A <= AUTO_STATIC_MAX_ELEMENTS
                                                    and C * num_rows * A <= AUTO_STATIC_MAX_BLOCK)
            static_shapes = False
        return bool(static_shapes) or (not validate and self.cheap_static_update)

    # ------------------------------------------------------------------ estimator state

    def buffers(self, C: int, A: int, rank: int, factory: dict) -> Dict[str, Tensor]:
        """The estimator's initial layout buffers (``covariance`` and any extra ones)."""
        raise NotImplementedError

    def reset(self, est) -> None:
        """Back to the initial statistics."""
        for name, value in self.buffers(est.num_classes, est.num_features, est.rank,
                                        dict(dtype=est.mean.dtype, device=est.mean.device)).items():
            getattr(est, name).copy_(value)

    def functional(self, est):
        """The functional covariance of an estimator (no copies)."""
        return est.covariance

    def extra_repr(self, est) -> str:
        return ""

    def estimator_dense(self, est, classes: Tensor) -> Tensor:
        """An estimator's ``Sigma_c`` for ``classes``, dense (may be a view)."""
        return self.dense(self.functional(est), classes, est.num_features)

    def checked_buffers(self) -> Tuple[str, ...]:
        """Buffers whose shape a checkpoint must match (the error names the layout)."""
        return ("covariance",)

    def update(self, est, fold: Fold) -> None:
        """Fold a batch into the layout's buffers (``mean`` and ``count`` are the estimator's)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ functional covariance

    def expected_shape(self, C: int, A: int) -> Optional[Tuple[int, ...]]:
        """Shape of a covariance tensor of this layout (``None``: not a plain tensor)."""
        return None

    def check(self, covariance, C: int, A: int) -> None:
        """Raise ``ValueError`` unless ``covariance`` fits this layout for ``C`` and ``A``."""
        if covariance is None:
            raise ValueError(f"kind={self.kind!r} needs a covariance tensor, got None")
        shape, expected = tuple(covariance.shape), self.expected_shape(C, A)
        if shape != expected:
            raise ValueError(
                f"kind={self.kind!r} expects a covariance of shape {expected} for C={C}, A={A}; got {shape}"
            )

    def dtype(self, covariance) -> Optional[torch.dtype]:
        return None if covariance is None else covariance.dtype

    def cast(self, covariance, dtype: torch.dtype):
        return covariance.to(dtype)

    def sigma2(self, W: Tensor, cov, classes: Tensor, host_classes: Optional[Sequence[int]] = None,
               weight: Optional[Tensor] = None) -> Tensor:
        """``U x C``: ``(w_j - w_c)^T Sigma_c (w_j - w_c)`` for ``c = classes[u]``.

        ``W`` is the weight in the compute dtype, ``weight`` the original one (the
        hand-written kernels take it to return a gradient of its dtype).
        """
        raise NotImplementedError

    def gram(self, W: Tensor, cov, classes: Tensor) -> Tensor:
        """``G[u, k, j] = w_k^T Sigma_{classes[u]} w_j`` (``U x C x C``; ``1 x C x C`` if class-independent)."""
        raise NotImplementedError

    def dense(self, cov, classes: Tensor, A: int) -> Tensor:
        """``len(classes) x A x A`` dense covariances (may be a view)."""
        raise NotImplementedError

    def factor(self, cov, classes: Tensor, A: int) -> Tensor:
        """Square roots ``L_c`` with ``L_c L_c^T = Sigma_c`` (``U x A x A``), by eigendecomposition."""
        evals, evecs = torch.linalg.eigh(self.dense(cov, classes, A))
        return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


class FullLayout(CovarianceLayout):
    kind = "full"
    cheap_static_update = False
    split_padded_batches = True
    lean_static = True

    def static_update(self, est, x: Tensor, onehot: Tensor, counts: Tensor) -> None:
        """All ``C`` classes at once: ``Sigma_c <- keep_c Sigma_c + R_c^T R_c`` with the rows
        ``R_c = onehot[:, c] d / sqrt(total_c)`` (:func:`static_moments`), one batched product."""
        d, total, keep = static_moments(est, x, onehot, counts)
        rows = (onehot.T * total.rsqrt().unsqueeze(1)).unsqueeze(2) * d.unsqueeze(0)  # C x N x A
        est.covariance.mul_(keep.view(-1, 1, 1)).baddbmm_(rows.transpose(1, 2), rows)

    def static_augment(self, logits, weight, cov, onehot, half_ratio):
        """``logits + half_ratio * onehot @ sigma2`` for all classes (:class:`FullAugment`)."""
        return FullAugment.apply(logits, weight, cov, onehot, half_ratio)

    def buffers(self, C, A, rank, factory):
        return {"covariance": torch.zeros(C, A, A, **factory)}

    def update(self, est, fold):
        """``Sigma <- (1 - w) Sigma + B^T B``: one batched product with :func:`class_blocks`."""
        cov = est.covariance
        U = fold.classes.shape[0]
        block = class_blocks(fold)
        keep = 1 - fold.w
        if U == est.num_classes:  # every class (present or static): in place
            cov.mul_(keep.view(U, 1, 1)).baddbmm_(block.transpose(1, 2), block)
        elif not per_class_views(cov, U, fold.host_seen):
            part = cov.index_select(0, fold.classes)
            part.mul_(keep.view(U, 1, 1)).baddbmm_(block.transpose(1, 2), block)
            cov.index_copy_(0, fold.classes, part)
        else:  # large, on the CPU: fused per-class updates on views, no copies
            for u, (c, n, m) in enumerate(zip(fold.host_classes, fold.host_seen, fold.host_counts)):
                cov[c].addmm_(block[u].T, block[u], beta=1.0 - m / (n + m))  # 1 - w, from host values

    def expected_shape(self, C, A):
        return (C, A, A)

    def sigma2(self, W, cov, classes, host_classes=None, weight=None):
        if cov.requires_grad:
            return full_sigma2_autograd(W, cov, classes)
        return FullSigma2.apply(W if weight is None else weight, cov, classes, host_classes)

    def gram(self, W, cov, classes):
        return torch.matmul(torch.matmul(W.unsqueeze(0), cov.index_select(0, classes)), W.T)

    def dense(self, cov, classes, A):
        return cov.index_select(0, classes)


def _diagonal_update(est, fold: Fold, var: Tensor) -> Tensor:
    """New per-class variances of ``fold.classes`` (Eqs. 1-3 on the diagonal)."""
    w = fold.w.unsqueeze(1)
    scatter = fold.class_sum(fold.xc * fold.xc)
    return var.mul_(1 - w).add_(scatter / fold.total.clamp_min(1).unsqueeze(1)).add_(w * (1 - w) * fold.delta ** 2)


class DiagonalLayout(CovarianceLayout):
    kind = "diagonal"
    lean_static = True

    def static_update(self, est, x: Tensor, onehot: Tensor, counts: Tensor) -> None:
        """All ``C`` classes at once: ``var <- keep * var + onehot^T (d * d) / total``."""
        d, total, keep = static_moments(est, x, onehot, counts)
        est.covariance.mul_(keep.unsqueeze(1)).addcdiv_(onehot.T @ (d * d), total.unsqueeze(1))

    def static_augment(self, logits, weight, var, onehot, half_ratio):
        """``logits + half_ratio * onehot @ sigma2`` for all classes (:class:`DiagonalAugment`)."""
        return DiagonalAugment.apply(logits, weight, var, onehot, half_ratio)

    def buffers(self, C, A, rank, factory):
        return {"covariance": torch.zeros(C, A, **factory)}

    def update(self, est, fold):
        est.covariance.index_copy_(0, fold.classes, _diagonal_update(est, fold, est.covariance.index_select(0, fold.classes)))

    def expected_shape(self, C, A):
        return (C, A)

    def sigma2(self, W, var, classes, host_classes=None, weight=None):
        if var.requires_grad:
            return diagonal_sigma2_autograd(W, var, classes)
        return DiagonalSigma2.apply(W if weight is None else weight, var, classes)

    def gram(self, W, var, classes):
        return torch.matmul(W.unsqueeze(0) * var.index_select(0, classes).unsqueeze(1), W.T)

    def dense(self, var, classes, A):
        return torch.diag_embed(var.index_select(0, classes))

    def factor(self, var, classes, A):
        return torch.diag_embed(var.index_select(0, classes).clamp_min(0).sqrt())


class _ClassIndependent(CovarianceLayout):
    """Shared and identity: ``sigma2 = q_j - 2 w_c^T Sigma w_j + q_c`` from ``M = W Sigma``."""

    class_independent = True

    def _times_sigma(self, W: Tensor, cov) -> Tensor:
        raise NotImplementedError

    def sigma2(self, W, cov, classes, host_classes=None, weight=None):
        M = self._times_sigma(W, cov)  # C x A
        q = torch.linalg.vecdot(M, W)  # C
        Mc = M.index_select(0, classes)  # U x A
        return q.unsqueeze(0) - 2.0 * (Mc @ W.T) + q.index_select(0, classes).unsqueeze(1)

    def gram(self, W, cov, classes):
        return (self._times_sigma(W, cov) @ W.T).unsqueeze(0)


class SharedLayout(_ClassIndependent):
    kind = "shared"

    def buffers(self, C, A, rank, factory):
        return {"covariance": torch.zeros(A, A, **factory)}

    def update(self, est, fold):
        """Pooled ``sum_c n_c Sigma_c / sum_c n_c``, each class adding its Chan update."""
        dtype = est.covariance.dtype
        rows = torch.cat([fold.xc, fold.delta * (fold.n * fold.w).sqrt().unsqueeze(1)])
        seen = est.count.sum().to(dtype)
        new_total = (seen + fold.counts.sum().to(dtype)).clamp_min(1)
        est.covariance.mul_(seen / new_total).add_((rows.T @ rows).div_(new_total))

    def expected_shape(self, C, A):
        return (A, A)

    def _times_sigma(self, W, cov):
        return W @ cov

    def dense(self, cov, classes, A):
        return cov.unsqueeze(0).expand(classes.shape[0], A, A)


class IdentityLayout(_ClassIndependent):
    kind = "identity"

    def buffers(self, C, A, rank, factory):
        return {"covariance": torch.eye(A, **factory)}

    def functional(self, est):
        return None

    def estimator_dense(self, est, classes):
        return est.covariance.unsqueeze(0).expand(classes.shape[0], -1, -1)

    def update(self, est, fold):
        pass  # Sigma = I, only the mean and count move

    def check(self, covariance, C, A):
        pass  # any covariance argument is ignored

    def dtype(self, covariance):
        return None

    def cast(self, covariance, dtype):
        return None

    def _times_sigma(self, W, cov):
        return W

    def dense(self, cov, classes, A):
        return torch.eye(A, device=classes.device).expand(classes.shape[0], A, A)

    def factor(self, cov, classes, A):
        return self.dense(cov, classes, A)


class LowRankLayout(CovarianceLayout):
    kind = "lowrank"
    cheap_static_update = False

    def buffers(self, C, A, rank, factory):
        return {
            "covariance": torch.zeros(C, A, **factory),  # exact per-dimension variances
            "components": torch.zeros(C, rank, A, **factory),
            "eigenvalues": torch.zeros(C, rank, **factory),
            "residual": torch.zeros(C, A, **factory),
        }

    def functional(self, est):
        return LowRankCovariance(est.components.transpose(1, 2), est.eigenvalues, est.residual)

    def extra_repr(self, est):
        return f", rank={est.rank}"

    def checked_buffers(self):
        return ("covariance", "components")

    def update(self, est, fold):
        """Exact variances as the diagonal layout, streaming rank-``k`` truncation for the rest.

        Everything is computed before any buffer is written.
        """
        classes, k = fold.classes, est.rank
        var = _diagonal_update(est, fold, est.covariance.index_select(0, classes))
        Zt = class_blocks(fold, lead=k)
        Zt[:, :k] = est.components.index_select(0, classes)
        rows, s, low_diag = streaming_lowrank_update(Zt, est.eigenvalues.index_select(0, classes), 1 - fold.w)
        del Zt
        d = (var - low_diag).clamp_min_(0)
        if fold.static:  # absent classes keep their factors bit for bit
            present = (fold.counts > 0).view(-1, 1)
            rows = torch.where(present.unsqueeze(-1), rows, est.components)
            s = torch.where(present, s, est.eigenvalues)
            d = torch.where(present, d, est.residual)
        est.components.index_copy_(0, classes, rows)
        est.eigenvalues.index_copy_(0, classes, s)
        est.residual.index_copy_(0, classes, d)
        est.covariance.index_copy_(0, classes, var)

    def check(self, covariance, C, A):
        if not isinstance(covariance, tuple) or len(covariance) != 3:
            raise ValueError(
                "kind='lowrank' expects a torch_isda.lowrank.LowRankCovariance(U, s, d) "
                f"(C x A x k, C x k, C x A); got {type(covariance).__name__}"
            )
        check_lowrank(LowRankCovariance(*covariance), C, A)

    def dtype(self, covariance):
        return covariance[0].dtype

    def cast(self, covariance, dtype):
        return LowRankCovariance(*covariance).to(dtype)

    def sigma2(self, W, cov, classes, host_classes=None, weight=None):
        """Low-rank term through autograd (``O(U C A k)``) plus the diagonal term's kernel."""
        low = lowrank_sigma2(W, cov.U, cov.s, classes)
        if cov.d.requires_grad:
            return low + diagonal_sigma2_autograd(W, cov.d, classes)
        return low + DiagonalSigma2.apply(W if weight is None else weight, cov.d, classes)

    def gram(self, W, cov, classes):
        return lowrank_gram(W, cov.U, cov.s, cov.d, classes)

    def dense(self, cov, classes, A):
        return LowRankCovariance(*cov).dense(classes)


_LAYOUTS = {layout.kind: layout for layout in (FullLayout(), DiagonalLayout(), SharedLayout(),
                                               IdentityLayout(), LowRankLayout())}
KINDS = tuple(_LAYOUTS)


def get_layout(kind: str) -> CovarianceLayout:
    """The layout object of a ``kind`` string; ``ValueError`` naming the known kinds otherwise."""
    try:
        return _LAYOUTS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown covariance kind {kind!r}; expected one of {KINDS}") from None
