"""Long-tailed criteria (issue 23): thin adapters from the torch-only losses in
:mod:`torch_isda.baselines` to :class:`~torch_isda.train.criteria.registry.TrainingCriterion`.

Each takes the run's per-class training counts (``class_counts``, given by the task) and
spec arguments (``--loss "ldam_drw(drw_start=0.75)"``); docs/reproduce/long-tailed.md tabulates the
defaults and their sources.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...baselines.balanced_softmax import LogitAdjustedLoss
from ...baselines.class_balanced import ClassBalancedLoss
from ...baselines.ldam import LDAMLoss
from ...baselines.metasaug import MetaSAugLoss, parameter_name
from .baselines import LogitsCriterion
from .registry import TrainingCriterion, register_criterion

__all__ = ["COSINE_LDAM_SCALE", "BalancedSoftmaxCriterion", "ClassBalancedCriterion",
           "LDAMDRWCriterion", "MetaBatchSource", "MetaSAugCriterion", "mean_over_ranks"]


@register_criterion("class_balanced")
class ClassBalancedCriterion(LogitsCriterion):
    """Class-balanced cross-entropy (Cui et al. 2019): ``w_c = (1 - beta) / (1 - beta^n_c)``,
    normalized to sum ``C``; ``beta=0.9999``."""

    def __init__(self, class_counts: Sequence[int], beta: float = 0.9999) -> None:
        super().__init__()
        self.loss = ClassBalancedLoss(class_counts, beta)


@register_criterion("balanced_softmax")
class BalancedSoftmaxCriterion(LogitsCriterion):
    """Balanced Softmax (Ren et al. 2020) / logit adjustment (Menon et al. 2021): the
    cross-entropy of ``logits + tau * log(pi)``, ``pi`` the training class prior; ``tau=1``."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.loss = LogitAdjustedLoss(class_counts, tau)


#: LDAM's scale on a cosine classifier (Cao et al. 2019's code: ``s=30``).
COSINE_LDAM_SCALE = 30.0


@register_criterion("ldam_drw")
class LDAMDRWCriterion(LogitsCriterion):
    """LDAM-DRW (Cao et al. 2019): margins ``∝ n_c^(-1/4)`` (largest ``max_margin=0.5``),
    logits scaled by ``s``, class-balanced weights (``beta=0.9999``) from ``drw_start=0.8`` of
    training. ``s`` defaults to Cao et al.'s 30 when the run's model has a cosine classifier
    (``--model-kwargs classifier=cosine``, logits in ``[-1, 1]``) and to 1 on the default
    plain linear layer (as the MetaSAug code; see docs/reproduce/long-tailed.md)."""

    def __init__(self, class_counts: Sequence[int], max_margin: float = 0.5, s: float = 1.0,
                 drw_start: float = 0.8, beta: float = 0.9999) -> None:
        super().__init__()
        self.loss = LDAMLoss(class_counts, max_margin, s, drw_start, beta)

    @classmethod
    def from_config(cls, num_features: int, num_classes: int, config: Any, **kwargs: Any
                    ) -> LDAMDRWCriterion:
        if "s" not in kwargs:
            classifier = (getattr(config, "model_kwargs", None) or {}).get("classifier")
            kwargs["s"] = COSINE_LDAM_SCALE if classifier == "cosine" else 1.0
        return super().from_config(num_features, num_classes, config, **kwargs)

    def set_progress(self, t_over_T: float) -> None:
        self.loss.set_progress(t_over_T)

    def log_values(self) -> dict[str, float]:
        return {"drw": float(self.loss.reweighting)}


class MetaBatchSource:
    """Batches of the balanced meta set for MetaSAug (bound by the classification task).

    Each call draws ``batch_size`` distinct meta images at random with a generator seeded
    alike on every rank, so all ranks draw the same global meta batch; each keeps its slice
    ``rank::world_size`` and augments it as the training batches. ``learning_rate`` returns
    the optimizer's current learning rate (the step size of the virtual step).
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, transform: Any,
                 seed: int, learning_rate: Any, rank: int = 0, world_size: int = 1) -> None:
        if images.shape[0] == 0:
            raise ValueError("the meta set is empty")
        self.images, self.labels = images, labels
        self.batch_size = min(int(batch_size), int(images.shape[0]))
        self.transform, self.learning_rate = transform, learning_rate
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(device=images.device).manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        pick = torch.randperm(self.images.shape[0], generator=self.generator,
                              device=self.images.device)[:self.batch_size]
        pick = pick[self.rank::self.world_size]
        images = self.images[pick]
        if self.transform is not None:
            images = self.transform(images, self.generator)
        return images, self.labels[pick]


class _FeaturesAndLogits(nn.Module):
    """``x -> (features, logits)`` of a zoo model, for the functional copy."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.forward_features(x)
        return features, self.model.get_classifier()(features)


def mean_over_ranks(gradient: Tensor) -> Tensor:
    """The covariance gradient averaged over the ranks (identity without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return gradient
    gradient = gradient.clone()
    dist.all_reduce(gradient)
    return gradient / dist.get_world_size()


@register_criterion("metasaug")
class MetaSAugCriterion(TrainingCriterion):
    """MetaSAug (Li et al. 2021): plain cross-entropy until ``start`` (0.8: epoch 160 of
    200), then ISDA with the covariance meta-learned on the balanced meta set each step
    (virtual step, meta cross-entropy, ``Sigma - meta_lr * grad``), LDAM margins
    (``max_margin=0.5``, no scale) and class-balanced weights (``beta=0.9999``);
    ``lambda0=0.75``, ``meta_lr=0.1``, ``meta_batch_size=100``, ``kind`` full or diagonal.
    The meta set is the held-out one of ``--dataset-kwargs imbalance=...,val_per_class=10``,
    else (logged) 10 training images per class."""

    needs_meta_set = True
    whole_step_problem = ("metasaug's meta step (a virtual SGD step at the current learning "
                          "rate, differentiated through) does not fit one compiled graph")

    def __init__(self, num_features: int, num_classes: int, class_counts: Sequence[int],
                 lambda0: float = 0.75, kind: str = "full", meta_lr: float = 0.1,
                 start: float = 0.8, max_margin: float = 0.5, beta: float = 0.9999,
                 meta_batch_size: int = 100) -> None:
        super().__init__()
        if not 0.0 <= float(start) <= 1.0:
            raise ValueError(f"metasaug start must lie in [0, 1]; got {start}")
        if isinstance(meta_batch_size, bool) or int(meta_batch_size) != meta_batch_size \
                or meta_batch_size < 1:
            raise ValueError(f"metasaug meta_batch_size must be a positive integer; got "
                             f"{meta_batch_size!r}")
        self.loss = MetaSAugLoss(num_features, num_classes, lambda0, kind, meta_lr,
                                 class_counts, max_margin, beta)
        self.start, self.meta_batch_size = float(start), int(meta_batch_size)
        self.meta_source: Optional[MetaBatchSource] = None
        self.progress = 0.0
        self.images: Optional[Tensor] = None
        self.last_meta_loss: Optional[Tensor] = None

    def bind_meta_source(self, source: MetaBatchSource) -> None:
        self.meta_source = source

    @property
    def meta_phase(self) -> bool:
        return self.progress >= self.start

    def set_progress(self, t_over_T: float) -> None:
        self.progress = float(t_over_T)
        self.loss.set_progress(t_over_T)

    def transform_batch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        self.images = images if self.training and self.meta_phase else None
        return images, labels

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        if not self.meta_phase:  # the authors' first phase: cross-entropy, no estimate
            return F.cross_entropy(logits, target)
        if self.meta_source is None or self.images is None:
            raise RuntimeError("metasaug needs its meta set bound by the task "
                               "(bind_meta_source) and the batch's images (transform_batch)")
        net = _FeaturesAndLogits(model)
        weight = model.get_classifier().weight
        self.loss.fold(features, target)
        meta_images, meta_labels = self.meta_source.next_batch()
        step = self.loss.meta_step(net, parameter_name(net, weight), self.images, target,
                                   meta_images, meta_labels, self.meta_source.learning_rate(),
                                   grad_hook=mean_over_ranks)
        self.images, self.last_meta_loss = None, step.meta_loss
        return self.loss(features, logits, target, weight, step.covariance)

    def log_values(self) -> dict[str, float]:
        values = {"lambda": self.loss.ratio if self.meta_phase else 0.0,
                  "meta_phase": float(self.meta_phase)}
        if self.last_meta_loss is not None:  # one host read per epoch, not per step
            values["meta_loss"] = float(self.last_meta_loss)
        return values
