"""Batched Cutout (DeVries & Taylor, "Improved regularization of convolutional neural
networks with cutout", arXiv:1708.04552, 2017).

Each image gets ``holes`` square patches of side ``size`` (default one 16 x 16 patch, the
CIFAR setting of DeVries & Taylor and of the ISDA code) set to ``fill``.  A patch center
``(cy, cx)`` is drawn uniformly over *all* pixels of the image, the patch covers rows
``[cy - size // 2, cy - size // 2 + size)`` and likewise for columns, clipped at the
borders (so patches near a border are smaller).  For even sizes this is exactly the
reference implementation; for odd sizes the reference covers ``2 * (size // 2)`` pixels
while this one covers exactly ``size``.  Overlapping holes simply overlap.

Where in the pipeline: the official ISDA CIFAR code applies ``Cutout`` to the
``ToTensor`` image in ``[0, 1]`` *before* ``Normalize`` (hole = black, i.e.
``-mean / std`` after normalization), and that is what
:func:`~torch_isda.data.augment.build_augment` does (on ``uint8`` or ``[0, 1]`` images,
``fill = 0``).  DeVries & Taylor's own code cuts *after* normalization (hole = the mean
color): call :func:`cutout` on the normalized batch for that variant.  The function
itself works on any dtype and any value range.

Random numbers (fixed order, on the generator's device, then moved): patch rows
``randint(0, H, (N, holes))``, then patch columns ``randint(0, W, (N, holes))``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["Cutout", "cutout", "cutout_mask"]


def _check_params(size: int, holes: int) -> tuple[int, int]:
    if isinstance(size, bool) or int(size) != size or int(size) < 0:
        raise ValueError(f"cutout size must be an integer >= 0; got {size!r}")
    if isinstance(holes, bool) or int(holes) != holes or int(holes) < 0:
        raise ValueError(f"number of cutout holes must be an integer >= 0; got {holes!r}")
    return int(size), int(holes)


def cutout_mask(
    n: int,
    height: int,
    width: int,
    size: int = 16,
    holes: int = 1,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Boolean ``(n, height, width)`` mask, ``True`` inside the cut-out patches.

    Draws ``randint(0, height, (n, holes))`` then ``randint(0, width, (n, holes))`` from
    ``generator`` (on its device; the mask is returned on ``device``, default: the
    generator's device or CPU).
    """
    size, holes = _check_params(size, holes)
    gen_device = generator.device if generator is not None else (device or torch.device("cpu"))
    out_device = torch.device(device) if device is not None else gen_device
    if n == 0 or holes == 0 or size == 0:
        return torch.zeros(n, height, width, dtype=torch.bool, device=out_device)
    cy = torch.randint(0, height, (n, holes), generator=generator, device=gen_device).to(out_device)
    cx = torch.randint(0, width, (n, holes), generator=generator, device=gen_device).to(out_device)
    y0, x0 = cy - size // 2, cx - size // 2
    rows = torch.arange(height, device=out_device)
    cols = torch.arange(width, device=out_device)
    in_rows = (rows >= y0[..., None]) & (rows < (y0 + size)[..., None])  # (n, holes, H)
    in_cols = (cols >= x0[..., None]) & (cols < (x0 + size)[..., None])  # (n, holes, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(dim=1)


def cutout(
    x: Tensor,
    size: int = 16,
    holes: int = 1,
    fill: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Cut ``holes`` random ``size x size`` patches out of every image of an ``(N, C, H, W)``
    batch, setting all channels there to ``fill``.  Returns a new tensor of the same
    dtype/shape/device (``fill`` is cast to the dtype, e.g. rounded for ``uint8``)."""
    if x.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    mask = cutout_mask(n, h, w, size, holes, generator, x.device)
    if not x.is_floating_point():
        fill = round(float(fill))
    return x.masked_fill(mask[:, None], fill)


class Cutout:
    """Callable ``(images, generator=None) -> images`` applying :func:`cutout`.

    Args:
        size: patch side in pixels (default 16).
        holes: patches per image (default 1).
        fill: value written into the patches (default 0).
    """

    def __init__(self, size: int = 16, holes: int = 1, fill: float = 0.0) -> None:
        self.size, self.holes = _check_params(size, holes)
        self.fill = float(fill)

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return cutout(x, self.size, self.holes, self.fill, generator)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, holes={self.holes}, fill={self.fill})"
