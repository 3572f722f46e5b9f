"""Learning-rate factors shared by the trainers (picklable callables for ``LambdaLR``)."""

from __future__ import annotations

__all__ = ["PolyFactor"]


class PolyFactor:
    """The "poly" schedule of DeepLab / PSPNet: factor ``(1 - t / total) ** power``.

    ``t`` counts iterations in the segmentation trainer (the official recipe,
    ``lr_poly(base_lr, iter, max_iter, 0.9)``) and epochs in the classification trainer.
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
