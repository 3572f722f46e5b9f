"""The operator counter of the benchmarks (benchmarks/_ops.py): views are free, compute counts."""

import os
import sys

import pytest
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


CIFAR_SHAPES = [(128, 10, 64), (128, 100, 64), (128, 10, 640), (128, 100, 640)]


def _isda_step_ops(crit, feats, logits, labels, weight):
    def step():
        crit(feats, logits, labels, weight).backward()
        weight.grad = logits.grad = None

    step()
    return count_ops(step).total


@pytest.mark.parametrize("kind", ["full", "diagonal"])
@pytest.mark.parametrize("shape", CIFAR_SHAPES)
def test_default_accelerator_route_launches_no_more_ops_than_the_official_formulation(shape, kind):
    """The default path as it runs on an accelerator (static, validation on device) dispatches
    at most as many operators per step as the official dense formulation (loss_speed.py's
    DenseISDA), counted the same way: estimator update + loss forward + backward."""
    from loss_speed import DenseISDA

    from torch_isda import ISDALoss

    N, C, A = shape
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(N, A, generator=g), torch.randint(0, C, (N,), generator=g)
    weight = (torch.randn(C, A, generator=g) / A**0.5).requires_grad_()
    logits = (feats @ weight.detach().T).requires_grad_()
    ours = ISDALoss(A, C, 0.5, kind, constant_lambda=True, static_shapes=True)  # the accelerator route
    dense = DenseISDA(A, C, kind, "cpu")

    def dense_step():
        dense.update(feats, labels)
        dense.loss(logits, weight, labels, 0.5).backward()
        weight.grad = logits.grad = None

    dense_step()
    official = count_ops(dense_step).total
    assert _isda_step_ops(ours, feats, logits, labels, weight) <= min(official, 56), official
