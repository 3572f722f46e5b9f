"""Table 5's generator-based and distributional baselines: the class-conditional GANs
(torch_isda.visualize.conditional_gan, ``isda gan train --kind``), the ``gan_augment``
modifier and the ``distribution_net`` criterion (torch_isda.train.criteria.generative_augmentation)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("matplotlib")

from torch_isda import cli  # noqa: E402
from torch_isda.train.criteria.generative_augmentation import (  # noqa: E402
    GANAugmentCriterion,
    distribution_net_loss,
    gaussian_entropy_per_dim,
    synthetic_count,
)
from torch_isda.train.criteria import CompositeCriterion, create_criterion  # noqa: E402
from torch_isda.cli.gan import KINDS  # noqa: E402
from torch_isda.visualize.conditional_gan import (  # noqa: E402
    CONDITIONAL_KINDS,
    ConditionalGANConfig,
    ConditionalGenerator,
    PerClassGenerator,
    load_conditional_checkpoint,
    load_conditional_generator,
    train_conditional_gan,
)

TINY = {"iterations": 3, "batch_size": 8, "dim": 16, "progress": False}


def test_cli_kinds_match_library():
    assert KINDS == ("wgan-gp",) + CONDITIONAL_KINDS


# ---------------------------------------------------------------------------- GANs


@pytest.mark.parametrize("kind", CONDITIONAL_KINDS)
def test_each_kind_trains_on_digits_and_generates_asked_classes(kind, tmp_path):
    from torch_isda.data import create_dataset

    data = create_dataset("digits")
    classes = 10
    if kind == "wgan-per-class":  # one WGAN-GP run per class: keep the test to 3 classes
        keep = data.train_labels < 3
        data = SimpleNamespace(name="digits", train_images=data.train_images[keep], num_classes=3,
                               train_labels=data.train_labels[keep], mean=data.mean, std=data.std)
        classes = 3
    G = train_conditional_gan(data, tmp_path, kind, **TINY)
    assert (tmp_path / "gan.pt").exists() and (tmp_path / "samples.png").exists()
    labels = torch.tensor([0, 2, 2, classes - 1, 1])
    images = G.sample(labels, torch.Generator().manual_seed(0))
    assert images.shape == (5, 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    z = torch.randn(5, G.z_dim)
    codes = torch.rand(5, G.codes) * 2 - 1 if G.codes else None
    out = G(z, labels, codes)
    if kind == "wgan-per-class":
        # routed to the generator of each asked class
        for i, c in enumerate(labels.tolist()):
            torch.testing.assert_close(out[i], G.generators[c](z[i:i + 1])[0])
        assert G.z_dim == 100 and G.codes == 0
    else:
        # the class enters as the one-hot input of the network (plus infogan's 2 codes)
        parts = [z, F.one_hot(labels, classes).float()] + ([codes] if codes is not None else [])
        torch.testing.assert_close(out, G.net(torch.cat(parts, 1)))
        assert G.z_dim == 100 and G.codes == (2 if kind == "infogan" else 0)
        other = G(z, (labels + 1) % classes, codes)
        assert not torch.allclose(out, other)  # the class changes the image
    loaded = load_conditional_generator(tmp_path)
    assert loaded.kind == kind and loaded.dataset == "digits" and loaded.num_classes == classes
    torch.testing.assert_close(loaded(z, labels, codes), G(z, labels, codes))


def test_conditional_gan_resume_equals_uninterrupted(tmp_path):
    a = train_conditional_gan("digits", tmp_path / "a", "acgan", **{**TINY, "iterations": 4})
    train_conditional_gan("digits", tmp_path / "b", "acgan", **{**TINY, "iterations": 2})
    b = train_conditional_gan("digits", tmp_path / "b", "acgan", **{**TINY, "iterations": 4})
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert load_conditional_checkpoint(tmp_path / "b")["iteration"] == 4
    with pytest.raises(ValueError, match="holds a acgan GAN, not cgan"):
        train_conditional_gan("digits", tmp_path / "b", "cgan", **TINY)


def test_conditional_config_errors():
    with pytest.raises(ValueError, match="unknown conditional GAN kind"):
        ConditionalGANConfig(kind="dcgan")
    with pytest.raises(ValueError, match="infogan option"):
        ConditionalGANConfig(kind="cgan", codes=2)


def test_cli_gan_train_kind(tmp_path, capsys):
    out = tmp_path / "cgan"
    args = ["gan", "train", "--kind", "cgan", "--out", str(out), "--iterations", "2", "--dim", "16",
            "--batch-size", "8", "--device", "cpu", "--quiet"]
    assert cli.main(args) == 0
    assert "cgan generator: 2 iterations on digits 1x8x8 images, 10 classes" in capsys.readouterr().out
    assert cli.main(["gan", "train", "--kind", "cgan", "--out", str(out), "--iterations", "3", "--dim", "32",
                     "--quiet"]) == 2
    assert "exists with other settings: --dim 32 (saved: 16)" in capsys.readouterr().err
    assert cli.main(["gan", "train", "--kind", "acgan", "--out", str(out), "--quiet"]) == 2
    assert "holds a cgan GAN, not acgan" in capsys.readouterr().err
    assert cli.main(["gan", "train", "--kind", "cgan", "--out", str(tmp_path / "x"), "--n-critic", "2",
                     "--iterations", "1", "--quiet"]) == 2
    assert "--n-critic does not apply to --kind cgan" in capsys.readouterr().err


# ---------------------------------------------------------------------------- gan_augment


class _LabelPainter(nn.Module):
    """A fake conditional generator: every pixel of the image of class c is 2c/9 - 1."""

    num_classes, z_dim, codes, image_shape = 10, 3, 0, (1, 4, 4)
    mean, std, dataset = (0.25,), (0.5,), "digits"

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, labels, codes=None):
        return (2 * labels.float() / 9 - 1).view(-1, 1, 1, 1).expand(-1, *self.image_shape) + 0 * self.dummy


@pytest.mark.parametrize("batch,proportion,expected", [(10, "1/6", 2), (125, "1/6", 25), (8, 0.2, 2),
                                                       (12, Fraction(1, 4), 4), (7, 0.0, 0)])
def test_gan_augment_mixes_exact_proportion_with_generating_labels(batch, proportion, expected):
    crit = GANAugmentCriterion(10, generator=_LabelPainter(), proportion=proportion)
    assert synthetic_count(batch, proportion) == expected
    x = torch.randn(batch, 1, 4, 4)
    y = torch.randint(0, 10, (batch,))
    torch.manual_seed(0)
    mixed_x, mixed_y = crit.transform_batch(x, y)
    assert mixed_x.shape == (batch + expected, 1, 4, 4) and mixed_y.shape == (batch + expected,)
    if expected:
        assert Fraction(expected, batch + expected) == Fraction(str(proportion))
    torch.testing.assert_close(mixed_x[:batch], x)
    assert torch.equal(mixed_y[:batch], y)
    # synthetic images, un-normalised, show the class they were generated for
    pixels = mixed_x[batch:] * 0.5 + 0.25
    painted = (pixels.flatten(1).mean(1) * 9).round().long()
    assert torch.equal(painted, mixed_y[batch:])
    crit.eval()
    same_x, same_y = crit.transform_batch(x, y)
    assert same_x is x and same_y is y


def test_gan_augment_with_trained_generator_in_a_run(tmp_path):
    gan = tmp_path / "acgan"
    train_conditional_gan("digits", gan, "acgan", **TINY)
    crit = create_criterion(f"ce+gan_augment(generator={gan})", 16, 10)
    assert isinstance(crit, CompositeCriterion)
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,))
    crit.train()
    mx, my = crit.transform_batch(x, y)
    assert mx.shape[0] == 12 and my[10:].min() >= 0 and my[10:].max() < 10
    assert not any("generator" in k for k in crit.state_dict())  # a fixed map, not state
    out = tmp_path / "run"
    assert cli.main(["train", "--loss", f"ce+gan_augment(generator={gan},proportion=0.2)", "--epochs", "1",
                     "--model-kwargs", "width=4", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["loss"] == f"ce+gan_augment(generator={gan},proportion=0.2)"
    assert 0 <= result["final_error"] <= 100


def test_gan_augment_errors(tmp_path):
    with pytest.raises(ValueError, match="needs generator=RUN"):
        GANAugmentCriterion(10)
    with pytest.raises(ValueError, match="proportion must be in"):
        GANAugmentCriterion(10, generator=_LabelPainter(), proportion=1.0)
    with pytest.raises(ValueError, match="makes 10 classes, the model has 100"):
        GANAugmentCriterion(100, generator=_LabelPainter())
    with pytest.raises(ValueError, match="trained on digits, the run uses cifar10"):
        GANAugmentCriterion(10, generator=_LabelPainter(), dataset="cifar10")
    crit = GANAugmentCriterion(10, generator=_LabelPainter())
    with pytest.raises(ValueError, match=r"makes \(1, 4, 4\) images; the batch has \(3, 4, 4\)"):
        crit.transform_batch(torch.zeros(6, 3, 4, 4), torch.zeros(6, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="no GAN checkpoint"):
        GANAugmentCriterion(10, generator=str(tmp_path / "missing"))
    from torch_isda.visualize.gan import train_gan

    train_gan("digits", tmp_path / "wgan", iterations=1, batch_size=4, z_dim=4, dim=8, progress=False)
    with pytest.raises(ValueError, match="class-agnostic WGAN-GP"):
        GANAugmentCriterion(10, generator=str(tmp_path / "wgan"))


# ---------------------------------------------------------------------------- DistributionNet


def _reference(mu, sigma, weight, bias, target, noise, lam, beta, margin_std):
    """Float64 loops over images and samples (Yu et al., Sec. 3)."""
    n, a = mu.shape
    gamma = math.log(margin_std) + 0.5 * (1 + math.log(2 * math.pi))

    def ce(feature, label):
        logits = [sum(weight[k, j] * feature[j] for j in range(a)) + bias[k] for k in range(weight.shape[0])]
        top = max(logits)
        return -(logits[label] - top - math.log(sum(math.exp(v - top) for v in logits)))

    total = 0.0
    for i in range(n):
        m, s, y = mu[i].tolist(), sigma[i].tolist(), int(target[i])
        loss = ce(m, y)
        samples = [[m[j] + float(noise[t, i, j]) * s[j] for j in range(a)] for t in range(noise.shape[0])]
        loss += lam * sum(ce(z, y) for z in samples) / len(samples)
        entropy = 0.5 * math.log(math.prod(2 * math.pi * math.e * v * v for v in s))  # 1/2 log det(2 pi e S)
        loss += beta * max(0.0, gamma - entropy / a)
        total += loss
    return total / n


@pytest.mark.parametrize("samples", [1, 3])
def test_distribution_net_matches_brute_force(samples):
    g = torch.Generator().manual_seed(samples)
    n, a, c = 6, 5, 4
    mu = torch.randn(n, a, generator=g, dtype=torch.float64)
    sigma = torch.rand(n, a, generator=g, dtype=torch.float64) * 3 + 0.05
    sigma[0] = 8.0  # entropy above the margin: hinge inactive for that image
    weight = torch.randn(c, a, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    noise = torch.randn(samples, n, a, generator=g, dtype=torch.float64)
    got = distribution_net_loss(mu, sigma, weight, bias, target, noise, 0.3, 0.7, 2.0)
    want = _reference(mu, sigma, weight, bias, target, noise, 0.3, 0.7, 2.0)
    assert abs(float(got) - want) < 1e-10


def test_distribution_net_collapses_to_cross_entropy_at_zero_variance():
    g = torch.Generator().manual_seed(0)
    mu, weight, bias = torch.randn(8, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    target = torch.randint(0, 3, (8,), generator=g)
    noise = torch.randn(2, 8, 5, generator=g)
    ce = F.cross_entropy(F.linear(mu, weight, bias), target)
    zero = torch.zeros_like(mu)
    assert torch.equal(distribution_net_loss(mu, zero, weight, bias, target, noise, 0.0, 0.0), ce)
    torch.testing.assert_close(distribution_net_loss(mu, zero, weight, bias, target, noise, 0.1, 0.0), 1.1 * ce)
    # the uncertainty hinge stays finite when the variance vanishes
    assert torch.isfinite(distribution_net_loss(mu, zero, weight, bias, target, noise, 0.1, 0.001))


def test_gaussian_entropy_per_dim_matches_torch():
    sigma = torch.rand(4, 6, dtype=torch.float64) + 0.1
    want = torch.distributions.Normal(torch.zeros_like(sigma), sigma).entropy().mean(1)
    torch.testing.assert_close(gaussian_entropy_per_dim(sigma), want)


def test_distribution_net_criterion_trains_its_variance_head():
    model = nn.Sequential()
    fc = nn.Linear(5, 3)
    model.get_classifier = lambda: fc
    crit = create_criterion("distribution_net(weight=0.5,samples=2,beta=1,margin_std=5)", 5, 3)
    feats = torch.randn(7, 5, requires_grad=True)
    torch.manual_seed(0)
    loss = crit(feats, fc(feats), torch.randint(0, 3, (7,)), model)
    loss.backward()
    assert crit.scale.weight.grad is not None and crit.scale.weight.grad.abs().sum() > 0
    assert feats.grad.abs().sum() > 0 and 0 < crit.log_values()["dnet_sigma"]
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        create_criterion("distribution_net(samples=0)", 5, 3)
    with pytest.raises(ValueError, match="margin_std must be > 0"):
        create_criterion("distribution_net(margin_std=0)", 5, 3)


@pytest.mark.parametrize("kind", ["cgan", "acgan", "infogan"])
def test_dcgan_conditional_kinds_on_32x32_colour_images(kind, tmp_path):
    g = torch.Generator().manual_seed(0)
    data = SimpleNamespace(name="cifar-like", train_images=torch.randint(0, 256, (16, 3, 32, 32), generator=g,
                                                                         dtype=torch.uint8),
                           train_labels=torch.arange(16) % 4, num_classes=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    G = train_conditional_gan(data, tmp_path, kind, iterations=1, batch_size=4, dim=8, progress=False)
    assert G.net.__class__.__name__ == "DCGANGenerator"
    assert G.sample(torch.tensor([0, 3, 1])).shape == (3, 3, 32, 32)
    crit = GANAugmentCriterion(4, generator=str(tmp_path), dataset="cifar-like")
    x, y = crit.transform_batch(torch.zeros(5, 3, 32, 32), torch.zeros(5, dtype=torch.long))
    assert x.shape == (6, 3, 32, 32) and y.shape == (6,)
