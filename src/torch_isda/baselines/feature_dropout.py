"""Dropout on the final deep features (Srivastava et al., JMLR 2014).

The ISDA paper's "+ Dropout" baseline (Appendix C): "the dropout rate is set as 0.3 for
comparison if it is not applied in the basic model".  Here it is a transform of the
features ``a`` *before* the classifier, ``logits = fc(dropout(a))``, active only in
training mode, with the usual inverted scaling ``1 / (1 - p)`` of the kept units (so
nothing changes at test time).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureDropout", "feature_dropout"]


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must lie in [0, 1]; got {p}")
    return p


def feature_dropout(
    features: Tensor, p: float = 0.3, training: bool = True, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Zero each feature with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Without ``generator`` this is ``F.dropout``; with one, the keep mask is
    ``torch.rand(features.shape, generator=generator) >= p`` (drawn on the generator's
    device), so it is reproducible.  ``p = 1`` returns zeros.
    """
    p = _check_p(p)
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point; got {features.dtype}")
    if not training or p == 0.0:
        return features
    if generator is None:
        return F.dropout(features, p, training=True)
    if p == 1.0:
        return features * 0.0
    device = generator.device
    keep = torch.rand(features.shape, generator=generator, device=device) >= p
    return features * keep.to(features.device, features.dtype) / (1.0 - p)


class FeatureDropout(nn.Module):
    """Dropout on the features before the classifier, ``forward(features, generator=None)``.

    Args:
        p: drop probability (default 0.3, ISDA Appendix C).
    """

    def __init__(self, p: float = 0.3) -> None:
        super().__init__()
        self.p = _check_p(p)

    def forward(self, features: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return feature_dropout(features, self.p, self.training, generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"
