"""Online class-conditional feature statistics of ISDA (Eqs. 1-3 of the paper)."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from . import distributed as _dist
from .batch import PROBLEM_CATEGORIES, BatchClasses, Problem, scan_batch, static_batch, static_scan, valid_indices
from .checks import DeferredChecks
from .layouts import KINDS, Fold, get_layout

__all__ = ["CovarianceEstimator"]


class _Gathered(NamedTuple):
    features: Tensor
    batch: BatchClasses


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
        self.layout = get_layout(kind)
        factory = dict(dtype=dtype, device=device)
        self.register_buffer("mean", torch.zeros(C, A, **factory))
        buffers = self.layout.buffers(C, A, self.rank, factory)
        self.register_buffer("covariance", buffers.pop("covariance"))
        self.register_buffer("count", torch.zeros(C, dtype=torch.long, device=device))
        for name, value in buffers.items():
            self.register_buffer(name, value)
        self.register_buffer("class_index", torch.arange(C, device=device), persistent=False)
        self.checks = DeferredChecks()
        self.checks.describe["labels"] = f"labels must lie in [0, {C}) (or equal ignore_index)"

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_classes={self.num_classes}, kind={self.kind!r}"
            f"{self.layout.extra_repr(self)}, "
            f"dtype={self.mean.dtype}, sync={self.sync}"
        )

    # ------------------------------------------------------------------ validation

    def _shape_problems(self, features: Tensor, labels: Tensor) -> List[Problem]:
        """What is wrong with a batch's shapes and dtypes (no data read, no mutation)."""
        A = self.num_features
        msgs: List[Problem] = []
        if features.dim() != 2 or features.shape[1] != A:
            msgs.append(Problem(f"features must be N x A with A={A}; got shape {tuple(features.shape)}", "shape"))
        elif not features.is_floating_point():
            msgs.append(Problem(f"features must be a floating-point tensor; got dtype {features.dtype}", "shape"))
        if labels.dim() != 1 or (features.dim() >= 1 and labels.shape[0] != features.shape[0]):
            msgs.append(Problem(
                f"labels must be a 1-D tensor with one entry per feature row "
                f"({features.shape[0] if features.dim() else '?'}); got shape {tuple(labels.shape)}",
                "labels",
            ))
        elif labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            msgs.append(Problem(f"labels must hold integer class indices; got dtype {labels.dtype}", "labels"))
        return msgs

    def scan(
        self,
        features: Tensor,
        labels: Tensor,
        *,
        ignore_index: Optional[int] = None,
        validate: bool = True,
        static: bool = False,
        check_features: bool = True,
    ) -> Tuple[Optional[BatchClasses], List[Problem]]:
        """Check a batch and find its classes with at most one host synchronization.

        ``static=True`` (only with ``validate=False``) gives the all-class set without any
        transfer; ``check_features=False`` skips the NaN/Inf check of the features
        (evaluation mode, where they are not folded in). Returns ``(batch, problems)``;
        ``batch`` is ``None`` when the shapes are wrong. The loss modules call this once per
        step and pass ``batch`` to :meth:`update_scanned` and to the loss, so the class set
        is computed once.
        """
        msgs = self._shape_problems(features, labels)
        if msgs:
            return None, msgs
        if static:
            return self._scan_static(features, labels, ignore_index, validate, check_features, record=True), []
        batch, problems = scan_batch(
            labels, self.num_classes, ignore_index=ignore_index,
            features=features.detach() if validate and check_features else None,
            validate=validate, static=static, extra=self.count,
        )
        return batch, problems

    def _scan_static(self, features: Tensor, labels: Tensor, ignore_index: Optional[int], validate: bool,
                     check_features: bool, record: bool) -> BatchClasses:
        """The static class set, with the checks on the device (:mod:`torch_isda.checks`).

        A failed check masks the batch out (and every later one until it is raised). Under
        synchronization the flags are recorded by :meth:`update_scanned` from the gathered
        batch (identical on every rank); here they only gate this rank's loss.
        """
        scan = static_scan(labels, self.class_index, ignore_index=ignore_index, validate=validate,
                           features=features.detach() if validate and check_features else None,
                           inverse=not self.layout.lean_static)
        failed = None
        if validate:
            distributed = self.sync and _dist.is_distributed()
            if distributed:  # every rank reads the same record at the same step: all raise together
                self.checks.check()
            else:  # a failure of an earlier step that has reached the host (never waits)
                self.checks.poll()
            if record and not distributed:
                failed = self.checks.update(scan.flags)
                self.checks.publish()
            else:  # under synchronization recorded from all ranks' flags by update_scanned
                failed = self.checks.record.any() | scan.flags.any()
        return static_batch(scan, self.class_index, failed, self.mean.dtype)

    def check(self) -> None:
        """Raise the ``ValueError`` of a failed device-side check, if any (waits for the device).

        Only the static path defers checks (:mod:`torch_isda.checks`); the error names the
        step it came from and is raised once.
        """
        self.checks.check()

    @staticmethod
    def _flags(problems: List[str]) -> Tensor:
        """Validation flags for the distributed pre-check, one per category of
        :data:`~torch_isda.batch.PROBLEM_CATEGORIES` (shapes/dtypes, labels, values). A
        message without a category (a plain ``str``) counts as a shape/dtype problem."""
        flags = torch.zeros(len(PROBLEM_CATEGORIES), dtype=torch.long)
        for problem in problems:
            category = getattr(problem, "category", PROBLEM_CATEGORIES[0])
            flags[PROBLEM_CATEGORIES.index(category)] = 1
        return flags

    # ------------------------------------------------------------------ update

    @torch.no_grad()
    def update(
        self,
        features: Tensor,
        labels: Tensor,
        sync: Optional[bool] = None,
        *,
        validate: bool = True,
        static_shapes: bool = False,
        ignore_index: Optional[int] = None,
    ) -> None:
        """Fold a batch into the statistics (Eqs. 1-3).

        Args:
            features: ``N x A`` deep features (detached internally; any floating dtype).
            labels: ``N`` integer class indices in ``[0, C)`` (or ``ignore_index``).
            sync: override the module's ``sync`` for this call.
            validate: check the labels' range and the features' finiteness (one host
                synchronization, shared with the class set). ``False`` skips the checks:
                out-of-range labels and NaN/Inf features are then undefined behaviour.
            static_shapes: with ``validate=False``, update all ``C`` classes through a
                one-hot matrix: no host synchronization and no data-dependent shape (what
                ``torch.compile(fullgraph=True)`` needs). Always used by the diagonal,
                shared and identity kinds when ``validate=False`` (it costs them little);
                for ``"full"`` and ``"lowrank"`` it costs ``C x`` the flops of the
                present-class update (cheap on a GPU, slow on a CPU).
            ignore_index: label of samples to leave out.

        Raises:
            ValueError: on a shape mismatch, labels out of range or NaN/Inf features. The
                statistics are left unchanged (on every rank, when synchronizing).
        """
        features = features.detach()
        batch, problems = self.scan(features, labels, ignore_index=ignore_index, validate=validate,
                                    static=self.static_update(validate, static_shapes, features.shape[0]))
        self.update_scanned(features, labels, batch, problems, sync)

    def static_update(self, validate: bool, static_shapes, num_rows: int = 0) -> bool:
        """Whether an update of ``num_rows`` rows with these options takes the all-class (static)
        path (``static_shapes`` may be ``"auto"``: see :meth:`CovarianceLayout.static_path`)."""
        return self.layout.static_path(validate, static_shapes, self.mean.device.type,
                                       self.num_classes, self.num_features, num_rows)

    @torch.no_grad()
    def update_scanned(self, features: Tensor, labels: Tensor, batch: Optional[BatchClasses],
                       problems: List[str], sync: Optional[bool] = None) -> None:
        """:meth:`update` with the result of :meth:`scan`: raise on ``problems`` (on every rank
        when synchronizing, so no rank hangs and none changes its statistics), else fold the batch.

        ``batch`` must come from :meth:`scan` of this estimator since its last update (it
        carries the per-class counts read back with the class set).
        """
        features = features.detach()
        if (self.sync if sync is None else sync) and _dist.is_distributed():
            batch = self._gather_and_scan(features, labels, batch, problems)
            features = batch.features
            batch = batch.batch
        elif problems:
            raise ValueError("; ".join(problems) + " (statistics unchanged)")
        if features.shape[0] == 0 or batch.num_valid == 0:
            return
        with torch.autocast(self.mean.device.type, enabled=False):  # statistics in their own dtype
            self._fold(features.to(self.mean.dtype), batch)

    def _gather_and_scan(self, features: Tensor, labels: Tensor, batch: Optional[BatchClasses],
                         problems: List[str]) -> "_Gathered":
        """All-gather a batch (raising on every rank on ``problems``) and scan the result.

        The present path sends the valid rows only (their number is known on the host); the
        static path sends every row (no host read) and scans the gathered batch with its
        checks on the device, so every rank records the same flags and masks the same update.
        """
        static = batch is not None and batch.static
        validate = static and batch.flags is not None
        if not static and batch is not None and batch.valid is not None:  # send the valid rows only
            idx = valid_indices(batch.valid, batch.num_valid)
            features, labels = features.index_select(0, idx), labels.index_select(0, idx)
        elif static:  # rows that do not count travel as label -1 (never a class)
            labels = torch.where(batch.valid, labels.to(torch.long), -1)
        try:
            features, labels = _dist.all_gather_batch(features, labels, self._flags(problems))
        except ValueError as err:
            if problems:
                raise ValueError("; ".join(problems) + f" ({err})") from err
            raise
        if not static:
            batch, _ = scan_batch(labels, self.num_classes, validate=False, static=False, extra=self.count)
            return _Gathered(features, batch)
        scan = static_scan(labels, self.class_index, ignore_index=-1, features=features, validate=validate,
                           inverse=not self.layout.lean_static)
        failed = None
        if validate:  # every rank records the flags of all ranks
            failed = self.checks.update(_dist.any_rank(batch.flags))
        return _Gathered(features, static_batch(scan, self.class_index, failed, self.mean.dtype))

    def _fold(self, x: Tensor, batch: BatchClasses) -> None:
        classes = batch.classes
        dtype = x.dtype
        onehot = None
        inverse = batch.inverse
        if batch.static:
            onehot = batch.onehot.to(dtype)
            if batch.nonfinite is not None:  # NaN/Inf rows must not poison the masked sums
                x = x.masked_fill(batch.nonfinite.unsqueeze(1), 0.0)
            if self.layout.lean_static:
                self.layout.static_update(self, x, onehot, batch.counts)
                return
            keep = onehot.sum(1)
            mf = batch.counts.to(dtype)
            batch_mean = (onehot.T @ x).div_(mf.clamp_min(1).unsqueeze(1))
            xc = (x - batch_mean.index_select(0, inverse)).mul_(keep.unsqueeze(1))
        else:
            if batch.valid is not None:  # keep the valid rows only (their number is known)
                idx = valid_indices(batch.valid, batch.num_valid)
                x, inverse = x.index_select(0, idx), inverse.index_select(0, idx)
            mf = batch.counts.to(dtype)
            batch_mean = x.new_zeros(classes.shape[0], x.shape[1]).index_add_(0, inverse, x)
            batch_mean.div_(mf.unsqueeze(1))
            xc = x - batch_mean.index_select(0, inverse)  # centred within each class of the batch
        n = self.count.index_select(0, classes).to(dtype)
        total = n + mf
        w = mf / total.clamp_min(1)  # weight of the batch, m / (n + m)
        old_mean = self.mean.index_select(0, classes)
        delta = old_mean - batch_mean  # mu^(t-1) - mu'^(t)
        fold = Fold(xc, inverse, classes, batch.counts, batch.host_counts, batch.host_classes, n, total, w,
                    delta, onehot, batch.host_extra)
        self.layout.update(self, fold)
        self.mean.index_copy_(0, classes, old_mean - w.unsqueeze(1) * delta)
        self.count.index_add_(0, classes, batch.counts)

    # ------------------------------------------------------------------ utilities

    @torch.no_grad()
    def reset(self) -> None:
        """Forget everything seen (statistics back to their initial values)."""
        self.mean.zero_()
        self.count.zero_()
        self.layout.reset(self)

    def functional_covariance(self):
        """The ``covariance`` argument of :mod:`torch_isda.functional` for this estimator.

        ``None`` for ``"identity"``, a :class:`~torch_isda.lowrank.LowRankCovariance`
        ``(components, eigenvalues, residual)`` for ``"lowrank"``, the ``covariance`` buffer
        otherwise (no copies).
        """
        return self.layout.functional(self)

    @torch.no_grad()
    def dense_covariance(self, classes: Optional[Tensor] = None) -> Tensor:
        """The estimated ``Sigma_c`` as dense ``A x A`` matrices, whatever the kind.

        Args:
            classes: 1-D class indices (all ``C`` classes when ``None``).

        Returns:
            ``len(classes) x A x A`` (a copy; mind the size: ``C A^2`` elements for all classes).
        """
        if classes is None:
            classes = torch.arange(self.num_classes, device=self.mean.device)
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.mean.device).reshape(-1)
        return self.layout.estimator_dense(self, classes).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.layout.checked_buffers():
            key, own = prefix + name, getattr(self, name)
            if key in state_dict and tuple(state_dict[key].shape) != tuple(own.shape):
                raise ValueError(
                    f"checkpoint {name} has shape {tuple(state_dict[key].shape)}, but this estimator "
                    f"(kind={self.kind!r}, C={self.num_classes}, A={self.num_features}"
                    f"{self.layout.extra_repr(self)}) expects "
                    f"{tuple(own.shape)}"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
