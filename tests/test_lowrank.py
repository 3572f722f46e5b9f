"""The low-rank + diagonal covariance kind (``kind="lowrank"``)."""

import pytest
import torch
import torch.nn.functional as F

import reference
from test_estimator import stream
from torch_isda import CovarianceEstimator, ISDALoss, attach
from torch_isda import functional as isda_f
from torch_isda.lowrank import LowRankCovariance, lowrank_dense


def random_lowrank(C=6, A=5, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(C, A, k, generator=g, dtype=torch.float64))[0]
    s = torch.rand(C, k, generator=g, dtype=torch.float64) * 3
    d = torch.rand(C, A, generator=g, dtype=torch.float64) * 0.5
    return LowRankCovariance(U, s, d)


def planted_stream(C=3, A=16, steps=12, N=200, seed=0):
    """Per class: rank-3 covariance (variances 9, 4, 2) + isotropic noise of std 0.1."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.linalg.qr(torch.randn(C, A, 3, generator=g, dtype=torch.float64))[0]
    scales = torch.tensor([9.0, 4.0, 2.0], dtype=torch.float64).sqrt()
    for _ in range(steps):
        y = torch.randint(0, C, (N,), generator=g)
        z = torch.randn(N, 3, generator=g, dtype=torch.float64) * scales
        x = torch.einsum("nak,nk->na", bases[y], z) + 0.1 * torch.randn(N, A, generator=g, dtype=torch.float64)
        yield x + y.view(-1, 1).double(), y


# --------------------------------------------------------------------------- estimator


@pytest.mark.parametrize("seed", [0, 1])
def test_full_rank_equals_full_kind_over_a_stream(seed):
    C, A = 7, 6
    batches, xs, ys = stream(C=C, A=A, seed=seed)
    full = CovarianceEstimator(A, C, "full", dtype=torch.float64)
    low = CovarianceEstimator(A, C, "lowrank", dtype=torch.float64, rank=A)
    for xb, yb in batches:
        full.update(xb, yb)
        low.update(xb, yb)
        torch.testing.assert_close(low.dense_covariance(), full.covariance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(low.dense_covariance(), reference.class_covariance("full", xs, ys, C))
    torch.testing.assert_close(low.mean, full.mean)
    assert torch.equal(low.count, full.count)
    # ... and the ISDA loss and its gradients agree
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(C, A, generator=g, dtype=torch.float64, requires_grad=True)
    x, y = xs[:40], ys[:40]
    losses, grads = [], []
    for cov, kind in ((full.covariance, "full"), (low.functional_covariance(), "lowrank")):
        loss = isda_f.isda_cross_entropy(x @ W.T, W, y, cov, 0.7, kind)
        (gw,) = torch.autograd.grad(loss, W)
        losses.append(loss)
        grads.append(gw)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


# A = 16: each class brings ~67 rows per batch, r = k + rows > A: the A x A branch;
# A = 96: r <= A: the small Gram-matrix branch (the usual one: many classes, few rows each).
@pytest.mark.parametrize("A", [16, 96])
def test_planted_low_rank_spectrum_is_recovered(A):
    C, k = 3, 4
    low = CovarianceEstimator(A, C, "lowrank", dtype=torch.float64, rank=k)
    full = CovarianceEstimator(A, C, "full", dtype=torch.float64)
    for x, y in planted_stream(C, A):
        low.update(x, y)
        full.update(x, y)
    for c in range(C):
        exact = torch.linalg.eigvalsh(full.covariance[c]).flip(0)
        torch.testing.assert_close(low.eigenvalues[c, :3], exact[:3], rtol=1e-3, atol=0)
        assert low.eigenvalues[c, 3] < 0.05  # noise level (0.01)
        # the leading subspace is the planted one
        U3 = low.components[c, :3].T
        V3 = torch.linalg.eigh(full.covariance[c])[1][:, -3:]
        assert torch.linalg.matrix_norm(U3.T @ V3, ord=2) > 0.999
        assert torch.linalg.svdvals(U3.T @ V3).min() > 0.999
        # per-dimension variances (hence the trace) are exact; the residual is non-negative
        dense = low.dense_covariance([c])[0]
        torch.testing.assert_close(torch.diagonal(dense), torch.diagonal(full.covariance[c]))
        torch.testing.assert_close(low.covariance[c], torch.diagonal(full.covariance[c]))
        assert (low.residual[c] >= 0).all()
        rel = torch.linalg.matrix_norm(dense - full.covariance[c]) / torch.linalg.matrix_norm(full.covariance[c])
        assert rel < 0.01
        # orthonormal components, descending variances
        torch.testing.assert_close(low.components[c] @ low.components[c].T, torch.eye(k, dtype=torch.float64))
        assert (low.eigenvalues[c, :-1] >= low.eigenvalues[c, 1:]).all()


def test_float32_statistics_from_bf16_features_and_rank_cap():
    est = CovarianceEstimator(8, 3, "lowrank")  # default rank 32, capped at A = 8
    assert est.rank == 8 and est.components.shape == (3, 8, 8)
    assert CovarianceEstimator(8, 3, "lowrank", rank=2).components.shape == (3, 2, 8)
    est.update(torch.randn(30, 8).bfloat16(), torch.randint(0, 3, (30,)))
    assert est.components.dtype == torch.float32 and torch.isfinite(est.components).all()
    with pytest.raises(ValueError, match="rank"):
        CovarianceEstimator(8, 3, "lowrank", rank=0)


def test_few_samples_leave_zero_components():
    est = CovarianceEstimator(10, 2, "lowrank", dtype=torch.float64, rank=6)
    x = torch.randn(3, 10, dtype=torch.float64)
    est.update(x, torch.zeros(3, dtype=torch.long))
    assert (est.eigenvalues[0, 2:] == 0).all() and (est.components[0, 2:] == 0).all()  # rank 2 data
    assert (est.eigenvalues[1] == 0).all() and (est.residual[1] == 0).all()  # class never seen
    torch.testing.assert_close(est.dense_covariance([0])[0], torch.cov(x.T, correction=0))


def test_state_dict_round_trip_and_rank_mismatch():
    C, A = 5, 6
    batches, _, _ = stream(C=C, A=A, seed=3)
    est = CovarianceEstimator(A, C, "lowrank", dtype=torch.float64, rank=3)
    for xb, yb in batches[:5]:
        est.update(xb, yb)
    state = est.state_dict()
    assert {"mean", "covariance", "count", "components", "eigenvalues", "residual"} <= set(state)
    clone = CovarianceEstimator(A, C, "lowrank", dtype=torch.float64, rank=3)
    clone.load_state_dict(state)
    for xb, yb in batches[5:]:
        est.update(xb, yb)
        clone.update(xb, yb)
    for key, value in est.state_dict().items():
        assert torch.equal(value, clone.state_dict()[key]), key
    with pytest.raises(ValueError, match="components"):
        CovarianceEstimator(A, C, "lowrank", dtype=torch.float64, rank=2).load_state_dict(state)
    est.reset()
    assert all(not v.any() for v in est.state_dict().values())


def test_bad_input_leaves_state_unchanged():
    est = CovarianceEstimator(4, 3, "lowrank", rank=2)
    est.update(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    snapshot = {k: v.clone() for k, v in est.state_dict().items()}
    bad = [
        (torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.long)),
        (torch.tensor([[float("nan")] * 4] * 2), torch.zeros(2, dtype=torch.long)),
        (torch.randn(5, 4), torch.zeros(5)),
    ]
    for x, y in bad:
        with pytest.raises(ValueError):
            est.update(x, y)
        for k, v in est.state_dict().items():
            assert torch.equal(v, snapshot[k]), k


def test_dense_covariance_of_every_kind():
    C, A = 4, 3
    batches, xs, ys = stream(C=C, A=A, seed=5)
    for kind in ("full", "diagonal", "shared", "identity"):
        est = CovarianceEstimator(A, C, kind, dtype=torch.float64)
        for xb, yb in batches:
            est.update(xb, yb)
        ref = reference.class_covariance(kind, xs, ys, C)
        dense = est.dense_covariance(torch.tensor([2, 0]))
        for row, c in enumerate((2, 0)):
            torch.testing.assert_close(dense[row], reference.sigma_of(kind, ref, c, A))


# --------------------------------------------------------------------------- functional


def test_augment_logits_matches_brute_force_on_dense_reconstruction():
    C, A, N = 6, 5, 24
    cov = random_lowrank(C, A, 2)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(C, A, generator=g, dtype=torch.float64)
    feats = torch.randn(N, A, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (N,), generator=g)
    logits = feats @ W.T
    dense = cov.dense()
    torch.testing.assert_close(dense, lowrank_dense(*cov))
    ref = reference.isda_bound(logits, W, target, dense, 0.8, "full")
    aug = isda_f.augment_logits(logits, W, target, cov, 0.8)  # kind inferred from the type
    torch.testing.assert_close(F.cross_entropy(aug, target, reduction="none"), ref, rtol=1e-10, atol=1e-10)
    aug2 = isda_f.augment_logits(logits, W, target, tuple(cov), 0.8, kind="lowrank")  # plain tuple
    torch.testing.assert_close(aug, aug2)
    # gradients into W equal those of the full kind on the dense matrices
    grads = []
    for c, kind in ((cov, "lowrank"), (dense, "full")):
        Wg = W.clone().requires_grad_(True)
        loss = isda_f.isda_cross_entropy(feats @ Wg.T, Wg, target, c, 0.8, kind)
        grads.append(torch.autograd.grad(loss, Wg)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov.diagonal(), torch.diagonal(dense, dim1=1, dim2=2))


def test_sigma2_gradcheck_and_learned_factors():
    C, A = 4, 3
    cov = random_lowrank(C, A, 2, seed=2)
    W = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([0, 2, 3])
    assert torch.autograd.gradcheck(lambda w: isda_f.class_sigma2(w, cov, classes), (W,))
    d = cov.d.clone().requires_grad_(True)  # a learned residual gets gradients too
    s2 = isda_f.class_sigma2(W, LowRankCovariance(cov.U, cov.s, d), classes)
    s2.sum().backward()
    assert d.grad is not None and W.grad is not None


def test_consistency_loss_and_sampling_match_dense():
    C, A, N = 5, 4, 12
    cov = random_lowrank(C, A, 2, seed=3)
    g = torch.Generator().manual_seed(4)
    W = torch.randn(C, A, generator=g, dtype=torch.float64)
    logits = torch.randn(N, C, generator=g, dtype=torch.float64)
    probs = torch.softmax(torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    dense = cov.dense()
    got = isda_f.isda_consistency_loss(logits, W, probs, cov, 0.6, reduction="none")
    ref = reference.consistency_bound(logits, W, probs, dense, 0.6, "full")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    classes = torch.tensor([1, 3])
    L = isda_f.covariance_factor(cov, classes, A, "lowrank")
    torch.testing.assert_close(L @ L.transpose(1, 2), dense[classes])
    feats = torch.randn(N, A, dtype=torch.float64)
    target = torch.randint(0, C, (N,), generator=g)
    samples = isda_f.sample_augmented_features(feats, target, cov, 0.5, 3)
    assert samples.shape == (N, 3, A)


def test_functional_rejects_bad_lowrank_layouts():
    C, A = 6, 5
    cov = random_lowrank(C, A, 2)
    W = torch.randn(C, A, dtype=torch.float64)
    logits, target = torch.randn(4, C, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="LowRankCovariance"):
        isda_f.augment_logits(logits, W, target, cov.d, 0.5, kind="lowrank")
    with pytest.raises(ValueError, match="kind='lowrank'"):
        isda_f.augment_logits(logits, W, target, cov, 0.5, kind="full")
    with pytest.raises(ValueError, match="C x A x k"):
        isda_f.augment_logits(logits, W, target, LowRankCovariance(cov.U[:3], cov.s, cov.d), 0.5)


# --------------------------------------------------------------------------- loss


def test_isda_loss_lowrank_equals_full_at_full_rank_and_attach():
    C, A = 5, 4
    torch.manual_seed(0)
    crit_full = ISDALoss(A, C, 0.5, "full", constant_lambda=True, dtype=torch.float64)
    crit_low = ISDALoss(A, C, 0.5, "lowrank", constant_lambda=True, dtype=torch.float64, rank=A)
    W = torch.randn(C, A, dtype=torch.float64)
    for _ in range(4):
        x = torch.randn(16, A, dtype=torch.float64)
        y = torch.randint(0, C, (16,))
        torch.testing.assert_close(crit_low(x, x @ W.T, y, W), crit_full(x, x @ W.T, y, W))
    model = torch.nn.Sequential(torch.nn.Linear(8, A), torch.nn.ReLU(), torch.nn.Linear(A, C))
    crit = attach(model, 0.5, "lowrank", layer=model[2], rank=2)
    assert crit.estimator.rank == 2
    x, y = torch.randn(10, 8), torch.randint(0, C, (10,))
    crit(model(x), y).backward()
    assert model[2].weight.grad is not None and int(crit.estimator.count.sum()) == 10
