"""Class-balanced, seeded subsets of a labelled training set (the low-data setting).

:func:`balanced_split` picks ``train_size`` indices with as equal a count per class as
possible (``train_size // C`` each, the remainder going to randomly chosen classes), and
optionally carves a class-balanced validation split out of that subset. The draw depends
only on the labels and ``seed``, and the splits are nested: the subset drawn with a
validation split is the same as without it, and a larger ``train_size`` contains a smaller
one's images for the same seed.

:func:`~torch_isda.data.create_dataset` applies it to any in-memory dataset with the
dataset options ``train_size``, ``val_size`` and ``subset_seed`` (e.g.
``--dataset-kwargs train_size=10000``).
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["SUBSET_OPTIONS", "balanced_quotas", "balanced_split"]

#: The dataset options handled by :func:`~torch_isda.data.create_dataset` for every
#: in-memory dataset.
SUBSET_OPTIONS = ("train_size", "val_size", "subset_seed")


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def balanced_quotas(total: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Per-class counts summing to ``total``: ``total // C`` each, plus one for
    ``total % C`` classes drawn with ``generator``."""
    quotas = torch.full((num_classes,), total // num_classes, dtype=torch.long)
    extra = total % num_classes
    if extra:
        quotas[torch.randperm(num_classes, generator=generator)[:extra]] += 1
    return quotas


def balanced_split(labels: torch.Tensor, num_classes: int, train_size: Optional[int] = None,
                   val_size: Optional[int] = None, seed: int = 0
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Indices of a class-balanced training subset and of an optional validation split.

    Args:
        labels: ``int64`` labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        train_size: Size of the subset (before the validation split is carved out of it);
            ``None`` keeps every image. At least ``C``.
        val_size: Images of the subset moved to a validation split, class-balanced;
            ``None`` for none. Every class keeps at least one training image.
        seed: Seed of the draw.

    Returns:
        ``(train_indices, val_indices)``, each sorted; ``val_indices`` is ``None`` without
        ``val_size``. The two are disjoint and together form the subset.

    Raises:
        ValueError: a size is not a positive integer, ``train_size`` is below ``C`` or
            above the number of images, or a class has too few images for its quota (the
            message names the class).
    """
    labels = torch.as_tensor(labels).to("cpu", torch.long).reshape(-1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"subset_seed must be an integer; got {seed!r}")
    counts = torch.bincount(labels, minlength=num_classes)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=generator)
    if train_size is None:
        quotas = counts.clone()
    else:
        train_size = _check_train_size(train_size, num_classes, labels.numel())
        quotas = balanced_quotas(train_size, num_classes, generator)
    val_quotas = None
    if val_size is not None:
        val_size = _check_count("val_size", val_size)
        val_quotas = balanced_quotas(val_size, num_classes, generator)
    train_parts, val_parts = [], []
    shuffled = labels[order]
    for c in range(num_classes):
        members = order[shuffled == c]  # this class's images, in the seeded random order
        chosen, held_out = _class_picks(c, members, int(quotas[c]), train_size, val_quotas, val_size)
        if held_out is not None:
            val_parts.append(held_out)
        train_parts.append(chosen)
    train_idx = torch.cat(train_parts).sort().values
    val_idx = torch.cat(val_parts).sort().values if val_quotas is not None else None
    return train_idx, val_idx


def _check_train_size(train_size: object, num_classes: int, available: int) -> int:
    """``train_size`` checked to be an integer in ``[num_classes, available]``."""
    train_size = _check_count("train_size", train_size)
    if train_size < num_classes:
        raise ValueError(f"train_size={train_size} cannot be balanced over {num_classes} "
                         f"classes; use at least {num_classes}")
    if train_size > available:
        raise ValueError(f"train_size={train_size} exceeds the {available} training "
                         f"images")
    return train_size


def _class_picks(c: int, members: torch.Tensor, quota: int, train_size: Optional[int],
                 val_quotas: Optional[torch.Tensor], val_size: Optional[int]
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Class ``c``'s training indices and (with ``val_quotas``) validation indices: the
    first ``quota`` of its shuffled ``members``, the first ``val_quotas[c]`` held out."""
    if members.numel() < quota:
        raise ValueError(f"class {c} has {members.numel()} training images, fewer than the "
                         f"{quota} a balanced train_size={train_size} needs")
    chosen = members[:quota]
    if val_quotas is None:
        return chosen, None
    v = int(val_quotas[c])
    if v >= quota:
        raise ValueError(f"val_size={val_size} leaves class {c} no training image "
                         f"({v} of its {quota} subset images would be validation)")
    return chosen[v:], chosen[:v]
