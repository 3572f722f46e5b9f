"""Basic augmentation of the semi-supervised experiments: random 2x2 translation (+ flip).

ISDA paper, Section 6.1: "random 2x2 translation followed by random horizontal flip"
on CIFAR and translation only on SVHN, following Laine & Aila (``s-laine/tempens``:
reflect-pad by 2 and crop at an offset in ``[-2, 2]``, mirror with probability 0.5)
and Miyato et al. (``takerum/vat_tf``: zero-pad by 2 and random-crop).

Everything is batched (one gather, no Python loop over images), works on any device
and dtype, and draws its random numbers from an optional ``torch.Generator`` (which
may live on another device than the images) in a fixed order: translations
(``2 * N`` integers, rows then columns), then flip decisions (``N`` floats).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TranslateFlip", "random_flip", "random_translate", "translate"]

_PADDINGS = ("reflect", "zero")


def _check_batch(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")


def translate(x: Tensor, shifts: Tensor, max_shift: int = 2, padding: str = "reflect") -> Tensor:
    """Shift every image by its own ``(dy, dx)`` in ``[-max_shift, max_shift]``.

    Image ``i`` of the result is ``pad(x[i], max_shift)[:, m + dy_i : m + dy_i + H,
    m + dx_i : m + dx_i + W]`` with ``m = max_shift``: the content moves by
    ``(-dy_i, -dx_i)`` and the uncovered border is filled by reflection (``"reflect"``,
    Laine & Aila) or zeros (``"zero"``, Miyato et al.). A zero shift is the identity.

    Args:
        x: ``(N, C, H, W)`` images (any dtype; reflection needs ``max_shift < H, W``).
        shifts: ``(N, 2)`` integer offsets ``(dy, dx)``.
        max_shift: Padding width, at least ``max |shifts|``.
        padding: ``"reflect"`` or ``"zero"``.
    """
    _check_batch(x)
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    n, c, h, w = x.shape
    shifts = torch.as_tensor(shifts, device=x.device)
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must have shape ({n}, 2), got {tuple(shifts.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0 or n == 0:
        if n and bool((shifts != 0).any()):
            raise ValueError("non-zero shifts need max_shift > 0")
        return x
    if bool((shifts.abs() > max_shift).any()):
        raise ValueError(f"shifts must lie in [-{max_shift}, {max_shift}]")
    m = int(max_shift)
    if padding == "reflect":
        if m >= h or m >= w:
            raise ValueError(f"reflect padding needs max_shift < image size, got {m} for {h}x{w}")
        # reflect-pad is not implemented for integer tensors: pad in float and cast back
        padded = F.pad(x if x.is_floating_point() else x.float(), (m, m, m, m), mode="reflect").to(x.dtype)
    else:
        padded = F.pad(x, (m, m, m, m))
    shifts = shifts.to(torch.long)
    rows = (m + shifts[:, 0, None]) + torch.arange(h, device=x.device)  # (N, H)
    cols = (m + shifts[:, 1, None]) + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def _gen_device(generator: Optional[torch.Generator], x: Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def random_translate(
    x: Tensor, max_shift: int = 2, padding: str = "reflect", generator: Optional[torch.Generator] = None
) -> Tensor:
    """Translate each image by independent uniform offsets in ``[-max_shift, max_shift]`` (see :func:`translate`)."""
    _check_batch(x)
    if max_shift == 0 or x.shape[0] == 0:
        return x
    shifts = torch.randint(
        -max_shift, max_shift + 1, (2, x.shape[0]), generator=generator, device=_gen_device(generator, x)
    )
    return translate(x, shifts.T.to(x.device), max_shift, padding)


def random_flip(x: Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Mirror each image horizontally with probability ``p``, independently."""
    _check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if x.shape[0] == 0:
        return x
    flip = torch.rand(x.shape[0], generator=generator, device=_gen_device(generator, x)) < p
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


class TranslateFlip:
    """Callable ``(images, generator=None) -> images``: random translation, then optional flip.

    Args:
        max_shift: Maximum translation in pixels (2 in the paper; 0 disables it).
        flip: Random horizontal flip (True for CIFAR, False for SVHN-style digits).
        padding: ``"reflect"`` (Laine & Aila, default) or ``"zero"`` (Miyato et al.).
        flip_p: Flip probability.
        generator: Default generator, used when the call does not pass one.
    """

    def __init__(
        self,
        max_shift: int = 2,
        flip: bool = True,
        padding: str = "reflect",
        flip_p: float = 0.5,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1], got {flip_p}")
        self.max_shift = int(max_shift)
        self.flip = bool(flip)
        self.padding = padding
        self.flip_p = float(flip_p)
        self.generator = generator

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        g = generator if generator is not None else self.generator
        x = random_translate(x, self.max_shift, self.padding, g)
        if self.flip:
            x = random_flip(x, self.flip_p, g)
        return x

    def __repr__(self) -> str:
        return (
            f"TranslateFlip(max_shift={self.max_shift}, flip={self.flip}, padding={self.padding!r}, "
            f"flip_p={self.flip_p})"
        )
