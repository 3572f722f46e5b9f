"""Explicit semantic data augmentation and the learned-covariance ("Cov") baseline of the
TPAMI paper (Section 6.5.3, Fig. 10), auto-registered with the training harness.

* ``explicit_sda(m=M)``: Eq. (5) with ISDA's *estimated* covariances, sampled with the
  reparameterisation ``a~ = a + sqrt(lambda) L_y eps`` (``M -> infinity``: ISDA's bound;
  ``M = 0``: ``ce``);
* ``learned_cov(m=M)`` / ``learned_cov(m=inf)``: covariances ``Sigma_c = D_c D_c^T``
  *learned* by gradient descent, explicitly (Eq. 5) or through the bound (Eq. 7), plus
  DistributionNet's feature-uncertainty hinge measured per feature dimension.

Our reading of the paper, the choices and the untuned defaults (``beta=1``, ``std=0.1``)
are described in docs/analysis.md (``isda analyze explicit``).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...functional import isda_cross_entropy, sample_augmented_features
from ...loss import ISDALoss
from .registry import ISDACriterion, TrainingCriterion, register_criterion

__all__ = ["ExplicitSDACriterion", "LearnedCovarianceCriterion", "parse_samples"]

_INF_NAMES = ("inf", "infinity", "implicit")


def parse_samples(m: Union[int, float, str, None], *, allow_inf: bool) -> Optional[int]:
    """The number of augmented samples ``M``: a positive integer, or ``None`` for
    ``M = infinity`` (``"inf"``, ``float("inf")``, ``None``) when ``allow_inf``."""
    if m is None or (isinstance(m, str) and m.strip().lower() in _INF_NAMES) or (
            isinstance(m, float) and math.isinf(m) and m > 0):
        if allow_inf:
            return None
        raise ValueError("explicit_sda needs a finite number of samples m >= 1 (M = infinity "
                         "is ISDA: use the 'isda' criterion)")
    if isinstance(m, bool) or not isinstance(m, (int, float, str)):
        raise ValueError(f"m must be a positive integer{' or inf' if allow_inf else ''}; got {m!r}")
    try:
        value = float(m)
    except ValueError:
        raise ValueError(f"m must be a positive integer{' or inf' if allow_inf else ''}; "
                         f"got {m!r}") from None
    if value != int(value) or value < 1:
        raise ValueError(f"m must be a positive integer{' or inf' if allow_inf else ''}; got {m!r} "
                         "(M = 0, no augmentation, is the 'ce' criterion)")
    return int(value)


def _augmented_cross_entropy(augmented: Tensor, target: Tensor, classifier: nn.Linear) -> Tensor:
    """Eq. (5): mean cross-entropy of ``W a~ + b`` over ``N x M`` augmented features."""
    n, m, _ = augmented.shape
    logits = F.linear(augmented, classifier.weight.to(augmented.dtype),
                      None if classifier.bias is None else classifier.bias.to(augmented.dtype))
    return F.cross_entropy(logits.reshape(n * m, -1), target.repeat_interleave(m))


@register_criterion("explicit_sda")
class ExplicitSDACriterion(ISDACriterion):
    """Explicit semantic data augmentation, Eq. (5): ``m`` sampled features per sample.

    ``a~ ~ N(a, lambda Sigma_y)`` with ISDA's online covariance estimate (``kind`` as
    ISDA; ``lambda0``, ``kind`` and ``constant_lambda`` come from the run config unless
    given); the gradient flows through ``a`` (reparameterisation). Fig. 10 of the paper.
    """

    def __init__(self, num_features: int, num_classes: int, m: Any = 1, lambda0: float = 0.5,
                 kind: str = "full", constant_lambda: bool = False,
                 rank: Optional[int] = None) -> None:
        samples = parse_samples(m, allow_inf=False)
        super().__init__(num_features, num_classes, lambda0=lambda0, kind=kind,
                         constant_lambda=constant_lambda, rank=rank)
        self.samples = samples

    def extra_repr(self) -> str:
        return f"m={self.samples}"

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        isda = self.isda
        if features.dim() != 2 or features.shape[0] != target.shape[0]:
            raise ValueError(f"features must be N x A with N={target.shape[0]}; got "
                             f"{tuple(features.shape)}")
        if self.training:
            isda.estimator.update(features, target)
        ratio = isda.ratio
        if ratio == 0.0:  # every sample equals a: plain cross-entropy
            return F.cross_entropy(logits, target)
        cov = isda.estimator.functional_covariance()
        # noise sqrt(lambda) L_y eps, drawn by the core's sampler around zero features
        noise = sample_augmented_features(torch.zeros_like(features.detach()), target, cov,
                                          ratio, self.samples, kind=isda.kind)
        augmented = features.unsqueeze(1) + noise.to(features.dtype)
        return _augmented_cross_entropy(augmented, target, model.get_classifier())


@register_criterion("learned_cov")
class LearnedCovarianceCriterion(TrainingCriterion):
    """The "Cov" baseline of Fig. 10: class covariances ``D_c D_c^T`` learned by SGD.

    ``m`` a positive integer: explicit (Eq. 5 with ``a~ = a + sqrt(lambda) D_y eps``);
    ``m=inf``: implicit (the ISDA bound, Eq. 7, with ``Sigma = D D^T``). Plus ``beta`` times
    DistributionNet's feature uncertainty loss ``max(0, gamma - H / A)`` (per-dimension
    entropy margin ``gamma = 1/2 log(2 pi e std^2)``); ``D_c`` starts at ``std * I``.
    Our reading of the paper: docs/analysis.md.
    """

    def __init__(self, num_features: int, num_classes: int, m: Any = "inf",
                 lambda0: float = 0.5, constant_lambda: bool = False, beta: float = 1.0,
                 std: float = 0.1, init_std: Optional[float] = None) -> None:
        super().__init__()
        self.samples = parse_samples(m, allow_inf=True)
        if not float(lambda0) >= 0:
            raise ValueError(f"lambda0 must be non-negative; got {lambda0}")
        if not float(beta) >= 0:
            raise ValueError(f"beta (weight of the feature uncertainty loss) must be >= 0; "
                             f"got {beta}")
        if not float(std) > 0:
            raise ValueError(f"std (entropy margin, a standard deviation) must be > 0; got {std}")
        init = float(std if init_std is None else init_std)
        if not init > 0:
            raise ValueError(f"init_std must be > 0; got {init_std}")
        A, C = int(num_features), int(num_classes)
        self.num_features, self.num_classes = A, C
        self.lambda0 = float(lambda0)
        self.constant_lambda = bool(constant_lambda)
        self.beta = float(beta)
        self.std = float(std)
        self.D = nn.Parameter(torch.eye(A).mul_(init).repeat(C, 1, 1))
        self.register_buffer("progress", torch.zeros((), dtype=torch.float64))
        self._last_entropy = math.nan

    @classmethod
    def from_config(cls, num_features: int, num_classes: int, config: Any, **kwargs: Any
                    ) -> LearnedCovarianceCriterion:
        args = {"constant_lambda": config.constant_lambda}
        if getattr(config, "lambda0", None) is not None:
            args["lambda0"] = config.lambda0
        args.update(kwargs)
        return cls(num_features, num_classes, **args)

    def extra_repr(self) -> str:
        m = "inf" if self.samples is None else self.samples
        return (f"m={m}, lambda0={self.lambda0}, constant_lambda={self.constant_lambda}, "
                f"beta={self.beta}, std={self.std}")

    @property
    def ratio(self) -> float:
        """``lambda``: ``lambda0`` or ``lambda0 * t / T`` (the schedule of :class:`ISDALoss`)."""
        return ISDALoss.scheduled_ratio(self.lambda0, float(self.progress), self.constant_lambda)

    def set_progress(self, t_over_T: float) -> None:
        self.progress.fill_(ISDALoss.checked_progress(t_over_T))

    def covariance(self) -> Tensor:
        """``Sigma_c = D_c D_c^T`` for every class (``C x A x A``, differentiable in ``D``)."""
        return self.D @ self.D.transpose(1, 2)

    def entropy_per_dim(self) -> Tensor:
        """``H(N(., Sigma_c)) / A = 1/2 log(2 pi e) + log|det D_c| / A`` for every class."""
        logabsdet = torch.linalg.slogdet(self.D.double())[1].to(self.D.dtype)
        return 0.5 * math.log(2 * math.pi * math.e) + logabsdet / self.num_features

    def uncertainty_loss(self, target: Tensor) -> Tensor:
        """DistributionNet's feature uncertainty loss, per dimension, batch-averaged:
        ``mean_i max(0, gamma - H(Sigma_{y_i}) / A)``."""
        gamma = 0.5 * math.log(2 * math.pi * math.e * self.std ** 2)
        entropy = self.entropy_per_dim()
        self._last_entropy = float(entropy.detach().mean())
        return F.relu(gamma - entropy.index_select(0, target)).mean()

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        classifier = model.get_classifier()
        ratio = self.ratio
        if self.samples is None:  # implicit: the bound with Sigma = D D^T (autograd path)
            loss = isda_cross_entropy(logits, classifier.weight, target, self.covariance(),
                                      ratio, "full")
        elif ratio == 0.0:
            loss = F.cross_entropy(logits, target)
        else:  # explicit: a~ = a + sqrt(lambda) D_y eps (reparameterisation)
            n, m, A = features.shape[0], self.samples, self.num_features
            eps = torch.randn(n, m, A, dtype=features.dtype, device=features.device)
            noise = torch.empty_like(eps)
            for c in torch.unique(target).tolist():  # per class: no N copies of D
                rows = (target == c).nonzero().squeeze(1)
                noise[rows] = eps[rows] @ self.D[c].T.to(features.dtype)
            augmented = features.unsqueeze(1) + math.sqrt(ratio) * noise
            loss = _augmented_cross_entropy(augmented, target, classifier)
        if self.beta > 0:
            loss = loss + self.beta * self.uncertainty_loss(target)
        return loss

    def parameter_groups(self, config: Any) -> list[dict[str, Any]]:
        return [{"params": [self.D], "weight_decay": 0.0}]

    def log_values(self) -> dict[str, float]:
        """``lambda`` and ``cov_std``: the geometric-mean standard deviation
        ``exp(mean_c log|det D_c| / A)`` of the learned covariances."""
        with torch.no_grad():
            logabsdet = torch.linalg.slogdet(self.D.double())[1]
            gstd = float(torch.exp(logabsdet / self.num_features).mean())
        return {"lambda": self.ratio, "cov_std": gstd}
