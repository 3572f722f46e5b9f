"""kind="lowrank" through the segmentation and semi-supervised losses, against brute force.

Given the estimator's state, the losses are exact: the brute-force references of Eqs. (7)
and (15) are evaluated with the dense ``Sigma_c`` the low-rank factors represent.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference
from torch_isda.segmentation import SegmentationISDALoss, resize_labels
from torch_isda.semi.loss import SemiISDALoss


def _pixels(B, A, C, h, w, g):
    f = torch.randn(B, A, h, w, dtype=torch.float64, generator=g)
    t = torch.randint(0, C, (B, 2 * h, 2 * w), generator=g)
    t[torch.rand(t.shape, generator=g) < 0.2] = 255
    return f, t


@pytest.mark.parametrize("rank", [2, 6])
def test_segmentation_lowrank_equals_brute_force(rank):
    B, A, C, h, w = 2, 6, 4, 3, 4
    g = torch.Generator().manual_seed(0)
    seg = SegmentationISDALoss(A, C, lambda0=1.5, kind="lowrank", rank=rank, constant_lambda=True,
                               dtype=torch.float64)
    conv = nn.Conv2d(A, C, 1).double()
    seen_x, seen_y = [], []
    for _ in range(3):
        f, t = _pixels(B, A, C, h, w, g)
        z = conv(f)
        loss = seg(f, z, t, conv.weight)  # the first step used to crash (lambda > 0)
        small = resize_labels(t, (h, w)).reshape(-1)
        valid = small != 255
        flat_f = f.permute(0, 2, 3, 1).reshape(-1, A)[valid]
        flat_z = z.permute(0, 2, 3, 1).reshape(-1, C)[valid]
        seen_x.append(flat_f)
        seen_y.append(small[valid])
        dense = seg.estimator.dense_covariance()
        expected = reference.isda_bound(flat_z, conv.weight.flatten(1), small[valid], dense, 1.5, "full").mean()
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
        (g_w,) = torch.autograd.grad(loss, [conv.weight], retain_graph=True)
        (e_w,) = torch.autograd.grad(expected, [conv.weight])
        torch.testing.assert_close(g_w, e_w, rtol=1e-9, atol=1e-12)
    if rank == A:  # nothing truncated: the statistics of every valid pixel seen
        exact = reference.class_covariance("full", torch.cat(seen_x).detach(), torch.cat(seen_y), C)
        torch.testing.assert_close(seg.estimator.dense_covariance(), exact, rtol=1e-9, atol=1e-12)


def test_semi_lowrank_equals_brute_force():
    A, C = 5, 4
    g = torch.Generator().manual_seed(1)
    crit = SemiISDALoss(A, C, lambda0=0.5, kind="lowrank", rank=2, eta1=2.0, constant_lambda=True,
                        dtype=torch.float64)
    weight = torch.randn(C, A, dtype=torch.float64, generator=g, requires_grad=True)
    crit.supervised(torch.randn(30, A, dtype=torch.float64, generator=g), torch.randn(30, C, dtype=torch.float64),
                    torch.arange(30) % C, weight)
    feats = torch.randn(8, A, dtype=torch.float64, generator=g)
    y = torch.arange(8) % C
    logits_u = torch.randn(6, C, dtype=torch.float64, generator=g, requires_grad=True)
    probs = F.softmax(torch.randn(6, C, dtype=torch.float64, generator=g), 1)
    out = crit(feats, feats @ weight.T, y, weight, logits_u, probs)  # used to crash for lowrank
    dense = crit.isda.estimator.dense_covariance()  # after the labeled batch's update
    sup = reference.isda_bound(feats @ weight.T, weight, y, dense, 0.5, "full").mean()
    cons = reference.consistency_bound(logits_u, weight, probs, dense, 0.5, "full").mean()
    torch.testing.assert_close(out.supervised, sup.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.consistency, cons.detach(), rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(out.loss, [weight, logits_u], retain_graph=True)
    expected = torch.autograd.grad(sup + 2.0 * cons, [weight, logits_u])
    for got, exp in zip(grads, expected):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12)
