"""The ``sigma2`` kernels of Eq. (7) with hand-written backward passes.

``sigma2[u, j] = (w_j - w_c)^T Sigma_c (w_j - w_c)`` for ``c = classes[u]``, for the full
(``C x A x A``) and diagonal (``C x A``) covariance layouts, plus plain autograd versions
used when the covariance itself requires grad (learned covariances). The covariance
layouts of :mod:`torch_isda.layouts` call these; nothing here knows about layouts.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "GATHER_MAX_ELEMENTS",
    "FullSigma2",
    "DiagonalSigma2",
    "per_class_bmm",
    "per_class_views",
    "full_sigma2_autograd",
    "diagonal_sigma2_autograd",
    "FullAugment",
    "DiagonalAugment",
]

# Above this many covariance elements (U x A x A) per-class products on views beat a
# gathered copy on the CPU: a fresh multi-MB allocation costs page faults on every call.
GATHER_MAX_ELEMENTS = 1 << 20


def per_class_views(covariance: Tensor, num_classes: int, host_values) -> bool:
    """Whether per-class products on views of ``covariance`` (``C x A x A``) should replace a
    gathered copy of ``num_classes`` of them: large, on the CPU, with the classes known on
    the host (``host_values`` not ``None``) and outside ``torch.compile``."""
    A = covariance.shape[-1]
    return (host_values is not None and covariance.device.type == "cpu"
            and num_classes * A * A > GATHER_MAX_ELEMENTS and not torch.compiler.is_compiling())


def per_class_bmm(
    V: Tensor, covariance: Tensor, classes: Tensor, host_classes: Optional[Sequence[int]] = None
) -> Tensor:
    """``out[u] = V[u] @ covariance[classes[u]]`` without copying the covariances when large.

    ``classes`` must be sorted and distinct; when every class is present the whole
    covariance buffer is used as is. ``host_classes`` (the same classes as Python ints)
    enables the copy-free per-class loop on large CPU inputs; without it (or on an
    accelerator, where a gathered batched product is fast and host values would need a
    synchronization) the covariances are gathered.
    """
    U = classes.shape[0]
    if U == covariance.shape[0]:
        return torch.bmm(V, covariance)
    if not per_class_views(covariance, U, host_classes):
        return torch.bmm(V, covariance.index_select(0, classes))
    out = V.new_empty(V.shape[0], V.shape[1], covariance.shape[-1])
    for u, c in enumerate(host_classes):
        torch.mm(V[u], covariance[c], out=out[u])
    return out


class FullSigma2(torch.autograd.Function):
    """``sigma2[u, j] = (w_j - w_{c_u})^T Sigma_{c_u} (w_j - w_{c_u})`` with a hand-written backward.

    Forward: one batched product ``V_u @ Sigma_u`` (``U x [C x A] @ [A x A]``, the floor) plus
    ``O(U C A)`` element-wise work. Backward reuses ``T = V Sigma`` (``Sigma`` symmetric), so it
    needs no second product: ``d sigma2[u, j] / d w_j = 2 T[u, j]`` and
    ``d sigma2[u, j] / d w_{c_u} = -2 T[u, j]``.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, covariance: Tensor, classes: Tensor, host_classes=None) -> Tensor:
        W = weight.to(covariance.dtype)
        V = W.unsqueeze(0) - W.index_select(0, classes).unsqueeze(1)  # U x C x A
        T = per_class_bmm(V, covariance, classes, host_classes)  # U x C x A
        sigma2 = torch.linalg.vecdot(T, V)  # U x C
        ctx.save_for_backward(T, classes)
        ctx.weight_dtype = weight.dtype
        return sigma2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sigma2: Tensor):
        T, classes = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        g = grad_sigma2.to(T.dtype)
        gT = T * g.unsqueeze(-1)  # U x C x A
        grad_weight = gT.sum(0).mul_(2.0)  # d/dw_j
        grad_weight.index_add_(0, classes, gT.sum(1), alpha=-2.0)  # d/dw_{c_u}
        return grad_weight.to(ctx.weight_dtype), None, None, None


class DiagonalSigma2(torch.autograd.Function):
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
        left = torch.cat([D, DWc], 1)  # U x 2A
        right = torch.cat([W * W, W.mul(-2.0)], 1)  # C x 2A
        sigma2 = torch.addmm(torch.linalg.vecdot(DWc, Wc).unsqueeze(1), left, right.T)
        ctx.save_for_backward(W, left, classes)
        ctx.weight_dtype = weight.dtype
        return sigma2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sigma2: Tensor):
        W, left, classes = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        A = W.shape[1]
        g = grad_sigma2.to(W.dtype)
        P = g.T @ left  # C x 2A: [g^T D, g^T (D * Wc)]
        grad_weight = (W * P[:, :A]).sub_(P[:, A:]).mul_(2.0)  # d/dw_j
        D, DWc = left[:, :A], left[:, A:]
        rows = D * (g @ W) - DWc * g.sum(1, keepdim=True)  # U x A, d/dw_{c_u} / (-2)
        grad_weight.index_add_(0, classes, rows, alpha=-2.0)
        return grad_weight.to(ctx.weight_dtype), None, None


def full_sigma2_autograd(W: Tensor, cov: Tensor, classes: Tensor) -> Tensor:
    """Full-layout ``sigma2`` through autograd (gradients into ``cov`` too)."""
    V = W.unsqueeze(0) - W.index_select(0, classes).unsqueeze(1)
    return torch.linalg.vecdot(torch.bmm(V, cov.index_select(0, classes)), V)


def diagonal_sigma2_autograd(W: Tensor, var: Tensor, classes: Tensor) -> Tensor:
    """Diagonal-layout ``sigma2`` through autograd (gradients into ``var`` too)."""
    V = W.unsqueeze(0) - W.index_select(0, classes).unsqueeze(1)
    return (V * V * var.index_select(0, classes).unsqueeze(1)).sum(-1)


# --------------------------------------------------------------------------- static path


def _scaled_product(a: Tensor, b: Tensor, scale) -> Tensor:
    """``scale * (a @ b)`` in one kernel for a Python ``scale``, two for a tensor one."""
    if isinstance(scale, Tensor):
        return torch.mm(a, b).mul_(scale)
    return torch.addmm(a[:1, :1], a, b, beta=0.0, alpha=scale)  # beta=0: the first argument is not read


def _add_rows(logits: Tensor, onehot: Tensor, sigma2: Tensor, half_ratio) -> Tensor:
    """``logits + half_ratio * onehot @ sigma2`` (one ``addmm`` for a Python ratio)."""
    sigma2 = sigma2.to(logits.dtype)
    if isinstance(half_ratio, Tensor):
        return logits + torch.mm(onehot.to(logits.dtype), sigma2).mul_(half_ratio.to(logits.dtype))
    return torch.addmm(logits, onehot.to(logits.dtype), sigma2, alpha=half_ratio)


def _finish_forward(ctx, logits: Tensor, weight: Tensor, onehot: Tensor, sigma2: Tensor, half_ratio,
                    *saved: Tensor) -> Tensor:
    """Save what the backward needs and return ``logits + half_ratio * onehot @ sigma2``."""
    ctx.save_for_backward(onehot, *saved)
    ctx.half_ratio = half_ratio
    ctx.weight_dtype = weight.dtype
    return _add_rows(logits, onehot, sigma2, half_ratio)


class FullAugment(torch.autograd.Function):
    """Static path, full layout: ``logits + r * onehot @ sigma2`` for all ``C`` classes.

    ``sigma2[c, j] = (w_j - w_c)^T Sigma_c (w_j - w_c)`` comes from ``V_c = W - w_c`` and one
    batched product ``T = V Sigma`` (``C x [C x A] @ [A x A]``), as in :class:`FullSigma2`;
    the per-sample gather is the ``N x C`` one-hot product fused with the addition. Backward:
    ``G = r * onehot^T g`` (``C x C``) and, ``Sigma`` being symmetric,
    ``dW[j] = 2 sum_c G[c, j] T[c, j] - 2 sum_j' G[j, j'] T[j, j']``: two batched
    vector-matrix products. ``r`` (``half_ratio``) is a Python float or a 0-d tensor.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, covariance: Tensor, onehot: Tensor, half_ratio) -> Tensor:
        W = weight.to(covariance.dtype)
        V = W.unsqueeze(0) - W.unsqueeze(1)  # C x C x A: V[c, j] = w_j - w_c
        T = torch.bmm(V, covariance)
        sigma2 = torch.linalg.vecdot(T, V)  # C x C
        return _finish_forward(ctx, logits, weight, onehot, sigma2, half_ratio, T)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        onehot, T = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            scale = ctx.half_ratio * 2.0
            G = _scaled_product(onehot.T.to(T.dtype), grad.to(T.dtype), scale)  # C x C, times 2
            by_row = torch.bmm(G.T.unsqueeze(1), T.transpose(0, 1)).squeeze(1)  # sum_c G[c, j] T[c, j]
            by_class = torch.bmm(G.unsqueeze(1), T).squeeze(1)  # sum_j G[c, j] T[c, j]
            grad_weight = by_row.sub_(by_class).to(ctx.weight_dtype)
        return grad, grad_weight, None, None, None


class DiagonalAugment(torch.autograd.Function):
    """Static path, diagonal layout: ``logits + r * onehot @ sigma2`` for all ``C`` classes.

    With ``D`` the ``C x A`` variances, ``sigma2 = D (W*W)^T - 2 (D*W) W^T + q 1^T`` where
    ``q[c] = d_c . (w_c * w_c)`` is the diagonal of the first product (all classes present).
    Backward with ``G' = -2 r onehot^T g``:
    ``dW = G'^T (D*W) - W * (G'^T D) + D * (G' W) - (D*W) * rowsum(G')``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, variances: Tensor, onehot: Tensor, half_ratio) -> Tensor:
        W = weight.to(variances.dtype)
        DW = variances * W
        P = torch.mm(variances, (W * W).T)  # P[c, j] = d_c . (w_j * w_j)
        sigma2 = torch.addmm(P, DW, W.T, alpha=-2.0).add_(P.diagonal().unsqueeze(1))
        return _finish_forward(ctx, logits, weight, onehot, sigma2, half_ratio, W, variances, DW)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        onehot, W, D, DW = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            G = _scaled_product(onehot.T.to(W.dtype), grad.to(W.dtype), ctx.half_ratio * -2.0)  # G'
            out = torch.addcmul(G.T @ DW, W, G.T @ D, value=-1.0)
            out.addcmul_(D, G @ W).addcmul_(DW, G.sum(1, keepdim=True), value=-1.0)
            grad_weight = out.to(ctx.weight_dtype)
        return grad, grad_weight, None, None, None
