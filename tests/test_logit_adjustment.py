"""ISDA with a class prior: logit adjustment / Balanced Softmax and LDAM margins.

The reference is a float64 loop over samples written from the equations: Eq. (7) of the
ISDA paper (``z_j + lambda / 2 * (w_j - w_y)^T Sigma_y (w_j - w_y)``, with ``Sigma_y`` the
population covariance of class ``y``'s features, Eqs. 1-3), then LDAM (Cao et al. 2019:
``m_c = max_margin * (n_min / n_c)^(1/4)`` subtracted from the target logit, the logits
scaled by ``s``) and the logit adjustment (Menon et al. 2021: ``+ tau * log pi``).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_isda
from torch_isda import ISDALoss, ISDAOptions
from torch_isda import functional as isda_f

A, C = 5, 4
PRIOR = [50.0, 20.0, 5.0, 1.0]
COUNTS = [500, 120, 30, 8]


def _data(N=24, seed=0, ignored=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, A, generator=g, dtype=torch.float64)
    y = torch.arange(N) % C  # every class present, >= 2 samples each
    y = y[torch.randperm(N, generator=g)]
    y[:ignored] = -100
    W = torch.randn(C, A, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    return x, y, W, b


def _brute_force(x, y, W, b, lam, kind, tau=0.0, prior=None, counts=None, max_margin=0.5, s=1.0):
    """Mean over the valid samples of the cross-entropy of the adjusted, augmented logits."""
    valid = [i for i in range(len(y)) if int(y[i]) != -100]
    cov = {}
    for c in range(C):
        rows = [x[i] for i in valid if int(y[i]) == c]
        if rows:
            X = torch.stack(rows)
            D = X - X.mean(0)
            full = D.T @ D / len(rows)  # population covariance (Eqs. 1-3)
            cov[c] = full if kind == "full" else torch.diag(torch.diagonal(full))
    if counts is not None:
        margins = [max_margin * (min(counts) / n) ** 0.25 for n in counts]
    total = 0.0
    for i in valid:
        t = int(y[i])
        z = []
        for j in range(C):
            d = W[j] - W[t]
            zj = float(W[j] @ x[i] + b[j]) + lam / 2 * float(d @ cov[t] @ d)
            if counts is not None:
                zj = s * (zj - (margins[t] if j == t else 0.0))
            if prior is not None:
                zj += tau * math.log(prior[j] / sum(prior))
            z.append(zj)
        total += math.log(sum(math.exp(v) for v in z)) - z[t]
    return total / len(valid)


CASES = {
    "balanced softmax": dict(class_prior=PRIOR),
    "logit adjustment tau=0.7": dict(class_prior=PRIOR, logit_adjustment=0.7),
    "ldam": dict(ldam_counts=COUNTS, ldam_scale=3.0),
    "ldam + prior": dict(ldam_counts=COUNTS, max_margin=0.3, ldam_scale=2.0, class_prior=PRIOR,
                         logit_adjustment=0.5),
}


def _reference_kwargs(opts):
    return dict(tau=opts.get("logit_adjustment", 1.0 if "class_prior" in opts else 0.0),
                prior=opts.get("class_prior"), counts=opts.get("ldam_counts"),
                max_margin=opts.get("max_margin", 0.5), s=opts.get("ldam_scale", 30.0))


@pytest.mark.parametrize("kind", ["full", "diagonal"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ignored", [0, 3])
def test_isda_loss_with_class_prior_equals_brute_force(case, kind, ignored):
    opts = CASES[case]
    x, y, W, b = _data(ignored=ignored)
    crit = ISDALoss(A, C, 0.8, kind, constant_lambda=True, dtype=torch.float64, **opts)
    loss = crit(x, x @ W.T + b, y, W)
    expected = _brute_force(x, y, W, b, 0.8, kind, **_reference_kwargs(opts))
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_attach_with_class_prior_equals_isda_loss(case):
    opts = CASES[case]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, A), nn.Tanh(), nn.Linear(A, C)).double()
    crit = torch_isda.attach(model, 0.6, "full", layer=model[2], constant_lambda=True, dtype=torch.float64, **opts)
    ref = ISDALoss(A, C, 0.6, "full", constant_lambda=True, dtype=torch.float64, **opts)
    inputs = torch.randn(16, 3, dtype=torch.float64)
    y = torch.arange(16) % C
    loss = crit(model(inputs), y)  # the model's output unchanged: the loss adds the offsets
    features = model[1](model[0](inputs))
    expected = ref(features, model[2](features), y, model[2].weight)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_tau_zero_and_uniform_prior_equal_plain_isda():
    x, y, W, b = _data(ignored=2)
    plain = ISDALoss(A, C, 0.8, constant_lambda=True, dtype=torch.float64)(x, x @ W.T + b, y, W)
    tau0 = ISDALoss(A, C, 0.8, constant_lambda=True, dtype=torch.float64, class_prior=PRIOR, logit_adjustment=0.0)
    uniform = ISDALoss(A, C, 0.8, constant_lambda=True, dtype=torch.float64, class_prior=[3.0] * C)
    torch.testing.assert_close(tau0(x, x @ W.T + b, y, W), plain, rtol=1e-12, atol=1e-12)
    # a constant offset of every logit leaves the softmax unchanged
    torch.testing.assert_close(uniform(x, x @ W.T + b, y, W), plain, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_lambda_zero_equals_the_adjusted_cross_entropy(case):
    opts = CASES[case]
    x, y, W, b = _data()
    crit = ISDALoss(A, C, 0.8, dtype=torch.float64, **opts)  # progress 0: lambda = 0
    z = x @ W.T + b
    ref = _reference_kwargs(opts)
    adjusted = z.clone()
    if ref["counts"] is not None:
        n = torch.tensor(COUNTS, dtype=torch.float64)
        m = ref["max_margin"] * (n.min() / n) ** 0.25
        adjusted = ref["s"] * (adjusted - F.one_hot(y, C) * m[y].unsqueeze(1))
    if ref["prior"] is not None:
        pi = torch.tensor(PRIOR, dtype=torch.float64)
        adjusted = adjusted + ref["tau"] * torch.log(pi / pi.sum())
    torch.testing.assert_close(crit(x, z, y, W), F.cross_entropy(adjusted, y), rtol=1e-12, atol=1e-12)


def test_adjusted_isda_gradcheck():
    x, y, W, b = _data(N=10, ignored=1)
    cov = torch.randn(C, A, A, dtype=torch.float64)
    cov = cov @ cov.transpose(1, 2) / A
    offset = isda_f.prior_log_offset(PRIOR, 0.7)
    margins = isda_f.ldam_margins(COUNTS, 0.5)
    z = (x @ W.T + b).requires_grad_(True)
    Wg = W.clone().requires_grad_(True)

    def loss(z, Wg):
        aug = isda_f.augment_logits(z, Wg, y.clamp_min(0), cov, 0.9, "full")
        adj = isda_f.adjust_logits(aug, y, log_offset=offset, margins=margins, scale=2.5, ignore_index=-100)
        return F.cross_entropy(adj, y, ignore_index=-100)

    assert torch.autograd.gradcheck(loss, (z, Wg))


def test_offsets_functions():
    off = isda_f.prior_log_offset([1.0, 3.0], tau=2.0)
    torch.testing.assert_close(off, 2.0 * torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64)))
    m = isda_f.ldam_margins([16.0, 1.0], 0.5)
    torch.testing.assert_close(m, torch.tensor([0.25, 0.5], dtype=torch.float64))
    z = torch.zeros(2, 2, dtype=torch.float64)
    out = isda_f.adjust_logits(z, torch.tensor([0, -100]), margins=m, scale=2.0, ignore_index=-100)
    torch.testing.assert_close(out, torch.tensor([[-0.5, 0.0], [0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="class_prior must hold positive finite numbers"):
        isda_f.prior_log_offset([1.0, 0.0])


def test_eval_mode_returns_the_unadjusted_cross_entropy():
    x, y, W, b = _data()
    crit = ISDALoss(A, C, 0.8, constant_lambda=True, dtype=torch.float64, class_prior=PRIOR, ldam_counts=COUNTS)
    crit.eval()
    z = x @ W.T + b
    assert torch.equal(crit(x, z, y, W), F.cross_entropy(z, y))


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(class_prior=[1.0, 2.0]), r"class_prior must have one value per class \(C=4\); got 2"),
        (dict(class_prior=[1.0, -2.0, 1.0, 1.0]), "class_prior must hold positive finite numbers"),
        (dict(ldam_counts=[1, 2, 0, 4]), "ldam_counts must hold positive finite numbers"),
        (dict(logit_adjustment=1.0), "logit_adjustment needs class_prior"),
        (dict(class_prior=PRIOR, logit_adjustment=float("nan")), "logit_adjustment must be a finite number"),
        (dict(ldam_counts=COUNTS, max_margin=0.0), "max_margin must be a positive finite number"),
        (dict(ldam_counts=COUNTS, ldam_scale=float("inf")), "ldam_scale must be a positive finite number"),
    ],
)
def test_class_prior_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        ISDALoss(A, C, **opts)


def test_class_prior_accepts_a_tensor_and_keeps_the_state_dict_keys():
    crit = ISDALoss(A, C, class_prior=torch.tensor(PRIOR), ldam_counts=torch.tensor(COUNTS))
    assert crit.options.class_prior == tuple(PRIOR)
    # the offsets derive from the options: checkpoints keep the keys of a plain ISDALoss
    assert set(crit.state_dict()) == set(ISDALoss(A, C).state_dict())
    assert ISDAOptions(class_prior=PRIOR).tau == 1.0 and ISDAOptions().tau == 0.0
