"""Covariance layouts as classes: state_dict unchanged, one object per kind, consistent views."""

import pytest
import torch

from torch_isda import CovarianceEstimator, ISDALoss
from torch_isda.layouts import KINDS, get_layout

# the keys and shapes written before the layouts existed (C = 5, A = 6, rank 3)
OLD_STATE = {
    "full": {"mean": (5, 6), "covariance": (5, 6, 6), "count": (5,)},
    "diagonal": {"mean": (5, 6), "covariance": (5, 6), "count": (5,)},
    "shared": {"mean": (5, 6), "covariance": (6, 6), "count": (5,)},
    "identity": {"mean": (5, 6), "covariance": (6, 6), "count": (5,)},
    "lowrank": {"mean": (5, 6), "covariance": (5, 6), "count": (5,), "components": (5, 3, 6),
                "eigenvalues": (5, 3), "residual": (5, 6)},
}


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_and_shapes_unchanged(kind):
    est = CovarianceEstimator(6, 5, kind, rank=3)
    assert {k: tuple(v.shape) for k, v in est.state_dict().items()} == OLD_STATE[kind]
    assert list(est.state_dict()) == list(OLD_STATE[kind])  # same order too
    assert est.layout is get_layout(kind) and est.layout.kind == kind


def test_loaded_progress_sets_lambda_without_reading_the_buffer_each_step():
    a = ISDALoss(6, 5, lambda0=0.5)
    a.set_progress(0.4)
    b = ISDALoss(6, 5, lambda0=0.5)
    assert b.ratio == 0.0
    b.load_state_dict(a.state_dict())
    assert b.ratio == pytest.approx(0.2) and float(b.progress) == pytest.approx(0.4)


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown covariance kind 'nope'.*full"):
        get_layout("nope")


@pytest.mark.parametrize("kind", KINDS)
def test_factor_and_gram_agree_with_the_dense_view(kind):
    g = torch.Generator().manual_seed(0)
    est = CovarianceEstimator(4, 3, kind, dtype=torch.float64, rank=2)
    est.update(torch.randn(30, 4, generator=g, dtype=torch.float64), torch.arange(30) % 3)
    layout, cov = est.layout, est.functional_covariance()
    classes = torch.tensor([0, 2])
    dense = est.dense_covariance(classes)
    L = layout.factor(cov, classes, 4)
    torch.testing.assert_close(L @ L.transpose(1, 2), dense, check_dtype=False)  # identity: default dtype
    W = torch.randn(3, 4, generator=g, dtype=torch.float64)
    G = layout.gram(W, cov, classes)
    expected = W @ dense @ W.T
    torch.testing.assert_close(G.expand_as(expected), expected)
    V = W.unsqueeze(0) - W[classes].unsqueeze(1)  # U x C x A
    s2 = layout.sigma2(W, cov, classes)
    torch.testing.assert_close(s2, torch.einsum("uja,uab,ujb->uj", V, dense, V))


@pytest.mark.parametrize("kind", KINDS)
def test_static_update_leaves_absent_classes_bit_for_bit(kind):
    g = torch.Generator().manual_seed(0)
    est = CovarianceEstimator(4, 5, kind, rank=2)
    est.update(torch.randn(40, 4, generator=g), torch.arange(40) % 5)
    before = {k: v.clone() for k, v in est.state_dict().items()}
    est.update(torch.randn(6, 4, generator=g), torch.tensor([1, 1, 3, 3, 3, 1]), validate=False, static_shapes=True)
    for key, value in est.state_dict().items():
        if key in ("covariance",) and kind in ("shared", "identity"):
            continue  # class-independent state
        for c in (0, 2, 4):
            assert torch.equal(value[c], before[key][c]), (key, c)


def test_large_covariance_per_class_path_equals_gathered_path_with_one_sync(monkeypatch):
    """On the CPU, large covariances are updated and multiplied per class on views, with the
    update weights computed from counts read back with the class set (no extra read)."""
    import os
    import sys

    import torch_isda.kernels

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    from _syncs import count_syncs

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randint(0, 12, (20,), generator=g))
               for _ in range(3)]
    W = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    results = []
    for limit in (1 << 20, 0):  # gathered, then per class on views
        monkeypatch.setattr(torch_isda.kernels, "GATHER_MAX_ELEMENTS", limit)
        crit = ISDALoss(4, 12, 0.5, "full", constant_lambda=True, dtype=torch.float64)
        out = []
        for x, y in batches[:-1]:
            loss = crit(x, x @ W.T, y, W)
            out.append((loss.detach(), torch.autograd.grad(loss, [W])[0]))
        x, y = batches[-1]
        assert count_syncs(lambda: crit(x, x @ W.T, y, W).backward()).total == 1
        results.append((out, crit.state_dict()))
    for (la, ga), (lb, gb) in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    for key, value in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], value, rtol=1e-12, atol=1e-12)
