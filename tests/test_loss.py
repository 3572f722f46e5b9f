"""ISDALoss: Algorithm 1, schedule, options passed through, checkpoints, autocast, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference
from torch_isda import ISDALoss
from torch_isda import functional as isda_f


class Net(nn.Module):
    def __init__(self, A=6, C=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, A), nn.ReLU())
        self.fc = nn.Linear(A, C)

    def forward(self, x):
        a = self.body(x)
        return a, self.fc(a)


def batches(n=6, N=16, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(N, 5, generator=g), torch.randint(0, C, (N,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("kind", ["full", "diagonal", "shared", "identity"])
def test_forward_updates_first_then_equals_eq7(kind):
    torch.manual_seed(0)
    net = Net().double()
    crit = ISDALoss(6, 4, lambda0=0.5, kind=kind, dtype=torch.float64)
    seen_x, seen_y = [], []
    for step, (x, y) in enumerate(batches()):
        crit.set_progress(step / 6)
        a, z = net(x.double())
        seen_x.append(a.detach())
        seen_y.append(y)
        loss = crit(a, z, y, net.fc.weight)
        cov = reference.class_covariance(kind, torch.cat(seen_x), torch.cat(seen_y), 4)
        ref = reference.isda_bound(z, net.fc.weight, y, cov, 0.5 * step / 6, kind).mean()
        torch.testing.assert_close(loss, ref)


def test_lambda_zero_equals_cross_entropy():
    net = Net()
    crit = ISDALoss(6, 4, lambda0=3.0)
    x, y = batches(1)[0]
    a, z = net(x)
    assert crit.ratio == 0.0
    assert torch.equal(crit(a, z, y, net.fc.weight), F.cross_entropy(z, y))
    crit2 = ISDALoss(6, 4, lambda0=0.0, constant_lambda=True)
    assert torch.equal(crit2(a, z, y, net.fc.weight), F.cross_entropy(z, y))


def test_schedule_and_constant_lambda():
    crit = ISDALoss(3, 2, lambda0=0.8)
    crit.set_progress(0.25)
    assert crit.ratio == pytest.approx(0.2)
    assert ISDALoss(3, 2, lambda0=0.8, constant_lambda=True).ratio == 0.8
    with pytest.raises(ValueError, match="progress"):
        crit.set_progress(1.5)


def test_options_pass_through_and_ignore_index():
    net = Net()
    x, y = batches(1, N=12)[0]
    y = y.clone()
    y[[1, 5]] = -1
    a, z = net(x)
    crit = ISDALoss(6, 4, lambda0=0.7, constant_lambda=True, ignore_index=-1, label_smoothing=0.1,
                    reduction="sum")
    loss = crit(a, z, y, net.fc.weight)
    valid = y != -1
    # ignored samples do not update the estimator
    assert int(crit.estimator.count.sum()) == int(valid.sum())
    ref_cov = reference.class_covariance("full", a.detach()[valid], y[valid], 4).float()
    aug = isda_f.augment_logits(z[valid], net.fc.weight, y[valid], ref_cov, 0.7)
    ref = F.cross_entropy(aug, y[valid], reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_eval_mode_does_not_update():
    net = Net()
    crit = ISDALoss(6, 4).eval()
    x, y = batches(1)[0]
    a, z = net(x)
    crit(a, z, y, net.fc.weight)
    assert int(crit.estimator.count.sum()) == 0


def test_state_dict_round_trip_mid_training_gives_identical_next_loss():
    torch.manual_seed(0)
    net = Net()
    crit = ISDALoss(6, 4, lambda0=0.5)
    data = batches(8)
    for step, (x, y) in enumerate(data[:5]):
        crit.set_progress(step / 8)
        a, z = net(x)
        crit(a, z, y, net.fc.weight)
    state = crit.state_dict()
    fresh = ISDALoss(6, 4, lambda0=0.5)
    fresh.load_state_dict(state)
    x, y = data[5]
    a, z = net(x)
    assert torch.equal(crit(a, z, y, net.fc.weight), fresh(a, z, y, net.fc.weight))
    assert fresh.ratio == crit.ratio


def test_bf16_autocast_cpu():
    torch.manual_seed(0)
    net = Net()
    crit = ISDALoss(6, 4, lambda0=0.5, constant_lambda=True)
    for x, y in batches(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, z = net(x)
            loss = crit(a, z, y, net.fc.weight)
        loss.backward()
        assert torch.isfinite(loss)
    assert crit.estimator.covariance.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_bad_input_names_problem_and_keeps_state():
    net = Net()
    crit = ISDALoss(6, 4)
    x, y = batches(1)[0]
    a, z = net(x)
    crit(a, z, y, net.fc.weight)
    snap = {k: v.clone() for k, v in crit.state_dict().items()}
    bad_y = y.clone()
    bad_y[0] = 4
    cases = [
        ((a, z, bad_y, net.fc.weight), "labels must lie in \\[0, 4\\)"),
        ((a[:, :5], z, y, net.fc.weight), "features must be N x A"),
        ((a, z[:, :3], y, net.fc.weight), "logits have 3 classes"),
        ((a, z, y, net.fc.weight[:, :5]), "weight must be C x A"),
        ((a[:8], z, y, net.fc.weight), "features must be N x A"),
        ((torch.full_like(a, float("nan")), z, y, net.fc.weight), "NaN or Inf"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            crit(*args)
        for k, v in crit.state_dict().items():
            assert torch.equal(v, snap[k]), k


def test_schedule_helpers():
    assert ISDALoss.scheduled_ratio(0.5, 0.3, False) == pytest.approx(0.15)
    assert ISDALoss.scheduled_ratio(0.5, 0.3, True) == 0.5
    assert ISDALoss.checked_progress(1) == 1.0 and type(ISDALoss.checked_progress(1)) is float
    for bad in (-1e-9, 1.0 + 1e-9, float("nan")):
        with pytest.raises(ValueError, match=r"progress t/T must lie in \[0, 1\]; got"):
            ISDALoss.checked_progress(bad)
    crit = ISDALoss(3, 2, 0.5)
    with pytest.raises(ValueError):
        crit.set_progress(2.0)
    assert float(crit.progress) == 0.0 and crit.ratio == 0.0  # a rejected value changes nothing
