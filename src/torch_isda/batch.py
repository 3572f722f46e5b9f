"""The classes of a batch and its value checks, read back in one host transfer.

ISDA computes everything per class *present* in the batch. Finding those classes with
``torch.unique`` and checking the labels' range and the features' finiteness with
``bool()`` / ``int()`` each stall an accelerator's launch queue (a device-to-host
synchronization). :func:`scan_batch` computes all of it on the device and reads it back
with a single transfer, once per training step; the estimator and the loss share the
result (a :class:`BatchClasses`).

With ``static=True`` nothing is read back: the "class set" is all ``C`` classes
(``classes = arange(C)``, zero counts for the absent ones), carried as a masked ``N x C``
one-hot matrix. Shapes then never depend on data, which is what
``torch.compile(fullgraph=True)`` and CUDA graphs need. With ``validate`` too, the checks
stay on the device as flags (:func:`static_scan`); :mod:`torch_isda.checks` records them
and :func:`static_batch` masks a rejected batch out.

Samples whose label equals ``ignore_index`` are handled with masks (``valid``), never with
boolean indexing (which synchronizes).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .eager import eager_only

__all__ = ["BatchClasses", "Problem", "PROBLEM_CATEGORIES", "StaticScan", "scan_batch", "static_scan",
           "static_batch", "valid_indices"]

#: The categories of a :class:`Problem`, in the order of the distributed validation flags
#: (see :func:`torch_isda.distributed.all_gather_batch`): shapes/dtypes, labels, values.
PROBLEM_CATEGORIES: Tuple[str, ...] = ("shape", "labels", "values")


class Problem(str):
    """A validation message (the ``str`` itself, unchanged) tagged with its ``category``.

    ``category`` is one of :data:`PROBLEM_CATEGORIES`: ``"shape"`` (a tensor's shape or
    dtype), ``"labels"`` (the labels' shape, dtype or range) or ``"values"`` (NaN/Inf
    features). Being a ``str``, a problem joins, compares and prints as its message.
    """

    category: str

    def __new__(cls, message: str, category: str) -> "Problem":
        if category not in PROBLEM_CATEGORIES:
            raise ValueError(f"unknown problem category {category!r}; expected one of {PROBLEM_CATEGORIES}")
        self = super().__new__(cls, message)
        self.category = category
        return self

    def __getnewargs__(self) -> Tuple[str, str]:  # copy/pickle
        return str(self), self.category



class BatchClasses(NamedTuple):
    """The classes of one batch, shared by the estimator update and the loss.

    Fields:
        classes: ``U`` sorted distinct class indices on the labels' device (``arange(C)``
            when ``static``).
        inverse: ``N`` position in ``classes`` of each sample's class (``0`` for ignored
            samples: mask them with ``valid``).
        counts: ``U`` number of valid samples of each class (long, on the device).
        valid: ``N`` bool mask of the samples that count (label != ignore_index), or
            ``None`` when all of them do.
        host_counts: the ``U`` counts as Python ints (``None`` when ``static``).
        host_classes: the ``U`` classes as Python ints (``None`` when ``static``).
        static: ``True`` for the all-class, data-independent class set.
        host_extra: the values of ``extra`` (see :func:`scan_batch`) for the ``U`` classes,
            as Python numbers (``None`` when not asked for, or ``static``).
        onehot: static path: ``N x C`` float one-hot of the samples that count (all-zero rows
            for ignored samples, and for every sample of a rejected batch); ``None`` otherwise.
        target: static path with validation: the labels for the cross-entropy, out-of-range
            ones replaced by ``ignore_index`` (so that no kernel indexes out of bounds).
        nonfinite: static path with validation: ``N`` bool, the feature rows holding NaN/Inf
            (zeroed before the update, so they cannot poison the masked sums).
        flags: static path with validation: bool ``(labels, values)`` device flags of this batch.
    """

    classes: Tensor
    inverse: Tensor
    counts: Tensor
    valid: Optional[Tensor]
    host_counts: Optional[Tuple[int, ...]]
    host_classes: Optional[Tuple[int, ...]]
    static: bool
    host_extra: Optional[Tuple[int, ...]] = None
    onehot: Optional[Tensor] = None
    target: Optional[Tensor] = None
    nonfinite: Optional[Tensor] = None
    flags: Optional[Tensor] = None

    @property
    def num_valid(self) -> Optional[int]:
        """Number of valid samples, when known on the host."""
        return None if self.host_counts is None else sum(self.host_counts)


def _range_message(num_classes: int, ignore_index: Optional[int], lo: int, hi: int) -> Problem:
    ignore = "" if ignore_index is None else f" or equal ignore_index={ignore_index}"
    return Problem(f"labels must lie in [0, {num_classes}){ignore}; got values in [{lo}, {hi}]", "labels")


def scan_batch(
    labels: Tensor,
    num_classes: int,
    *,
    ignore_index: Optional[int] = None,
    features: Optional[Tensor] = None,
    validate: bool = True,
    static: bool = False,
    extra: Optional[Tensor] = None,
) -> Tuple[BatchClasses, List[Problem]]:
    """The class set of ``labels`` and the problems found, with at most one host transfer.

    Args:
        labels: ``N`` integer labels (any integer dtype).
        num_classes: ``C``.
        ignore_index: label of samples to leave out (``None``: every sample counts).
        features: optional ``N x A`` features checked for NaN/Inf (when ``validate``).
        validate: check the labels' range (and the features); with ``False`` out-of-range
            labels are undefined behaviour.
        static: all ``C`` classes, nothing read back (requires ``validate=False``).
        extra: an optional ``C`` integer tensor read back in the same transfer (the
            estimator's per-class counts), returned for the present classes as ``host_extra``.

    Returns:
        ``(batch, problems)``: the :class:`BatchClasses` and a list of :class:`Problem`
        messages (empty when the batch is fine). ``batch`` is only meaningful when ``problems`` is empty.
    """
    C = int(num_classes)
    y = labels.to(torch.long)
    device = y.device
    if static:
        classes = torch.arange(C, device=device)
        scan = static_scan(y, classes, ignore_index=ignore_index, features=features, validate=validate)
        return static_batch(scan, classes, None, torch.float32), []
    valid = None if ignore_index is None else y != ignore_index
    safe = y if valid is None else torch.where(valid, y, torch.zeros((), dtype=torch.long, device=device))
    return _scan_present(y, safe, valid, C, ignore_index, features, validate, extra)


class StaticScan(NamedTuple):
    """The device-side scan of a batch on the static path (:func:`static_scan`).

    Fields: ``hits`` (``N x C`` bool, ``hits[i, c]`` iff sample ``i`` has label ``c``:
    all-false rows for ignored and out-of-range labels), ``inverse`` (labels clamped to
    ``[0, C)``), ``counted`` (``N`` bool, the label is a class), and with validation
    ``target`` (labels for the cross-entropy), ``nonfinite`` (``N`` bool, rows with NaN/Inf,
    when features were given) and ``flags`` (bool ``(bad labels, bad values)``), else ``None``.
    """

    hits: Tensor
    inverse: Optional[Tensor]
    counted: Tensor
    target: Optional[Tensor]
    nonfinite: Optional[Tensor]
    flags: Optional[Tensor]


def static_scan(labels: Tensor, classes: Tensor, *, ignore_index: Optional[int] = None,
                features: Optional[Tensor] = None, validate: bool = True, inverse: bool = True) -> StaticScan:
    """Scan a batch for the static path without reading anything back (a few kernels).

    ``classes`` is ``arange(C)`` on the labels' device. With ``validate``, a label counts as
    bad when it is neither a class nor ``ignore_index``, and the features as bad when a
    counted sample's row holds NaN or Inf (a row whose sum overflows counts as non-finite);
    both come back as device flags. ``inverse=False`` leaves ``inverse`` out (``None``)
    for callers that only use the one-hot matrix.
    """
    y = labels.to(torch.long)
    C = classes.shape[0]
    hits = y.unsqueeze(1).eq(classes)
    counted = hits.any(1)
    clamped = y.clamp(0, C - 1) if inverse else None
    if not validate:
        return StaticScan(hits, clamped, counted, None, None, None)
    if ignore_index is None:
        bad_labels = counted.logical_not()
    else:
        bad_labels = y.ne(ignore_index).gt(counted)  # a valid sample whose label is not a class
    target = y if ignore_index is None else y.masked_fill(bad_labels, ignore_index)
    nonfinite = None
    if features is None:
        flags = torch.stack([bad_labels.any(), torch.zeros_like(bad_labels[:1]).any()])
    else:
        nonfinite = features.sum(1).mul_(0).ne(0)  # NaN for a NaN or Inf in the row
        flags = torch.stack([bad_labels, counted.logical_and(nonfinite)]).any(1)
    return StaticScan(hits, clamped, counted, target, nonfinite, flags)


def static_batch(scan: StaticScan, classes: Tensor, failed: Optional[Tensor], dtype: torch.dtype) -> BatchClasses:
    """The static :class:`BatchClasses` of a scan; ``failed`` (0-d bool on the device, or
    ``None``) masks every sample out (a rejected batch, or one after a rejected batch)."""
    hits = scan.hits if failed is None else scan.hits.gt(failed)
    counts = hits.sum(0)
    onehot = hits.to(dtype)
    return BatchClasses(classes, scan.inverse, counts, scan.counted, None, None, True, None,
                        onehot, scan.target, scan.nonfinite, scan.flags)


@eager_only
def _scan_present(y: Tensor, safe: Tensor, valid: Optional[Tensor], C: int, ignore_index: Optional[int],
                  features: Optional[Tensor], validate: bool, extra: Optional[Tensor]):
    """The present-class set: one transfer. Never traced by ``torch.compile`` (it reads data
    back; tracing it would specialize the compiled code on every count)."""
    device = y.device
    N = y.shape[0]
    if N == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return BatchClasses(empty, empty, empty, valid, (), (), False), []
    # counts of the in-range classes, then (when validating) the extreme valid labels and
    # the features' finiteness: one tensor, one transfer
    inrange = (safe >= 0) & (safe < C)
    keep = inrange if valid is None else inrange & valid
    slot = torch.where(keep, safe, torch.full((), C, dtype=torch.long, device=device))
    counts_ext = torch.zeros(C + 1, dtype=torch.long, device=device).index_add_(0, slot, torch.ones_like(slot))
    parts = [counts_ext[:C]]
    if extra is not None:
        parts.append(extra.to(device=device, dtype=torch.long).reshape(C))
    if validate:
        big = torch.iinfo(torch.long)
        if valid is None:
            lo, hi = y.min(), y.max()
        else:
            lo = torch.where(valid, y, torch.full((), big.max, dtype=torch.long, device=device)).min()
            hi = torch.where(valid, y, torch.full((), big.min, dtype=torch.long, device=device)).max()
        bad = torch.zeros((), dtype=torch.long, device=device)
        if features is not None and features.numel():
            nonfinite = ~torch.isfinite(features)
            if valid is not None and features.dim() == 2:  # ignored samples are not folded in
                nonfinite = nonfinite.any(1) & valid
            bad = nonfinite.any().to(torch.long)
        parts.append(torch.stack([lo, hi, bad]).to(device))
    host = torch.cat(parts).tolist()  # the one synchronization
    host_all = host[:C]
    host_extra_all = host[C : 2 * C] if extra is not None else None
    problems: List[Problem] = []
    if validate:
        lo, hi, nonfinite = host[-3:]
        if lo <= hi and (lo < 0 or hi >= C):  # lo > hi: no valid sample
            problems.append(_range_message(C, ignore_index, lo, hi))
        if nonfinite:
            problems.append(Problem("features contain NaN or Inf values", "values"))
    host_classes = tuple(c for c in range(C) if host_all[c])
    host_counts = tuple(host_all[c] for c in host_classes)
    U = len(host_classes)
    present = counts_ext[:C] > 0
    # sorted present classes without a data-dependent shape: present ones first (stable)
    classes = torch.argsort((~present).to(torch.int32), stable=True)[:U]
    position = torch.cumsum(present.to(torch.long), 0) - 1  # C: index of each class in `classes`
    inverse = position.index_select(0, safe.clamp(0, C - 1)).clamp_min_(0)
    counts = counts_ext.index_select(0, classes)
    host_extra = None if host_extra_all is None else tuple(host_extra_all[c] for c in host_classes)
    if valid is not None and sum(host_counts) == N:  # nothing ignored: no masks needed downstream
        valid = None
    return BatchClasses(classes, inverse, counts, valid, host_counts, host_classes, False, host_extra), problems


def valid_indices(valid: Tensor, num_valid: int) -> Tensor:
    """Indices of the ``True`` entries of ``valid`` in order, given their number (no sync)."""
    return torch.argsort((~valid).to(torch.int32), stable=True)[:num_valid]

