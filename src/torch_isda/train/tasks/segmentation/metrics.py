"""Semantic segmentation metrics (confusion-matrix mIoU) and single/multi-scale evaluation.

* :class:`ConfusionMatrix`: accumulates ``M[t, p]`` = number of pixels of true class ``t``
  predicted as ``p`` over any number of batches, skipping pixels labelled ``ignore_index``;
  :meth:`~ConfusionMatrix.compute` gives per-class IoU ``M[c,c] / (row_c + col_c - M[c,c])``,
  their mean over classes that occur (in the labels or the predictions) — the Cityscapes mIoU
  —, pixel accuracy and mean class accuracy.
* :func:`predict_probs`: softmax probabilities at the label size, averaged over input scales
  (e.g. ``(0.75, 1, 1.25, 1.5)`` as in Table 7) and optionally horizontal flips.
* :func:`evaluate_segmentation`: runs a model over ``(image, label)`` batches and returns the
  metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ConfusionMatrix", "evaluate_segmentation", "predict_probs"]


class ConfusionMatrix:
    """Accumulating ``C x C`` confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: ``C``.
        ignore_index: label of pixels that are skipped (255 on Cityscapes).
        device: where the (``int64``) matrix lives; default: the first update's device.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: Optional[torch.device] = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            pred: predicted classes with the shape of ``target``, or scores/logits with one
                more (class) dimension at position 1 (``B x C x H x W``), arg-maxed here.
            target: integer labels (any shape), ``ignore_index`` for void pixels.
        """
        C = self.num_classes
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != C:
                raise ValueError(f"scores have {pred.shape[1]} classes, expected {C}")
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if self.matrix.device != target.device:
            if self.matrix.any():
                target, pred = target.to(self.matrix.device), pred.to(self.matrix.device)
            else:
                self.matrix = self.matrix.to(target.device)
        t = target.reshape(-1).to(torch.int64)
        p = pred.reshape(-1).to(self.matrix.device, torch.int64)
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        if t.numel() == 0:
            return
        lo, hi, plo, phi = torch.stack([t.min(), t.max(), p.min(), p.max()]).tolist()
        if lo < 0 or hi >= C:
            raise ValueError(f"labels must lie in [0, {C}) or equal ignore_index={self.ignore_index}; got [{lo}, {hi}]")
        if plo < 0 or phi >= C:
            raise ValueError(f"predictions must lie in [0, {C}); got [{plo}, {phi}]")
        self.matrix += torch.bincount(t * C + p, minlength=C * C).view(C, C)

    def all_reduce(self) -> None:
        """Sum the matrix over ``torch.distributed`` ranks (in place; a no-op when not distributed)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix)

    def iou(self) -> Tensor:
        """Per-class IoU (``float64``, ``nan`` for classes absent from labels and predictions)."""
        m = self.matrix.to(torch.float64)
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> dict[str, Any]:
        """``{"miou", "iou" (list, nan for absent classes), "pixel_acc", "mean_acc", "pixels",
        "predicted_classes"}`` (the number of classes predicted for at least one pixel)."""
        m = self.matrix.to(torch.float64)
        tp = m.diagonal()
        rows = m.sum(1)
        total = float(m.sum())
        iou = self.iou()
        acc = torch.where(rows > 0, tp / rows.clamp_min(1), torch.full_like(tp, float("nan")))
        return {
            "miou": float(torch.nanmean(iou)) if bool((~iou.isnan()).any()) else float("nan"),
            "iou": iou.tolist(),
            "pixel_acc": float(tp.sum()) / total if total else float("nan"),
            "mean_acc": float(torch.nanmean(acc)) if bool((~acc.isnan()).any()) else float("nan"),
            "pixels": int(total),
            "predicted_classes": int((m.sum(0) > 0).sum()),
        }


def _logits_of(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"the model must return logits (a tensor); got {type(output).__name__}")


@torch.no_grad()
def predict_probs(
    model: Callable[[Tensor], Any],
    images: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    output_size: Optional[Sequence[int]] = None,
    align_corners: bool = False,
) -> Tensor:
    """Class probabilities ``B x C x H x W`` averaged over scales (and flips).

    For each scale ``s`` the images are resized (bilinear) to ``round(s * H) x round(s * W)``,
    the model's logits (at any resolution, e.g. output stride 8) are upsampled bilinearly to
    ``output_size`` (default: the input size ``H x W``), soft-maxed and averaged; with
    ``flip`` the horizontally flipped input is added (its prediction flipped back).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be B x 3 x H x W; got {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales must not be empty")
    H, W = images.shape[-2:]
    size = (H, W) if output_size is None else (int(output_size[0]), int(output_size[1]))
    total: Optional[Tensor] = None
    n = 0
    for s in scales:
        sh, sw = max(1, int(round(H * float(s)))), max(1, int(round(W * float(s))))
        x = images if (sh, sw) == (H, W) else F.interpolate(
            images, size=(sh, sw), mode="bilinear", align_corners=align_corners)
        for flipped in (False, True) if flip else (False,):
            inp = x.flip(-1) if flipped else x
            logits = _logits_of(model(inp)).float()
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
            probs = logits.softmax(1)
            if flipped:
                probs = probs.flip(-1)
            total = probs if total is None else total.add_(probs)
            n += 1
    return total.div_(n)


@torch.no_grad()
def evaluate_segmentation(
    model: torch.nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    ignore_index: int = 255,
    device: Optional[torch.device | str] = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (switched to eval mode, restored afterwards) over ``(images, labels)``.

    Predictions are made at the label resolution (``labels`` ``B x H x W``); single-scale
    with ``scales=(1.0,)``, multi-scale (+ flip) otherwise, see :func:`predict_probs`.
    ``distributed=True`` sums the confusion matrices over ranks (shard the data, e.g. with
    ``ShardSampler``). Returns :meth:`ConfusionMatrix.compute`.
    """
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    was_training = model.training
    model.eval()
    try:
        for images, labels in batches:
            if device is not None:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            probs = predict_probs(model, images, scales=scales, flip=flip, output_size=labels.shape[-2:])
            cm.update(probs.argmax(1), labels)
    finally:
        model.train(was_training)
    if distributed:
        cm.all_reduce()
    return cm.compute()
