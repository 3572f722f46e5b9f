"""Class-balanced labeled / unlabeled / validation splits for semi-supervised training.

The semi-supervised protocol of the ISDA paper (Section 6.1, following Miyato et al.,
VAT) keeps the labels of ``num_labels`` training images, the same number per class,
and treats the rest as unlabeled; during the hyper-parameter search 25% of the
labeled images are held out as a validation set (``val_fraction=0.25``), then put
back for the final runs (``val_fraction=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Union

import numpy as np
import torch

__all__ = ["SemiSplit", "labeled_split"]

LabelsLike = Union[torch.Tensor, np.ndarray, Sequence[int]]


class SemiSplit(NamedTuple):
    """Disjoint, sorted ``int64`` index tensors into the training set."""

    labeled: torch.Tensor
    unlabeled: torch.Tensor
    validation: torch.Tensor


def labeled_split(
    labels: LabelsLike,
    num_labels: int,
    num_classes: int,
    seed: int,
    val_fraction: float = 0.0,
) -> SemiSplit:
    """Pick ``num_labels`` labeled samples, balanced over classes, reproducibly.

    For every class ``c`` a random permutation of its samples (from a
    ``torch.Generator`` seeded with ``seed``; classes are processed in order, so the
    result depends only on ``labels``, ``num_labels``, ``num_classes``, ``seed`` and
    ``val_fraction``) gives ``k = num_labels / num_classes`` picks; the first
    ``v = round(val_fraction * k)`` of them go to the validation set and the other
    ``k - v`` to the labeled set.  All remaining samples are unlabeled.

    Args:
        labels: ``(N,)`` class index of every training sample.
        num_labels: Total labeled budget (labeled + validation), a positive multiple
            of ``num_classes``.
        num_classes: Number of classes ``C``; every label must lie in ``[0, C)``.
        seed: Seed of the split (different seeds give different labeled subsets).
        val_fraction: Fraction of each class's picks held out for validation
            (``0.25`` in the paper's hyper-parameter search), in ``[0, 1)``.

    Returns:
        ``SemiSplit(labeled, unlabeled, validation)``: sorted, disjoint ``int64``
        tensors whose union is ``range(N)``; ``labeled`` has ``num_labels - V`` and
        ``validation`` ``V = num_classes * v`` entries, ``v`` per class.

    Raises:
        ValueError: if ``num_labels`` is not a positive multiple of ``num_classes``,
            exceeds a class's sample count, if labels are out of range, or if
            ``val_fraction`` leaves no labeled (or no validation) sample per class.
    """
    y = _checked_labels(labels, int(num_classes))
    num_classes = int(num_classes)
    per_class = _labels_per_class(y, int(num_labels), num_classes)
    num_val = _validation_per_class(float(val_fraction), per_class)
    gen = torch.Generator().manual_seed(int(seed))
    labeled, validation = [], []
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()
        picks = members[torch.randperm(members.numel(), generator=gen)[:per_class]]
        validation.append(picks[:num_val])
        labeled.append(picks[num_val:])
    lab = torch.cat(labeled).sort().values
    val = torch.cat(validation).sort().values
    taken = torch.zeros(y.numel(), dtype=torch.bool)
    taken[lab] = True
    taken[val] = True
    unl = (~taken).nonzero().flatten()
    return SemiSplit(lab, unl, val)


def _checked_labels(labels: LabelsLike, num_classes: int) -> torch.Tensor:
    """``labels`` as a CPU ``int64`` vector, checked to be class indices in ``[0, num_classes)``."""
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"labels must hold integer class indices, got dtype {y.dtype}")
    y = y.to("cpu", torch.int64)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in [{int(y.min())}, {int(y.max())}]"
        )
    return y


def _labels_per_class(y: torch.Tensor, num_labels: int, num_classes: int) -> int:
    """``num_labels / num_classes``, checked to be a whole number every class can give."""
    if num_labels < num_classes or num_labels % num_classes:
        raise ValueError(
            f"num_labels={num_labels} must be a positive multiple of num_classes={num_classes} "
            "so that every class gets the same number of labels"
        )
    per_class = num_labels // num_classes
    counts = torch.bincount(y, minlength=num_classes)
    short = (counts < per_class).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise ValueError(
            f"num_labels={num_labels} needs {per_class} samples per class, but class {c} has "
            f"only {int(counts[c])} ({len(short)} class(es) too small); the largest balanced "
            f"budget is {int(counts.min()) * num_classes}"
        )
    return per_class


def _validation_per_class(val_fraction: float, per_class: int) -> int:
    """``round(val_fraction * per_class)``, checked to leave both splits non-empty."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    num_val = int(np.floor(val_fraction * per_class + 0.5))
    if val_fraction > 0 and not 1 <= num_val <= per_class - 1:
        raise ValueError(
            f"val_fraction={val_fraction} of {per_class} labels per class leaves "
            f"{num_val} validation and {per_class - num_val} labeled samples per class; "
            "both must be at least 1"
        )
    return num_val
