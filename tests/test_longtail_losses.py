"""Long-tailed baselines (issue 23 item 2) against float64 brute force written from the
papers' equations: class-balanced loss (Cui et al. 2019), LDAM-DRW (Cao et al. 2019),
Balanced Softmax / logit adjustment (Ren et al. 2020; Menon et al. 2021)."""

import math

import pytest
import torch

from torch_isda.baselines.class_balanced import (
    ClassBalancedLoss, class_balanced_loss, effective_number_weights)
from torch_isda.baselines.ldam import LDAMLoss, ldam_margins
from torch_isda.baselines.balanced_softmax import LogitAdjustedLoss, log_prior

COUNTS = [500, 120, 40, 9, 3]


def _batch(n=7, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    return logits, target


def _log_softmax_at(z, y):
    """log(exp(z_y) / sum_j exp(z_j)) for one row, by the definition."""
    return z[y] - math.log(sum(math.exp(v) for v in z))


def _cb_weights(counts, beta):
    inv = [(1 - beta) / (1 - beta ** n) for n in counts]
    return [w / sum(inv) * len(counts) for w in inv]


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_effective_number_weights_match_the_definition(beta):
    assert torch.allclose(effective_number_weights(COUNTS, beta),
                          torch.tensor(_cb_weights(COUNTS, beta), dtype=torch.float64),
                          rtol=1e-10)


def test_effective_number_limits():
    assert torch.allclose(effective_number_weights(COUNTS, 0.0), torch.ones(5, dtype=torch.float64))
    w = effective_number_weights(COUNTS, 1 - 1e-12)  # -> inverse frequency
    inv = torch.tensor([1 / n for n in COUNTS], dtype=torch.float64)
    assert torch.allclose(w, inv / inv.sum() * 5, rtol=1e-6)


def test_class_balanced_loss_brute_force():
    logits, target = _batch()
    weights = _cb_weights(COUNTS, 0.99)
    rows = [-weights[y] * _log_softmax_at(z.tolist(), y) for z, y in zip(logits, target.tolist())]
    loss = class_balanced_loss(logits, target, effective_number_weights(COUNTS, 0.99))
    assert loss.item() == pytest.approx(sum(rows) / len(rows), rel=1e-12)
    module = ClassBalancedLoss(COUNTS, 0.99, reduction="none").double()
    assert torch.allclose(module(logits, target), torch.tensor(rows, dtype=torch.float64))


def test_ldam_margins_and_loss_brute_force():
    margins = [n ** -0.25 for n in COUNTS]
    margins = [0.5 * m / max(margins) for m in margins]
    assert torch.allclose(ldam_margins(COUNTS, 0.5), torch.tensor(margins, dtype=torch.float64))
    logits, target = _batch(seed=1)
    loss_fn = LDAMLoss(COUNTS, max_margin=0.5, s=30.0, drw_start=0.8).double()

    def brute(weights):
        num = den = 0.0
        for z, y in zip(logits.tolist(), target.tolist()):
            shifted = [30.0 * (v - (margins[y] if j == y else 0.0)) for j, v in enumerate(z)]
            num += -weights[y] * _log_softmax_at(shifted, y)
            den += weights[y]
        return num / den

    loss_fn.set_progress(0.5)  # before DRW: unweighted
    assert loss_fn(logits, target).item() == pytest.approx(brute([1.0] * 5), rel=1e-12)
    loss_fn.set_progress(0.8)  # DRW from 80 %: class-balanced weights, beta = 0.9999
    assert loss_fn(logits, target).item() == pytest.approx(
        brute(_cb_weights(COUNTS, 0.9999)), rel=1e-12)


def test_ldam_without_margin_and_scale_one_is_cross_entropy():
    logits, target = _batch(seed=2)
    loss_fn = LDAMLoss(COUNTS, max_margin=0.0, s=1.0, drw_start=1.0).double()
    loss_fn.set_progress(0.99)
    assert torch.allclose(loss_fn(logits, target),
                          torch.nn.functional.cross_entropy(logits, target))


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.5])
def test_logit_adjustment_brute_force(tau):
    logits, target = _batch(seed=3)
    total = sum(COUNTS)
    prior = [n / total for n in COUNTS]
    rows = []
    for z, y in zip(logits.tolist(), target.tolist()):
        if tau == 1.0:  # Ren et al. Eq. 4: exp(z_y) n_y / sum_j exp(z_j) n_j
            p = math.exp(z[y]) * COUNTS[y] / sum(math.exp(v) * n for v, n in zip(z, COUNTS))
            rows.append(-math.log(p))
        else:  # Menon et al.: softmax(z + tau log pi)
            rows.append(-_log_softmax_at([v + tau * math.log(q) for v, q in zip(z, prior)], y))
    module = LogitAdjustedLoss(COUNTS, tau).double()
    assert module(logits, target).item() == pytest.approx(sum(rows) / len(rows), rel=1e-12)
    assert torch.allclose(log_prior(COUNTS).exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gradcheck_of_the_three_losses():
    logits, target = _batch(n=4, seed=4)
    logits.requires_grad_(True)
    for loss_fn in (ClassBalancedLoss(COUNTS, 0.99), LDAMLoss(COUNTS, drw_start=0.0),
                    LogitAdjustedLoss(COUNTS)):
        loss_fn = loss_fn.double()
        assert torch.autograd.gradcheck(lambda z: loss_fn(z, target), (logits,))


@pytest.mark.parametrize("build, match", [
    (lambda: ClassBalancedLoss([10, 0, 3]), "positive integers"),
    (lambda: ClassBalancedLoss([10, 3], beta=1.0), "beta must lie"),
    (lambda: LDAMLoss([[1, 2]]), "1-D"),
    (lambda: LDAMLoss([10, 3], drw_start=1.5), "drw_start"),
    (lambda: LogitAdjustedLoss([10, 3], tau=-1), "tau must be"),
])
def test_bad_arguments_raise_one_line(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_class_count_mismatch_names_the_problem():
    logits, target = _batch(c=5)
    with pytest.raises(ValueError, match="one value per class"):
        LogitAdjustedLoss([10, 3, 2])(logits.float(), target)
