"""Count the operators a piece of code dispatches: a CPU-side measure of kernel launches.

In eager mode every ATen operator that computes something launches at least one kernel on
an accelerator, and at the paper's CIFAR shapes the ISDA step is bound by those launches
rather than by arithmetic. :func:`count_ops` counts the operators dispatched while a
function runs (forward and backward), leaving out views (``view``, ``transpose``,
``unsqueeze``, ``expand``, ... share storage and launch nothing) and ``detach``. The count
is taken wherever the code runs, so it is available without an accelerator; on the CPU
the large full-covariance shapes take per-class loops that the GPU path does not (see
``torch_isda.kernels.per_class_views``), so there it overstates the GPU count.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "count_ops"]

_FREE = {"detach", "lift_fresh", "alias"}


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: ...`` then ``c.total`` and ``c.counts`` (by operator name)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _FREE:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_ops(fn: Callable[[], object]) -> OpCounter:
    """Run ``fn`` once under an :class:`OpCounter` and return it."""
    with OpCounter() as counter:
        fn()
    return counter


if __name__ == "__main__":  # a quick look: python benchmarks/_ops.py
    x = torch.randn(4, 3, requires_grad=True)
    c = count_ops(lambda: (x.t().sum() * 2).backward())
    print(c.total, dict(c.counts))
