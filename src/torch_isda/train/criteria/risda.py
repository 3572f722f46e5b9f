"""The ``risda`` criterion (issue 23, optional part): RISDA (Chen et al., AAAI 2022) on
:class:`~torch_isda.baselines.risda.RISDALoss`, with its two stages.

Stage I (until ``start`` of training) is plain cross-entropy. At the first epoch of
Stage II the criterion asks the task's bound *reasoning source* for the confusion counts
and class means of the training images (one evaluation pass:
:func:`torch_isda.train.long_tailed.training_set_statistics`); they are kept in the
criterion's state, so a resumed run does not recompute them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...baselines.risda import RISDALoss
from .registry import TrainingCriterion, register_criterion

__all__ = ["RISDACriterion", "ReasoningSource"]

#: ``() -> (confusion C x C, class means C x A)`` of the training images.
ReasoningSource = Callable[[], tuple[Tensor, Tensor]]


@register_criterion("risda")
class RISDACriterion(TrainingCriterion):
    """RISDA (Chen et al. 2022): plain cross-entropy until ``start`` (0.8: epoch 160 of
    200), then the knowledge graph (training confusion) and prototypes of the Stage I model,
    tail covariances reasoned from the graph, prototype shift ``alpha0=0.5``, covariance
    strength ``beta0=0.75`` (the authors' CIFAR-100-LT rho = 100 command), head
    ``head_fraction=0.2`` of the classes, class-balanced weights (``beta=0.9999``), and
    ``classifier_only=True``: Stage II retrains the classifier, the backbone frozen (as the
    authors' code). ``kind`` full or diagonal. In-memory datasets only."""

    whole_step_problem = ("risda's Stage II (the present-class statistics, and strengths "
                          "that move every step) does not fit one compiled graph")

    def __init__(self, num_features: int, num_classes: int, class_counts: Sequence[int],
                 alpha0: float = 0.5, beta0: float = 0.75, head_fraction: float = 0.2,
                 kind: str = "full", start: float = 0.8, classifier_only: bool = True,
                 beta: float = 0.9999) -> None:
        super().__init__()
        if not 0.0 <= float(start) <= 1.0:
            raise ValueError(f"risda start must lie in [0, 1]; got {start}")
        if not isinstance(classifier_only, bool):
            raise ValueError(f"risda classifier_only must be True or False; got "
                             f"{classifier_only!r}")
        self.loss = RISDALoss(num_features, num_classes, class_counts, alpha0, beta0,
                              head_fraction, kind, beta)
        self.start, self.classifier_only = float(start), classifier_only
        self.reasoning_source: Optional[ReasoningSource] = None
        self.log: Callable[[str], None] = lambda message: None

    def bind_reasoning_source(self, source: ReasoningSource,
                              log: Optional[Callable[[str], None]] = None) -> None:
        """The task's pass over its training images (and its log)."""
        self.reasoning_source = source
        if log is not None:
            self.log = log

    def first_epoch(self, epochs: int) -> int:
        """The first (0-based) epoch of Stage II: ``ceil(start * epochs)``."""
        return math.ceil(round(self.start * int(epochs), 9))

    def set_progress(self, t_over_T: float) -> None:
        self.loss.set_progress(t_over_T)

    def on_epoch_start(self, engine: Any, epoch: int) -> None:
        """At the first Stage II epoch: the graph and prototypes from the reasoning source."""
        if self.loss.reasoned or epoch < self.first_epoch(engine.config.epochs):
            return
        if self.reasoning_source is None:
            raise RuntimeError("risda needs the task's pass over its training images "
                               "(bind_reasoning_source)")
        confusion, means = self.reasoning_source()
        self.loss.set_reasoning(confusion, means)
        tail = int(self.loss.tail.sum())
        self.log(f"risda: Stage II from epoch {epoch + 1}: knowledge graph and prototypes of "
                 f"the {int(confusion.sum())} training images, covariance reasoned for "
                 f"{tail} tail classes of {self.loss.tail.numel()}; "
                 + ("the classifier alone is trained" if self.classifier_only
                    else "the whole network is trained"))

    def forward(self, features: Tensor, logits: Tensor, target: Tensor, model: nn.Module
                ) -> Tensor:
        if not self.loss.reasoned:  # Stage I: cross-entropy
            return F.cross_entropy(logits, target)
        classifier = model.get_classifier()
        if self.classifier_only:  # the backbone gets no gradient (SGD then skips it)
            features = features.detach()
        return self.loss(features, target, classifier.weight, classifier.bias)

    def log_values(self) -> dict[str, float]:
        phase = self.loss.reasoned
        return {"lambda": self.loss.beta if phase else 0.0, "risda_phase": float(phase),
                "risda_alpha": self.loss.alpha if phase else 0.0}
