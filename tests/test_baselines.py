"""Tests of torch_isda.baselines against float64 references written from each paper's
formula (per-sample Python loops)."""

import math

import pytest
import torch
import torch.nn.functional as F

from torch_isda.baselines import (
    CenterLoss,
    DisturbLabel,
    FeatureDropout,
    FocalLoss,
    LabelSmoothingLoss,
    LargeMarginSoftmaxLoss,
    LqLoss,
    center_loss,
    disturb_labels,
    feature_dropout,
    focal_loss,
    label_smoothing_cross_entropy,
    large_margin_logits,
    large_margin_softmax_loss,
    lq_loss,
    lsoftmax_beta,
    lsoftmax_psi,
)

D64 = torch.float64


def _data(n=12, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=D64) * scale).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    return logits, target


def _softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


# ----------------------------------------------------------------------------- label smoothing


def test_label_smoothing_matches_reference_and_torch():
    logits, target = _data()
    eps = 0.1
    ref = []
    for row, y in zip(logits.tolist(), target.tolist()):
        p = _softmax_row(row)
        c = len(row)
        q = [(1 - eps) * (j == y) + eps / c for j in range(c)]
        ref.append(-sum(qj * math.log(pj) for qj, pj in zip(q, p)))
    ref = torch.tensor(ref, dtype=D64)
    out = label_smoothing_cross_entropy(logits, target, eps, reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        LabelSmoothingLoss()(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1)
    )
    torch.testing.assert_close(
        LabelSmoothingLoss(0.0, reduction="sum")(logits, target),
        F.cross_entropy(logits, target, reduction="sum"),
    )


def test_label_smoothing_validation():
    logits, target = _data()
    with pytest.raises(ValueError, match="epsilon"):
        LabelSmoothingLoss(1.5)
    with pytest.raises(ValueError, match="reduction"):
        LabelSmoothingLoss(reduction="avg")
    with pytest.raises(ValueError, match="target"):
        label_smoothing_cross_entropy(logits, target[:-1])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        label_smoothing_cross_entropy(logits[0], target)
    with pytest.raises(ValueError, match="integer"):
        label_smoothing_cross_entropy(logits, target.double())


# ----------------------------------------------------------------------------- focal


def test_focal_gamma0_alpha1_is_cross_entropy():
    logits, target = _data()
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            focal_loss(logits, target, alpha=1.0, gamma=0.0, reduction=reduction),
            F.cross_entropy(logits, target, reduction=reduction),
            rtol=1e-14,
            atol=1e-14,
        )


@pytest.mark.parametrize("alpha,gamma", [(0.5, 1.0), (0.25, 2.0), (1.0, 0.5)])
def test_focal_matches_reference(alpha, gamma):
    logits, target = _data(seed=1)
    ref = []
    for row, y in zip(logits.tolist(), target.tolist()):
        pt = _softmax_row(row)[y]
        ref.append(-alpha * (1 - pt) ** gamma * math.log(pt))
    ref = torch.tensor(ref, dtype=D64)
    torch.testing.assert_close(focal_loss(logits, target, alpha, gamma, "none"), ref)
    torch.testing.assert_close(FocalLoss(alpha, gamma)(logits, target), ref.mean())


def test_focal_defaults_and_per_class_alpha():
    crit = FocalLoss()
    assert crit.alpha == 0.5 and crit.gamma == 1.0  # ISDA Appendix C
    logits, target = _data(c=4, seed=2)
    weights = [0.1, 0.2, 0.3, 0.4]
    per = FocalLoss(alpha=weights, gamma=2.0, reduction="none")(logits, target)
    plain = focal_loss(logits, target, alpha=1.0, gamma=2.0, reduction="none")
    torch.testing.assert_close(per, plain * torch.tensor(weights, dtype=D64)[target])
    # a scalar alpha only rescales
    torch.testing.assert_close(focal_loss(logits, target, 0.5, 2.0), 0.5 * focal_loss(logits, target, 1.0, 2.0))


def test_focal_gradcheck():
    logits, target = _data(n=6, c=4, seed=3)
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, target, 0.5, 1.0), (logits,))
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, target, 0.5, 2.5, "none"), (logits,))


def test_focal_validation():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[0.5, -0.1])
    logits, target = _data(c=5)
    with pytest.raises(ValueError, match="classes"):
        focal_loss(logits, target, alpha=[1.0, 1.0])


# ----------------------------------------------------------------------------- Lq


def test_lq_matches_reference():
    logits, target = _data(seed=4)
    for q in (0.4, 0.7, 1.0):
        ref = torch.tensor(
            [(1 - _softmax_row(r)[y] ** q) / q for r, y in zip(logits.tolist(), target.tolist())], dtype=D64
        )
        torch.testing.assert_close(lq_loss(logits, target, q, "none"), ref, rtol=1e-12, atol=1e-12)
    assert LqLoss().q == 0.4  # ISDA Appendix C
    torch.testing.assert_close(LqLoss(0.4)(logits, target), lq_loss(logits, target, 0.4))


def test_lq_tends_to_cross_entropy():
    logits, target = _data(seed=5)
    ce = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(lq_loss(logits, target, 1e-6, "none"), ce, rtol=1e-5, atol=1e-8)
    # monotone in q: (1 - p^q)/q decreases with q for p in (0, 1)
    assert torch.all(lq_loss(logits, target, 0.4, "none") < ce)
    assert torch.all(lq_loss(logits, target, 0.7, "none") < lq_loss(logits, target, 0.4, "none"))


def test_lq_gradcheck_and_validation():
    logits, target = _data(n=6, c=4, seed=6)
    assert torch.autograd.gradcheck(lambda z: lq_loss(z, target, 0.4), (logits,))
    for q in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="q must"):
            LqLoss(q)


# ----------------------------------------------------------------------------- L-Softmax


def _psi_theta(theta, m):
    k = min(int(theta * m / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_lsoftmax_psi_matches_definition(m):
    thetas = torch.linspace(0, math.pi, 721, dtype=D64)
    got = lsoftmax_psi(torch.cos(thetas), m)
    ref = torch.tensor([_psi_theta(t, m) for t in thetas.tolist()], dtype=D64)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
    assert got[0].item() == pytest.approx(1.0) and got[-1].item() == pytest.approx(1.0 - 2.0 * m)


def test_lsoftmax_psi_matches_official_closed_forms():
    c = torch.linspace(-1, 1, 401, dtype=D64)
    s0 = torch.sign(c)
    # DOUBLE: 2 sign(c) c^2 - 1
    torch.testing.assert_close(lsoftmax_psi(c, 2), 2 * s0 * c**2 - 1)
    # TRIPLE: sign1 (4c^3 - 3c) + sign2, sign1 = sign(|c| - 1/2), sign2 = sign0 (1 + sign1) - 2
    s1 = torch.sign(c.abs() - 0.5)
    s2 = s0 * (1 + s1) - 2
    mask = (c.abs() - 0.5).abs() > 1e-9  # sign() is 0 exactly at the boundary
    torch.testing.assert_close(lsoftmax_psi(c, 3)[mask], (s1 * (4 * c**3 - 3 * c) + s2)[mask])
    # QUADRUPLE: sign3 (8c^4 - 8c^2 + 1) + sign4, sign3 = sign0 sign(2c^2 - 1), sign4 = 2 sign0 + sign3 - 3
    s3 = s0 * torch.sign(2 * c**2 - 1)
    s4 = 2 * s0 + s3 - 3
    mask = ((2 * c**2 - 1).abs() > 1e-9) & (c != 0)
    torch.testing.assert_close(lsoftmax_psi(c, 4)[mask], (s3 * (8 * c**4 - 8 * c**2 + 1) + s4)[mask])


def test_lsoftmax_psi_m2_continuous_and_decreasing():
    thetas = torch.linspace(0, math.pi, 20001, dtype=D64)
    psi = lsoftmax_psi(torch.cos(thetas), 2)
    steps = psi[1:] - psi[:-1]
    assert torch.all(steps <= 1e-12)  # monotonically non-increasing
    assert steps.abs().max() < 1e-3  # no jumps (max slope 2 * dtheta = 3e-4)
    # psi(theta) <= cos(theta): the margin makes the target logit harder
    assert torch.all(psi <= torch.cos(thetas) + 1e-12)


def _lsoftmax_reference(x, w, b, target, m, beta):
    """Per-sample loop with theta = acos(.) (float64)."""
    x, w = x.detach(), w.detach()
    b = None if b is None else b.detach()
    losses = []
    for i in range(x.shape[0]):
        y = int(target[i])
        logits = []
        for j in range(w.shape[0]):
            dot = float(x[i] @ w[j])
            if j == y:
                nx, nw = float(x[i].norm()), float(w[j].norm())
                theta = math.acos(max(-1.0, min(1.0, dot / (nx * nw))))
                f = (beta * dot + nx * nw * _psi_theta(theta, m)) / (1 + beta)
            else:
                f = dot
            logits.append(f + (float(b[j]) if b is not None else 0.0))
        mx = max(logits)
        lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
        losses.append(lse - logits[y])
    return torch.tensor(losses, dtype=D64)


def _lsoftmax_data(n=10, d=6, c=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D64).requires_grad_()
    w = torch.randn(c, d, generator=g, dtype=D64).requires_grad_()
    b = torch.randn(c, generator=g, dtype=D64).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    return x, w, b, t


@pytest.mark.parametrize("m,beta,use_bias", [(2, 0.0, False), (2, 2.5, True), (3, 0.0, True), (4, 0.7, False)])
def test_lsoftmax_matches_reference(m, beta, use_bias):
    x, w, b, t = _lsoftmax_data()
    b = b if use_bias else None
    out = large_margin_softmax_loss(x, w, t, m, beta, b, reduction="none")
    torch.testing.assert_close(out, _lsoftmax_reference(x, w, b, t, m, beta), rtol=1e-10, atol=1e-10)


def test_lsoftmax_m1_is_cross_entropy():
    x, w, b, t = _lsoftmax_data()
    ce = F.cross_entropy(F.linear(x, w, b), t)
    torch.testing.assert_close(large_margin_softmax_loss(x, w, t, 1, 0.0, b), ce, rtol=1e-14, atol=1e-14)
    crit = LargeMarginSoftmaxLoss(margin=1)
    torch.testing.assert_close(crit(x, t, w, b), ce, rtol=1e-14, atol=1e-14)
    # the margin only lowers the target logit, so the loss can only grow
    assert large_margin_softmax_loss(x, w, t, 2, 0.0, b) >= ce


def test_lsoftmax_logits_only_change_target_column():
    x, w, b, t = _lsoftmax_data()
    logits = large_margin_logits(x, w, t, 3, 0.0, b)
    plain = F.linear(x, w, b)
    mask = F.one_hot(t, 4).bool()
    torch.testing.assert_close(logits[~mask], plain[~mask])
    assert torch.all(logits[mask] <= plain[mask] + 1e-12)


def test_lsoftmax_gradcheck():
    x, w, b, t = _lsoftmax_data(n=5, d=4, c=3, seed=8)
    for m, beta in ((2, 0.0), (4, 0.3)):
        assert torch.autograd.gradcheck(
            lambda xx, ww, bb: large_margin_softmax_loss(xx, ww, t, m, beta, bb), (x, w, b)
        )


def test_lsoftmax_zero_feature_has_finite_gradient():
    x, w, b, t = _lsoftmax_data(n=3, d=4, c=3)
    x = x.detach().clone()
    x[0] = 0.0
    x.requires_grad_()
    large_margin_softmax_loss(x, w, t, 2).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_lsoftmax_annealing_schedule():
    crit = LargeMarginSoftmaxLoss()
    assert (crit.margin, crit.base, crit.gamma, crit.power, crit.beta_min) == (2, 1000.0, 2e-5, 45.0, 0.0)
    assert lsoftmax_beta(0) == 1000.0
    assert lsoftmax_beta(5000) == pytest.approx(1000.0 * (1 + 2e-5 * 5000) ** -45)
    assert lsoftmax_beta(10**9, beta_min=5.0) == 5.0
    x, w, b, t = _lsoftmax_data()
    crit.train()
    loss = crit(x, t, w, b)
    assert int(crit.iteration) == 1  # incremented before use, as the official layer
    torch.testing.assert_close(loss, large_margin_softmax_loss(x, w, t, 2, lsoftmax_beta(1), b))
    # huge beta: practically softmax
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(x, w, b), t), rtol=1e-2, atol=1e-2)
    crit.set_iteration(20000)
    loss = crit(x, t, w, b)
    assert int(crit.iteration) == 20001 and crit.beta == pytest.approx(lsoftmax_beta(20001))
    torch.testing.assert_close(loss, large_margin_softmax_loss(x, w, t, 2, crit.beta, b))
    # eval: plain cross-entropy, counter untouched
    crit.eval()
    torch.testing.assert_close(crit(x, t, w, b), F.cross_entropy(F.linear(x, w, b), t))
    assert int(crit.iteration) == 20001
    state = crit.state_dict()
    fresh = LargeMarginSoftmaxLoss()
    fresh.load_state_dict(state)
    assert int(fresh.iteration) == 20001


def test_lsoftmax_validation():
    x, w, b, t = _lsoftmax_data()
    for m in (0, 1.5, -2, True):
        with pytest.raises(ValueError, match="margin"):
            LargeMarginSoftmaxLoss(margin=m)
    with pytest.raises(ValueError, match="gamma"):
        LargeMarginSoftmaxLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="beta"):
        large_margin_logits(x, w, t, 2, beta=-1.0)
    with pytest.raises(ValueError, match="weight"):
        large_margin_logits(x, w[:, :-1], t)
    with pytest.raises(ValueError, match="bias"):
        large_margin_logits(x, w, t, bias=b[:-1])
    with pytest.raises(ValueError, match="iteration"):
        LargeMarginSoftmaxLoss().set_iteration(-1)


# ----------------------------------------------------------------------------- center loss


def _center_data(n=12, d=5, c=4, seed=9):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=D64).requires_grad_()
    centers = torch.randn(c, d, generator=g, dtype=D64).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    t[:c] = torch.arange(c)  # every class present
    return a, centers, t


def test_center_loss_value_and_gradients():
    a, c, t = _center_data()
    lam = 0.3
    n = a.shape[0]
    ref = sum(0.5 * float(((a[i] - c[t[i]]) ** 2).sum().detach()) for i in range(n)) / n
    for decouple in (False, True):
        a.grad = c.grad = None
        loss = center_loss(a, t, c, lam, "mean", decouple)
        assert loss.item() == pytest.approx(lam * ref, rel=1e-12)
        loss.backward()
        grad_a = torch.stack([lam * (a[i] - c[t[i]]) / n for i in range(n)]).detach()
        torch.testing.assert_close(a.grad, grad_a)
        scale = 1.0 if decouple else lam
        grad_c = torch.zeros_like(c)
        for i in range(n):
            grad_c[t[i]] += scale * (c[t[i]] - a[i]).detach() / n
        torch.testing.assert_close(c.grad, grad_c)


def test_center_loss_gradcheck():
    a, c, t = _center_data(n=6, d=3, c=3)
    assert torch.autograd.gradcheck(lambda aa, cc: center_loss(aa, t, cc, 0.7), (a, c))
    assert torch.autograd.gradcheck(lambda aa: center_loss(aa, t, c.detach(), 0.7, "sum", True), (a,))


def test_center_loss_module_defaults_and_groups():
    crit = CenterLoss(4, 5)
    assert crit.loss_weight == 0.003 and crit.decouple_center_grad
    assert crit.centers.shape == (4, 5) and isinstance(crit.centers, torch.nn.Parameter)
    assert torch.all(crit.centers == 0)
    groups = crit.parameter_groups()
    assert groups == [{"params": [crit.centers], "lr": 0.5, "weight_decay": 0.0}]
    assert crit.parameter_groups(0.1, momentum=0.9)[0]["momentum"] == 0.9


def _class_means(a, t, c):
    return torch.stack([a[t == j].mean(0) for j in range(c)])


def test_center_parameter_sgd_moves_centers_toward_class_means():
    a, _, t = _center_data(n=40, d=5, c=4, seed=10)
    a = a.detach()
    crit = CenterLoss(4, 5, loss_weight=0.01, dtype=D64)
    with torch.no_grad():
        crit.centers.copy_(torch.randn(4, 5, dtype=D64))
    before = crit.centers.detach().clone()
    opt = torch.optim.SGD(crit.parameter_groups(lr=0.5))
    opt.zero_grad()
    crit(a, t).backward()
    opt.step()
    n = a.shape[0]
    counts = torch.bincount(t, minlength=4).to(D64).unsqueeze(1)
    means = _class_means(a, t, 4)
    # decoupled gradient: c_j <- c_j - lr * n_j / N * (c_j - mean_j), independent of lambda
    expected = before - 0.5 * counts / n * (before - means)
    torch.testing.assert_close(crit.centers.detach(), expected)


def test_center_update_rule_of_wen_et_al():
    a, _, t = _center_data(n=30, d=4, c=5, seed=11)
    a = a.detach()
    t = t.clone()
    t[t == 4] = 3  # class 4 absent
    crit = CenterLoss(5, 4, dtype=D64)
    with torch.no_grad():
        crit.centers.copy_(torch.randn(5, 4, dtype=D64))
    before = crit.centers.detach().clone()
    alpha = 0.5
    crit.update_centers(a, t, alpha)
    for j in range(5):
        idx = (t == j).nonzero().squeeze(1)
        delta = sum((before[j] - a[i] for i in idx.tolist()), torch.zeros(4, dtype=D64)) / (1 + len(idx))
        torch.testing.assert_close(crit.centers[j].detach(), before[j] - alpha * delta)
        if len(idx):
            # the distance to the class mean shrinks by the factor 1 - alpha n_j / (1 + n_j)
            mean = a[idx].mean(0)
            ratio = (crit.centers[j].detach() - mean).norm() / (before[j] - mean).norm()
            assert ratio.item() == pytest.approx(1 - alpha * len(idx) / (1 + len(idx)))
    torch.testing.assert_close(crit.centers[4].detach(), before[4])
    # repeated updates converge to the class means
    for _ in range(60):
        crit.update_centers(a, t, alpha)
    present = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(crit.centers.detach()[present], _class_means(a, t, 4), atol=1e-9, rtol=0)


def test_center_validation():
    with pytest.raises(ValueError, match="num_classes"):
        CenterLoss(0, 3)
    with pytest.raises(ValueError, match="loss_weight"):
        CenterLoss(3, 3, loss_weight=-1)
    crit = CenterLoss(3, 4)
    with pytest.raises(ValueError, match="features"):
        crit(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        crit(torch.randn(5, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        crit.update_centers(torch.randn(5, 4), torch.zeros(5, dtype=torch.long), alpha=2.0)
    with pytest.raises(ValueError, match="lr"):
        crit.parameter_groups(lr=0.0)


# ----------------------------------------------------------------------------- disturb label


def test_disturb_label_rate_zero_and_eval_unchanged():
    t = torch.randint(0, 10, (100,))
    assert torch.equal(disturb_labels(t, 10, 0.0), t)
    mod = DisturbLabel(10, rate=0.5).eval()
    assert torch.equal(mod(t), t)
    assert DisturbLabel(10).rate == 0.05


@pytest.mark.parametrize("rate,c", [(0.1, 10), (0.05, 100), (1.0, 4)])
def test_disturb_label_change_rate(rate, c):
    n = 200_000
    t = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(1))
    out = disturb_labels(t, c, rate, torch.Generator().manual_seed(2))
    assert out.dtype == t.dtype and out.shape == t.shape
    assert int(out.min()) >= 0 and int(out.max()) < c
    p = rate * (c - 1) / c
    changed = (out != t).double().mean().item()
    assert abs(changed - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    if rate == 1.0:  # labels become uniform, independent of the original ones
        freq = torch.bincount(out, minlength=c).double() / n
        assert torch.all((freq - 1 / c).abs() < 0.01)


def test_disturb_label_reproducible_and_documented_draws():
    t = torch.randint(0, 7, (500,))
    a = DisturbLabel(7, 0.3)(t, torch.Generator().manual_seed(3))
    b = DisturbLabel(7, 0.3)(t, torch.Generator().manual_seed(3))
    c = DisturbLabel(7, 0.3)(t, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(3)
    replace = torch.rand(500, generator=g) < 0.3
    new = torch.randint(0, 7, (500,), generator=g)
    assert torch.equal(a, torch.where(replace, new, t))


def test_disturb_label_validation():
    t = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="rate"):
        DisturbLabel(10, rate=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        disturb_labels(t, 0, 0.1)
    with pytest.raises(ValueError, match="integer"):
        disturb_labels(t.float(), 3, 0.1)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        disturb_labels(t.view(5, 1), 3, 0.1)


# ----------------------------------------------------------------------------- feature dropout


def test_feature_dropout():
    x = torch.randn(400, 64, dtype=D64)
    mod = FeatureDropout()
    assert mod.p == 0.3
    assert torch.equal(mod.eval()(x), x)
    mod.train()
    a = mod(x, torch.Generator().manual_seed(0))
    b = mod(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32) >= 0.3
    torch.testing.assert_close(a, x * keep / 0.7)
    frac = (a == 0).double().mean().item()
    assert abs(frac - 0.3) < 0.02
    out = mod(x)  # F.dropout path
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.7)
    assert torch.equal(feature_dropout(x, 0.0), x)
    assert torch.count_nonzero(feature_dropout(x, 1.0, generator=torch.Generator())) == 0
    with pytest.raises(ValueError, match="dropout probability"):
        FeatureDropout(1.2)
    with pytest.raises(ValueError, match="floating"):
        feature_dropout(torch.ones(3, dtype=torch.long))
