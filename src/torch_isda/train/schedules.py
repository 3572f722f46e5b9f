"""Learning-rate factors of the engine (picklable callables for ``LambdaLR``): step, cosine
and poly, counted in epochs or in iterations (:func:`lr_factor`)."""

from __future__ import annotations

import bisect
import math
from typing import Any, Optional, Union

__all__ = ["CosineFactor", "PolyFactor", "StepFactor", "lr_factor"]


class StepFactor:
    """lr factor ``gamma ** (number of milestones <= t + offset)``. ``offset=1`` is the
    official ISDA CIFAR timing (``lr_offset`` in :mod:`~torch_isda.train.presets`):
    milestone ``m`` takes effect from 0-based epoch ``m - 1``."""

    def __init__(self, milestones: list[int], gamma: float, offset: int = 0) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.offset = int(offset)

    def __call__(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t + self.offset)


class CosineFactor:
    """lr factor ``(1 + cos(pi * (t + offset) / total)) / 2``; ``offset=1`` (the official
    ISDA CIFAR timing) reaches 0 in the last epoch."""

    def __init__(self, total: int, offset: int = 0) -> None:
        self.epochs = int(total)
        self.offset = int(offset)

    def __call__(self, t: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * (t + self.offset) / self.epochs))


class PolyFactor:
    """The "poly" schedule of DeepLab / PSPNet: factor ``max(0, 1 - t / total) ** power``;
    ``t`` counts iterations in segmentation runs (the official recipe,
    ``lr_poly(base_lr, iter, max_iter, 0.9)``) and epochs in classification runs."""

    def __init__(self, total: int, power: float = 0.9) -> None:
        if int(total) < 1:
            raise ValueError(f"the poly schedule needs a positive length; got {total}")
        if not float(power) >= 0:
            raise ValueError(f"the poly power must be non-negative; got {power}")
        self.total = int(total)
        self.power = float(power)

    def __call__(self, t: int) -> float:
        return max(0.0, 1.0 - t / self.total) ** self.power


def lr_factor(config: Any, steps_per_epoch: Optional[int] = None
              ) -> Union[StepFactor, CosineFactor, PolyFactor]:
    """The factor of ``config.lr_schedule``: per epoch (``t`` in epochs, shifted by
    ``config.lr_offset``) or, given ``steps_per_epoch``, per iteration (milestones stay in
    epochs; no offset)."""
    per_step = steps_per_epoch is not None
    steps_per_epoch = int(steps_per_epoch) if per_step else 1
    total = int(config.epochs) * steps_per_epoch
    offset = 0 if per_step else int(getattr(config, "lr_offset", None) or 0)
    if config.lr_schedule == "cosine":
        return CosineFactor(total, offset)
    if config.lr_schedule == "poly":
        return PolyFactor(total, config.poly_power)
    return StepFactor([int(m) * int(steps_per_epoch) for m in config.milestones or []],
                      config.gamma, offset)
