"""The cosine (normalized) classifier of LDAM (Cao et al., NeurIPS 2019, Sec. 3.2).

Cao et al. compute the logits of LDAM as cosines, ``z_j = <a / |a|, w_j / |w_j|>``, so that
``|z_j| <= 1``, and multiply them by a scale ``s`` (30 in their code) inside the loss:
``ldam_drw(s=30)`` with ``--model-kwargs classifier=cosine``. The layer has no bias.

ISDA's bound (Eq. 7) is written for logits ``W a + b``; the cosine logits are not of that
form, so the ISDA family refuses this classifier (``attach`` needs an ``nn.Linear``, and the
harness checks each criterion's ``needs_linear_classifier``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLASSIFIER_KINDS", "CosineClassifier", "build_classifier"]

#: The values of the models' ``classifier=`` keyword.
CLASSIFIER_KINDS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    """Logits ``normalize(a) @ normalize(W).T``: the cosines between the feature and each
    class's weight vector, in ``[-1, 1]``.

    ``weight`` is ``[num_classes, num_features]`` like ``nn.Linear``'s; each row starts as
    ``U(-1, 1)`` entries scaled to unit norm, as in Cao et al.'s ``NormedLinear``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


def build_classifier(kind: str, num_features: int, num_classes: int) -> nn.Module:
    """``nn.Linear`` for ``kind="linear"``, :class:`CosineClassifier` for ``"cosine"``."""
    if kind == "linear":
        return nn.Linear(num_features, num_classes)
    if kind == "cosine":
        return CosineClassifier(num_features, num_classes)
    raise ValueError(f"classifier must be one of {', '.join(CLASSIFIER_KINDS)}; got {kind!r}")
