"""The training loss of a segmentation network with an auxiliary head (Section 6.4, Table 7).

``loss = main + aux_weight * aux``, each head's loss being cross-entropy of ISDA-augmented
logits (:class:`~torch_isda.segmentation.SegmentationISDALoss`, one covariance estimator
per head) or plain cross-entropy, evaluated at the label resolution (``loss_at="label"``:
augmented logits upsampled bilinearly, the official code) or per feature pixel
(``"feature"``: Eq. 7 with nearest-resized labels, the paper's formulation).
"""

from __future__ import annotations

from typing import Any, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ....segmentation import SegmentationISDALoss, resize_labels

__all__ = ["ALIGN_CORNERS", "SegmentationCriterion"]

#: Bilinear upsampling of logits/probabilities as in the official code (``CriterionDSN``
#: and ``evaluate.py`` of the segmentation toolbox use ``align_corners=True``).
ALIGN_CORNERS = True


class SegmentationCriterion(nn.Module):
    """The loss of both heads: ``main + aux_weight * aux``.

    Args:
        loss: ``"ce"`` or ``"isda"``.
        num_features, aux_num_features: ``A`` of the main and auxiliary classifier inputs
            (``aux_num_features=0``: no auxiliary loss).
        num_classes: ``C``.
        loss_at: ``"label"`` (ISDA-augmented logits upsampled bilinearly to the label size,
            then cross-entropy: the official code) or ``"feature"`` (per-pixel Eq. 7 at the
            feature resolution with nearest-resized labels: the paper's formulation).
        aux_weight: weight of the auxiliary head's loss (0.4 in the toolbox).
        lambda0, kind, constant_lambda: ISDA settings (``loss="isda"``).
        label_smoothing: of the cross-entropy.
        ignore_index: void label (255).
    """

    def __init__(self, loss: str, num_features: int, aux_num_features: int, num_classes: int, *,
                 loss_at: str = "label", aux_weight: float = 0.4, lambda0: float = 7.5,
                 kind: str = "diagonal", constant_lambda: bool = False,
                 label_smoothing: float = 0.0, ignore_index: int = 255) -> None:
        super().__init__()
        if loss not in ("ce", "isda"):
            raise ValueError(f"loss must be 'ce' or 'isda'; got {loss!r}")
        if loss_at not in ("label", "feature"):
            raise ValueError(f"loss_at must be 'label' or 'feature'; got {loss_at!r}")
        self.loss, self.loss_at = loss, loss_at
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.use_aux = aux_num_features > 0 and self.aux_weight > 0

        def isda(features: int) -> Optional[SegmentationISDALoss]:
            if loss != "isda":
                return None
            return SegmentationISDALoss(features, num_classes, lambda0, kind,
                                        constant_lambda=constant_lambda, ignore_index=ignore_index,
                                        label_smoothing=label_smoothing)

        self.main = isda(num_features)
        self.aux = isda(aux_num_features) if self.use_aux else None

    # ------------------------------------------------------------------ hooks

    def set_progress(self, t_over_T: float) -> None:
        for isda in (self.main, self.aux):
            if isda is not None:
                isda.set_progress(t_over_T)

    def log_values(self) -> dict[str, float]:
        return {"lambda": self.main.ratio} if self.main is not None else {}

    # ------------------------------------------------------------------ loss

    def _cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        # the mean over valid pixels as sum / count: 0 (not nan) without one, no host read
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index,
                                label_smoothing=self.label_smoothing, reduction="sum")
        count = (target != self.ignore_index).sum().clamp_min(1)
        return total / count.to(total.dtype)

    def head_loss(self, isda: Optional[SegmentationISDALoss], features: Tensor, logits: Tensor,
                  target: Tensor, classifier: nn.Module) -> Tensor:
        """The loss of one head (``features``/``logits`` at feature resolution)."""
        features, logits = features.float(), logits.float()
        if self.loss_at == "feature":
            if isda is not None:
                return isda(features, logits, target, classifier.weight)
            return self._cross_entropy(logits, resize_labels(target, logits.shape[-2:]))
        if isda is not None:
            # contiguous NCHW (the result is a permuted view), as the plain logits are
            logits = isda.augmented_logits(features, logits, target, classifier.weight).contiguous()
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                               align_corners=ALIGN_CORNERS)
        return self._cross_entropy(logits, target)

    def forward(self, out: Any, target: Tensor, model: nn.Module) -> Tensor:
        """``out``: the model's :class:`~torch_isda.models.segmentation.SegmentationOutput`;
        ``target``: ``B x H x W`` labels."""
        loss = self.head_loss(self.main, out.features, out.logits, target, model.get_classifier())
        if self.use_aux and out.aux_logits is not None:
            loss = loss + self.aux_weight * self.head_loss(
                self.aux, out.aux_features, out.aux_logits, target, model.get_aux_classifier())
        return loss
