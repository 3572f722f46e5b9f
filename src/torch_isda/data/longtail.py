"""Long-tailed training subsets of a balanced labelled dataset (CIFAR-LT style).

The per-class counts follow Cao et al. 2019 (LDAM-DRW) and Cui et al. 2019 (class-balanced
loss): with ``C`` classes, the largest count ``n_max`` and the imbalance ratio
``rho = n_max / n_min``,

* ``profile="exp"`` (default): ``n_c = floor(n_max * rho^(-c / (C - 1)))`` for ``c = 0 .. C-1``;
* ``profile="step"``: the first ``C // 2`` classes keep ``n_max`` images, the others
  ``floor(n_max / rho)``.

Class 0 is the most frequent. With ``val_per_class=k`` a *balanced* held-out set of ``k``
images per class is carved from the training images **before** the tail is cut (the meta
set of MetaSAug, Li et al. 2021, which uses ``k = 10``); ``n_max`` then defaults to the
smallest class size left (e.g. 5,990 for Fashion-MNIST with ``k = 10``, 4,990 for CIFAR-10,
as in the MetaSAug code). The test set is not touched (it stays balanced).

The draw depends only on the labels, the options and ``subset_seed``. Each class's images
are taken in one seeded random order: the held-out images first, then the training images,
so a larger count contains a smaller one's images.

Shot groups (the usual long-tailed report): a class is *many-shot* with more than ``many``
(100) training images, *few-shot* with fewer than ``few`` (20), *medium-shot* otherwise.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

__all__ = [
    "LONG_TAIL_OPTIONS",
    "PROFILES",
    "SHOT_GROUPS",
    "LongTailSplit",
    "long_tail_counts",
    "long_tail_split",
    "shot_group_errors",
    "shot_groups",
]

#: Dataset options handled by :func:`~torch_isda.data.create_dataset` for every in-memory
#: dataset (with ``subset_seed``, shared with the balanced subsets); ``many_shot`` and
#: ``few_shot`` are the thresholds of the shot groups of the report (checked here).
LONG_TAIL_OPTIONS = ("imbalance", "profile", "val_per_class", "n_max", "many_shot", "few_shot")

#: Names of the imbalance profiles.
PROFILES = ("exp", "step")

#: Names of the shot groups, in report order.
SHOT_GROUPS = ("many", "medium", "few")


class LongTailSplit(NamedTuple):
    """Result of :func:`long_tail_split`."""

    #: Sorted indices of the long-tailed training images.
    train: torch.Tensor
    #: Sorted indices of the balanced held-out (meta) images, or ``None``.
    held_out: Optional[torch.Tensor]
    #: Training images per class, ``C`` ints (class 0 first).
    counts: tuple[int, ...]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def _imbalance(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0 \
            or math.isinf(value):
        raise ValueError(f"imbalance must be a finite number >= 1 (n_max / n_min); got {value!r}")
    return float(value)


def long_tail_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp"
                     ) -> tuple[int, ...]:
    """Per-class image counts of the long-tailed profile (see the module docstring).

    Raises:
        ValueError: a bad argument, or a class would get no image (``n_max / rho < 1``).
    """
    n_max = _positive_int("n_max", n_max)
    num_classes = _positive_int("num_classes", num_classes)
    rho = _imbalance(imbalance)
    if profile == "exp":
        if num_classes == 1:
            counts = [n_max]
        else:
            counts = [int(n_max * rho ** (-c / (num_classes - 1))) for c in range(num_classes)]
    elif profile == "step":
        head = num_classes // 2
        counts = [n_max] * head + [int(n_max / rho)] * (num_classes - head)
    else:
        raise ValueError(f"profile must be one of {PROFILES}; got {profile!r}")
    if min(counts) < 1:
        raise ValueError(f"imbalance={rho:g} with n_max={n_max} leaves a class without "
                         f"training images (n_max / imbalance < 1)")
    return tuple(counts)


def long_tail_split(labels: torch.Tensor, num_classes: int, imbalance: float,
                    profile: str = "exp", val_per_class: Optional[int] = None,
                    n_max: Optional[int] = None, seed: int = 0) -> LongTailSplit:
    """Indices of a long-tailed training subset and of an optional balanced held-out set.

    Args:
        labels: ``int64`` labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        imbalance: ``rho = n_max / n_min >= 1`` (``1`` keeps ``n_max`` images per class).
        profile: ``"exp"`` or ``"step"``.
        val_per_class: Images per class moved to the balanced held-out set first.
        n_max: Count of the largest class; by default the smallest class size (after the
            held-out images are removed).
        seed: Seed of the draw (``subset_seed``).

    Raises:
        ValueError: a bad option, or a class has too few images (the message names it).
    """
    labels = torch.as_tensor(labels).to("cpu", torch.long).reshape(-1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"subset_seed must be an integer; got {seed!r}")
    held = 0 if val_per_class is None else _positive_int("val_per_class", val_per_class)
    available = torch.bincount(labels, minlength=num_classes)[:num_classes] - held
    if int(available.min()) < 1:
        c = int(available.argmin())
        raise ValueError(f"class {c} has {int(available[c]) + held} training images: not enough "
                         f"for val_per_class={held} and at least one training image")
    if n_max is None:
        n_max = int(available.min())
    counts = long_tail_counts(n_max, num_classes, imbalance, profile)
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    train_parts, held_parts = [], []
    for c in range(num_classes):
        members = order[shuffled == c]  # this class's images in the seeded order
        if members.numel() - held < counts[c]:
            raise ValueError(f"class {c} has {members.numel() - held} training images, fewer "
                             f"than the {counts[c]} its long-tailed count needs (lower n_max)")
        held_parts.append(members[:held])
        train_parts.append(members[held:held + counts[c]])
    train = torch.cat(train_parts).sort().values
    held_out = torch.cat(held_parts).sort().values if held else None
    return LongTailSplit(train, held_out, counts)


def shot_groups(counts, many: int = 100, few: int = 20) -> tuple[str, ...]:
    """The shot group of each class: ``"many"`` (``n > many``), ``"few"`` (``n < few``) or
    ``"medium"``."""
    if isinstance(many, bool) or isinstance(few, bool) or not 0 <= few <= many + 1:
        raise ValueError(f"shot thresholds need 0 <= few <= many + 1; got many={many!r}, "
                         f"few={few!r}")
    return tuple("many" if n > many else "few" if n < few else "medium" for n in counts)


def shot_group_errors(wrong, total, groups) -> dict[str, Optional[float]]:
    """Error (%) of each shot group over its classes' test images: ``100 * sum wrong /
    sum total`` over the classes of the group (``None`` for an empty group).

    Args:
        wrong, total: per-class counts of misclassified and of all test images.
        groups: the shot group of each class (:func:`shot_groups`).
    """
    if not len(wrong) == len(total) == len(groups):
        raise ValueError(f"per-class lists differ in length: {len(wrong)} wrong, {len(total)} "
                         f"total, {len(groups)} groups")
    errors: dict[str, Optional[float]] = {}
    for name in SHOT_GROUPS:
        members = [c for c, g in enumerate(groups) if g == name]
        seen = sum(total[c] for c in members)
        errors[name] = 100.0 * sum(wrong[c] for c in members) / seen if seen else None
    return errors
