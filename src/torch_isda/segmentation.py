"""ISDA for semantic segmentation (Section 6.4 and Table 7 of the paper).

Every pixel of the classifier's input feature map is one ISDA sample: its deep feature is
the ``A``-vector at that location, its label the (resized) ground-truth class, and the
classifier is the final ``1 x 1`` convolution, whose ``C x A x 1 x 1`` weight plays the role
of ``W``. The loss is Eq. (7) applied to all non-ignored pixels, i.e. exactly
:class:`torch_isda.ISDALoss` applied to the flattened pixels::

    criterion = SegmentationISDALoss(num_features=512, num_classes=19)   # diagonal, lambda0 = 7.5
    out = model.forward_all(images)            # features B x A x h x w, logits B x C x h x w
    loss = criterion(out.features, out.logits, labels, model.get_classifier().weight)
    criterion.set_progress(step / total_steps)  # lambda = lambda0 * t / T

Memory. The official code builds ``pixels x C x A`` tensors (one copy of ``W`` per pixel,
hundreds of MB to GB per step at Cityscapes shapes). Here the augmentation term
``sigma2[c, j] = (w_j - w_c)^T Sigma_c (w_j - w_c)`` is computed once per class *present*
(:func:`torch_isda.functional.class_sigma2`, ``U x C``) and spread over the pixels by a
``pixels x C`` one-hot product; the estimator receives one ``valid pixels x A`` copy of the
features. The peak extra memory of forward + backward is therefore linear in
``pixels x (C + A)`` for every kind (``benchmarks/segmentation_loss.py``: ~100 MB diagonal,
~180 MB full at 2 x 512 x 97 x 97, C = 19, where one dense ``pixels x C x A`` tensor is 698 MB
and the dense diagonal step peaks at ~3.5 GB).
For ``kind="full"`` the estimator's batched update pads each present class to the largest
class count (``U x max_count x A``), which on a pixel batch dominated by one class (road) is
``~U`` times the feature map; this loss then folds such batches into the estimator in a few
groups of classes whose padded block stays within twice the features (exactly the same
statistics: Chan's update is exact and classes are independent).

Labels. ``target`` may have a different spatial size than the feature map (typically the
full-resolution crop). It is then resized by nearest neighbour exactly as
``F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")`` would: output row
``i`` reads input row ``min(floor(i * H_in / h), H_in - 1)`` (the scale computed in float32),
same for columns. The official implementation resizes its labels the same way.

Auxiliary heads (deep supervision, the "DSN" head on ``layer3``): use one
``SegmentationISDALoss`` per head, each with its own estimator, e.g.
``loss = isda_main(...) + 0.4 * isda_aux(f_aux, z_aux, labels, aux_classifier.weight)``.

The official recipe (``train_isda.py``) instead augments the logits at feature resolution,
upsamples them bilinearly to the label size and applies the cross-entropy there; that is
available as :meth:`SegmentationISDALoss.augmented_logits`.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as _dist
from . import functional as isda_f
from .eager import eager_only
from .loss import ISDALoss
from .options import ISDAOptions

__all__ = ["SegmentationISDALoss", "resize_labels", "classifier_weight"]


def classifier_weight(weight: Union[Tensor, nn.Module]) -> Tensor:
    """The ``C x A`` matrix of a per-pixel classifier.

    Accepts a ``1 x 1`` convolution weight (``C x A x 1 x 1``), a ``C x A`` matrix, or the
    layer itself (``nn.Conv2d`` with a ``1 x 1`` kernel or ``nn.Linear``). The result is a
    view, so gradients flow back into the layer's weight.
    """
    if isinstance(weight, nn.Module):
        weight = weight.weight
    if weight.dim() == 4:
        if tuple(weight.shape[2:]) != (1, 1):
            raise ValueError(
                f"the classifier must be a 1x1 convolution; got a weight of shape {tuple(weight.shape)}"
            )
        return weight.flatten(1)
    if weight.dim() != 2:
        raise ValueError(
            f"classifier weight must be C x A or C x A x 1 x 1; got shape {tuple(weight.shape)}"
        )
    return weight


def _nearest_indices(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """Source indices of ``F.interpolate(mode="nearest")`` along one axis (computed by it)."""
    src = torch.arange(in_size, dtype=torch.float32, device=device).view(1, 1, in_size)
    return F.interpolate(src, size=out_size, mode="nearest").view(out_size).to(torch.long)


def resize_labels(target: Tensor, size: Tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a ``B x H x W`` label map to ``size = (h, w)``.

    Bit-identical to ``F.interpolate(target[:, None].float(), size, mode="nearest")``
    (the index arithmetic is taken from ``F.interpolate`` itself), without a float copy of
    the label map: output pixel ``(i, j)`` is input pixel
    ``(min(floor(i * H / h), H - 1), min(floor(j * W / w), W - 1))``.
    """
    if target.dim() != 3:
        raise ValueError(f"target must be B x H x W; got shape {tuple(target.shape)}")
    h, w = int(size[0]), int(size[1])
    H, W = target.shape[1:]
    if (H, W) == (h, w):
        return target
    rows = _nearest_indices(H, h, target.device)
    cols = _nearest_indices(W, w, target.device)
    return target.index_select(1, rows).index_select(2, cols)


def _class_groups(counts: list, budget: int) -> list:
    """Partition the present classes into groups whose padded estimator block is bounded.

    The full-covariance update of :class:`~torch_isda.CovarianceEstimator` pads every class of
    a call to the largest class count: ``len(group) * (max count + 1)`` rows of ``A``
    features. Greedy over classes by decreasing count: a class joins the current group while
    that product stays within ``budget`` (``2 x pixels``); a class larger than the budget
    is alone. A balanced batch is a single group (one call).
    """
    groups: list = []
    current: list = []
    largest = 0
    for c in sorted((c for c, m in enumerate(counts) if m > 0), key=lambda c: -counts[c]):
        if current and (len(current) + 1) * (largest + 1) > budget:
            groups.append(current)
            current = []
        if not current:
            largest = counts[c]
        current.append(c)
    if current:
        groups.append(current)
    return groups


class SegmentationISDALoss(ISDALoss):
    """Per-pixel ISDA loss (Eq. 7) for a segmentation head ending in a ``1 x 1`` convolution.

    Equal to :class:`ISDALoss` applied to the flattened non-ignored pixels (features
    ``B x A x h x w -> pixels x A``, logits ``-> pixels x C``), with the same ``lambda``
    schedule (:meth:`set_progress`, ``constant_lambda``), estimator (``self.estimator``,
    saved in ``state_dict``) and evaluation-mode behaviour (no estimator update). Pixels whose
    label is ``ignore_index`` neither update the estimator nor count in the loss; with
    ``reduction="mean"`` the loss is the mean over the valid pixels (and ``0`` when a batch has
    none, instead of ``nan``).

    Args:
        num_features: channels ``A`` of the feature map entering the classifier.
        num_classes: number of classes ``C`` (19 on Cityscapes).
        lambda0: ``lambda_0``; 7.5 (the default) is the official segmentation setting.
        kind: ``"diagonal"`` (default, as in the paper's segmentation experiments), ``"full"``,
            ``"shared"``, ``"identity"`` or ``"lowrank"`` (``rank`` components per class).
        options, **option_values: as in :class:`ISDALoss` (an :class:`~torch_isda.ISDAOptions`
            and/or its fields by keyword), with these defaults instead:
            ``ignore_index=255`` (void pixels on Cityscapes). ``reduction="none"`` returns the
            ``B x h x w`` per-pixel loss map (0 at ignored pixels). ``validate`` and
            ``static_shapes``: as in :class:`ISDALoss`: by default (``"auto"``) the static
            path with device-side checks on an accelerator (no host synchronization) and the
            present-class path on the CPU (one synchronization per step).

    In evaluation mode the loss is the plain per-pixel cross-entropy (no update) and
    :meth:`augmented_logits` returns the logits unchanged.

    One instance per classifier head: an auxiliary (deep supervision) head has its own
    features and classifier, hence needs its own estimator.
    """

    #: the official segmentation setting: diagonal covariance, lambda0 = 7.5, void label 255
    default_options = ISDAOptions(lambda0=7.5, kind="diagonal", ignore_index=255)

    # ------------------------------------------------------------------ checks

    def _check_inputs(
        self, features: Tensor, logits: Tensor, target: Tensor, weight: Union[Tensor, nn.Module]
    ) -> Tuple[Tensor, Tensor]:
        C, A = self.num_classes, self.num_features
        W = classifier_weight(weight)
        if tuple(W.shape) != (C, A):
            raise ValueError(f"classifier weight must be C x A = ({C}, {A}) for this loss; got {tuple(W.shape)}")
        if logits.dim() != 4 or logits.shape[1] != C:
            raise ValueError(f"logits must be B x C x h x w with C={C}; got shape {tuple(logits.shape)}")
        B, _, h, w = logits.shape
        if features.dim() != 4 or tuple(features.shape) != (B, A, h, w):
            raise ValueError(
                f"features must be B x A x h x w = {(B, A, h, w)} to match the logits; got "
                f"{tuple(features.shape)}"
            )
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.dim() != 3 or target.shape[0] != B:
            raise ValueError(f"target must be B x H x W with B={B}; got shape {tuple(target.shape)}")
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise ValueError(f"target must hold integer class indices; got dtype {target.dtype}")
        return W, resize_labels(target, (h, w)).to(torch.long)

    # ------------------------------------------------------------------ estimator

    @torch.no_grad()
    def update_statistics(self, features: Tensor, target: Tensor) -> None:
        """Fold the non-ignored pixels of a ``B x A x h x w`` map into the estimator.

        ``target`` is ``B x h x w`` (already at the feature resolution). Equivalent to
        ``estimator.update(pixels x A features, pixels labels)`` over the valid pixels.
        """
        pixels = features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # order (b, y, x)
        flat = target.reshape(-1)
        self._fold_scanned(pixels, flat, *self._scan(pixels, flat))

    @torch.no_grad()
    def _fold_scanned(self, pixels: Tensor, flat: Tensor, batch, problems) -> None:
        """As in :class:`ISDALoss`; the full kind folds a batch dominated by a few classes in
        groups of classes (the padded blocks stay small)."""
        est = self.estimator
        if problems or batch.static or not est.layout.split_padded_batches:
            est.update_scanned(pixels, flat, batch, problems)
            return
        C = est.num_classes
        n = batch.num_valid
        counts = [0] * C
        for c, m in zip(batch.host_classes, batch.host_counts):
            counts[c] = m
        # Under synchronization every rank must make the same sequence of update calls (each
        # is a collective): one call per class, absent classes included.
        if est.sync and _dist.is_distributed():
            groups = [[c] for c in range(C)]
        else:
            if n == 0:
                return
            groups = _class_groups(counts, budget=2 * n)
            if len(groups) == 1:  # the padded block is at most ~2 x the features: one call
                est.update_scanned(pixels, flat, batch, problems)
                return
        group_of = torch.full((C + 1,), len(groups), dtype=torch.long)  # ignored pixels: last
        for g, members in enumerate(groups):
            group_of[members] = g
        group_of = group_of.to(flat.device)
        safe = flat if batch.valid is None else torch.where(
            batch.valid, flat, torch.full((), C, dtype=flat.dtype, device=flat.device))
        order = torch.argsort(group_of.index_select(0, safe.to(torch.long)), stable=True)
        x, labels = pixels.index_select(0, order), flat.index_select(0, order)  # valid pixels, grouped
        start = 0
        for members in groups:  # empty slices only under synchronization (absent classes)
            size = sum(counts[c] for c in members)
            est.update(x[start : start + size], labels[start : start + size], validate=False)
            start += size

    # ------------------------------------------------------------------ loss

    def _augment_flat(self, flat_logits: Tensor, W: Tensor, batch, lam: float) -> Tensor:
        """``pixels x C`` logits ``+ lam / 2 * sigma2[label]`` (ignored pixels unchanged).

        ``sigma2`` is computed once per class of the batch's class set (``U x C``,
        :func:`~torch_isda.functional.class_sigma2`); the per-pixel term is
        ``onehot(label) @ sigma2`` with an all-zero row for ignored pixels. The product's
        backward (``onehot^T @ grad``, ``U x pixels @ pixels x C``) is a matrix product rather
        than a scatter-add of every pixel's gradient into ``U`` rows, which is much faster on
        CPU. Memory: a few ``pixels x C`` tensors.
        """
        out = flat_logits if flat_logits.dtype in (torch.float32, torch.float64) else flat_logits.float()
        U = batch.classes.shape[0]
        if (not isinstance(lam, Tensor) and lam == 0.0) or U == 0:
            return out
        if batch.onehot is not None:  # static path: the masked one-hot matrix of all C classes
            return isda_f.augment_static(out, W, self.estimator.functional_covariance(), lam, self.kind, batch.onehot)
        sigma2 = isda_f.class_sigma2(W, self.estimator.functional_covariance(), batch.classes, self.kind,
                                     host_classes=batch.host_classes)  # U x C
        P = batch.inverse.shape[0]
        keep = sigma2.new_ones(P, 1) if batch.valid is None else batch.valid.unsqueeze(1).to(sigma2.dtype)
        onehot = sigma2.new_zeros(P, U).scatter_(1, batch.inverse.unsqueeze(1), keep)
        return out + (onehot @ sigma2).mul_(0.5 * lam).to(out.dtype)

    def _prepare(
        self, features: Tensor, logits: Tensor, target: Tensor, weight: Union[Tensor, nn.Module],
        ratio: Optional[float],
    ):
        """Augmented flat logits, flat target and class set (the present-class path eagerly
        under ``torch.compile``, as in :meth:`ISDALoss.forward`)."""
        if ratio is not None:  # the caller drives lambda
            self._progress_driven = True
        if self.static_for(logits.numel() // max(logits.shape[1], 1) if logits.dim() == 4 else 0):
            return self._prepare_traced(features, logits, target, weight, ratio)
        return self._prepare_eager(features, logits, target, weight, ratio)

    def _prepare_traced(
        self, features: Tensor, logits: Tensor, target: Tensor, weight: Union[Tensor, nn.Module],
        ratio: Optional[float],
    ):
        W, target = self._check_inputs(features, logits, target, weight)
        lam = self._step_ratio(ratio)
        A, C = self.num_features, self.num_classes
        flat_target = target.reshape(-1)
        pixels = features.detach().permute(0, 2, 3, 1).reshape(-1, A)  # pixels x A, order (b, y, x)
        batch = self._scan_and_update(pixels, flat_target)
        flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, C)  # pixels x C, order (b, y, x)
        return self._augment_flat(flat_logits, W, batch, lam), flat_target, batch

    _prepare_eager = eager_only(_prepare_traced)

    def forward(
        self,
        features: Tensor,
        logits: Tensor,
        target: Tensor,
        weight: Union[Tensor, nn.Module],
        ratio: Optional[float] = None,
    ) -> Tensor:
        """Per-pixel ISDA loss of a batch.

        Args:
            features: ``B x A x h x w`` input of the final ``1 x 1`` classifier (detached
                internally; only the estimator uses it).
            logits: ``B x C x h x w`` output of that classifier (bias included).
            target: ``B x H x W`` (or ``B x 1 x H x W``) integer labels, ``ignore_index`` for
                void; resized by nearest neighbour to ``h x w`` when the sizes differ.
            weight: the classifier's weight (``C x A x 1 x 1`` or ``C x A``) or the layer
                itself; gradients flow into it.
            ratio: ``lambda`` for this call; the schedule's value when ``None``.

        Returns:
            the scalar loss (``reduction="mean"``/``"sum"``) or the ``B x h x w`` loss map.
        """
        if not self.training:
            return self.evaluation_loss(features, logits, target, weight)
        aug, flat_target, batch = self._prepare(features, logits, target, weight, ratio)
        if batch.target is not None:  # device-side checks: out-of-range labels are ignored
            flat_target = batch.target
        if self.options.adjusts_logits:
            aug = self._offset(aug, flat_target)
        return self._pixel_cross_entropy(aug, flat_target, batch.counts.sum(), logits.shape)

    def _pixel_cross_entropy(self, flat_logits: Tensor, flat_target: Tensor, valid_pixels: Tensor,
                             shape: torch.Size) -> Tensor:
        """The cross-entropy of ``pixels x C`` logits, reduced (``B x h x w`` for ``"none"``)."""
        aug = flat_logits
        B, _, h, w = shape
        if self.reduction == "mean":  # sum over the valid pixels / their count, read on neither path
            total = F.cross_entropy(aug, flat_target, reduction="sum", label_smoothing=self.label_smoothing,
                                    ignore_index=self.ignore_index)
            return total / valid_pixels.clamp_min(1).to(total.dtype)  # 0 (not nan) without valid pixels
        loss = F.cross_entropy(
            aug,
            flat_target,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )
        return loss.view(B, h, w) if self.reduction == "none" else loss

    def evaluation_loss(  # type: ignore[override]
        self, features: Tensor, logits: Tensor, target: Tensor, weight: Union[Tensor, nn.Module]
    ) -> Tensor:
        """The plain per-pixel cross-entropy of ``logits`` (evaluation mode; no update)."""
        _, target = self._check_inputs(features, logits, target, weight)
        C = self.num_classes
        flat_target = target.reshape(-1)
        valid = (flat_target != self.ignore_index).sum()
        return self._pixel_cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, C), flat_target, valid, logits.shape)

    def augmented_logits(
        self,
        features: Tensor,
        logits: Tensor,
        target: Tensor,
        weight: Union[Tensor, nn.Module],
        ratio: Optional[float] = None,
    ) -> Tensor:
        """``B x C x h x w`` ISDA-augmented logits (the official code's training recipe).

        Updates the estimator (in training mode) like :meth:`forward`, then returns
        ``logits + lambda / 2 * sigma2[label]`` per pixel, ignored pixels unchanged. The caller
        may upsample the result to the label size and apply its own cross-entropy with
        ``ignore_index`` (as the official ``CriterionDSN`` does). Gradients flow into
        ``logits`` and ``weight``. Memory: ``pixels x C``. In evaluation mode ``logits`` come
        back unchanged (no ISDA term, no update).
        """
        if not self.training:
            self._check_inputs(features, logits, target, weight)
            return logits
        aug, _, _ = self._prepare(features, logits, target, weight, ratio)
        B, C, h, w = logits.shape
        return aug.view(B, h, w, C).permute(0, 3, 1, 2)

    def dense_memory_bytes(self, pixels: int, element_size: int = 4) -> int:
        """Bytes of ONE ``pixels x C x A`` tensor, the unit of the dense (official) formulation."""
        return int(pixels) * self.num_classes * self.num_features * int(element_size)
