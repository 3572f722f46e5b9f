"""Online class-conditional feature statistics of ISDA (Eqs. 1-3 of the paper)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import distributed as _dist
from .functional import _GATHER_MAX_ELEMENTS, KINDS
from .lowrank import LowRankCovariance, streaming_lowrank_update

__all__ = ["CovarianceEstimator"]


class CovarianceEstimator(nn.Module):
    """Online estimate of each class's feature mean and covariance.

    After any sequence of :meth:`update` calls, ``mean[c]`` and ``covariance[c]`` equal the
    mean and the *population* covariance (divide by ``n``) of all features of class ``c``
    seen so far; classes absent from a batch keep their statistics. The update is Eqs.
    (1)-(3) of the paper, computed for the classes present in the batch only
    (``O(N A^2 + U A^2)`` for ``U`` present classes).

    Args:
        num_features: feature dimension ``A``.
        num_classes: number of classes ``C``.
        kind: ``"full"`` (``C x A x A``), ``"diagonal"`` (``C x A`` variances), ``"shared"``
            (one ``A x A`` covariance pooled over classes: the count-weighted mean of the
            per-class covariances, i.e. the pooled *within-class* covariance, our reading of
            the paper's "global covariance matrix computed from the features of all
            classes"), ``"identity"`` (``Sigma = I``, never updated) or
            ``"lowrank"`` (``U_c diag(s_c) U_c^T + diag(d_c)`` of rank ``rank``, see
            :mod:`torch_isda.lowrank`).
        dtype: dtype of the statistics, float32 (default) or float64; features of any
            floating dtype (bf16/fp16 under autocast) are cast to it.
        sync: under ``torch.distributed`` with world size > 1, all-gather every batch so all
            ranks hold identical statistics, equal to one process seeing the global batch.
        device: where the buffers live (they follow ``.to()`` afterwards).
        rank: number ``k`` of principal directions kept per class by the ``"lowrank"`` kind
            (capped at ``A``; with ``k = A`` it equals ``"full"``); ignored by other kinds.

    Buffers (saved in ``state_dict``): ``mean`` (``C x A``), ``covariance`` (by ``kind``;
    ``A x A`` identity for ``"identity"``) and ``count`` (``C``, samples seen per class).
    For ``"lowrank"``, ``covariance`` holds the exact per-dimension variances
    ``diag(Sigma_c)`` (``C x A``, as the diagonal kind) and the factors are the buffers
    ``components`` (``U^T``: ``C x k x A``, row ``r`` of class ``c`` its ``r``-th principal
    direction), ``eigenvalues`` (``s``, ``C x k``, descending) and ``residual`` (``d``,
    ``C x A``). Read ``Sigma`` with :meth:`dense_covariance` (any kind) and pass
    :meth:`functional_covariance` to :mod:`torch_isda.functional` (any kind).
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        kind: str = "full",
        *,
        dtype: torch.dtype = torch.float32,
        sync: bool = True,
        device: Optional[torch.device] = None,
        rank: int = 32,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown covariance kind {kind!r}; expected one of {KINDS}")
        if int(num_features) < 1 or int(num_classes) < 1:
            raise ValueError(f"num_features and num_classes must be positive; got {num_features}, {num_classes}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"statistics dtype must be torch.float32 or torch.float64; got {dtype}")
        self.num_features = A = int(num_features)
        self.num_classes = C = int(num_classes)
        self.kind = kind
        self.sync = sync
        if int(rank) < 1:
            raise ValueError(f"rank must be a positive integer; got {rank}")
        self.rank = min(int(rank), A)
        shapes = {"full": (C, A, A), "diagonal": (C, A), "shared": (A, A), "identity": (A, A), "lowrank": (C, A)}
        factory = dict(dtype=dtype, device=device)
        self.register_buffer("mean", torch.zeros(C, A, **factory))
        cov = torch.eye(A, **factory) if kind == "identity" else torch.zeros(shapes[kind], **factory)
        self.register_buffer("covariance", cov)
        self.register_buffer("count", torch.zeros(C, dtype=torch.long, device=device))
        if kind == "lowrank":
            self.register_buffer("components", torch.zeros(C, self.rank, A, **factory))
            self.register_buffer("eigenvalues", torch.zeros(C, self.rank, **factory))
            self.register_buffer("residual", torch.zeros(C, A, **factory))

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.kind == "lowrank" else ""
        return (
            f"num_features={self.num_features}, num_classes={self.num_classes}, kind={self.kind!r}{rank}, "
            f"dtype={self.mean.dtype}, sync={self.sync}"
        )

    # ------------------------------------------------------------------ validation

    def _problems(self, features: Tensor, labels: Tensor) -> Tuple[List[str], Tensor]:
        """Describe what is wrong with a batch (empty list: nothing), without mutating state.

        Returns the messages and a flags tensor (for the distributed pre-check).
        """
        A, C = self.num_features, self.num_classes
        msgs: List[str] = []
        flags = torch.zeros(3, dtype=torch.long)
        if features.dim() != 2 or features.shape[1] != A:
            msgs.append(f"features must be N x A with A={A}; got shape {tuple(features.shape)}")
            flags[0] = 1
        elif not features.is_floating_point():
            msgs.append(f"features must be a floating-point tensor; got dtype {features.dtype}")
            flags[0] = 1
        if labels.dim() != 1 or (features.dim() >= 1 and labels.shape[0] != features.shape[0]):
            msgs.append(
                f"labels must be a 1-D tensor with one entry per feature row "
                f"({features.shape[0] if features.dim() else '?'}); got shape {tuple(labels.shape)}"
            )
            flags[1] = 1
        elif labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            msgs.append(f"labels must hold integer class indices; got dtype {labels.dtype}")
            flags[1] = 1
        if msgs or features.shape[0] == 0:
            return msgs, flags
        # one host synchronisation for the value checks
        checks = torch.stack(
            [labels.min(), labels.max(), (~torch.isfinite(features)).any().to(labels.dtype)]
        ).tolist()
        lo, hi, nonfinite = checks
        if lo < 0 or hi >= C:
            msgs.append(f"labels must lie in [0, {C}); got values in [{lo}, {hi}]")
            flags[1] = 1
        if nonfinite:
            msgs.append("features contain NaN or Inf values")
            flags[2] = 1
        return msgs, flags

    # ------------------------------------------------------------------ update

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, sync: Optional[bool] = None) -> None:
        """Fold a batch into the statistics (Eqs. 1-3).

        Args:
            features: ``N x A`` deep features (detached internally; any floating dtype).
            labels: ``N`` integer class indices in ``[0, C)``.
            sync: override the module's ``sync`` for this call.

        Raises:
            ValueError: on a shape mismatch, labels out of range or NaN/Inf features. The
                statistics are left unchanged (on every rank, when synchronizing).
        """
        features = features.detach()
        msgs, flags = self._problems(features, labels)
        if (self.sync if sync is None else sync) and _dist.is_distributed():
            try:
                features, labels = _dist.all_gather_batch(features, labels, flags)
            except ValueError as err:
                if msgs:
                    raise ValueError("; ".join(msgs) + f" ({err})") from err
                raise
        elif msgs:
            raise ValueError("; ".join(msgs) + " (statistics unchanged)")
        if features.shape[0] == 0:
            return
        self._fold(features.to(self.mean.dtype), labels.to(torch.long))

    def _fold(self, x: Tensor, y: Tensor) -> None:
        classes, inverse, m = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
        mf = m.to(x.dtype)
        batch_mean = torch.zeros(classes.numel(), x.shape[1], dtype=x.dtype, device=x.device)
        batch_mean.index_add_(0, inverse, x).div_(mf.unsqueeze(1))
        xc = x - batch_mean.index_select(0, inverse)  # centred within each class of the batch
        n = self.count.index_select(0, classes).to(x.dtype)
        total = n + mf
        w = mf / total  # weight of the batch, m / (n + m)
        old_mean = self.mean.index_select(0, classes)
        delta = old_mean - batch_mean  # mu^(t-1) - mu'^(t)

        if self.kind == "full":
            self._fold_full(xc, inverse, m, classes, total, w, delta)
        elif self.kind in ("diagonal", "lowrank"):
            scatter = torch.zeros_like(batch_mean).index_add_(0, inverse, xc * xc)
            var = self.covariance.index_select(0, classes)
            var.mul_((1 - w).unsqueeze(1)).add_(scatter / total.unsqueeze(1)).add_(
                (w * (1 - w)).unsqueeze(1) * delta * delta
            )
            if self.kind == "lowrank":  # computed before any buffer is written
                k = self.rank
                Zt = self._class_blocks(xc, inverse, m, classes, total, w, delta, lead=k)
                Zt[:, :k] = self.components[classes]
                rows, s, low_diag = streaming_lowrank_update(Zt, self.eigenvalues.index_select(0, classes), 1 - w)
                del Zt
                d = (var - low_diag).clamp_min_(0)
                self.components.index_copy_(0, classes, rows)
                self.eigenvalues.index_copy_(0, classes, s)
                self.residual.index_copy_(0, classes, d)
            self.covariance.index_copy_(0, classes, var)
        elif self.kind == "shared":
            # pooled: sum_c n_c Sigma_c / sum_c n_c, each class adding its Chan update
            rows = torch.cat([xc, delta * (n * w).sqrt().unsqueeze(1)])
            seen = self.count.sum().to(x.dtype)
            new_total = seen + x.shape[0]
            self.covariance.mul_(seen / new_total).addmm_(rows.T, rows, alpha=1.0 / float(new_total))

        self.mean.index_copy_(0, classes, old_mean - w.unsqueeze(1) * delta)
        self.count.index_add_(0, classes, m)

    def _class_blocks(self, xc: Tensor, inverse: Tensor, m: Tensor, classes: Tensor,
                      total: Tensor, w: Tensor, delta: Tensor, lead: int = 0) -> Tensor:
        """The rows ``B`` of each class's update ``Sigma <- (1 - w) Sigma + B^T B``.

        Each class's centred rows (scaled by ``1/sqrt(n+m)``) are stacked in a zero-padded
        ``U x (max m + 1) x A`` block whose last row is ``sqrt(w (1 - w)) delta``; ``lead``
        zero rows are reserved in front (``U x (lead + max m + 1) x A``).
        """
        U, A = classes.numel(), xc.shape[1]
        order = torch.argsort(inverse, stable=True)
        starts = torch.cumsum(m, 0) - m
        inv_sorted = inverse.index_select(0, order)
        pos = torch.arange(order.numel(), device=xc.device) - starts.index_select(0, inv_sorted)
        width = int(m.max()) + 1 + lead
        block = xc.new_zeros(U, width, A)
        pos = pos + lead
        scale = total.rsqrt()
        block[inv_sorted, pos] = xc.index_select(0, order) * scale.index_select(0, inv_sorted).unsqueeze(1)
        block[:, width - 1] = delta * (w * (1 - w)).sqrt().unsqueeze(1)
        return block

    def _fold_full(self, xc: Tensor, inverse: Tensor, m: Tensor, classes: Tensor,
                   total: Tensor, w: Tensor, delta: Tensor) -> None:
        """``Sigma <- (1 - w) Sigma + (Xc^T Xc) / (n + m) + w (1 - w) delta delta^T``, per class.

        The within-batch scatter and the mean-shift term come out of one batched product
        with the blocks of :meth:`_class_blocks`.
        """
        U, A = classes.numel(), xc.shape[1]
        block = self._class_blocks(xc, inverse, m, classes, total, w, delta)
        keep = 1 - w
        if U == self.num_classes:  # every class present: update the buffer in place
            self.covariance.mul_(keep.view(U, 1, 1)).baddbmm_(block.transpose(1, 2), block)
        elif U * A * A <= _GATHER_MAX_ELEMENTS:
            cov = self.covariance.index_select(0, classes)
            cov.mul_(keep.view(U, 1, 1)).baddbmm_(block.transpose(1, 2), block)
            self.covariance.index_copy_(0, classes, cov)
        else:  # large: fused per-class ``Sigma_c = (1 - w) Sigma_c + B^T B`` on views, no copies
            for u, (c, beta) in enumerate(zip(classes.tolist(), keep.tolist())):
                self.covariance[c].addmm_(block[u].T, block[u], beta=beta)

    # ------------------------------------------------------------------ utilities

    @torch.no_grad()
    def reset(self) -> None:
        """Forget everything seen (statistics back to their initial values)."""
        self.mean.zero_()
        self.count.zero_()
        if self.kind == "identity":
            self.covariance.copy_(torch.eye(self.num_features, dtype=self.covariance.dtype))
        else:
            self.covariance.zero_()
        if self.kind == "lowrank":
            self.components.zero_()
            self.eigenvalues.zero_()
            self.residual.zero_()

    def functional_covariance(self):
        """The ``covariance`` argument of :mod:`torch_isda.functional` for this estimator.

        ``None`` for ``"identity"``, a :class:`~torch_isda.lowrank.LowRankCovariance`
        ``(components, eigenvalues, residual)`` for ``"lowrank"``, the ``covariance`` buffer
        otherwise (no copies).
        """
        if self.kind == "identity":
            return None
        if self.kind == "lowrank":
            return LowRankCovariance(self.components.transpose(1, 2), self.eigenvalues, self.residual)
        return self.covariance

    @torch.no_grad()
    def dense_covariance(self, classes: Optional[Tensor] = None) -> Tensor:
        """The estimated ``Sigma_c`` as dense ``A x A`` matrices, whatever the kind.

        Args:
            classes: 1-D class indices (all ``C`` classes when ``None``).

        Returns:
            ``len(classes) x A x A`` (a copy; mind the size: ``C A^2`` elements for all classes).
        """
        A = self.num_features
        if classes is None:
            classes = torch.arange(self.num_classes, device=self.mean.device)
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.mean.device).reshape(-1)
        if self.kind == "full":
            return self.covariance.index_select(0, classes)
        if self.kind == "diagonal":
            return torch.diag_embed(self.covariance.index_select(0, classes))
        if self.kind == "lowrank":
            return self.functional_covariance().dense(classes)
        return self.covariance.unsqueeze(0).expand(classes.numel(), A, A).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        names = ("covariance", "components") if self.kind == "lowrank" else ("covariance",)
        for name in names:
            key, own = prefix + name, getattr(self, name)
            if key in state_dict and tuple(state_dict[key].shape) != tuple(own.shape):
                rank = f", rank={self.rank}" if self.kind == "lowrank" else ""
                raise ValueError(
                    f"checkpoint {name} has shape {tuple(state_dict[key].shape)}, but this estimator "
                    f"(kind={self.kind!r}, C={self.num_classes}, A={self.num_features}{rank}) expects "
                    f"{tuple(own.shape)}"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
