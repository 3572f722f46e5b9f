"""The paper's comparison methods (Table 5) as training criteria: thin adapters from
:mod:`torch_isda.baselines` to :class:`~torch_isda.train.criteria.TrainingCriterion`.

Every constructor argument is a spec argument (``--loss "focal(gamma=2)"``); the defaults,
their sources, the composition order (``isda+dropout``: ISDA sees the dropped features) and
the L-Softmax annealing modes are tabulated in docs/training.md ("Baselines").
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from torch import Tensor, nn

from .registry import CriterionModifier, TrainingCriterion, register_criterion
from ...baselines.center import CenterLoss
from ...baselines.disturb_label import DisturbLabel
from ...baselines.feature_dropout import FeatureDropout
from ...baselines.focal import FocalLoss
from ...baselines.label_smoothing import LabelSmoothingLoss
from ...baselines.large_margin import LargeMarginSoftmaxLoss
from ...baselines.lq import LqLoss

__all__ = [
    "CenterCriterion",
    "DisturbLabelCriterion",
    "FeatureDropoutCriterion",
    "FocalCriterion",
    "LSOFTMAX_ANNEAL_ITERATIONS",
    "LabelSmoothingCriterion",
    "LargeMarginSoftmaxCriterion",
    "LogitsCriterion",
    "LqCriterion",
]

#: Iterations of the paper's ResNet CIFAR schedule (160 epochs x ceil(50000 / 128) = 391
#: batches): the default length over which ``lsoftmax(anneal=progress)`` anneals.
LSOFTMAX_ANNEAL_ITERATIONS = 160 * 391


# ---------------------------------------------------------------------------- primaries


class LogitsCriterion(TrainingCriterion):
    """A primary loss of the logits alone (``self.loss(logits, target)``)."""

    needs_linear_classifier: ClassVar[bool] = False

    loss: nn.Module

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        return self.loss(logits, target)


@register_criterion("label_smoothing")
class LabelSmoothingCriterion(LogitsCriterion):
    """Label smoothing (Mueller et al. 2019), ``epsilon=0.1`` (Szegedy et al.; the ISDA
    paper does not report its value)."""

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.loss = LabelSmoothingLoss(epsilon)


@register_criterion("focal")
class FocalCriterion(LogitsCriterion):
    """Focal loss (Lin et al. 2017), ``alpha=0.5, gamma=1`` (ISDA Appendix C); ``alpha``
    may also be a list of per-class weights."""

    def __init__(self, alpha: Any = 0.5, gamma: float = 1.0) -> None:
        super().__init__()
        self.loss = FocalLoss(alpha, gamma)


@register_criterion("lq")
class LqCriterion(LogitsCriterion):
    """L_q loss / generalized cross-entropy (Zhang & Sabuncu 2018), ``q=0.4`` (ISDA
    Appendix C)."""

    def __init__(self, q: float = 0.4) -> None:
        super().__init__()
        self.loss = LqLoss(q)


@register_criterion("lsoftmax")
class LargeMarginSoftmaxCriterion(TrainingCriterion):
    """Large-margin softmax (Liu et al. 2016) on the model's classifier, ``margin=2`` with
    the official annealing (``anneal``: see docs/training.md, "Baselines").

    Args:
        margin: integer margin ``m >= 1``.
        base, gamma, power, beta_min: the annealing ``beta = max(beta_min, base (1 + gamma
            it)^-power)`` (official CIFAR-10 example: 1000, 2e-5, 45, 0).
        anneal: ``"progress"`` (``it = t/T * anneal_iterations``) or ``"iteration"`` (count
            training steps, as the official layer).
        anneal_iterations: length of the stretched schedule for ``anneal="progress"``.
    """

    def __init__(self, margin: int = 2, base: float = 1000.0, gamma: float = 2e-5,
                 power: float = 45.0, beta_min: float = 0.0, anneal: str = "progress",
                 anneal_iterations: int = LSOFTMAX_ANNEAL_ITERATIONS) -> None:
        super().__init__()
        if anneal not in ("progress", "iteration"):
            raise ValueError(f"lsoftmax anneal must be 'progress' or 'iteration'; got {anneal!r}")
        if isinstance(anneal_iterations, bool) or int(anneal_iterations) != anneal_iterations \
                or int(anneal_iterations) < 1:
            raise ValueError(f"lsoftmax anneal_iterations must be a positive integer; "
                             f"got {anneal_iterations!r}")
        self.anneal = anneal
        self.anneal_iterations = int(anneal_iterations)
        self.loss = LargeMarginSoftmaxLoss(margin, base=base, gamma=gamma, power=power,
                                           beta_min=beta_min)

    def set_progress(self, t_over_T: float) -> None:
        if self.anneal == "progress":
            # forward() increments the counter first: this step uses round(t/T * iters) + 1
            self.loss.set_iteration(max(0, int(round(t_over_T * self.anneal_iterations))))

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        fc = model.get_classifier()
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"lsoftmax needs an nn.Linear classifier; the model has "
                            f"{type(fc).__name__}")
        return self.loss(features, target, fc.weight, fc.bias)

    def log_values(self) -> dict[str, float]:
        return {"lsoftmax_beta": self.loss.beta}


# ---------------------------------------------------------------------------- modifiers


@register_criterion("center")
class CenterCriterion(CriterionModifier):
    """Center loss (Wen et al. 2016) added to the primary loss; the class centers are an
    optimizer group of their own with ``lr=0.5`` (ISDA Appendix C) and no weight decay.

    Args:
        loss_weight: ``lambda`` of the center term (0.003, Wen et al.).
        lr: initial learning rate of the centers (follows the run's lr schedule).
        weight_decay: weight decay of the centers.
        momentum: momentum of the centers (``None``: the run's momentum).
        decouple_center_grad: the centers get the gradient of the unweighted term (see
            :class:`~torch_isda.baselines.CenterLoss`).
    """

    def __init__(self, num_features: int, num_classes: int, loss_weight: float = 0.003,
                 lr: float = 0.5, weight_decay: float = 0.0, momentum: Optional[float] = None,
                 decouple_center_grad: bool = True) -> None:
        super().__init__()
        self.center = CenterLoss(num_classes, num_features, loss_weight,
                                 decouple_center_grad=bool(decouple_center_grad))
        if not float(lr) > 0.0:
            raise ValueError(f"center lr must be > 0; got {lr}")
        if not float(weight_decay) >= 0.0:
            raise ValueError(f"center weight_decay must be >= 0; got {weight_decay}")
        if momentum is not None and not float(momentum) >= 0.0:
            raise ValueError(f"center momentum must be >= 0; got {momentum}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.momentum = None if momentum is None else float(momentum)

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        return self.center(features, target)

    def parameter_groups(self, config: Any) -> list[dict[str, Any]]:
        extra = {} if self.momentum is None else {"momentum": self.momentum}
        return self.center.parameter_groups(lr=self.lr, weight_decay=self.weight_decay, **extra)


@register_criterion("disturb_label")
class DisturbLabelCriterion(CriterionModifier):
    """DisturbLabel (Xie et al. 2016): each training label is replaced, with probability
    ``rate`` (0.05, ISDA Appendix C), by a uniformly drawn class. Training only."""

    def __init__(self, num_classes: int, rate: float = 0.05) -> None:
        super().__init__()
        self.disturb = DisturbLabel(num_classes, rate)

    def transform_target(self, target: Tensor) -> Tensor:
        return self.disturb(target) if self.training else target


@register_criterion("dropout")
class FeatureDropoutCriterion(CriterionModifier):
    """Dropout on the final deep features before the classifier, ``p=0.3`` (the rate of
    ISDA Appendix C). Training only.

    Not the placement of Table 5's "+ Dropout" rows, whose official code drops inside every
    residual block (``--model-kwargs dropout=0.3``, see docs/reproduce/table5-baselines.md):
    here ISDA's estimator sees the dropped, higher-variance features."""

    def __init__(self, p: float = 0.3) -> None:
        super().__init__()
        self.dropout = FeatureDropout(p)

    def transform_features(self, features: Tensor) -> Tensor:
        return self.dropout(features) if self.training else features
