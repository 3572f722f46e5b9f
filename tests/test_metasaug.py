"""MetaSAug's meta step (issue 23 item 4) against a float64 brute force: finite differences
of the meta loss in the covariance, with the ISDA bound, LDAM margins and class weights
written out from the equations; zero meta learning rate is exactly ISDA."""

import math

import pytest
import torch
from torch import nn

from torch_isda import ISDALoss
from torch_isda.baselines.metasaug import MetaSAugLoss, meta_covariance_step, parameter_name

COUNTS = [50, 10, 3]


class TinyNet(nn.Module):
    """``x -> (tanh(V x + c), W f + b)``; optional BatchNorm on the features."""

    def __init__(self, d=3, a=2, c=3, bn=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(d, a)
        self.bn = nn.BatchNorm1d(a) if bn else nn.Identity()
        self.fc = nn.Linear(a, c)

    def forward(self, x):
        f = torch.tanh(self.bn(self.body(x)))
        return f, self.fc(f)


def _data(n, d=3, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.arange(n) % c)


def _covariance(kind, c=3, a=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    if kind == "diagonal":
        return torch.rand(c, a, generator=g, dtype=torch.float64) + 0.1
    m = torch.randn(c, a, a, generator=g, dtype=torch.float64)
    return m @ m.transpose(1, 2) + 0.1 * torch.eye(a, dtype=torch.float64)


def _brute_train_loss(params, x, y, cov, ratio, margins, weights):
    """sum_i w_y CE(z_i + ratio/2 sigma2_i - Delta_y e_y) / sum_i w_y, by loops."""
    V, c, W, b = params
    num = den = 0
    for i in range(x.shape[0]):
        f = torch.tanh(V @ x[i] + c)
        yi = int(y[i])
        aug = []
        for j in range(W.shape[0]):
            d = W[j] - W[yi]
            sigma = cov[yi] if cov.dim() == 3 else torch.diag(cov[yi])
            aug.append(W[j] @ f + b[j] + 0.5 * ratio * (d @ sigma @ d)
                       - (margins[yi] if j == yi else 0.0))
        aug = torch.stack(aug)
        num = num - weights[yi] * (aug[yi] - torch.logsumexp(aug, 0))
        den = den + weights[yi]
    return num / den


def _brute_meta_loss(params, xm, ym):
    V, c, W, b = params
    total = 0
    for i in range(xm.shape[0]):
        z = W @ torch.tanh(V @ xm[i] + c) + b
        total = total - (z[int(ym[i])] - torch.logsumexp(z, 0))
    return total / xm.shape[0]


def _brute_meta_of_cov(net, x, y, xm, ym, cov, ratio, margins, weights, lr):
    params = [p.detach().clone().requires_grad_(True) for p in
              (net.body.weight, net.body.bias, net.fc.weight, net.fc.bias)]
    loss = _brute_train_loss(params, x, y, cov, ratio, margins, weights)
    grads = torch.autograd.grad(loss, params)
    virtual = [p.detach() - lr * g for p, g in zip(params, grads)]
    return float(_brute_meta_loss(virtual, xm, ym))


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_meta_step_equals_finite_differences_of_the_meta_loss(kind):
    net = TinyNet().double()
    x, y = _data(6)
    xm, ym = _data(5, seed=3)
    cov = _covariance(kind)
    loss = MetaSAugLoss(2, 3, lambda0=0.8, kind=kind, meta_lr=0.1, counts=COUNTS).double()
    loss.set_progress(0.75)
    lr = 0.5
    step = meta_covariance_step(net, "fc.weight", loss.augmented_loss, x, y, xm, ym, cov,
                                inner_lr=lr, meta_lr=0.1)
    margins = [0.5 * n ** -0.25 / 3 ** -0.25 for n in COUNTS]
    inv = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in COUNTS]
    weights = [w / sum(inv) * 3 for w in inv]
    ratio = 0.8 * 0.75
    args = (net, x, y, xm, ym)
    assert step.meta_loss.item() == pytest.approx(
        _brute_meta_of_cov(*args, cov, ratio, margins, weights, lr), rel=1e-10)
    h = 1e-5
    fd = torch.zeros_like(cov)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in cov.shape]):
        e = torch.zeros_like(cov)
        e[tuple(idx)] = h
        up = _brute_meta_of_cov(*args, cov + e, ratio, margins, weights, lr)
        down = _brute_meta_of_cov(*args, cov - e, ratio, margins, weights, lr)
        fd[tuple(idx)] = (up - down) / (2 * h)
    assert fd.abs().max() > 1e-6  # the meta loss does depend on the covariance
    assert torch.allclose(step.gradient, fd, rtol=1e-5, atol=1e-9)
    assert torch.allclose(step.covariance, cov - 0.1 * fd, rtol=1e-9, atol=1e-10)
    assert all(p.grad is None for p in net.parameters())


def test_meta_step_leaves_the_network_and_its_statistics_alone():
    net = TinyNet(bn=True).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _data(6)
    loss = MetaSAugLoss(2, 3, kind="full").double()
    loss.set_progress(0.9)
    cov = _covariance("full")
    step = loss.meta_step(net, "fc.weight", x, y, *_data(4, seed=5), inner_lr=0.1)
    assert torch.equal(loss.estimator.covariance, torch.zeros_like(cov))  # not folded here
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    doubled = meta_covariance_step(net, "fc.weight", loss.augmented_loss, x, y,
                                   *_data(4, seed=5), cov, 0.1, 0.1, grad_hook=lambda g: 2 * g)
    plain = meta_covariance_step(net, "fc.weight", loss.augmented_loss, x, y,
                                 *_data(4, seed=5), cov, 0.1, 0.1)
    assert torch.allclose(doubled.covariance, cov - 0.2 * plain.gradient)
    assert step.covariance.shape == cov.shape


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_zero_meta_learning_rate_is_exactly_isda(kind):
    nets = [TinyNet(bn=True, seed=7), TinyNet(bn=True, seed=7)]
    isda = ISDALoss(2, 3, lambda0=0.5, kind=kind)
    meta = MetaSAugLoss(2, 3, lambda0=0.5, kind=kind, meta_lr=0.0)
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in nets]
    for t in range(4):
        x, y = _data(9, seed=10 + t)
        x, xm = x.float(), _data(6, seed=20 + t)[0].float()
        for net, opt, crit in zip(nets, opts, (isda, meta)):
            crit.set_progress(t / 4)
            f, z = net(x)
            if crit is isda:
                loss = isda(f, z, y, net.fc.weight)
            else:
                meta.fold(f, y)
                step = meta.meta_step(net, parameter_name(net, net.fc.weight), x, y, xm,
                                      torch.arange(6) % 3, inner_lr=0.1)
                loss = meta(f, z, y, net.fc.weight, step.covariance)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(isda.estimator.covariance, meta.estimator.covariance)


def test_bad_arguments_raise_one_line():
    with pytest.raises(ValueError, match="supports kind"):
        MetaSAugLoss(2, 3, kind="lowrank")
    with pytest.raises(ValueError, match="counts has 2 entries"):
        MetaSAugLoss(2, 3, counts=[5, 4])
    with pytest.raises(ValueError, match="meta_lr"):
        MetaSAugLoss(2, 3, meta_lr=-1)
    net = TinyNet()
    with pytest.raises(ValueError, match="not a parameter"):
        parameter_name(net, torch.zeros(1))
    with pytest.raises(ValueError, match="not a trainable"):
        meta_covariance_step(net, "nope", MetaSAugLoss(2, 3).augmented_loss, *_data(3),
                             *_data(3), torch.zeros(3, 2, 2), 0.1, 0.1)


def test_margin_and_weight_defaults_follow_the_authors():
    loss = MetaSAugLoss(2, 3, counts=COUNTS)
    assert loss.margins.max().item() == pytest.approx(0.5)
    assert loss.margins[0].item() == pytest.approx(0.5 * (3 / 50) ** 0.25)
    assert loss.class_weights.sum().item() == pytest.approx(3.0)
    assert math.isclose(loss.lambda0, 0.75) and math.isclose(loss.meta_lr, 0.1)


def test_a_metasaug_step_synchronizes_once():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    from _syncs import count_syncs

    net = TinyNet(bn=True)
    loss = MetaSAugLoss(2, 3, counts=COUNTS)
    loss.set_progress(0.9)
    x, y = _data(9)
    x, (xm, ym) = x.float(), (_data(6, seed=4)[0].float(), torch.arange(6) % 3)

    def step():
        f, z = net(x)
        loss.fold(f, y)
        meta = loss.meta_step(net, "fc.weight", x, y, xm, ym, inner_lr=0.1)
        loss(f, z, y, net.fc.weight, meta.covariance).backward()

    step()
    assert count_syncs(step).total == 1
