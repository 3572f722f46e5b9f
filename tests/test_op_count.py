"""The operator counter of the benchmarks (benchmarks/_ops.py): views are free, compute counts."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
from _ops import count_ops  # noqa: E402


def test_views_are_not_counted_and_compute_is():
    x = torch.randn(4, 3)
    assert count_ops(lambda: x.view(3, 4).t().unsqueeze(0).expand(2, 4, 3).detach()).total == 0
    counter = count_ops(lambda: (x + 1).mul_(2).sum())
    assert counter.total == 3
    assert dict(counter.counts) == {"add": 1, "mul_": 1, "sum": 1}


def test_backward_ops_are_counted():
    x = torch.randn(5, requires_grad=True)
    forward_only = count_ops(lambda: (x * x).sum()).total
    with_backward = count_ops(lambda: (x * x).sum().backward()).total
    assert forward_only == 2
    assert with_backward > forward_only
