"""Tests of torch_isda.visualize: WGAN-GP, the two-step feature inversion (Eqs. 20-21) and grids."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

from torch_isda import CovarianceEstimator, ISDALoss  # noqa: E402
from torch_isda.visualize.gan import (  # noqa: E402
    DCGANCritic,
    DCGANGenerator,
    GANConfig,
    atomic_torch_save,
    from_generator_space,
    gradient_penalty,
    load_gan_checkpoint,
    load_generator,
    to_generator_space,
    train_gan,
)
from torch_isda.visualize.grid import image_grid, save_image_grid, save_titled_grid  # noqa: E402
from torch_isda.visualize.inversion import (  # noqa: E402
    augment_features,
    augment_step,
    inversion_objective,
    invert,
    nearest_neighbours,
    normalize_latent,
    run_visualization,
    select_images,
    visualize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- toy generators


class ReshapeGenerator(nn.Module):
    """G(z) = z viewed as a 1 x 4 x 4 image (identity up to a reshape)."""

    z_dim = 16
    image_shape = (1, 4, 4)

    def forward(self, z):
        return z.view(z.shape[0], 1, 4, 4)


class LinearGenerator(nn.Module):
    """G(z) = W z + b with a well-conditioned (orthogonal, scaled) W, reshaped to 1 x 4 x 4."""

    image_shape = (1, 4, 4)

    def __init__(self, z_dim=16):
        super().__init__()
        self.z_dim = z_dim
        q, _ = torch.linalg.qr(torch.randn(16, z_dim, dtype=torch.float64))
        self.lin = nn.Linear(z_dim, 16)
        with torch.no_grad():
            self.lin.weight.copy_(0.3 * q.float())
            self.lin.bias.normal_(0, 0.1)
        self.requires_grad_(False)

    def forward(self, z):
        return self.lin(z).view(z.shape[0], 1, 4, 4)


def flatten(x):
    return x.flatten(1)


# --------------------------------------------------------------------------- normalisation


def test_normalize_latent_zero_mean_unit_std():
    z = torch.randn(5, 32) * 3 + 2
    zh = normalize_latent(z)
    torch.testing.assert_close(zh.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(zh.std(1, correction=0), torch.ones(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(zh.square().sum(1), torch.full((5,), 32.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scale,shift", [(3.0, 0.0), (0.01, 0.0), (2.5, -1.7)])
def test_objective_invariant_to_latent_scale_and_shift(scale, shift):
    """z is normalised inside the objective (Eqs. 20-21): a z + b gives the same value."""
    G = LinearGenerator()
    z = torch.randn(4, 16)
    a = torch.randn(4, 16)
    x = torch.randn(4, 1, 4, 4)
    for imgs in (x, None):  # Eq. 20 and Eq. 21
        base = inversion_objective(G, flatten, z, a, imgs, eta=0.7)[0]
        moved = inversion_objective(G, flatten, z * scale + shift, a, imgs, eta=0.7)[0]
        torch.testing.assert_close(moved, base, rtol=1e-4, atol=1e-5)


def test_objective_terms_and_reductions():
    G = ReshapeGenerator()
    z = torch.randn(3, 16)
    a = torch.randn(3, 16)
    x = torch.randn(3, 1, 4, 4)
    zh = normalize_latent(z)
    loss, fe, pe, imgs = inversion_objective(G, flatten, z, a, x, eta=2.0)
    torch.testing.assert_close(fe, (zh - a).square().mean(1))
    torch.testing.assert_close(pe, (zh - x.flatten(1)).square().mean(1))
    torch.testing.assert_close(loss, fe + 2.0 * pe)
    loss_s, fe_s, pe_s, _ = inversion_objective(G, flatten, z, a, x, eta=2.0, reduction="sum")
    torch.testing.assert_close(fe_s, (zh - a).square().sum(1))  # literal squared L2 norm
    torch.testing.assert_close(loss_s, fe_s + 2.0 * pe_s)
    lone = inversion_objective(G, flatten, z, a, None)[0]  # Eq. 21: feature term only
    torch.testing.assert_close(lone, fe)


# --------------------------------------------------------------------------- Steps I and II


def test_step1_converges_identity_generator():
    """G = reshape, f = identity: the optimum is z^ = x when x is a normalised latent."""
    G = ReshapeGenerator()
    x = normalize_latent(torch.randn(6, 16)).view(6, 1, 4, 4)
    res = invert(G, flatten, x, iterations=400, rng=torch.Generator().manual_seed(1))
    assert res.feature_mse.shape == (6,) and res.pixel_mse.shape == (6,)
    assert float(res.feature_mse.max()) < 1e-5, res.feature_mse
    assert float(res.pixel_mse.max()) < 1e-5
    torch.testing.assert_close(res.z_hat, x.flatten(1), atol=1e-2, rtol=0)
    # the reported images are G of the *normalised* latent
    torch.testing.assert_close(res.images, G(normalize_latent(res.z)))
    assert res.history[0][1] > 100 * res.history[-1][1]


def test_steps_converge_linear_generator_and_feature_map():
    """Linear invertible G and f: Step I recovers G(z^*), Step II reaches a new feature."""
    torch.manual_seed(3)
    G = LinearGenerator()
    F = torch.randn(16, 10) / 4 + torch.eye(16, 10)

    def feature_fn(x):
        return x.flatten(1) @ F

    z_star = torch.randn(5, 16)
    x = G(normalize_latent(z_star))
    s1 = invert(G, feature_fn, x, eta=1.0, iterations=600, lr=10.0, rng=torch.Generator().manual_seed(0))
    assert float(s1.feature_mse.max()) < 1e-5, s1.feature_mse
    assert float(s1.pixel_mse.max()) < 1e-5
    torch.testing.assert_close(s1.images, x, atol=2e-3, rtol=0)

    # Step II targets: features of other reachable images near x, K = 3 per sample
    z_new = z_star.unsqueeze(1) + 0.5 * torch.randn(5, 3, 16)
    target = feature_fn(G(normalize_latent(z_new.reshape(15, 16)))).view(5, 3, 10)
    start = feature_fn(s1.images).unsqueeze(1)
    initial_mse = (target - start).square().mean(-1)
    s2 = augment_step(G, feature_fn, s1.z, target, iterations=600, lr=10.0)
    assert s2.z.shape == (5, 3, 16) and s2.images.shape == (5, 3, 1, 4, 4)
    assert s2.feature_mse.shape == (5, 3) and s2.pixel_mse is None
    assert float(s2.feature_mse.max()) < 1e-5, s2.feature_mse
    assert float((s2.feature_mse / initial_mse).max()) < 1e-3


def test_restarts_keep_best_start():
    """With restarts, each image keeps the start with the lowest final objective."""
    G = LinearGenerator()
    x = G(normalize_latent(torch.randn(3, 16)))
    kw = dict(iterations=3, lr=0.1)
    multi = invert(G, flatten, x, restarts=4, rng=torch.Generator().manual_seed(5), **kw)
    z0 = torch.randn(12, 16, generator=torch.Generator().manual_seed(5))
    singles = invert(G, flatten, x.repeat_interleave(4, 0), z0=z0, **kw)
    best = singles.loss.view(3, 4).min(1).values
    torch.testing.assert_close(multi.loss, best)
    assert multi.z.shape == (3, 16) and multi.images.shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="z0"):
        invert(G, flatten, x, z0=torch.randn(3, 16), restarts=2)


def test_optimiser_does_not_touch_model_parameters():
    G = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Unflatten(1, (1, 4, 4)))
    G.z_dim = 8
    f = nn.Linear(16, 5)
    before = [p.clone() for p in list(G.parameters()) + list(f.parameters())]
    x = torch.rand(3, 1, 4, 4)
    invert(G, lambda im: f(im.flatten(1)), x, iterations=5)
    for p, q in zip(list(G.parameters()) + list(f.parameters()), before):
        assert p.grad is None
        assert torch.equal(p, q)
    assert G.training  # mode restored


def test_paper_lr_schedule_divides_by_ten_each_quarter():
    G = ReshapeGenerator()
    x = normalize_latent(torch.randn(2, 16)).view(2, 1, 4, 4)
    lrs = []
    orig = torch.optim.SGD.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        assert self.param_groups[0]["momentum"] == 0.9 and self.param_groups[0]["weight_decay"] == 1e-4
        return orig(self, *a, **k)

    torch.optim.SGD.step = spy
    try:
        invert(G, flatten, x, iterations=8, lr=10.0)
    finally:
        torch.optim.SGD.step = orig
    assert lrs == pytest.approx([10, 10, 1, 1, 0.1, 0.1, 0.01, 0.01])


# --------------------------------------------------------------------------- ISDA sampling


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_augmented_features_have_lambda_sigma_covariance(kind):
    A, C, lam = 4, 3, 0.6
    est = CovarianceEstimator(A, C, kind, dtype=torch.float64)
    mix = torch.randn(C, A, A, dtype=torch.float64)
    labels = torch.arange(C).repeat_interleave(200)
    feats = torch.einsum("nb,nab->na", torch.randn(len(labels), A, dtype=torch.float64), mix[labels])
    est.update(feats + 3.0, labels)
    a = torch.randn(2, A, dtype=torch.float64)
    y = torch.tensor([2, 0])
    samples = augment_features(a, y, est, lam, 40_000, rng=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 40_000, A)
    for i in range(2):
        s = samples[i]
        sigma = est.covariance[y[i]]
        expected = lam * (sigma if kind == "full" else torch.diag(sigma))
        emp = torch.cov(s.T)
        torch.testing.assert_close(s.mean(0), a[i], atol=4 * math.sqrt(float(expected.diag().max()) / 40_000) + 1e-9, rtol=0)
        scale = float(expected.diag().max())
        torch.testing.assert_close(emp, expected, atol=0.04 * scale, rtol=0)


def test_augment_features_accepts_criterion_and_warns_on_unseen_class():
    crit = ISDALoss(3, 2)
    crit.estimator.update(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    a = torch.randn(2, 3)
    with pytest.warns(UserWarning, match=r"classes \[1\]"):
        out = augment_features(a, torch.tensor([0, 1]), crit, 0.5, 4)
    assert out.shape == (2, 4, 3)
    torch.testing.assert_close(out[1], a[1].expand(4, 3))  # zero covariance: unchanged
    assert not torch.allclose(out[0], a[0].expand(4, 3))


def test_nearest_neighbours_brute_force():
    train = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    q = torch.rand(7, 1, 4, 4)
    idx, dist = nearest_neighbours(q, train, k=3, chunk_size=16)
    d = ((q.flatten(1)[:, None] - train.float().flatten(1)[None] / 255) ** 2).sum(-1).sqrt()
    ref_d, ref_i = d.topk(3, dim=1, largest=False)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(dist, ref_d, atol=1e-5, rtol=0)
    idx0, dist0 = nearest_neighbours(train[:2], train, k=1)  # a training image is its own NN
    assert idx0.view(-1).tolist() == [0, 1] and float(dist0.max()) < 1e-6


def test_select_images_cycles_classes():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    idx = select_images(labels, 5)
    assert labels[idx].tolist() == [0, 1, 2, 0, 1]
    assert len(set(idx.tolist())) == 5


# --------------------------------------------------------------------------- WGAN-GP


def test_gradient_penalty_zero_for_unit_gradient_critic():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.normal_()
        critic[1].weight /= critic[1].weight.norm()
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    assert gradient_penalty(lambda u: critic(u).squeeze(1), real, fake).item() < 1e-10
    with torch.no_grad():
        critic[1].weight *= 3.0
    gp = gradient_penalty(lambda u: critic(u).squeeze(1), real, fake)
    assert gp.item() == pytest.approx(4.0, rel=1e-5)  # (3 - 1)^2
    gp.backward()
    assert critic[1].weight.grad is not None  # differentiable w.r.t. the critic


def test_dcgan_cifar_shapes():
    cfg = GANConfig(image_shape=(3, 32, 32))
    assert cfg.arch == "dcgan" and cfg.dim == 128 and cfg.z_dim == 128
    assert (cfg.lr, cfg.betas, cfg.n_critic, cfg.gp_weight) == (1e-4, (0.0, 0.9), 5, 10.0)  # Gulrajani et al.
    assert GANConfig(image_shape=(1, 8, 8)).arch == "mlp"
    G, D = DCGANGenerator(16, (3, 32, 32), dim=8), DCGANCritic((3, 32, 32), dim=8)
    x = G(torch.randn(2, 16))
    assert x.shape == (2, 3, 32, 32) and x.detach().abs().max().item() <= 1.0
    assert D(x).shape == (2,)
    with pytest.raises(ValueError, match="power-of-two"):
        GANConfig(image_shape=(3, 24, 24), arch="dcgan")


def test_train_dcgan_tiny(tmp_path):
    imgs = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    train_gan(imgs, tmp_path, iterations=1, batch_size=4, z_dim=8, dim=4, progress=False, sample_every=0)
    G = load_generator(tmp_path)
    assert G.config.arch == "dcgan" and G.config.lr == 1e-4 and G.config.betas == (0.0, 0.9)
    assert G(torch.randn(3, 8)).shape == (3, 3, 32, 32)


def test_generator_space_round_trip():
    u8 = torch.tensor([[[[0, 255], [128, 64]]]], dtype=torch.uint8)
    g = to_generator_space(u8)
    assert float(g.min()) == -1.0 and float(g.max()) == 1.0
    torch.testing.assert_close(from_generator_space(g), u8.float() / 255)


def _tiny_images(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def test_train_gan_checkpoint_atomic_and_reloadable(tmp_path):
    out = tmp_path / "gan"
    G = train_gan(_tiny_images(), out, iterations=4, batch_size=8, z_dim=8, seed=0, progress=False,
                  sample_every=2, dim=16, log_every=2)
    names = sorted(os.listdir(out))
    assert names == ["gan.pt", "gan_log.jsonl", "samples.png"], names  # no temp files left
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    state = load_gan_checkpoint(out)
    assert state["iteration"] == 4 and state["config"]["arch"] == "mlp" and state["config"]["gp_weight"] == 10.0
    assert state["config"]["n_critic"] == 5 and state["config"]["batch_size"] == 8
    assert state["config"]["lr"] == 1e-3 and state["config"]["betas"] == (0.5, 0.9)  # mlp defaults
    logs = [json.loads(line) for line in (out / "gan_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logs] == [2, 4]
    G2 = load_generator(out)
    assert not G2.training and G2.z_dim == 8 and G2.image_shape == (1, 8, 8) and G2.iteration == 4
    assert all(not p.requires_grad for p in G2.parameters())
    z = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(G2(z), G(z))


def test_train_gan_resume_equals_uninterrupted(tmp_path):
    kw = dict(batch_size=8, z_dim=8, seed=3, progress=False, sample_every=0, dim=16)
    data = _tiny_images()
    G_full = train_gan(data, tmp_path / "a", iterations=4, **kw)
    train_gan(data, tmp_path / "b", iterations=2, **kw)
    G_res = train_gan(data, tmp_path / "b", iterations=4, **kw)
    for p, q in zip(G_full.parameters(), G_res.parameters()):
        torch.testing.assert_close(p, q)
    assert load_gan_checkpoint(tmp_path / "b")["iteration"] == 4


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "gan.pt"
    atomic_torch_save({"v": 1}, path)
    real_save = torch.save

    def broken(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"v": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["gan.pt"]


def test_load_generator_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GAN checkpoint"):
        load_generator(tmp_path)
    torch.save({"something": 1}, tmp_path / "gan.pt")
    with pytest.raises(ValueError, match="not a torch_isda GAN checkpoint"):
        load_generator(tmp_path)


# --------------------------------------------------------------------------- grids


def test_image_grid_layout_and_png(tmp_path):
    imgs = torch.zeros(5, 1, 2, 3)
    imgs[4] = 1.0
    grid = image_grid(imgs, nrow=3, padding=1, pad_value=0.5)
    assert grid.shape == (2 * 2 + 3, 3 * 3 + 4)
    assert grid[4, 5] == 1.0 and grid[1, 1] == 0.0 and grid[0, 0] == 0.5
    rgb = image_grid(torch.rand(2, 3, 4, 4))
    assert rgb.shape == (6, 11, 3)
    p = save_image_grid(tmp_path / "g.png", imgs)
    assert p.read_bytes()[:8] == PNG_MAGIC
    p2 = save_titled_grid(tmp_path / "t.png", [("a", imgs), ("b", torch.rand(5, 1, 2, 3))], row_labels=list("vwxyz"))
    assert p2.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="every column"):
        save_titled_grid(tmp_path / "bad.png", [("a", imgs), ("b", imgs[:2])])


# --------------------------------------------------------------------------- end to end


def test_end_to_end_digits(tmp_path):
    pytest.importorskip("sklearn")
    from torch_isda.data import create_dataset, normalize
    from torch_isda.models import create_model

    ds = create_dataset("digits")
    G = train_gan(ds, tmp_path / "gan", iterations=3, batch_size=16, seed=0, progress=False, dim=32)
    model = create_model("digits_cnn", 10, width=4)
    crit = ISDALoss(model.num_features, 10, lambda0=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = normalize(ds.train_images[:256], ds.mean, ds.std), ds.train_labels[:256]
    for i in range(0, 256, 64):
        f = model.forward_features(x[i : i + 64])
        loss = crit(f, model.fc(f), y[i : i + 64], model.fc.weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.train()
    result, paths = run_visualization(
        tmp_path / "vis", model, crit, load_generator(tmp_path / "gan"), ds, lam=0.5, num_samples=3,
        num_augmented=2, num_neighbours=2, step1_iterations=5, step2_iterations=5, progress=False,
    )
    assert model.training  # mode restored
    assert result.originals.shape == (3, 1, 8, 8) and result.reconstructions.shape == (3, 1, 8, 8)
    assert result.augmented.shape == (3, 2, 1, 8, 8)
    assert result.neighbour_images.shape == (3, 2, 2, 1, 8, 8)
    assert result.labels.tolist() == [0, 1, 2]
    for key in ("augmented", "neighbours"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
    assert result.augmented_predictions.shape == (3, 2) and result.reconstruction_predictions.shape == (3,)
    summary = json.loads(paths["summary"].read_text())
    for key in ("step1_feature_mse", "step1_pixel_mse", "step2_feature_mse", "augmentation_mse", "augmented_accuracy"):
        assert math.isfinite(summary[key])
    assert summary["settings"]["lam"] == 0.5 and summary["settings"]["dataset"] == "digits"
    # the classifier's BN was in eval mode: features of the originals match eval-mode features
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result.features, model.forward_features(normalize(result.originals, ds.mean, ds.std)))


def test_visualize_requires_normalisation():
    G = ReshapeGenerator()
    clf = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="mean and std"):
        visualize(clf, None, G, torch.rand(1, 1, 4, 4), torch.tensor([0]), 0.5)
