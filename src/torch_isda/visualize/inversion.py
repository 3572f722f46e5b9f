"""Mapping ISDA-augmented deep features back to pixel space (Wang et al., TPAMI 2021, App. E).

A fixed generator ``G`` (a WGAN-GP, :mod:`.gan`) and a fixed classifier's feature map ``f``
are given. With the latent normalised per sample, ``z^ = (z - mean(z)) / std(z)``:

* **Step I** (Eq. 20) finds the latent of a real image ``x_i`` with feature ``a_i = f(x_i)``::

      z_i = argmin_z ||f(G(z^)) - a_i||^2 + eta ||G(z^) - x_i||^2

* **Step II** (Eq. 21) augments ``a_i`` with ISDA, ``a~_i ~ N(a_i, lambda Sigma_{y_i})`` (Eq. 4),
  and, starting from ``z_i``, finds::

      z'_i = argmin_z' ||f(G(z^')) - a~_i||^2

  so that ``G(z^'_i)`` shows the image whose deep feature is the augmented one.

Both are solved by gradient descent on ``z`` with the paper's optimiser: SGD, momentum 0.9,
L2 weight decay 1e-4, learning rate divided by 10 at every quarter of the iterations (the
paper: 10,000 iterations, lr 10 for Step I and 1 for Step II, divided by 10 every 2,500).

Conventions and choices the paper leaves open (documented defaults):

* **Reduction.** ``reduction="mean"`` (default) divides each squared norm by its number of
  elements (the feature dimension, the number of pixels): the "mean square error" the
  paper reports, and a scale for which ``eta`` does not depend on image or feature size.
  ``reduction="sum"`` is the literal squared L2 norm of Eqs. 20-21. The objective is summed
  over samples, so each latent's gradient is that of its own objective whatever the batch.
* **eta** is not given in the paper; the default 1.0 (with mean reduction) weighs pixel and
  feature errors equally.
* **std** is the population standard deviation (divide by ``z_dim``), so ``||z^||^2 = z_dim``.
* **Learning rates and iterations.** The paper uses 10,000 iterations with lr 10 (Step I)
  and 1 (Step II), for a ResNet-32 and a CIFAR WGAN. The defaults here are CPU-friendly
  values tuned on digits (digits_cnn trained with ISDA, the 8x8 MLP WGAN-GP, 10 test
  images): 1,000 iterations each, Step I lr 0.3 (0.1-0.3 best; 1 and 10 ended with 1.2-2x
  the feature error), Step II lr 1 (0.3-1 best, 3 worse). Pass ``iterations=10_000,
  lr=10`` / ``lr=1`` for the paper's settings.
* **Restarts.** Eq. 20 is non-convex; :func:`visualize` keeps the best of
  ``restarts=4`` random starts of Step I per image (on digits this cut the Step I
  feature MSE from ~0.035 to ~0.015 and the pixel MSE from ~0.09 to ~0.04), not in the
  paper; ``restarts=1`` is the paper's single start and the default of :func:`invert`.
* **Pixel space.** Images are compared in the generator's output space ``[-1, 1]``;
  ``uint8`` images passed to :func:`invert` are converted.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..functional import sample_augmented_features
from .gan import from_generator_space, to_generator_space

__all__ = [
    "InversionResult",
    "VisualizationResult",
    "normalize_latent",
    "inversion_objective",
    "invert",
    "augment_step",
    "augment_features",
    "classifier_feature_fn",
    "keep_nearest",
    "nearest_neighbours",
    "visualize",
    "save_visualization",
    "select_images",
    "run_visualization",
    "STEP1_LR",
    "STEP2_LR",
    "STEP1_ITERATIONS",
    "STEP2_ITERATIONS",
    "VISUALIZE_RESTARTS",
]

STEP1_LR = 0.3
STEP2_LR = 1.0
VISUALIZE_RESTARTS = 4
STEP1_ITERATIONS = 1000
STEP2_ITERATIONS = 1000
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LR_GAMMA = 0.1

FeatureFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- objective


def normalize_latent(z: Tensor, eps: float = 1e-12) -> Tensor:
    """``z^ = (z - mean(z)) / std(z)`` per sample (over all but the first dimension).

    Uses the population standard deviation. Invariant to ``z -> a z + b`` for ``a > 0``.
    """
    flat = z.flatten(1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, keepdim=True, correction=0)
    return ((flat - mean) / std.clamp_min(eps)).view_as(z)


def _sq(diff: Tensor, reduction: str) -> Tensor:
    d = diff.flatten(1).square()
    return d.mean(1) if reduction == "mean" else d.sum(1)


def inversion_objective(
    generator: Callable[[Tensor], Tensor],
    feature_fn: FeatureFn,
    z: Tensor,
    target_features: Tensor,
    target_images: Optional[Tensor] = None,
    eta: float = 1.0,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """Per-sample objective of Eq. 20 (with ``target_images``) or Eq. 21 (without).

    Returns ``(loss, feature_err, pixel_err, images)``: ``loss = feature_err + eta *
    pixel_err`` (``N``), the two squared errors (``N``; ``pixel_err`` is ``None`` without
    ``target_images``) and ``G(z^)``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    images = generator(normalize_latent(z))
    feat_err = _sq(feature_fn(images) - target_features, reduction)
    if target_images is None:
        return feat_err, feat_err, None, images
    pix_err = _sq(images - target_images, reduction)
    return feat_err + float(eta) * pix_err, feat_err, pix_err, images


@dataclass
class InversionResult:
    """Outcome of :func:`invert` or :func:`augment_step` (tensors detached).

    ``z``: optimised latents (un-normalised, as the optimiser holds them); ``z_hat``: their
    normalisation (what ``G`` sees); ``images``: ``G(z_hat)`` in ``[-1, 1]``; ``feature_mse``:
    final per-sample mean squared feature error (always mean-reduced, whatever the
    objective's reduction); ``pixel_mse``: same in pixel space (Step I only, else ``None``);
    ``loss``: final per-sample objective; ``history``: ``(iteration, mean loss)`` pairs.
    Leading dimensions follow the targets (``N`` or ``N x K``).
    """

    z: Tensor
    z_hat: Tensor
    images: Tensor
    feature_mse: Tensor
    pixel_mse: Optional[Tensor]
    loss: Tensor
    history: list = field(default_factory=list)


class _EvalMode:
    """Put modules in eval mode for a block, restoring their previous modes after."""

    def __init__(self, *modules: Any) -> None:
        self.modules = [m for m in modules if isinstance(m, nn.Module)]

    def __enter__(self):
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)


def _module_device(module: Any, default: torch.device) -> torch.device:
    if isinstance(module, nn.Module):
        for t in module.parameters():
            return t.device
        for t in module.buffers():
            return t.device
    return default


def _optimise(
    generator: Callable[[Tensor], Tensor],
    feature_fn: FeatureFn,
    z0: Tensor,
    target_features: Tensor,
    target_images: Optional[Tensor],
    *,
    eta: float,
    iterations: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    lr_step: Optional[int],
    lr_gamma: float,
    reduction: str,
    log_every: int,
    callback: Optional[Callable[[int, Tensor], None]],
) -> InversionResult:
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0; got {iterations}")
    z = z0.detach().clone().float().requires_grad_(True)
    target_features = target_features.detach()
    if target_images is not None:
        target_images = target_images.detach()
    opt = torch.optim.SGD([z], lr=lr, momentum=momentum, weight_decay=weight_decay)
    step = max(1, iterations // 4) if lr_step is None else int(lr_step)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=lr_gamma)
    history: list = []
    with _EvalMode(generator):
        for it in range(iterations):
            loss, _, _, _ = inversion_objective(
                generator, feature_fn, z, target_features, target_images, eta, reduction
            )
            total = loss.sum()
            # gradient w.r.t. z only: no parameter gradients are accumulated in G or f
            (grad,) = torch.autograd.grad(total, z)
            z.grad = grad
            opt.step()
            sched.step()
            if log_every and (it % log_every == 0):
                history.append((it, total.item() / max(1, z.shape[0])))
            if callback is not None:
                callback(it, loss.detach())
        with torch.no_grad():
            loss, feat_err, pix_err, images = inversion_objective(
                generator, feature_fn, z, target_features, target_images, eta, reduction
            )
            feat_mse = feat_err if reduction == "mean" else feat_err / target_features[0].numel()
            pix_mse = None
            if pix_err is not None:
                pix_mse = pix_err if reduction == "mean" else pix_err / target_images[0].numel()
    history.append((iterations, loss.sum().item() / max(1, z.shape[0])))
    z = z.detach()
    return InversionResult(
        z=z, z_hat=normalize_latent(z), images=images.detach(), feature_mse=feat_mse.detach(),
        pixel_mse=None if pix_mse is None else pix_mse.detach(), loss=loss.detach(), history=history,
    )


# --------------------------------------------------------------------------- Step I / II


def invert(
    generator: Callable[[Tensor], Tensor], feature_fn: FeatureFn, images: Tensor, *,
    target_features: Optional[Tensor] = None, eta: float = 1.0, iterations: int = STEP1_ITERATIONS,
    lr: float = STEP1_LR, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY,
    lr_step: Optional[int] = None, lr_gamma: float = LR_GAMMA, reduction: str = "mean",
    z0: Optional[Tensor] = None, z_dim: Optional[int] = None, rng: Optional[torch.Generator] = None,
    restarts: int = 1, log_every: int = 100, callback: Optional[Callable[[int, Tensor], None]] = None,
) -> InversionResult:
    """Step I (Eq. 20): latents ``z_i`` whose generated images match ``images`` in feature
    space (through ``feature_fn``) and, weighted by ``eta``, in pixel space.

    Args:
        generator: fixed map ``N x z_dim -> N x C x H x W`` (put in eval mode while running).
        feature_fn: fixed map from images *in the generator's space* to ``N x A`` features
            (e.g. :func:`classifier_feature_fn`); must be deterministic (eval mode).
        images: ``N x C x H x W`` real images ``x_i``: ``uint8`` (converted to ``[-1, 1]``)
            or floating, already in the generator's space.
        target_features: ``a_i`` (default: ``feature_fn(images)``).
        eta: weight of the pixel term.
        iterations, lr, momentum, weight_decay: SGD settings (paper: 10,000, 10, 0.9, 1e-4).
        lr_step, lr_gamma: lr multiplied by ``lr_gamma`` every ``lr_step`` iterations
            (default: every quarter of ``iterations``, as the paper's 2,500 of 10,000).
        reduction: ``"mean"`` (MSE terms, default) or ``"sum"`` (squared norms, literally).
        z0: initial latents (default ``N(0, I)`` from ``rng``, as the GAN's prior, or
            ``generator.sample_latent(n, rng)`` when the generator has that method, e.g.
            BigGAN's truncated noise, :class:`~torch_isda.visualize.biggan.ClassBoundGenerator`).
        z_dim: latent size when ``z0`` is not given (default ``generator.z_dim``).
        rng: source of the initial latents.
        restarts: optimise this many random initial latents per image (in one batch) and
            keep the one with the lowest final objective. The objective is non-convex; the
            paper uses one start (``restarts=1``, the default). Needs ``z0=None``.
        log_every: record ``(iteration, mean loss)`` in ``history`` this often.
        callback: called as ``callback(iteration, per_sample_loss)`` after each step.

    Returns:
        :class:`InversionResult`; ``feature_mse`` is the final feature-space MSE per sample.
    """
    device = _module_device(generator, images.device)
    x = (to_generator_space(images) if images.dtype == torch.uint8 else images.float()).to(device)
    if target_features is None:
        with torch.no_grad():
            target_features = feature_fn(x)
    restarts = int(restarts)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1; got {restarts}")
    z0 = _initial_latents(generator, z0, z_dim, x.shape[0], restarts, rng, device)
    target_features = target_features.to(device)
    if restarts > 1:  # sample-major copies: rows i*R .. i*R+R-1 belong to image i
        x = x.repeat_interleave(restarts, 0)
        target_features = target_features.repeat_interleave(restarts, 0)
    res = _optimise(
        generator, feature_fn, z0.to(device), target_features, x, eta=eta, iterations=iterations,
        lr=lr, momentum=momentum, weight_decay=weight_decay, lr_step=lr_step, lr_gamma=lr_gamma,
        reduction=reduction, log_every=log_every, callback=callback,
    )
    return res if restarts == 1 else _best_restarts(res, restarts)


def _initial_latents(generator: Any, z0: Optional[Tensor], z_dim: Optional[int], n: int, restarts: int,
                     rng: Optional[torch.Generator], device: torch.device) -> Tensor:
    """``z0``, or ``n * restarts`` latents drawn from the generator's prior (see :func:`invert`)."""
    if z0 is not None:
        if restarts != 1:
            raise ValueError("restarts > 1 draws its own initial latents: leave z0=None")
        return z0
    z_dim = z_dim if z_dim is not None else getattr(generator, "z_dim", None)
    if z_dim is None:
        raise ValueError("pass z0 or z_dim (the generator has no z_dim attribute)")
    sampler = getattr(generator, "sample_latent", None)  # e.g. BigGAN's truncated noise
    if callable(sampler):
        return sampler(n * restarts, rng).to(device)
    return torch.randn(n * restarts, int(z_dim), device=device, generator=rng)


def _best_restarts(res: InversionResult, restarts: int) -> InversionResult:
    """Of every image's ``restarts`` consecutive rows, the one with the lowest objective."""
    N = res.loss.shape[0] // restarts
    best = res.loss.view(N, restarts).argmin(1) + torch.arange(N, device=res.loss.device) * restarts
    return InversionResult(
        z=res.z[best], z_hat=res.z_hat[best], images=res.images[best], feature_mse=res.feature_mse[best],
        pixel_mse=res.pixel_mse[best], loss=res.loss[best], history=res.history,
    )


def augment_step(
    generator: Callable[[Tensor], Tensor],
    feature_fn: FeatureFn,
    z0: Tensor,
    target_features: Tensor,
    *,
    iterations: int = STEP2_ITERATIONS,
    lr: float = STEP2_LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    lr_step: Optional[int] = None,
    lr_gamma: float = LR_GAMMA,
    reduction: str = "mean",
    log_every: int = 100,
    callback: Optional[Callable[[int, Tensor], None]] = None,
) -> InversionResult:
    """Step II (Eq. 21): starting from Step I's latents, latents ``z'`` whose generated
    images have the augmented features ``a~`` (feature term only).

    Args:
        z0: ``N x z_dim`` latents from :func:`invert` (``result.z``), or ``N x K x z_dim``.
        target_features: augmented features ``a~``: ``N x A``, or ``N x K x A`` for ``K``
            augmentations of each sample (each starts from its sample's ``z0``).
        Other arguments as in :func:`invert` (paper: lr 1 for Step II, 10,000 iterations).

    Returns:
        :class:`InversionResult` with leading dimensions those of ``target_features``.
    """
    device = _module_device(generator, z0.device)
    t = target_features.to(device)
    if t.dim() == 3:
        N, K, A = t.shape
        if z0.dim() == 2:
            if z0.shape[0] != N:
                raise ValueError(f"z0 has {z0.shape[0]} rows for {N} samples")
            z0 = z0.unsqueeze(1).expand(N, K, z0.shape[1])
        if tuple(z0.shape[:2]) != (N, K):
            raise ValueError(f"z0 of shape {tuple(z0.shape)} does not match targets {tuple(t.shape)}")
        res = _optimise(
            generator, feature_fn, z0.reshape(N * K, -1).to(device), t.reshape(N * K, A), None,
            eta=0.0, iterations=iterations, lr=lr, momentum=momentum, weight_decay=weight_decay,
            lr_step=lr_step, lr_gamma=lr_gamma, reduction=reduction, log_every=log_every, callback=callback,
        )
        return InversionResult(
            z=res.z.view(N, K, -1), z_hat=res.z_hat.view(N, K, -1),
            images=res.images.view(N, K, *res.images.shape[1:]), feature_mse=res.feature_mse.view(N, K),
            pixel_mse=None, loss=res.loss.view(N, K), history=res.history,
        )
    if t.dim() != 2 or z0.dim() != 2 or z0.shape[0] != t.shape[0]:
        raise ValueError(f"z0 {tuple(z0.shape)} and target_features {tuple(t.shape)} do not match")
    return _optimise(
        generator, feature_fn, z0.to(device), t, None, eta=0.0, iterations=iterations, lr=lr, momentum=momentum,
        weight_decay=weight_decay, lr_step=lr_step, lr_gamma=lr_gamma, reduction=reduction,
        log_every=log_every, callback=callback,
    )


# --------------------------------------------------------------------------- ISDA pieces


def _covariance_source(
    estimator: Any, kind: Optional[str]
) -> tuple[Optional[Tensor], Optional[str], Optional[Tensor]]:
    """``(covariance, kind, count)`` from a CovarianceEstimator, an ISDA criterion
    (``.estimator``) or a covariance tensor."""
    est = getattr(estimator, "estimator", estimator)
    if est is None:
        return None, "identity", None
    if isinstance(est, Tensor):
        return est, kind, None  # type: ignore[return-value]
    cov = getattr(est, "covariance", None)
    if cov is None:
        raise TypeError(
            "estimator must be a CovarianceEstimator, an ISDA criterion with .estimator, or a "
            f"covariance tensor; got {type(estimator).__name__}"
        )
    k = kind or getattr(est, "kind", None)
    if k == "lowrank" and callable(getattr(est, "functional_covariance", None)):
        # the lowrank kind's ``covariance`` buffer holds only the variances; the factors
        # (U, s, d) come from functional_covariance()
        cov = est.functional_covariance()
    return (None if k == "identity" else cov), k, getattr(est, "count", None)


def augment_features(
    features: Tensor,
    labels: Tensor,
    estimator: Any,
    lam: float,
    num: int,
    *,
    kind: Optional[str] = None,
    rng: Optional[torch.Generator] = None,
) -> Tensor:
    """``num`` ISDA-augmented features per sample, ``a~ ~ N(a_i, lam * Sigma_{y_i})`` (Eq. 4).

    ``estimator``: a :class:`~torch_isda.CovarianceEstimator`, an ISDA criterion holding one
    (``.estimator``), or a covariance tensor (layout by ``kind``/shape). Returns ``N x num x A``
    (float32 at least). Warns when a class of ``labels`` has no statistics yet.
    """
    cov, k, count = _covariance_source(estimator, kind)
    if count is not None and labels.numel():
        missing = sorted({int(c) for c in labels.tolist() if int(count[int(c)]) == 0})
        if missing:
            warnings.warn(
                f"the estimator has seen no features of classes {missing}: their covariance is zero "
                "and their 'augmented' features equal the originals",
                stacklevel=2,
            )
    if cov is not None:
        cov = cov.to(features.device)
    return sample_augmented_features(features.detach(), labels.to(features.device), cov, lam, num, k, rng)


def classifier_feature_fn(
    classifier: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> FeatureFn:
    """``f`` for generator-space images: ``[-1, 1] -> [0, 1] -> (x - mean) / std ->
    classifier.forward_features`` (the normalisation the classifier was trained with)."""
    ref = next(classifier.parameters())
    m = torch.as_tensor(mean, dtype=torch.float32, device=ref.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=ref.device).view(1, -1, 1, 1)
    forward = getattr(classifier, "forward_features", None)
    if forward is None:
        raise TypeError("the classifier needs a forward_features(x) method (torch_isda.models.ISDANet)")

    def feature_fn(x: Tensor) -> Tensor:
        return forward((x.add(1.0).mul(0.5) - m) / s)

    feature_fn.module = classifier  # type: ignore[attr-defined]
    return feature_fn


def _final_layer(classifier: Any) -> Optional[Callable[[Tensor], Tensor]]:
    get = getattr(classifier, "get_classifier", None)
    if callable(get):
        return get()
    head = getattr(classifier, "fc", None)
    return head if isinstance(head, nn.Module) else None


def _unit(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def nearest_neighbours(
    images: Tensor, train_images: Tensor, k: int = 5, chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """Indices and Euclidean distances of the ``k`` training images nearest to each image in
    pixel space (Fig. 14), nearest first.

    Both inputs are ``(M, C, H, W)`` with matching ``C, H, W``; ``uint8`` is scaled to
    ``[0, 1]``, floats are taken as ``[0, 1]``. Returns ``(indices, distances)``, each
    ``M x k`` (``k`` capped at the training-set size).
    """
    q = _unit(images).flatten(1)
    if tuple(images.shape[1:]) != tuple(train_images.shape[1:]):
        raise ValueError(
            f"images {tuple(images.shape[1:])} and train_images {tuple(train_images.shape[1:])} differ in shape"
        )
    k = min(int(k), train_images.shape[0])
    best_d = torch.full((q.shape[0], 0), math.inf, device=q.device)
    best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
    for start in range(0, train_images.shape[0], chunk_size):
        t = _unit(train_images[start : start + chunk_size]).flatten(1).to(q.device)
        d = torch.cdist(q.double(), t.double()).float()
        idx = torch.arange(start, start + t.shape[0], device=q.device).expand(q.shape[0], -1)
        best_d, best_i = keep_nearest(best_d, best_i, d, idx, k)
    return best_i, best_d


def keep_nearest(best_d: Tensor, best_i: Tensor, d: Tensor, idx: Tensor, k: int
                 ) -> tuple[Tensor, Tensor]:
    """The running ``k`` nearest (``best_d``, ``best_i``, ``M x k'``) merged with the
    candidates ``d``, ``idx`` (``M x n``): ``(distances, indices)``, nearest first."""
    d_all = torch.cat([best_d, d], 1)
    i_all = torch.cat([best_i, idx], 1)
    best_d, pos = d_all.topk(min(int(k), d_all.shape[1]), dim=1, largest=False, sorted=True)
    return best_d, i_all.gather(1, pos)


# --------------------------------------------------------------------------- high level


@dataclass
class VisualizationResult:
    """Everything :func:`visualize` computed (CPU tensors; images in ``[0, 1]``).

    ``originals`` ``N x C x H x W``; ``reconstructions`` (Step I) ``N x C x H x W``;
    ``augmented`` (Step II) ``N x K x C x H x W``; ``labels`` ``N``; ``features`` ``a_i``
    (``N x A``); ``augmented_features`` ``a~`` (``N x K x A``); ``step1_feature_mse``,
    ``step1_pixel_mse`` (``N``); ``step2_feature_mse`` (``N x K``);
    ``augmentation_mse``: ``mean((a~ - a)^2)`` (``N x K``), the feature displacement Step II
    must cover; ``neighbour_indices``/``neighbour_distances`` (``N x K x k``) and
    ``neighbour_images`` (``N x K x k x C x H x W``) when training images were given;
    ``reconstruction_predictions`` (``N``) and ``augmented_predictions`` (``N x K``): the
    classifier's predicted classes for the generated images (when it has a final linear
    layer ``get_classifier()``/``fc``), a check that augmentation preserves the class;
    ``settings``: the hyper-parameters used.
    """

    originals: Tensor
    reconstructions: Tensor
    augmented: Tensor
    labels: Tensor
    features: Tensor
    augmented_features: Tensor
    step1_feature_mse: Tensor
    step1_pixel_mse: Tensor
    step2_feature_mse: Tensor
    augmentation_mse: Tensor
    z: Tensor
    z_augmented: Tensor
    neighbour_indices: Optional[Tensor] = None
    neighbour_distances: Optional[Tensor] = None
    neighbour_images: Optional[Tensor] = None
    reconstruction_predictions: Optional[Tensor] = None
    augmented_predictions: Optional[Tensor] = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready means of the errors, with the settings."""
        out = {
            "num_samples": int(self.originals.shape[0]),
            "num_augmented": int(self.augmented.shape[1]),
            "step1_feature_mse": float(self.step1_feature_mse.mean()),
            "step1_pixel_mse": float(self.step1_pixel_mse.mean()),
            "step2_feature_mse": float(self.step2_feature_mse.mean()),
            "augmentation_mse": float(self.augmentation_mse.mean()),
            "feature_mean_square": float(self.features.square().mean()),
            "per_sample": {
                "label": [int(v) for v in self.labels],
                "step1_feature_mse": [float(v) for v in self.step1_feature_mse],
                "step1_pixel_mse": [float(v) for v in self.step1_pixel_mse],
                "step2_feature_mse": [[float(v) for v in row] for row in self.step2_feature_mse],
            },
            "settings": self.settings,
        }
        if self.augmented_predictions is not None:
            out["reconstruction_accuracy"] = float((self.reconstruction_predictions == self.labels).float().mean())
            out["augmented_accuracy"] = float(
                (self.augmented_predictions == self.labels.unsqueeze(1)).float().mean()
            )
        if self.neighbour_distances is not None:
            out["nearest_neighbour_distance"] = float(self.neighbour_distances[..., 0].mean())
            out["per_sample"]["neighbour_indices"] = self.neighbour_indices.tolist()
            out["per_sample"]["neighbour_distances"] = self.neighbour_distances.tolist()
        return out


def visualize(
    classifier: nn.Module, estimator: Any, generator: nn.Module, images: Tensor, labels: Tensor,
    lam: float, num_augmented: int = 4, *, mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None, feature_fn: Optional[FeatureFn] = None,
    kind: Optional[str] = None, eta: float = 1.0, step1_iterations: int = STEP1_ITERATIONS,
    step2_iterations: int = STEP2_ITERATIONS, step1_lr: float = STEP1_LR, step2_lr: float = STEP2_LR,
    momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY, reduction: str = "mean",
    restarts: int = VISUALIZE_RESTARTS, train_images: Optional[Tensor] = None,
    num_neighbours: int = 5, seed: int = 0, progress: bool = False,
) -> VisualizationResult:
    """Original | Step-I reconstruction | ``num_augmented`` ISDA-augmented images per sample.

    Args:
        classifier: trained model with ``forward_features`` (put in eval mode while running).
        estimator: its ISDA statistics: a :class:`~torch_isda.CovarianceEstimator`, an ISDA
            criterion with ``.estimator``, or a covariance tensor (then give ``kind``).
        generator: the fixed generator (e.g. :func:`~torch_isda.visualize.gan.load_generator`).
        images: ``N x C x H x W`` real images, ``uint8`` or float in ``[0, 1]``.
        labels: ``N`` class indices (the class whose covariance augments each feature).
        lam: augmentation strength ``lambda`` of ``a~ ~ N(a, lambda Sigma_y)``.
        num_augmented: ``K`` augmented samples per image.
        mean, std: the per-channel normalisation the classifier was trained with
            (``dataset.mean``/``dataset.std``); required unless ``feature_fn`` is given.
        feature_fn: override the feature map (images in generator space ``[-1, 1]``).
        eta, step*_iterations, step*_lr, momentum, weight_decay, reduction: see
            :func:`invert` and :func:`augment_step`.
        restarts: random starts of Step I per image, the best kept (see :func:`invert`).
        train_images: if given, the ``num_neighbours`` nearest training images of every
            augmented image are found in pixel space (Fig. 14).
        seed: seeds the initial latents and the feature sampling.
        progress: print the errors of both steps to stderr.
    """
    if feature_fn is None:
        if mean is None or std is None:
            raise ValueError("pass mean and std (the classifier's input normalisation), or a feature_fn")
        feature_fn = classifier_feature_fn(classifier, mean, std)
    x01, labels = _checked_images(generator, images, labels)
    rng = torch.Generator(device=x01.device)
    rng.manual_seed(int(seed))
    settings = dict(
        lam=float(lam), num_augmented=int(num_augmented), eta=float(eta), step1_iterations=int(step1_iterations),
        step2_iterations=int(step2_iterations), step1_lr=float(step1_lr), step2_lr=float(step2_lr),
        momentum=float(momentum), weight_decay=float(weight_decay), reduction=reduction, seed=int(seed),
        restarts=int(restarts),
        lr_schedule="divide by 10 every quarter of the iterations",
    )
    with _EvalMode(classifier, generator):
        steps = _two_steps(classifier, estimator, generator, feature_fn, x01 * 2.0 - 1.0, labels, kind,
                           rng, settings, progress)
    result = _visualization_result(x01, labels, steps, settings, progress)
    if train_images is not None and num_neighbours > 0:
        _add_neighbours(result, train_images, num_neighbours)
    return result


def _checked_images(generator: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``images`` in ``[0, 1]`` and ``labels`` on the generator's device, checked to fit it."""
    device = _module_device(generator, images.device)
    x01 = _unit(images).to(device)
    if x01.dim() != 4:
        raise ValueError(f"images must be N x C x H x W; got {tuple(images.shape)}")
    if tuple(x01.shape[1:]) != tuple(getattr(generator, "image_shape", x01.shape[1:])):
        raise ValueError(
            f"images of shape {tuple(x01.shape[1:])} but the generator makes {tuple(generator.image_shape)}"
        )
    return x01, labels.to(device).long()


def _two_steps(classifier: nn.Module, estimator: Any, generator: nn.Module, feature_fn: FeatureFn,
               xg: Tensor, labels: Tensor, kind: Optional[str], rng: torch.Generator, settings: dict,
               progress: bool) -> dict:
    """Step I and Step II of :func:`visualize` (models in eval mode); their results, the
    features, the augmented features, the classifier's predictions and the step times."""
    import time

    t0 = time.perf_counter()
    with torch.no_grad():
        feats = feature_fn(xg)
    aug_feats = augment_features(feats, labels, estimator, settings["lam"], settings["num_augmented"],
                                 kind=kind, rng=rng)
    aug_feats = aug_feats.to(feats.dtype)
    opt = dict(momentum=settings["momentum"], weight_decay=settings["weight_decay"],
               reduction=settings["reduction"])
    s1 = invert(generator, feature_fn, xg, target_features=feats, eta=settings["eta"],
                iterations=settings["step1_iterations"], lr=settings["step1_lr"], rng=rng,
                restarts=settings["restarts"], **opt)
    t1 = time.perf_counter()
    if progress:
        _log(f"[visualize] Step I: {settings['step1_iterations']} its in {t1 - t0:.1f} s, feature MSE "
             f"{s1.feature_mse.mean():.4g}, pixel MSE {s1.pixel_mse.mean():.4g} "
             f"(mean square feature {feats.square().mean():.4g})")
    s2 = augment_step(generator, feature_fn, s1.z, aug_feats, iterations=settings["step2_iterations"],
                      lr=settings["step2_lr"], **opt)
    t2 = time.perf_counter()
    head = _final_layer(classifier)
    preds = None
    if head is not None:
        with torch.no_grad():
            preds = head(feature_fn(torch.cat([s1.images, s2.images.flatten(0, 1)]))).argmax(1).cpu()
    return {"s1": s1, "s2": s2, "feats": feats, "aug_feats": aug_feats, "preds": preds,
            "step1_seconds": round(t1 - t0, 3), "step2_seconds": round(t2 - t1, 3)}


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _visualization_result(x01: Tensor, labels: Tensor, steps: dict, settings: dict,
                          progress: bool) -> VisualizationResult:
    """The :class:`VisualizationResult` of :func:`_two_steps` (with the Step II progress line)."""
    s1, s2, feats, aug_feats, preds = (steps[k] for k in ("s1", "s2", "feats", "aug_feats", "preds"))
    aug_mse = (aug_feats - feats.unsqueeze(1)).square().mean(-1)
    if progress:
        msg = (
            f"[visualize] Step II: {settings['step2_iterations']} its in {steps['step2_seconds']:.1f} s, "
            f"feature MSE to a~ {s2.feature_mse.mean():.4g} (augmentation moved features by MSE "
            f"{aug_mse.mean():.4g})"
        )
        if preds is not None:
            n = s1.images.shape[0]
            acc = (preds[n:].view(n, -1) == labels.cpu().unsqueeze(1)).float().mean()
            msg += f"; classifier keeps the label on {100 * float(acc):.0f}% of augmented images"
        _log(msg)
    result = VisualizationResult(
        originals=x01.cpu(), reconstructions=from_generator_space(s1.images).cpu(),
        augmented=from_generator_space(s2.images).cpu(), labels=labels.cpu(),
        features=feats.detach().cpu(), augmented_features=aug_feats.cpu(),
        step1_feature_mse=s1.feature_mse.cpu(), step1_pixel_mse=s1.pixel_mse.cpu(),
        step2_feature_mse=s2.feature_mse.cpu(), augmentation_mse=aug_mse.cpu(), z=s1.z.cpu(),
        z_augmented=s2.z.cpu(),
        settings={**settings, "step1_seconds": steps["step1_seconds"],
                  "step2_seconds": steps["step2_seconds"]},
    )
    if preds is not None:
        N = s1.images.shape[0]
        result.reconstruction_predictions = preds[:N]
        result.augmented_predictions = preds[N:].view(N, -1)
    return result


def _add_neighbours(result: VisualizationResult, train_images: Tensor, num_neighbours: int) -> None:
    """The ``num_neighbours`` nearest training images of every augmented image (Fig. 14)."""
    augmented = result.augmented
    N, K = augmented.shape[:2]
    idx, dist = nearest_neighbours(augmented.flatten(0, 1).cpu(), train_images.cpu(), num_neighbours)
    k = idx.shape[1]
    result.neighbour_indices = idx.view(N, K, k)
    result.neighbour_distances = dist.view(N, K, k)
    result.neighbour_images = _unit(train_images.cpu()[idx.flatten()]).view(N, K, k, *augmented.shape[2:])


# --------------------------------------------------------------------------- output / runner


def save_visualization(
    result: VisualizationResult,
    out_dir: Union[str, os.PathLike],
    *,
    class_names: Optional[Sequence[str]] = None,
    neighbours_of: Optional[int] = 0,
    title: Optional[str] = None,
    noun: str = "class",
) -> dict:
    """Write ``augmented.png`` (original | reconstruction | augmented | NN of aug 1),
    ``neighbours.png`` (Fig. 14 layout, when the result has neighbours) and
    ``visualization.json`` (:meth:`VisualizationResult.summary`) into ``out_dir``; return
    their paths by name. ``noun`` names a class in ``neighbours.png`` without
    ``class_names`` ("digit 0, aug 1")."""
    from .grid import atomic_write_with, save_neighbour_grid, save_visualization_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"augmented": save_visualization_grid(out / "augmented.png", result, neighbours_of, class_names, title)}
    if result.neighbour_images is not None:
        K, m = result.augmented.shape[1], result.neighbour_images.shape[2]
        nn_title = (f"Nearest training images (pixel space) of the ISDA-augmented images: one "
                    f"row per test image, one block per augmentation (the augmented image, then "
                    f"its {m} nearest training images with their Euclidean distance in [0, 1] "
                    f"pixel units)")
        if title:
            nn_title = f"{title}\n{nn_title}"
        paths["neighbours"] = save_neighbour_grid(out / "neighbours.png", result, nn_title,
                                                  class_names=class_names, noun=noun)
    summary = result.summary()
    if class_names is not None:
        summary["class_names"] = list(class_names)
    data = (json.dumps(summary, indent=2) + "\n").encode()
    paths["summary"] = atomic_write_with(out / "visualization.json", lambda f: f.write(data))
    return paths


def select_images(labels: Tensor, num_samples: int, num_classes: Optional[int] = None, seed: int = 0) -> Tensor:
    """Indices of ``num_samples`` images, cycling through the classes (0, 1, ..., C-1, 0, ...)
    and picking a random image of each (seeded)."""
    labels = labels.cpu()
    C = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    g = torch.Generator().manual_seed(int(seed))
    pools = [torch.nonzero(labels == c).squeeze(1) for c in range(C)]
    pools = [p[torch.randperm(p.numel(), generator=g)] for p in pools]
    picked, used = [], [0] * C
    c = 0
    while len(picked) < num_samples and any(used[j] < pools[j].numel() for j in range(C)):
        if used[c] < pools[c].numel():
            picked.append(int(pools[c][used[c]]))
            used[c] += 1
        c = (c + 1) % C
    return torch.tensor(picked, dtype=torch.long)


def run_visualization(
    out_dir: Union[str, os.PathLike],
    classifier: nn.Module,
    estimator: Any,
    generator: nn.Module,
    dataset: Any,
    lam: float,
    *,
    num_samples: int = 10,
    num_augmented: int = 4,
    split: str = "test",
    num_neighbours: int = 5,
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[VisualizationResult, dict]:
    """Runner: pick ``num_samples`` images of ``dataset``'s ``split`` (one class after the
    other), :func:`visualize` them with the dataset's normalisation and training images as
    the neighbour pool, and :func:`save_visualization` into ``out_dir``. Extra keyword
    arguments go to :func:`visualize`. Returns the result and the written paths."""
    images_all = getattr(dataset, f"{split}_images")
    labels_all = getattr(dataset, f"{split}_labels")
    idx = select_images(labels_all, num_samples, getattr(dataset, "num_classes", None), seed)
    result = visualize(
        classifier, estimator, generator, images_all[idx], labels_all[idx], lam, num_augmented,
        mean=dataset.mean, std=dataset.std, train_images=dataset.train_images, num_neighbours=num_neighbours,
        seed=seed, progress=progress, **kwargs,
    )
    result.settings.update(dataset=str(getattr(dataset, "name", "")), split=split, indices=idx.tolist())
    names = getattr(dataset, "classes", None)
    title = f"ISDA augmentations (lambda = {lam:g}, eta = {result.settings['eta']:g})"
    noun = "digit" if str(getattr(dataset, "name", "")) == "digits" else "class"
    paths = save_visualization(result, out_dir, class_names=names, title=title, noun=noun)
    return result, paths  # the caller reports the summary (isda visualize prints it)
