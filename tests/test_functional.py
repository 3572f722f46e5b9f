"""ISDA math against brute-force float64 loops of Eqs. (6), (7) and (15)."""

import math

import pytest
import torch
import torch.nn.functional as F

import reference
from torch_isda import functional as isda_f

KINDS = ["full", "diagonal", "shared", "identity"]


def random_problem(N=24, C=6, A=5, seed=0, kind="full"):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N, A, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (N,), generator=g)
    weight = torch.randn(C, A, generator=g, dtype=torch.float64)
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    # a covariance from real data so it is symmetric PSD
    data = torch.randn(200, A, generator=g, dtype=torch.float64) @ torch.randn(A, A, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (200,), generator=g)
    cov = reference.class_covariance(kind, data, labels, C)
    return feats, target, weight, bias, cov


def layout(kind, cov):
    return None if kind == "identity" else cov


@pytest.mark.parametrize("kind", KINDS)
def test_augment_logits_matches_eq7(kind):
    feats, target, weight, bias, cov = random_problem(kind=kind)
    logits = feats @ weight.T + bias
    aug = isda_f.augment_logits(logits, weight, target, layout(kind, cov), 0.8, kind=kind)
    ref_loss = reference.isda_bound(logits, weight, target, cov, 0.8, kind)
    loss = F.cross_entropy(aug, target, reduction="none")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    # and the loss wrapper
    loss2 = isda_f.isda_cross_entropy(logits, weight, target, layout(kind, cov), 0.8, kind, reduction="none")
    torch.testing.assert_close(loss2, ref_loss, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared"])
def test_kind_is_inferred_from_shape(kind):
    feats, target, weight, bias, cov = random_problem(kind=kind)
    logits = feats @ weight.T
    torch.testing.assert_close(
        isda_f.augment_logits(logits, weight, target, cov, 0.3),
        isda_f.augment_logits(logits, weight, target, cov, 0.3, kind=kind),
    )


def test_all_classes_present_path_equals_gather_path():
    # U == C uses the covariance in place; U < C gathers: both must agree with the loop
    feats, target, weight, bias, cov = random_problem(N=60, C=3, kind="full")
    assert target.unique().numel() == 3
    logits = feats @ weight.T
    ref = reference.isda_bound(logits, weight, target, cov, 1.3, "full")
    out = F.cross_entropy(isda_f.augment_logits(logits, weight, target, cov, 1.3), target, reduction="none")
    torch.testing.assert_close(out, ref)


def test_ambiguous_square_covariance_needs_kind():
    weight = torch.randn(4, 4)
    with pytest.raises(ValueError, match="ambiguous"):
        isda_f.augment_logits(torch.randn(3, 4), weight, torch.tensor([0, 1, 2]), torch.ones(4, 4), 0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_lambda_zero_is_cross_entropy(kind):
    feats, target, weight, bias, cov = random_problem(kind=kind)
    logits = (feats @ weight.T + bias).float()
    loss = isda_f.isda_cross_entropy(logits, weight.float(), target, layout(kind, cov), 0.0, kind)
    assert torch.equal(loss, F.cross_entropy(logits, target))


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_augment_logits(kind):
    feats, target, weight, bias, cov = random_problem(N=10, C=4, A=3, kind=kind)
    logits = (feats @ weight.T).requires_grad_()
    weight = weight.clone().requires_grad_()
    fn = lambda z, w: isda_f.augment_logits(z, w, target, layout(kind, cov), 0.9, kind)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits, weight))


@pytest.mark.parametrize("kind", ["shared", "identity"])
def test_gradgradcheck_autograd_kinds(kind):
    feats, target, weight, bias, cov = random_problem(N=6, C=3, A=3, kind=kind)
    logits = (feats @ weight.T).requires_grad_()
    weight = weight.clone().requires_grad_()
    fn = lambda z, w: isda_f.augment_logits(z, w, target, layout(kind, cov), 0.9, kind)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (logits, weight))


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_custom_backward_refuses_double_backward(kind):
    feats, target, weight, bias, cov = random_problem(N=6, C=3, A=3, kind=kind)
    w = weight.clone().requires_grad_()
    loss = F.cross_entropy(isda_f.augment_logits(feats @ w.T, w, target, cov, 0.9, kind), target)
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_custom_backward_matches_autograd_reference(kind):
    feats, target, weight, bias, cov = random_problem(N=30, C=7, A=6, kind=kind)
    w1 = weight.clone().requires_grad_()
    w2 = weight.clone().requires_grad_()
    z = feats @ weight.T
    loss1 = F.cross_entropy(isda_f.augment_logits(z, w1, target, cov, 0.6), target)
    loss2 = reference.isda_bound(z, w2, target, cov, 0.6, kind).mean()
    loss1.backward()
    loss2.backward()
    torch.testing.assert_close(w1.grad, w2.grad)


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared"])
def test_covariance_requiring_grad_gets_gradient(kind):
    feats, target, weight, bias, cov = random_problem(N=10, C=3, A=3, kind=kind)
    cov = cov.clone().requires_grad_()
    z = feats @ weight.T
    out = isda_f.augment_logits(z, weight, target, cov, 0.5, kind)
    F.cross_entropy(out, target).backward()
    assert cov.grad is not None and cov.grad.abs().sum() > 0
    ref = F.cross_entropy(z + 0.25 * torch.stack([torch.stack([
        (weight[j] - weight[y]) @ reference.sigma_of(kind, cov.detach(), int(y), 3) @ (weight[j] - weight[y])
        for j in range(3)]) for y in target]), target)
    torch.testing.assert_close(F.cross_entropy(out, target), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_consistency_loss_matches_eq15(kind):
    feats, target, weight, bias, cov = random_problem(N=12, C=5, A=4, kind=kind)
    logits = feats @ weight.T + bias
    probs = torch.softmax(torch.randn(12, 5, dtype=torch.float64), 1)
    out = isda_f.isda_consistency_loss(logits, weight, probs, layout(kind, cov), 0.7, kind, reduction="none")
    ref = reference.consistency_bound(logits, weight, probs, cov, 0.7, kind)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_gradcheck_consistency_loss(kind):
    feats, target, weight, bias, cov = random_problem(N=6, C=3, A=3, kind=kind)
    probs = torch.softmax(torch.randn(6, 3, dtype=torch.float64), 1)
    logits = (feats @ weight.T).requires_grad_()
    weight = weight.clone().requires_grad_()
    fn = lambda z, w: isda_f.isda_consistency_loss(z, w, probs, cov, 0.5, kind)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits, weight))


def test_consistency_gradient_zero_at_own_prediction_with_lambda_zero():
    logits = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    loss = isda_f.isda_consistency_loss(logits, weight, probs, None, 0.0, "identity")
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.abs().max() < 1e-12


def test_mc_estimate_converges_and_bound_is_above():
    feats, target, weight, bias, cov = random_problem(N=16, C=4, A=3, kind="full")
    logits = feats @ weight.T + bias
    ratio = 0.5
    g = torch.Generator().manual_seed(1)
    mc = isda_f.expected_cross_entropy_mc(feats, weight, bias, target, cov, ratio, samples=4000,
                                          generator=g, reduction="none")
    bound = isda_f.isda_cross_entropy(logits, weight, target, cov, ratio, reduction="none")
    # per-sample standard error of the MC mean
    g = torch.Generator().manual_seed(2)
    a = isda_f.sample_augmented_features(feats, target, cov, ratio, 4000, generator=g)
    z = a @ weight.T + bias
    ce = torch.logsumexp(z, -1) - z.gather(-1, target.view(-1, 1, 1).expand(-1, 4000, 1)).squeeze(-1)
    stderr = ce.std(1) / math.sqrt(4000)
    assert bool((bound >= mc - 4 * stderr - 1e-9).all())
    # the expectation is above plain CE (Jensen in the other direction: CE is convex in a)
    ce0 = F.cross_entropy(logits, target, reduction="none")
    assert bool((mc >= ce0 - 4 * stderr).all())


def test_bound_tight_for_small_lambda():
    feats, target, weight, bias, cov = random_problem(N=16, C=4, A=3, kind="full")
    logits = feats @ weight.T + bias
    g = torch.Generator().manual_seed(3)
    ratio = 1e-3
    mc = isda_f.expected_cross_entropy_mc(feats, weight, bias, target, cov, ratio, samples=2000, generator=g)
    bound = isda_f.isda_cross_entropy(logits, weight, target, cov, ratio)
    ce = F.cross_entropy(logits, target)
    assert bound >= ce
    assert abs(float(bound - mc)) < 0.01 * float(ce) + 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_features_have_requested_covariance(kind):
    _, _, _, _, cov = random_problem(C=3, A=4, kind=kind)
    feats = torch.zeros(3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(0)
    a = isda_f.sample_augmented_features(feats, target, layout(kind, cov), 0.5, 20000, kind=kind, generator=g)
    for i in range(3):
        emp = torch.cov(a[i].T, correction=0)
        want = 0.5 * reference.sigma_of(kind, cov, i, 4)
        torch.testing.assert_close(emp, want, atol=0.05 * float(want.abs().max()) + 1e-3, rtol=0.1)


def test_bad_inputs_raise_value_error():
    w = torch.randn(3, 4)
    z = torch.randn(5, 3)
    cov = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="labels must lie"):
        isda_f.augment_logits(z, w, torch.tensor([0, 1, 2, 3, 0]), cov, 0.5)
    with pytest.raises(ValueError, match="logits have 3 classes but weight has 2"):
        isda_f.augment_logits(z, w[:2], torch.zeros(5, dtype=torch.long), cov, 0.5)
    with pytest.raises(ValueError, match="target must be a 1-D"):
        isda_f.augment_logits(z, w, torch.zeros(4, dtype=torch.long), cov, 0.5)
    with pytest.raises(ValueError, match="fits none of the layouts"):
        isda_f.augment_logits(z, w, torch.zeros(5, dtype=torch.long), torch.zeros(3, 5, 5), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        isda_f.augment_logits(z, w, torch.zeros(5, dtype=torch.long), cov, -1.0)
