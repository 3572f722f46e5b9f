"""torch_isda.compat: statistics of the official code <-> CovarianceEstimator / ISDALoss."""

from __future__ import annotations

import types

import pytest
import torch

from torch_isda import CovarianceEstimator, ISDALoss
from torch_isda.compat import (
    convert_official_state,
    official_kind,
    to_official_state,
)

C, A = 4, 3


def _batches(seed=0, steps=5, n=12):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, A, generator=gen, dtype=torch.float64),
             torch.randint(0, C - 1, (n,), generator=gen)) for _ in range(steps)]  # class C-1 unseen


def _official_state(batches, diagonal=False):
    """What the official EstimatorCV holds after these batches: per-class mean and
    population covariance of all features seen (zeros for unseen classes), float counts."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    ave, cov, amount = torch.zeros(C, A), torch.zeros(C, A, A), torch.zeros(C)
    for c in range(C):
        xc = x[y == c]
        if len(xc):
            mu = xc.mean(0)
            ave[c] = mu.float()
            cov[c] = ((xc - mu).T @ (xc - mu) / len(xc)).float()
            amount[c] = len(xc)
    if diagonal:
        cov = torch.diagonal(cov, dim1=1, dim2=2).clone()
    return {"CoVariance": cov, "Ave": ave, "Amount": amount}


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_official_statistics_load_into_our_estimator(kind):
    batches = _batches()
    official = _official_state(batches, diagonal=kind == "diagonal")
    assert official_kind(official) == kind
    ours = CovarianceEstimator(A, C, kind=kind)
    for x, y in batches:
        ours.update(x, y)
    loaded = CovarianceEstimator(A, C, kind=kind)
    loaded.load_state_dict(convert_official_state(official))
    assert torch.equal(loaded.count, ours.count) and loaded.count.dtype == torch.int64
    torch.testing.assert_close(loaded.mean, ours.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded.covariance, ours.covariance, atol=1e-5, rtol=1e-5)
    # and back: the official layout of our statistics
    back = to_official_state(ours)
    assert set(back) == {"CoVariance", "Ave", "Amount"} and back["Amount"].is_floating_point()
    torch.testing.assert_close(back["CoVariance"], official["CoVariance"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back["Amount"], official["Amount"])


def test_prefixed_keys_objects_and_isda_loss_state():
    official = _official_state(_batches(1))
    prefixed = {f"estimator.{k}": v for k, v in official.items()}
    a, b = convert_official_state(official), convert_official_state(prefixed)
    assert a.keys() == b.keys() == {"mean", "covariance", "count"}
    # the official objects themselves: EstimatorCV, or ISDALoss holding .estimator
    est_cv = types.SimpleNamespace(**official)
    loss_obj = types.SimpleNamespace(estimator=est_cv)
    for obj in (est_cv, loss_obj):
        assert all(torch.equal(convert_official_state(obj)[k], a[k]) for k in a)
    crit = ISDALoss(A, C, lambda0=0.5)
    crit.load_state_dict(convert_official_state(official, prefix="estimator.", progress=0.25))
    assert crit.ratio == pytest.approx(0.125)
    assert torch.equal(crit.estimator.count, a["count"])
    assert set(to_official_state(crit)) == {"CoVariance", "Ave", "Amount"}
    # the converted tensors are copies
    a["mean"].add_(1.0)
    assert not torch.equal(a["mean"], official["Ave"])


def test_bad_states_are_rejected():
    official = _official_state(_batches(2))
    with pytest.raises(KeyError, match="missing Amount"):
        convert_official_state({"CoVariance": official["CoVariance"], "Ave": official["Ave"]})
    with pytest.raises(TypeError, match="lacks"):
        convert_official_state(object())
    with pytest.raises(ValueError, match="CoVariance must be"):
        convert_official_state({**official, "CoVariance": torch.zeros(C, A + 1)})
    with pytest.raises(ValueError, match="integer sample counts"):
        convert_official_state({**official, "Amount": official["Amount"] + 0.5})
    with pytest.raises(ValueError, match="prefix='estimator.'"):
        convert_official_state(official, progress=0.5)
    with pytest.raises(ValueError, match="several"):
        convert_official_state({**official, "a.Ave": official["Ave"]})
    with pytest.raises(ValueError, match="no 'shared'"):
        to_official_state(CovarianceEstimator(A, C, kind="shared"))
    with pytest.raises(ValueError, match="lowrank"):
        to_official_state(CovarianceEstimator(A, C, kind="lowrank", rank=2).state_dict())
    # a full state does not load into a diagonal estimator (our shape check names both)
    with pytest.raises(ValueError, match="expects"):
        CovarianceEstimator(A, C, kind="diagonal").load_state_dict(convert_official_state(official))
