"""Table 5's distributional and generator-based baselines as training criteria.

``distribution_net`` (primary) — DistributionNet (Yu, Li, Yang, Hospedales & Xiang,
"Robust Person Re-identification by Modelling Feature Uncertainty", ICCV 2019; the ISDA
paper's [40]). Each sample's deep feature is a Gaussian ``N(mu, diag(sigma^2))`` instead
of a point: ``mu`` is the network's feature and ``sigma = softplus(V mu + c)`` comes from a
learned linear layer owned by the criterion (the official network computes mean and scale
with two heads on the backbone output; ours puts the scale head on the mean). The loss of
Yu et al., Sec. 3 (written with the paper's symbols; its equation numbers were not
available to us, so the terms are named as in the paper, ``L_ce`` and ``L_fu``, and were
checked against the authors' released code):

* reparameterisation: ``z^(j) = mu + eps^(j) * sigma``, ``eps^(j) ~ N(0, I)``,
  ``j = 1..N`` samples per image;
* classification loss: ``L_ce = l(g(mu), y) + lambda (1/N) sum_j l(g(z^(j)), y)`` with
  ``g`` the classifier and ``l`` the cross-entropy;
* feature-uncertainty loss: ``L_fu = max(0, gamma - H(N(mu, Sigma)))`` with the Gaussian
  entropy ``H = 1/2 log det(2 pi e Sigma) = sum_k [1/2 log(2 pi e) + log sigma_k]``; it
  keeps the uncertainties from collapsing to zero, while ``L_ce`` on the samples pushes
  them down, so that only hard / noisy samples keep a large variance;
* total: ``L = L_ce + beta L_fu`` (per image, averaged over the mini-batch).

Defaults follow the authors' released code (TianyuanYu/DistributionNet, ``utils.py`` and
``train_ReID_classifier.py``): ``lambda = 0.1`` (``sampled_ce_loss_weight``), ``N = 1``
(``sample_number``), ``beta = 0.001`` (the entropy loss weight), and the entropy and margin
taken *per feature dimension*, ``gamma = log(margin_std) + (1 + log 2 pi) / 2`` with
``margin_std = 5`` (the code divides the entropy by the 2048 feature dimensions and uses
``sigma_avg = 5``). Spec arguments: ``distribution_net(weight=0.1, samples=1, beta=0.001,
margin_std=5)``. With ``sigma = 0`` the samples equal ``mu`` and ``L_ce = (1 + lambda)
l(g(mu), y)``: the cross-entropy (exactly it with ``lambda = 0``).

``gan_augment`` (modifier) — generator-based semantic augmentation (Appendix C): synthetic
images from a class-conditional generator (``isda gan train --kind wgan-per-class|cgan|
acgan|infogan``), labeled with the class they were generated for, are mixed into every
training mini-batch so that they make up ``proportion`` of it (the paper's 1/6): a batch
of ``B`` real images gets ``n = round(B p / (1 - p))`` synthetic ones appended (exactly
``p`` when ``B p / (1 - p)`` is an integer, e.g. ``B = 10`` or ``B = 125`` with
``p = 1/6``). Classes are drawn uniformly, noise ``z ~ N(0, I)`` (infoGAN codes
``~ U(-1, 1)``), from the global torch RNG (seeded by ``--seed``, saved in checkpoints). The
images are mapped from the generator's ``[-1, 1]`` to ``[0, 1]`` and normalised with the
mean/std of the dataset the generator was trained on (saved in its ``gan.pt``); they get no
crop/flip. The generator is a fixed map: it is not part of the criterion's state (not
saved in checkpoints, no gradients). Spec: ``ce+gan_augment(generator=runs/gan-acgan)``,
``gan_augment(generator=RUN, proportion=0.2)``; ``proportion`` also accepts ``"1/6"``.
The training loss and error of the run are those of the mixed batches.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import CriterionModifier, TrainingCriterion, register_criterion

__all__ = [
    "DistributionNetCriterion",
    "GANAugmentCriterion",
    "distribution_net_loss",
    "gaussian_entropy_per_dim",
    "synthetic_count",
]

_HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


def gaussian_entropy_per_dim(sigma: Tensor) -> Tensor:
    """``H(N(mu, diag(sigma^2))) / A`` per row of ``sigma`` (``N x A``); ``sigma`` is
    clamped to the smallest normal float, so an underflowed ``softplus`` gives a large
    finite hinge instead of infinity."""
    return _HALF_LOG_2PI_E + torch.log(sigma.clamp_min(torch.finfo(sigma.dtype).tiny)).mean(1)


def distribution_net_loss(mu: Tensor, sigma: Tensor, weight: Tensor, bias: Optional[Tensor],
                          target: Tensor, noise: Tensor, sample_weight: float = 0.1,
                          beta: float = 0.001, margin_std: float = 5.0) -> Tensor:
    """DistributionNet's loss ``L_ce + beta L_fu`` (module docstring) for given noise.

    Args:
        mu: ``N x A`` feature means; sigma: ``N x A`` standard deviations (``>= 0``).
        weight, bias: the linear classifier ``g(a) = a W^T + b``.
        target: ``N`` class indices.
        noise: ``S x N x A`` standard-normal draws (``S`` samples per image).
        sample_weight: ``lambda``; beta: weight of ``L_fu``; margin_std: the per-dimension
            margin ``gamma = log(margin_std) + (1 + log 2 pi) / 2``.
    """
    if noise.dim() != 3 or noise.shape[1:] != mu.shape or sigma.shape != mu.shape:
        raise ValueError(f"expected mu, sigma of shape N x A and noise S x N x A; got "
                         f"{tuple(mu.shape)}, {tuple(sigma.shape)}, {tuple(noise.shape)}")
    loss = F.cross_entropy(F.linear(mu, weight, bias), target)
    if sample_weight != 0.0:
        samples = mu.unsqueeze(0) + noise * sigma.unsqueeze(0)          # S x N x A
        logits = F.linear(samples.flatten(0, 1), weight, bias)
        loss = loss + sample_weight * F.cross_entropy(logits, target.repeat(noise.shape[0]))
    if beta != 0.0:
        gamma = math.log(margin_std) + _HALF_LOG_2PI_E
        loss = loss + beta * F.relu(gamma - gaussian_entropy_per_dim(sigma)).mean()
    return loss


@register_criterion("distribution_net")
class DistributionNetCriterion(TrainingCriterion):
    """DistributionNet (Yu et al., ICCV 2019): Gaussian features with a learned variance,
    cross-entropy on the mean and on reparameterised samples, feature-uncertainty hinge.

    Args:
        weight: ``lambda``, weight of the sampled features' cross-entropy (0.1).
        samples: ``N``, samples per image (1).
        beta: weight of the feature-uncertainty loss (0.001).
        margin_std: per-dimension entropy margin as a standard deviation (5).
    """

    def __init__(self, num_features: int, num_classes: int, weight: float = 0.1, samples: int = 1,
                 beta: float = 0.001, margin_std: float = 5.0) -> None:
        super().__init__()
        if isinstance(samples, bool) or int(samples) != samples or int(samples) < 1:
            raise ValueError(f"distribution_net samples must be a positive integer; got {samples!r}")
        for name, value in (("weight", weight), ("beta", beta)):
            if not float(value) >= 0.0:
                raise ValueError(f"distribution_net {name} must be >= 0; got {value!r}")
        if not float(margin_std) > 0.0:
            raise ValueError(f"distribution_net margin_std must be > 0; got {margin_std!r}")
        self.sample_weight, self.samples = float(weight), int(samples)
        self.beta, self.margin_std = float(beta), float(margin_std)
        self.scale = nn.Linear(num_features, num_features)
        self._last_sigma: Optional[Tensor] = None

    def sigma(self, features: Tensor) -> Tensor:
        """Standard deviations ``softplus(V mu + c)`` of the feature Gaussians."""
        return F.softplus(self.scale(features))

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module) -> Tensor:
        fc = model.get_classifier()
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"distribution_net needs an nn.Linear classifier; the model has "
                            f"{type(fc).__name__}")
        sigma = self.sigma(features)
        noise = torch.randn((self.samples, *features.shape), device=features.device,
                            dtype=features.dtype)
        self._last_sigma = sigma.detach()
        return distribution_net_loss(features, sigma, fc.weight, fc.bias, target, noise,
                                     self.sample_weight, self.beta, self.margin_std)

    def log_values(self) -> dict[str, float]:
        if self._last_sigma is None:
            return {}
        return {"dnet_sigma": float(self._last_sigma.mean())}


# ---------------------------------------------------------------------------- gan_augment


def _proportion(value: Union[str, float, int, Fraction]) -> Fraction:
    try:
        p = Fraction(str(value).strip()) if isinstance(value, str) else Fraction(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise ValueError(f"gan_augment proportion must be a number or a fraction like '1/6'; "
                         f"got {value!r}") from None
    if not 0 <= p < 1:
        raise ValueError(f"gan_augment proportion must be in [0, 1); got {value!r}")
    return p.limit_denominator(10**6)


def synthetic_count(batch_size: int, proportion: Union[str, float, Fraction]) -> int:
    """Synthetic images added to ``batch_size`` real ones so that they are ``proportion``
    of the mixed batch: ``round(B p / (1 - p))``."""
    p = _proportion(proportion)
    return int(round(Fraction(int(batch_size)) * p / (1 - p)))


@register_criterion("gan_augment")
class GANAugmentCriterion(CriterionModifier):
    """Mix images of a class-conditional generator (``generator=RUN``, a directory of
    ``isda gan train --kind wgan-per-class|cgan|acgan|infogan``) into every training
    mini-batch at ``proportion`` (1/6, Appendix C), labeled with their generating class."""

    def __init__(self, num_classes: int, generator: Any = None,
                 proportion: Union[str, float] = "1/6", dataset: Optional[str] = None) -> None:
        super().__init__()
        if generator is None or (isinstance(generator, str) and not generator.strip()):
            raise ValueError("gan_augment needs generator=RUN, the output directory of "
                             "`isda gan train --kind wgan-per-class|cgan|acgan|infogan`")
        self.proportion = _proportion(proportion)
        if isinstance(generator, (str, Path)):
            from ...visualize.conditional_gan import load_conditional_generator

            path = Path(generator)
            g = load_conditional_generator(path)
            self.source = str(path)
        else:
            g, self.source = generator, type(generator).__name__
        if int(g.num_classes) != int(num_classes):
            raise ValueError(f"gan_augment: the generator {self.source} makes "
                             f"{g.num_classes} classes, the model has {num_classes}")
        trained_on = getattr(g, "dataset", None)
        if dataset is not None and trained_on and trained_on != dataset:
            raise ValueError(f"gan_augment: the generator {self.source} was trained on "
                             f"{trained_on}, the run uses {dataset}")
        mean = torch.tensor(getattr(g, "mean", (0.5,) * g.image_shape[0]), dtype=torch.float32)
        std = torch.tensor(getattr(g, "std", (0.5,) * g.image_shape[0]), dtype=torch.float32)
        # kept out of the module tree: a fixed map, not criterion state (not checkpointed)
        self.__dict__["generator"] = g.eval().requires_grad_(False)
        self.num_classes = int(num_classes)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, num_features: int, num_classes: int, config: Any, **kwargs: Any
                    ) -> GANAugmentCriterion:
        kwargs.setdefault("dataset", getattr(config, "dataset", None))
        return cls(num_classes, **kwargs)

    def synthesize(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``n`` normalised synthetic images and their (uniformly drawn) classes."""
        g = self.generator
        if next(g.parameters()).device != device:
            g.to(device)
        labels = torch.randint(0, self.num_classes, (n,), device=device)
        z = torch.randn(n, g.z_dim, device=device)
        codes = torch.rand(n, g.codes, device=device).mul(2).sub(1) if g.codes else None
        with torch.no_grad():
            images = g(z, labels, codes).add(1.0).mul(0.5).clamp(0.0, 1.0)
        return (images - self.mean) / self.std, labels

    def transform_batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return images, labels
        shape = tuple(self.generator.image_shape)
        if tuple(images.shape[1:]) != shape:
            raise ValueError(f"gan_augment: the generator {self.source} makes {shape} images; "
                             f"the batch has {tuple(images.shape[1:])}")
        n = synthetic_count(images.shape[0], self.proportion)
        if n == 0:
            return images, labels
        fake, fake_labels = self.synthesize(n, images.device)
        return (torch.cat([images, fake.to(images.dtype)], 0),
                torch.cat([labels, fake_labels.to(labels.dtype)], 0))

    def log_values(self) -> dict[str, float]:
        return {"gan_proportion": float(self.proportion)}
