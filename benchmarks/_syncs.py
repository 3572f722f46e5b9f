"""Count the device-to-host synchronizations a piece of code would make.

On an accelerator every read of a device value by the host (``bool(t)``, ``int(t)``,
``.item()``, ``.tolist()``) and every operation whose output size depends on the data
(``torch.unique``, ``nonzero``, boolean-mask indexing, ``bincount``) stalls the launch
queue until the device catches up. :class:`SyncCounter` intercepts those calls at the
Python level (a :class:`~torch.overrides.TorchFunctionMode`), so the count is the same on
the CPU, where nothing actually waits. ``torch.linalg.eigh`` is counted apart, under
``"linalg"``: on CUDA it reads its error flags back (there is no ``_ex`` variant), on the
CPU it does not synchronize.

On a CUDA device, ``torch.cuda.set_sync_debug_mode("warn")`` reports the real
synchronizations; :func:`count_cuda_syncs` counts its warnings.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Callable

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["SyncCounter", "count_syncs", "count_cuda_syncs"]

_READS = {
    Tensor.__bool__: "bool()",
    Tensor.__int__: "int()",
    Tensor.__float__: "float()",
    Tensor.__index__: "index()",
    Tensor.item: "item()",
    Tensor.tolist: "tolist()",
    Tensor.cpu: "cpu()",
    Tensor.numpy: "numpy()",
    Tensor.nonzero: "nonzero",
    torch.nonzero: "nonzero",
    torch.argwhere: "nonzero",
    Tensor.unique: "unique",
    torch.unique: "unique",
    torch.unique_consecutive: "unique",
    torch.masked_select: "masked_select",
    Tensor.masked_select: "masked_select",
    torch.bincount: "bincount",
    Tensor.bincount: "bincount",
}
_LINALG = {torch.linalg.eigh: "linalg", torch.linalg.eigvalsh: "linalg"}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """``with SyncCounter() as c: ...`` then ``c.total`` (excluding ``linalg``) and ``c.counts``."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _READS.get(func) or _LINALG.get(func)
        if name is None and func in (Tensor.__getitem__, Tensor.__setitem__) and len(args) > 1 and _bool_index(args[1]):
            name = "boolean mask"
        if name is None and func is torch.where and len(args) == 1 and not kwargs:
            name = "nonzero"
        if name is not None:
            self.counts[name] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        """Synchronizations counted, ``linalg`` excluded."""
        return sum(n for k, n in self.counts.items() if k != "linalg")


def count_syncs(fn: Callable[[], object]) -> SyncCounter:
    """Run ``fn`` once under a :class:`SyncCounter` and return it."""
    with SyncCounter() as counter:
        fn()
    return counter


def count_cuda_syncs(fn: Callable[[], object]) -> int:
    """Synchronizations CUDA reports for one call of ``fn`` (``set_sync_debug_mode("warn")``)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)
