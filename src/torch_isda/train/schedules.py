"""Learning-rate factors of the engine (picklable callables for ``LambdaLR``): step, cosine
and poly, counted in epochs or in iterations (:func:`lr_factor`)."""

from __future__ import annotations

import bisect
import math
from typing import Any, Union

__all__ = ["CosineFactor", "PolyFactor", "StepFactor", "lr_factor"]


class StepFactor:
    """lr factor ``gamma ** (number of milestones <= t)``."""

    def __init__(self, milestones: list[int], gamma: float) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class CosineFactor:
    """lr factor ``(1 + cos(pi * t / total)) / 2``."""

    def __init__(self, total: int) -> None:
        self.epochs = int(total)

    def __call__(self, t: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * t / self.epochs))


class PolyFactor:
    """The "poly" schedule of DeepLab / PSPNet: factor ``(1 - t / total) ** power``.

    ``t`` counts iterations in segmentation runs (the official recipe,
    ``lr_poly(base_lr, iter, max_iter, 0.9)``) and epochs in classification runs.
    ``t >= total`` gives 0.
    """

    def __init__(self, total: int, power: float = 0.9) -> None:
        if int(total) < 1:
            raise ValueError(f"the poly schedule needs a positive length; got {total}")
        if not float(power) >= 0:
            raise ValueError(f"the poly power must be non-negative; got {power}")
        self.total = int(total)
        self.power = float(power)

    def __call__(self, t: int) -> float:
        return max(0.0, 1.0 - t / self.total) ** self.power


def lr_factor(config: Any, steps_per_epoch: int = 1
              ) -> Union[StepFactor, CosineFactor, PolyFactor]:
    """The factor of ``config.lr_schedule`` with ``t`` counted in units of
    ``1 / steps_per_epoch`` epoch (1: per epoch; milestones stay in epochs)."""
    total = int(config.epochs) * int(steps_per_epoch)
    if config.lr_schedule == "cosine":
        return CosineFactor(total)
    if config.lr_schedule == "poly":
        return PolyFactor(total, config.poly_power)
    return StepFactor([int(m) * int(steps_per_epoch) for m in config.milestones or []],
                      config.gamma)
