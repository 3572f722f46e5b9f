"""Low-rank plus diagonal class covariances (``kind="lowrank"``).

For large feature dimensions and many classes (ImageNet: ``C = 1000``, ``A = 2048``) the
full ``C x A x A`` covariance needs 16.8 GB in float32, and the paper falls back to the
diagonal. The ``"lowrank"`` kind keeps, per class, the ``k`` leading directions of the
covariance and the per-dimension variance left over::

    Sigma_c ~= U_c diag(s_c) U_c^T + diag(d_c)

``U_c`` (``A x k``, orthonormal columns) and ``s_c`` (``k``, descending) are a streaming
principal component estimate, ``d_c >= 0`` is the residual variance, so that the
per-dimension variances ``diag(Sigma_c)`` (hence the trace) are exact: ``d_c =
diag(Sigma_c^exact) - diag(U_c diag(s_c) U_c^T)``. State and work are ``O(C A k)``:

* **update** (Eqs. 1-3 projected on rank ``k``, per present class): with ``F = U diag(s)^(1/2)``
  the current factor, ``n`` samples seen and ``m`` in the batch, ``w = m / (n + m)``,
  ``Sigma <- (1 - w) Sigma + B^T B`` where the rows of ``B`` are the batch's centred features
  over ``sqrt(n + m)`` and the mean-shift row ``sqrt(w (1 - w)) (mu - mu')``. The low-rank
  part takes ``Z = [sqrt(1 - w) F, B^T]`` (``A x r``, ``r = k + m + 1``) and keeps the top
  ``k`` eigenpairs of ``Z Z^T`` from the small ``r x r`` Gram matrix ``Z^T Z = V L V^T``:
  ``F_new = Z V_k`` (incremental PCA / frequent directions without shrinkage; when
  ``r > A`` the ``A x A`` matrix ``Z Z^T`` is decomposed instead). Cost per present class
  ``O(r^2 A + r^3)``. Each truncation only drops positive semi-definite mass, so the
  low-rank part never exceeds the exact covariance and ``d`` is non-negative up to rounding
  (clamped at 0). What is lost is the *off-diagonal* covariance outside the ``k`` leading
  directions (its diagonal is in ``d``). With ``k >= A`` nothing is dropped and the estimate
  equals the ``"full"`` kind.
* **sigma2** (Eq. 7): ``sigma2_u[j] = sum_r s_r ((w_j - w_c) . u_r)^2 + sum_a d_a (w_j - w_c)_a^2``
  from ``P = W U_c`` (``U x C x k``, one ``[U k x A] @ [A x C]`` product): ``O(U C A k)``
  for ``U`` classes present, against ``O(U C A^2)`` for the full kind and ``O(U C A)``
  for the diagonal one.

The functional API (:mod:`torch_isda.functional`) takes a :class:`LowRankCovariance`
``(U, s, d)`` as its ``covariance`` argument with ``kind="lowrank"`` (inferred from the type);
:meth:`torch_isda.CovarianceEstimator.functional_covariance` returns it for an estimator of
this kind, and :meth:`~torch_isda.CovarianceEstimator.dense_covariance` rebuilds the dense
``A x A`` matrices of chosen classes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "LowRankCovariance",
    "check_lowrank",
    "lowrank_sigma2",
    "lowrank_gram",
    "lowrank_dense",
    "streaming_lowrank_update",
]


class LowRankCovariance(NamedTuple):
    """``Sigma_c = U[c] diag(s[c]) U[c]^T + diag(d[c])`` for every class ``c``.

    Fields:
        U: ``C x A x k`` components (orthonormal columns per class, zero where unused). The
            estimator's is a transposed view of its contiguous ``C x k x A`` buffer
            ``components`` (rows = directions), the layout the products here are fastest with.
        s: ``C x k`` variances along the components (the leading eigenvalues).
        d: ``C x A`` residual per-dimension variances, ``>= 0``.
    """

    U: Tensor
    s: Tensor
    d: Tensor

    @property
    def num_classes(self) -> int:
        return self.U.shape[0]

    @property
    def num_features(self) -> int:
        return self.U.shape[1]

    @property
    def rank(self) -> int:
        return self.U.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.U.dtype

    @property
    def device(self) -> torch.device:
        return self.U.device

    @property
    def requires_grad(self) -> bool:
        return self.U.requires_grad or self.s.requires_grad or self.d.requires_grad

    def to(self, *args, **kwargs) -> "LowRankCovariance":
        """``Tensor.to`` applied to each field."""
        return LowRankCovariance(*(t.to(*args, **kwargs) for t in self))

    def index_select(self, classes: Tensor) -> "LowRankCovariance":
        """The factors of ``classes`` only (``U x A x k``, ``U x k``, ``U x A``)."""
        return LowRankCovariance(*(t[classes] for t in self))

    def dense(self, classes: Optional[Tensor] = None) -> Tensor:
        """The dense covariances ``C x A x A`` (or ``len(classes) x A x A``)."""
        cov = self if classes is None else self.index_select(classes)
        return lowrank_dense(cov.U, cov.s, cov.d)

    def diagonal(self) -> Tensor:
        """``C x A`` per-dimension variances ``diag(Sigma_c)``."""
        return torch.einsum("cak,ck,cak->ca", self.U, self.s, self.U) + self.d


def check_lowrank(covariance: LowRankCovariance, num_classes: int, num_features: int) -> None:
    """Raise ``ValueError`` unless the factors are ``C x A x k``, ``C x k`` and ``C x A``."""
    U, s, d = covariance
    C, A = num_classes, num_features
    ok = (
        U.dim() == 3 and tuple(U.shape[:2]) == (C, A)
        and tuple(s.shape) == (C, U.shape[-1]) and tuple(d.shape) == (C, A)
    )
    if not ok:
        raise ValueError(
            f"kind='lowrank' expects LowRankCovariance(U: C x A x k, s: C x k, d: C x A) for C={C}, "
            f"A={A}; got U {tuple(U.shape)}, s {tuple(s.shape)}, d {tuple(d.shape)}"
        )


def lowrank_dense(U: Tensor, s: Tensor, d: Tensor) -> Tensor:
    """``U diag(s) U^T + diag(d)`` batched over the leading dimension."""
    return torch.matmul(U * s.unsqueeze(-2), U.transpose(-1, -2)) + torch.diag_embed(d)


def _rows(U: Tensor, classes: Tensor) -> Tensor:
    """``U[classes]`` as rows: ``len(classes) x k x A`` (components of each class as rows).

    Gathered with advanced indexing: on CPU ``index_select`` into a fresh multi-MB tensor is
    several times slower. With the estimator's factors (``U`` a transposed view of the
    contiguous ``C x k x A`` buffer ``components``) the result is contiguous.
    """
    return U.transpose(1, 2)[classes]


def lowrank_sigma2(W: Tensor, U: Tensor, s: Tensor, classes: Tensor) -> Tensor:
    """Low-rank part of ``sigma2``: ``out[u, j] = sum_r s[c_u, r] ((w_j - w_{c_u}) . U[c_u, :, r])^2``.

    ``U`` (``C x A x k``) and ``s`` (``C x k``) are the factors of all classes; ``classes``
    the ``U`` classes wanted. One ``[U k x A] @ [A x C]`` product, ``O(U C A k)``;
    differentiable in ``W`` (and in the factors) through autograd.
    """
    rows = _rows(U, classes)  # U x k x A
    n, k, A = rows.shape
    P = torch.matmul(rows.reshape(n * k, A), W.T).view(n, k, -1)  # P[u, r, j] = u_r . w_j
    Pc = P.gather(2, classes.view(-1, 1, 1).expand(-1, k, 1))  # U x k x 1: u_r . w_{c_u}
    D = P - Pc
    return torch.bmm(s[classes].unsqueeze(1), D * D).squeeze(1)  # U x C


def lowrank_gram(W: Tensor, U: Tensor, s: Tensor, d: Tensor, classes: Tensor) -> Tensor:
    """``G[u, i, j] = w_i^T Sigma_{c_u} w_j`` for the classes ``classes`` (``U x C x C``)."""
    rows = _rows(U, classes)  # U x k x A
    n, k, A = rows.shape
    P = torch.matmul(rows.reshape(n * k, A), W.T).view(n, k, -1)  # U x k x C
    G = torch.bmm((P * s[classes].unsqueeze(-1)).transpose(1, 2), P)
    return G + torch.matmul(W.unsqueeze(0) * d[classes].unsqueeze(1), W.T)


@torch.no_grad()
def streaming_lowrank_update(Zt: Tensor, s: Tensor, keep: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Rank-``k`` truncation of ``keep * U diag(s) U^T + B^T B``, per class.

    Args:
        Zt: ``U x (k + b) x A``: rows ``:k`` the current components ``U^T`` (unit rows), rows
            ``k:`` the new rows ``B`` (centred samples / ``sqrt(n + m)`` and the mean-shift row;
            zero rows are padding). Overwritten (the first ``k`` rows are rescaled in place).
        s: ``U x k`` the current variances.
        keep: ``U`` factors ``1 - w`` on the old estimate.

    Returns:
        ``(rows, s_new, diag_new)``: ``U x k x A`` new components as rows (orthonormal, zero
        where the variance is zero), ``U x k`` variances in descending order and ``U x A``
        ``diag(U diag(s) U^T)`` of the new low-rank part.
    """
    k = s.shape[1]
    n_cls, r, A = Zt.shape
    Zt[:, :k].mul_((s.clamp_min(0) * keep.unsqueeze(1)).sqrt().unsqueeze(-1))  # F^T: Z Z^T = keep old + B^T B
    if r <= A:
        # small Gram matrix Z^T Z (r x r): F_new = Z V_k spans the top-k eigenspace of Z Z^T
        G = torch.bmm(Zt, Zt.transpose(1, 2))
        evals, V = torch.linalg.eigh(G.double())
        F = torch.bmm(V[..., -k:].flip(-1).transpose(1, 2).to(Zt.dtype), Zt)  # U x k x A, rows Z v_r
    else:
        # more rows than dimensions: decompose the A x A scatter directly
        evals, V = torch.linalg.eigh(torch.bmm(Zt.transpose(1, 2), Zt).double())
        F = V[..., -k:].flip(-1).transpose(1, 2).to(Zt.dtype).contiguous()
    s_new = evals[..., -k:].flip(-1).clamp_min(0)  # descending
    # directions of (relatively) zero variance, e.g. when a class has been seen fewer than
    # k + 1 times, get a zero component rather than a direction made of rounding noise
    tiny = s_new <= s_new.amax(1, keepdim=True) * (torch.finfo(Zt.dtype).eps * r) + torch.finfo(Zt.dtype).tiny
    s_new = s_new.masked_fill(tiny, 0.0).to(Zt.dtype)
    norms = torch.linalg.vector_norm(F, dim=2)
    F.mul_(torch.where(tiny, torch.zeros_like(norms), 1.0 / norms).unsqueeze(-1))  # unit (or zero) rows
    diag_new = torch.zeros(n_cls, A, dtype=F.dtype, device=F.device)
    for i in range(k):  # sum_r s_r U[:, r]^2 without a U x k x A temporary
        diag_new.addcmul_(F[:, i] * s_new[:, i : i + 1], F[:, i])
    return F, s_new, diag_new
