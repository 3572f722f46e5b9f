"""Batched RandAugment (Cubuk, Zoph, Shlens & Le, "RandAugment: Practical automated data
augmentation with a reduced search space", CVPR Workshops / NeurIPS 2020).

Every image applies ``N`` (``num_ops``) operations drawn uniformly with replacement from
the 14 transformations of the paper (identity, autoContrast, equalize, rotate, solarize,
color, posterize, contrast, brightness, sharpness, shear-x, shear-y, translate-x,
translate-y), all at the same global magnitude ``M``, each with a random sign where the
operation has one.  ``M`` lives on the paper's linear scale ``0 .. 30``
(``num_magnitude_bins = 31``, as torchvision's ``RandAugment``); the parameter of each
operation is :func:`~torch_isda.data.autoaugment.op_value` at level ``M`` (so ``M = 30``
is the AutoAugment maximum: shear 0.3, translate 150/331 of the size, rotate 30 deg,
enhance factor ``1 +- 0.9``, posterize 4 bits, solarize threshold 0).

Defaults ``N = 2``, ``M = 9`` are torchvision's; the ISDA paper does not report its
``(N, M)``, and the RandAugment paper tunes them per model (pass them explicitly).
Operations are implemented, batched and grouped as in :mod:`.autoaugment` (same image
conventions: ``uint8`` or ``[0, 1]`` float, before normalization).

Random numbers (fixed order, drawn on the generator's device and moved): operation
indices ``randint(0, len(ops), (N_images, num_ops))``, then signs
``randint(0, 2, (N_images, num_ops))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from .autoaugment import (
    Fill,
    apply_stage,
    check_batch,
    check_fill,
    check_interpolation,
    check_op,
    finish,
    gen_device,
    signed_tables,
    to_pixels,
)

__all__ = ["RANDAUGMENT_OPS", "RandAugment"]

#: The 14 operations of the RandAugment paper.
RANDAUGMENT_OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


class RandAugment:
    """Batched RandAugment, callable ``(images, generator=None) -> images``.

    Args:
        num_ops: ``N``, operations per image (default 2).
        magnitude: ``M``, integer level in ``[0, num_magnitude_bins - 1]`` (default 9).
        num_magnitude_bins: size of the magnitude scale (default 31: levels 0-30).
        ops: the operation names to draw from (default :data:`RANDAUGMENT_OPS`).
        fill: value of pixels uncovered by geometric ops, ``[0, 255]`` units (default 128).
        interpolation: ``"nearest"`` (default) or ``"bilinear"``.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        *,
        ops: Sequence[str] = RANDAUGMENT_OPS,
        fill: Fill = 128.0,
        interpolation: str = "nearest",
    ) -> None:
        if isinstance(num_ops, bool) or int(num_ops) != num_ops or int(num_ops) < 0:
            raise ValueError(f"num_ops must be an integer >= 0; got {num_ops!r}")
        if int(num_magnitude_bins) < 2:
            raise ValueError(f"num_magnitude_bins must be >= 2; got {num_magnitude_bins}")
        if not 0 <= magnitude <= num_magnitude_bins - 1:
            raise ValueError(f"magnitude must lie in [0, {num_magnitude_bins - 1}]; got {magnitude}")
        ops = tuple(str(o) for o in ops)
        if not ops:
            raise ValueError("ops must not be empty")
        for o in ops:
            check_op(o)
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.num_magnitude_bins = int(num_magnitude_bins)
        self.ops = ops
        self.fill = check_fill(fill)
        self.interpolation = check_interpolation(interpolation)
        self._tables: dict = {}

    def _get_tables(self, hw: tuple[int, int], device: torch.device, dtype: torch.dtype):
        key = (hw, device, dtype)
        if key not in self._tables:
            levels = [self.magnitude] * len(self.ops)
            self._tables[key] = signed_tables(self.ops, levels, self.num_magnitude_bins, hw, device, dtype)
        return self._tables[key]

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        check_batch(x)
        n = x.shape[0]
        if n == 0 or self.num_ops == 0:
            return x.clone()
        gdev = gen_device(generator, x)
        choice = torch.randint(0, len(self.ops), (n, self.num_ops), generator=generator, device=gdev).to(x.device)
        sign = torch.randint(0, 2, (n, self.num_ops), generator=generator, device=gdev).to(x.device)
        p = to_pixels(x)
        pos, neg = self._get_tables(tuple(x.shape[2:]), x.device, p.dtype)
        touched = torch.zeros(n, dtype=torch.bool)
        for s in range(self.num_ops):
            c = choice[:, s]
            values = torch.where(sign[:, s] > 0, pos[c], neg[c])
            apply_stage(p, c, values, touched, self.ops, self.fill, self.interpolation, x.dtype == torch.uint8)
        return finish(p, x, touched)

    def __repr__(self) -> str:
        return (
            f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude:g}, "
            f"num_magnitude_bins={self.num_magnitude_bins}, fill={self.fill}, "
            f"interpolation={self.interpolation!r})"
        )
