"""Tests of the semi-supervised building blocks (torch_isda.semi) and CNN-13."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_isda import functional as isda_f
from torch_isda.models import create_model, is_model
from torch_isda.semi import (
    PAPER_TABLE6,
    VAT,
    ZCA,
    MeanTeacher,
    PiModel,
    SemiBatchLoader,
    SemiBatchSampler,
    SemiISDALoss,
    TemporalEnsembling,
    TranslateFlip,
    canonical_method_name,
    consistency_weight,
    create_method,
    global_contrast_normalize,
    kl_div_with_logits,
    labeled_split,
    random_translate,
    semi_supervised_loss,
    sigmoid_rampup,
    softmax_mse,
    translate,
)


@pytest.fixture
def one_thread():
    """Conv nets on a shared 2-core machine run much faster single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_mlp(dtype=torch.float64) -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


# --------------------------------------------------------------------------- CNN-13


def test_cnn13_matches_table10(one_thread) -> None:
    assert is_model("cnn13")
    model = create_model("cnn13", num_classes=10)
    assert model.family == "cnn13"
    assert model.default_input_size == (3, 32, 32)
    assert model.num_features == 128
    assert model.get_classifier() is model.fc
    assert (model.fc.in_features, model.fc.out_features) == (128, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 256, 256, 256, 512, 256, 128]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1, 1]
    assert convs[6].padding == (0, 0)  # 8x8 -> 6x6 before the 6x6 global pool
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 9
    relus = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 9 and all(r.negative_slope == 0.1 for r in relus)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    n_params = sum(p.numel() for p in model.parameters())
    assert 3.0e6 < n_params < 3.2e6  # ~3.1M
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128)
        assert torch.allclose(model(x), model.fc(feats))
        assert model.block3(model.block2(model.block1(x))).shape[-2:] == (6, 6)


def test_cnn13_runs_on_digits(one_thread) -> None:
    model = create_model("cnn13", num_classes=10, in_channels=1, noise_std=0.15)
    assert model.default_input_size == (1, 32, 32)
    x = torch.randn(4, 1, 8, 8)
    logits = model(x)
    assert logits.shape == (4, 10)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no noise / dropout in eval mode


# --------------------------------------------------------------------------- split


def test_labeled_split_balanced_and_reproducible() -> None:
    labels = torch.arange(10).repeat_interleave(50)[torch.randperm(500)]
    split = labeled_split(labels, 40, 10, seed=3, val_fraction=0.25)
    lab, unl, val = split
    assert torch.bincount(labels[lab], minlength=10).tolist() == [3] * 10
    assert torch.bincount(labels[val], minlength=10).tolist() == [1] * 10
    allidx = torch.cat([lab, unl, val]).sort().values
    assert torch.equal(allidx, torch.arange(500))  # disjoint, complete
    again = labeled_split(labels.numpy(), 40, 10, seed=3, val_fraction=0.25)
    assert all(torch.equal(a, b) for a, b in zip(split, again))
    other = labeled_split(labels, 40, 10, seed=4, val_fraction=0.25)
    assert not torch.equal(other.labeled, lab)
    plain = labeled_split(labels.tolist(), 40, 10, seed=3)
    assert plain.validation.numel() == 0 and plain.labeled.numel() == 40


@pytest.mark.parametrize(
    "num_labels, kwargs, match",
    [
        (45, {}, "multiple of num_classes"),
        (0, {}, "multiple of num_classes"),
        (600, {}, "class 0 has only 50"),
        (20, {"val_fraction": 0.1}, "at least 1"),
        (20, {"val_fraction": 1.0}, r"\[0, 1\)"),
    ],
)
def test_labeled_split_errors(num_labels, kwargs, match) -> None:
    labels = torch.arange(10).repeat_interleave(50)
    with pytest.raises(ValueError, match=match):
        labeled_split(labels, num_labels, 10, seed=0, **kwargs)
    with pytest.raises(ValueError, match="lie in"):
        labeled_split(torch.tensor([0, 1, 12]), 2, 2, seed=0)


# --------------------------------------------------------------------------- ZCA


def test_zca_whitens_training_data() -> None:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = (torch.randn(3000, 12, generator=g, dtype=torch.float64) @ mix + 3.0).reshape(3000, 3, 2, 2)
    zca = ZCA(epsilon=1e-8, dtype=torch.float64).fit(x)
    w = zca.transform(x)
    assert w.shape == x.shape and w.dtype == torch.float64
    flat = w.reshape(3000, -1)
    cov = (flat - flat.mean(0)).T @ (flat - flat.mean(0)) / 3000
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(flat.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-10)
    # with a large epsilon the covariance is exactly E diag(s / (s + eps)) E^T
    eps = 0.5
    zca2 = ZCA(epsilon=eps, dtype=torch.float64, chunk_size=700).fit(x)
    flat2 = zca2.transform(x).reshape(3000, -1)
    xc = x.reshape(3000, -1) - x.reshape(3000, -1).mean(0)
    s, e = torch.linalg.eigh(xc.T @ xc / 3000)
    expected = (e * (s / (s + eps))) @ e.T
    cov2 = flat2.T @ flat2 / 3000
    assert torch.allclose(cov2, expected, atol=1e-8)
    # state_dict round trip into a fresh (unfitted) module, and the inverse
    fresh = ZCA(dtype=torch.float64)
    fresh.load_state_dict(zca2.state_dict())
    assert float(fresh.epsilon) == eps
    assert torch.allclose(fresh.transform(x[:5]), zca2.transform(x[:5]))
    assert torch.allclose(fresh.inverse_transform(fresh.transform(x[:5])), x[:5], atol=1e-8)
    with pytest.raises(RuntimeError, match="not fitted"):
        ZCA().transform(x)


def test_global_contrast_normalize() -> None:
    x = torch.rand(4, 3, 4, 4) * 255
    y = global_contrast_normalize(x, scale=55.0).reshape(4, -1)
    assert torch.allclose(y.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(y.norm(dim=1), torch.full((4,), 55.0), rtol=1e-5)


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_translate_zero_is_identity_and_shift_is_exact(padding) -> None:
    x = torch.randn(3, 2, 6, 5)
    assert torch.equal(translate(x, torch.zeros(3, 2, dtype=torch.long), 2, padding), x)
    shifts = torch.tensor([[1, -2], [0, 0], [-2, 2]])
    out = translate(x, shifts, 2, padding)
    assert out.shape == x.shape
    mode = "reflect" if padding == "reflect" else "constant"
    padded = F.pad(x, (2, 2, 2, 2), mode=mode)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], padded[i, :, 2 + dy : 2 + dy + 6, 2 + dx : 2 + dx + 5])
    u8 = (torch.rand(2, 1, 5, 5) * 255).to(torch.uint8)
    assert torch.equal(translate(u8, torch.zeros(2, 2, dtype=torch.long), 2, padding), u8)
    assert translate(u8, torch.tensor([[1, 1], [-1, 2]]), 2, padding).dtype == torch.uint8


def test_random_translate_flip_reproducible() -> None:
    x = torch.randn(16, 3, 8, 8)
    a = TranslateFlip(2, flip=True)(x, torch.Generator().manual_seed(5))
    b = TranslateFlip(2, flip=True)(x, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    no_flip = TranslateFlip(2, flip=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(no_flip(x), random_translate(x, 2, "reflect", torch.Generator().manual_seed(5)))
    assert torch.equal(TranslateFlip(0, flip=False)(x), x)


# --------------------------------------------------------------------------- ramps


def test_sigmoid_rampup_and_weights() -> None:
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(500, 80) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    assert consistency_weight(80, 30.0, 80, labeled_fraction=0.08) == pytest.approx(2.4)
    assert PiModel().weight(80, labeled_fraction=0.08) == pytest.approx(8.0)
    assert VAT().weight(0) == 1.0  # no ramp-up for VAT
    assert canonical_method_name("Mean_Teacher") == "mean-teacher"
    assert canonical_method_name("tempens") == "temporal-ensembling"
    with pytest.raises(ValueError, match="unknown semi-supervised method"):
        canonical_method_name("fixmatch")
    assert len(PAPER_TABLE6) == 22


# --------------------------------------------------------------------------- methods


def test_mean_teacher_update_is_exact_ema() -> None:
    student = _tiny_mlp()
    mt = MeanTeacher(student, alpha=0.999, alpha_rampup=0.99, rampup_steps=1000)
    assert all(not p.requires_grad for p in mt.teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    for step, expected_alpha in [(3, 0.75), (500, 0.99), (2000, 0.999)]:
        old = [p.clone() for p in mt.teacher.parameters()]
        a = mt.update(student, step)
        assert a == pytest.approx(expected_alpha)
        for t, o, s in zip(mt.teacher.parameters(), old, student.parameters()):
            assert torch.allclose(t, a * o + (1 - a) * s, rtol=0, atol=1e-15)
    x = torch.randn(5, 8, dtype=torch.float64)
    out = mt.consistency(student, (x, x))
    assert torch.allclose(out.target_probs, F.softmax(mt.teacher(x), 1))
    assert torch.allclose(out.loss, ((F.softmax(student(x), 1) - out.target_probs) ** 2).mean())
    assert mt.eval_model(student) is mt.teacher


def test_temporal_ensembling_bias_correction() -> None:
    alpha = 0.6
    te = TemporalEnsembling(num_samples=6, num_classes=3, alpha=alpha)
    idx = torch.tensor([0, 2, 4])
    z1 = F.softmax(torch.randn(3, 3), 1)
    z2 = F.softmax(torch.randn(3, 3), 1)
    target, has = te.targets(idx)
    assert not has.any()
    te.record(idx, z1)
    te.end_epoch()
    target, has = te.targets(idx)
    assert has.all() and torch.allclose(target, z1)  # Z / (1 - alpha) = z after one epoch
    te.record(idx, z2)
    te.end_epoch()
    target, _ = te.targets(idx)
    expected = (alpha * (1 - alpha) * z1 + (1 - alpha) * z2) / (1 - alpha**2)
    assert torch.allclose(target, expected)
    assert te.count.tolist() == [2, 0, 2, 0, 2, 0]
    # a constant prediction is its own bias-corrected target at any epoch
    for _ in range(3):
        te.record(idx, z2)
        te.end_epoch()
    te.ensemble.zero_(), te.count.zero_()
    for _ in range(4):
        te.record(idx, z1)
        te.end_epoch()
    assert torch.allclose(te.targets(idx)[0], z1, atol=1e-6)
    # through consistency(): unseen samples fall back to their own prediction
    model = _tiny_mlp(torch.float32)
    x = torch.randn(2, 8)
    out = te.consistency(model, x, indices=torch.tensor([1, 4]))
    p = F.softmax(model(x), 1).detach()
    assert torch.allclose(out.target_probs[0], p[0]) and torch.allclose(out.target_probs[1], z1[2], atol=1e-6)
    assert torch.allclose(out.loss, ((p[1] - z1[2]) ** 2).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="indices"):
        te.consistency(model, x)


def test_vat_perturbation_norm_and_adversarial(one_thread) -> None:
    model = _tiny_mlp()
    x = torch.randn(64, 8, dtype=torch.float64)
    logits = model(x).detach()
    for iters in (1, 3):
        vat = VAT(epsilon=0.5, num_power_iterations=iters, generator=torch.Generator().manual_seed(1))
        r = vat.perturbation(model, x, logits)
        assert r.shape == x.shape and not r.requires_grad
        assert torch.allclose(r.norm(dim=1), torch.full((64,), 0.5, dtype=torch.float64), rtol=1e-5)
        kl_adv = kl_div_with_logits(logits, model(x + r))
        g = torch.Generator().manual_seed(2)
        kl_rand = torch.stack(
            [
                kl_div_with_logits(logits, model(x + 0.5 * VAT.normalize(torch.randn(x.shape, generator=g, dtype=x.dtype))))
                for _ in range(8)
            ]
        ).mean(0)
        assert kl_adv.mean() > 1.5 * kl_rand.mean()
        assert (kl_adv > kl_rand).float().mean() > 0.6
    out = VAT(epsilon=0.5).consistency(model, x)
    assert torch.allclose(out.target_probs, F.softmax(logits, 1))
    assert out.loss.item() > 0 and out.logits.requires_grad


def test_vat_leaves_bn_stats_and_replays_dropout(one_thread) -> None:
    model = create_model("digits_cnn", num_classes=10).train()
    model.features.insert(3, nn.Dropout(0.5))
    bn = model.features[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    x = torch.randn(8, 1, 8, 8)
    # with shared dropout masks and a zero-size step the perturbed pass equals the clean one
    vat = VAT(epsilon=1e-12, xi=1e-12)
    out = vat.consistency(model, x)
    assert out.loss.abs().item() < 1e-6
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2] and bn.track_running_stats


def test_pi_model_consistency() -> None:
    model = _tiny_mlp()
    xa, xb = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    out = PiModel().consistency(model, (xa, xb))
    pa, pb = F.softmax(model(xa), 1), F.softmax(model(xb), 1)
    assert torch.allclose(out.loss, ((pa - pb) ** 2).mean())
    assert torch.allclose(out.target_probs, pb) and not out.target_probs.requires_grad
    assert torch.allclose(softmax_mse(model(xa), pb, torch.tensor([True, False, True, True])),
                          ((pa - pb)[[0, 2, 3]] ** 2).mean())


# --------------------------------------------------------------------------- Eq. (19)


def _fitted_criterion(C=4, A=5, n=40, **kwargs) -> tuple[SemiISDALoss, torch.Tensor]:
    crit = SemiISDALoss(A, C, lambda0=0.5, constant_lambda=True, dtype=torch.float64, **kwargs)
    feats = torch.randn(n, A, dtype=torch.float64)
    target = torch.arange(n) % C
    weight = torch.randn(C, A, dtype=torch.float64, requires_grad=True)
    crit.supervised(feats, feats @ weight.T, target, weight)
    return crit, weight


def test_semi_loss_consistency_equals_functional() -> None:
    crit, weight = _fitted_criterion(eta1=2.0, eta2=3.0)
    cov = crit.isda.estimator.covariance
    assert int(crit.isda.estimator.count.sum()) == 40 and cov.abs().sum() > 0
    logits_u = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    probs = F.softmax(torch.randn(7, 4, dtype=torch.float64), 1)
    got = crit.consistency(logits_u, weight, probs)
    expected = isda_f.isda_consistency_loss(logits_u, weight, probs, cov, 0.5)
    assert torch.allclose(got, expected)
    feats_l = torch.randn(6, 5, dtype=torch.float64)
    y_l = torch.arange(6) % 4
    reg = torch.tensor(0.25, dtype=torch.float64)
    out = crit(feats_l, feats_l @ weight.T, y_l, weight, logits_u, probs, reg)
    cov_after = crit.isda.estimator.covariance  # updated by the labeled batch first
    sup = isda_f.isda_cross_entropy(feats_l @ weight.T, weight, y_l, cov_after, 0.5)
    cons = isda_f.isda_consistency_loss(logits_u, weight, probs, cov_after, 0.5)
    assert torch.allclose(out.loss, sup + 2.0 * cons + 3.0 * reg)
    assert torch.allclose(out.consistency, cons) and torch.allclose(out.supervised, sup)
    out.loss.backward()
    assert weight.grad is not None and logits_u.grad is not None


def test_consistency_gradient_vanishes_at_own_prediction_with_zero_lambda() -> None:
    crit, weight = _fitted_criterion()
    z = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    p = F.softmax(z, 1).detach()
    loss = crit.consistency(z, weight, p, ratio=0.0)
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.abs().max() < 1e-12
    # with lambda > 0 the bound pushes away from the own prediction
    (grad2,) = torch.autograd.grad(crit.consistency(z, weight, p, ratio=1.0), z)
    assert grad2.abs().max() > 1e-4


def test_consistency_bound_upper_bounds_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    N, C, A, lam = 6, 4, 5, 1.0
    W = torch.randn(C, A, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    L = torch.randn(C, A, A, generator=g, dtype=torch.float64) / A**0.5
    cov = L @ L.transpose(1, 2)
    a = torch.randn(N, A, generator=g, dtype=torch.float64)
    p = F.softmax(2 * torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    bound = isda_f.isda_consistency_loss(a @ W.T + b, W, p, cov, lam, reduction="none")
    S = 20000
    aug = isda_f.sample_augmented_features(a, p.argmax(1), cov, lam, S, generator=g)  # N x S x A
    z = aug @ W.T + b
    ce = torch.logsumexp(z, -1, keepdim=True) - z  # N x S x C: CE(W a~ + b, k)
    per_draw = (ce * p.unsqueeze(1)).sum(-1)  # N x S
    mc, se = per_draw.mean(1), per_draw.std(1) / S**0.5
    assert (bound >= mc - 4 * se).all()
    assert (bound - mc).mean() > 0
    # through SemiISDALoss with the same covariance and lambda
    crit = SemiISDALoss(A, C, lambda0=lam, constant_lambda=True, dtype=torch.float64)
    crit.isda.estimator.covariance.copy_(cov)
    assert torch.allclose(crit.consistency(a @ W.T + b, W, p), bound.mean())


def test_use_isda_off_is_base_method_only() -> None:
    crit = SemiISDALoss(5, 4, use_isda=False, eta1=1.0, eta2=2.0)
    assert crit.isda is None and crit.ratio == 0.0
    crit.set_progress(0.5)
    feats = torch.randn(6, 5)
    W = torch.randn(4, 5)
    y = torch.arange(6) % 4
    reg = torch.tensor(0.3)
    out = crit(feats, feats @ W.T, y, W, torch.randn(3, 4), F.softmax(torch.randn(3, 4), 1), reg)
    assert torch.allclose(out.loss, F.cross_entropy(feats @ W.T, y) + 2.0 * reg)
    assert out.consistency == 0


# --------------------------------------------------------------------------- batches


def test_semi_batches_cycle_and_reproduce() -> None:
    labeled = torch.tensor([1, 3, 5, 7, 9])
    unlabeled = torch.tensor([0, 2, 4, 6, 8, 10, 11, 12, 13, 14, 15, 16])
    sampler = SemiBatchSampler(labeled, unlabeled, 4, 4, seed=7)
    assert len(sampler) == 3
    epoch1 = list(sampler)
    u = torch.cat([b[1] for b in epoch1])
    assert torch.equal(u.sort().values, unlabeled)  # one pass over the unlabeled set
    more = [sampler.next_batch() for _ in range(2)]
    lab = torch.cat([b[0] for b in epoch1 + more])  # 20 draws = 4 permutations of 5
    assert torch.bincount(lab, minlength=10)[labeled].tolist() == [4] * 5
    again = SemiBatchSampler(labeled, unlabeled, 4, 4, seed=7)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch1, again))
    state = sampler.state_dict()
    nxt = sampler.next_batch()
    sampler.load_state_dict(state)
    resumed = sampler.next_batch()
    assert torch.equal(nxt[0], resumed[0]) and torch.equal(nxt[1], resumed[1])

    images = torch.randn(17, 1, 8, 8)
    labels = torch.arange(17) % 10
    loader = SemiBatchLoader(images, labels, SemiBatchSampler(labeled, unlabeled, 3, 5, seed=0),
                             augment=TranslateFlip(2, flip=False), num_views=2,
                             generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch.x_labeled.shape == (3, 1, 8, 8) and torch.equal(batch.y_labeled, labels[batch.labeled_indices])
    assert len(batch.unlabeled_views) == 2 and batch.unlabeled_views[0].shape == (5, 1, 8, 8)
    assert not torch.equal(batch.unlabeled_views[0], batch.unlabeled_views[1])
    with pytest.raises(ValueError, match="empty"):
        SemiBatchSampler(labeled, torch.tensor([], dtype=torch.long), 2, 2)


# --------------------------------------------------------------------------- smoke


def _run(model, method, steps, *, use_isda=True, num_samples=60):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(num_samples, 1, 8, 8, generator=g)
    Y = torch.arange(num_samples) % 10
    split = labeled_split(Y, 20, 10, seed=0)
    sampler = SemiBatchSampler(split.labeled, split.unlabeled, 8, 16, steps_per_epoch=steps, seed=0)
    loader = SemiBatchLoader(X, Y, sampler, augment=TranslateFlip(2, flip=False), num_views=method.num_views,
                             generator=torch.Generator().manual_seed(1))
    crit = SemiISDALoss(model.num_features, 10, lambda0=0.5, use_isda=use_isda, eta1=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()
    losses = []
    for step, batch in enumerate(loader, 1):
        crit.set_progress(step / steps)
        out = semi_supervised_loss(model, crit, method, batch.x_labeled, batch.y_labeled, batch.unlabeled_views,
                                   indices=batch.unlabeled_indices, eta2=method.weight(step / steps, 20 / num_samples))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(model, step)
        losses.append(out)
    method.end_epoch()
    if use_isda:
        assert int(crit.isda.estimator.count.sum()) == 8 * steps  # labeled features only
    return losses


def test_smoke_vat_isda_20_steps(one_thread) -> None:
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10)
    losses = _run(model, VAT(epsilon=2.0, xi=1e-3), 20)
    assert len(losses) == 20
    for out in losses:
        assert all(torch.isfinite(t) for t in out)
    assert losses[-1].consistency > 0 and losses[-1].regularizer > 0


@pytest.mark.parametrize("name", ["pi", "temporal-ensembling", "mean-teacher", "vat"])
def test_smoke_every_method_on_cnn13(name, one_thread) -> None:
    torch.manual_seed(0)
    model = create_model("cnn13", num_classes=10, in_channels=1)
    method = create_method(name, model=model, num_samples=60, num_classes=10)
    for use_isda in (True, False):
        for out in _run(model, method, 2, use_isda=use_isda):
            assert all(torch.isfinite(t) for t in out)
