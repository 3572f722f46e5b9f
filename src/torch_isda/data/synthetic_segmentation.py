"""Synthetic segmentation: circles, squares and triangles on textured backgrounds.

The embedded default dataset for the segmentation task: generated in memory (no files, no
download), deterministic by seed, small enough for CPU training. Classes::

    0 background, 1 circle, 2 square, 3 triangle        (ignore_index 255)

Each image has a background of a random colour modulated by a random sinusoidal grating and
pixel noise, and 1 to ``max_shapes`` shapes (random class, centre, size, rotation, colour and
stripe texture; later shapes occlude earlier ones). Pixels within
``ignore_border`` pixels of a class boundary are labelled 255, mimicking the void band
around Cityscapes objects (set ``ignore_border=0`` for none). Shape colours are a mix of a
random colour and a class tendency (``color_prior`` in ``[0, 1]``, default 0.5: reddish
circles, greenish squares, bluish triangles, as sky is blue and vegetation green in street
scenes), so that a small CPU model learns the task in a few epochs; ``color_prior=0`` leaves
only the geometry to identify the class.

::

    data = synthetic_segmentation(seed=0)          # or create_dataset("synthetic_segmentation")
    data.train_images   # uint8 N x 3 x H x W
    data.train_masks    # int64 N x H x W, values in {0, 1, 2, 3, 255}
    for images, masks in data.batches("train", 16, shuffle=True, flip=True, generator=g):
        ...                                        # normalized float32 images, int64 masks
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .registry import channel_stats, register_dataset

__all__ = [
    "SHAPE_CLASSES",
    "SegmentationData",
    "SegmentationTensorSplit",
    "generate_shapes",
    "synthetic_segmentation",
]

SHAPE_CLASSES = ("background", "circle", "square", "triangle")
IGNORE_INDEX = 255
# class colour tendencies (row 0 unused): reddish circles, greenish squares, bluish triangles
_PALETTE = torch.tensor([[0.5, 0.5, 0.5], [0.85, 0.25, 0.2], [0.25, 0.8, 0.3], [0.25, 0.35, 0.9]])


class _Canvas:
    """Pixel coordinates of an ``H x W`` image (normalised by its shorter side) and the
    random draws of :func:`generate_shapes`, all from ``generator``."""

    def __init__(self, H: int, W: int, generator: Optional[torch.Generator]) -> None:
        self.g = generator
        self.scale = float(min(H, W))
        self.yy = ((torch.arange(H, dtype=torch.float32) + 0.5) / self.scale).view(1, H, 1)
        self.xx = ((torch.arange(W, dtype=torch.float32) + 0.5) / self.scale).view(1, 1, W)
        self.h_c, self.w_c = H / self.scale, W / self.scale  # extent in normalized units

    def uniform(self, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g) * (hi - lo) + lo

    def grating(self, freq: torch.Tensor, angle: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        f, a, p = (t.view(-1, 1, 1) for t in (freq, angle, phase))
        return torch.sin(2 * math.pi * f * (self.xx * torch.cos(a) + self.yy * torch.sin(a)) + p)  # n x H x W

    def draw_shapes(self, images: torch.Tensor, masks: torch.Tensor, active: torch.Tensor,
                    color_prior: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One random shape per image (where ``active``) painted into ``images`` and ``masks``."""
        u, n = self.uniform, images.shape[0]
        cls = torch.randint(1, 4, (n,), generator=self.g).view(n, 1, 1)
        cy = u(n, lo=0.15 * self.h_c, hi=0.85 * self.h_c).view(n, 1, 1)
        cx = u(n, lo=0.15 * self.w_c, hi=0.85 * self.w_c).view(n, 1, 1)
        r = u(n, lo=0.12, hi=0.28).view(n, 1, 1)
        rot = u(n, hi=2 * math.pi).view(n, 1, 1)
        circle, square, triangle = _shape_regions(self.yy - cy, self.xx - cx, r, rot)
        inside = active & torch.where(cls == 1, circle, torch.where(cls == 2, square, triangle))
        shade = (1 - color_prior) * u(n, 3, lo=0.1, hi=0.9) + color_prior * _PALETTE[cls.view(n)]
        shade = shade.view(n, 3, 1, 1)
        stripes = self.grating(u(n, lo=3.0, hi=12.0), u(n, hi=math.pi), u(n, hi=2 * math.pi))
        fill = shade + (u(n, lo=0.05, hi=0.2).view(n, 1, 1) * stripes).unsqueeze(1)
        images = torch.where(inside.unsqueeze(1), fill, images)
        masks = torch.where(inside, cls.expand_as(masks), masks)
        return images, masks


def _shape_regions(dy: torch.Tensor, dx: torch.Tensor, r: torch.Tensor, rot: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where a circle, a square and a triangle of size ``r`` and rotation ``rot`` centred at
    offset ``(dy, dx)`` lie."""
    circle = dx * dx + dy * dy <= r * r
    c, s = torch.cos(rot), torch.sin(rot)
    rx, ry = dx * c + dy * s, -dx * s + dy * c
    square = torch.maximum(rx.abs(), ry.abs()) <= 0.8 * r
    triangle = torch.ones_like(circle)
    for i in range(3):  # equilateral, circumradius 1.5 r (area ~ the square's): 3 half-planes
        a = rot + math.pi / 3 + 2 * math.pi * i / 3
        triangle &= dx * torch.cos(a) + dy * torch.sin(a) <= 0.75 * r
    return circle, square, triangle


def _ignore_borders(masks: torch.Tensor, ignore_border: int) -> torch.Tensor:
    """``masks`` with every pixel within ``ignore_border`` of a class boundary set to
    :data:`IGNORE_INDEX`."""
    k = 2 * ignore_border + 1
    m = masks.unsqueeze(1).to(torch.float32)
    hi_ = F.max_pool2d(m, k, 1, ignore_border)
    lo_ = -F.max_pool2d(-m, k, 1, ignore_border)
    return masks.masked_fill((hi_ != lo_).squeeze(1), IGNORE_INDEX)


def generate_shapes(
    n: int,
    size: int | tuple[int, int] = 64,
    *,
    max_shapes: int = 3,
    ignore_border: int = 1,
    color_prior: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (``uint8 n x 3 x H x W``) and masks (``int64 n x H x W``), see the module doc.

    All randomness comes from ``generator`` (CPU), so the output is a function of its state.
    """
    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if n < 0 or H < 4 or W < 4 or max_shapes < 1 or ignore_border < 0 or not 0 <= color_prior <= 1:
        raise ValueError(f"invalid arguments n={n}, size={(H, W)}, max_shapes={max_shapes}, "
                         f"ignore_border={ignore_border}, color_prior={color_prior}")
    canvas = _Canvas(H, W, generator)
    u, grating = canvas.uniform, canvas.grating
    # background: colour + grating + noise
    color = u(n, 3, lo=0.15, hi=0.85)
    amp = u(n, lo=0.05, hi=0.25)
    tex = grating(u(n, lo=2.0, hi=10.0), u(n, hi=math.pi), u(n, hi=2 * math.pi))
    images = color.view(n, 3, 1, 1) + (amp.view(n, 1, 1) * tex).unsqueeze(1)
    masks = torch.zeros(n, H, W, dtype=torch.int64)
    count = torch.randint(1, max_shapes + 1, (n,), generator=generator)
    for k in range(max_shapes):
        images, masks = canvas.draw_shapes(images, masks, (count > k).view(n, 1, 1), color_prior)
    images = images + 0.03 * torch.randn(images.shape, generator=generator)
    if ignore_border > 0 and n > 0:
        masks = _ignore_borders(masks, ignore_border)
    images = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return images, masks


class SegmentationTensorSplit(Dataset):
    """A torch Dataset over in-memory ``uint8`` images and masks: ``(normalized float image, mask)``."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, mean, std) -> None:
        self.images, self.masks = images, masks
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].to(torch.float32).div(255.0)
        return (x - self.mean.to(x.device)) / self.std.to(x.device), self.masks[index]


@dataclasses.dataclass(eq=False, repr=False)
class SegmentationData:
    """An in-memory segmentation dataset with a train/test split.

    Attributes:
        name: registry name.
        train_images, test_images: ``uint8 N x C x H x W``.
        train_masks, test_masks: ``int64 N x H x W`` in ``[0, num_classes)`` or ``ignore_index``.
        num_classes, ignore_index, classes: label space.
        mean, std: per-channel statistics of the training images (``[0, 1]`` units).
        image_size: ``(C, H, W)``.
    """

    name: str
    train_images: torch.Tensor
    train_masks: torch.Tensor
    test_images: torch.Tensor
    test_masks: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int, int]
    ignore_index: int = IGNORE_INDEX
    classes: tuple[str, ...] | None = None

    @property
    def train_size(self) -> int:
        return int(self.train_images.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.test_images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def to(self, device: torch.device | str) -> "SegmentationData":
        """A copy whose tensors live on ``device``."""
        return dataclasses.replace(
            self, **{f: getattr(self, f).to(device) for f in
                     ("train_images", "train_masks", "test_images", "test_masks")}
        )

    def split(self, name: str) -> SegmentationTensorSplit:
        """``"train"`` or ``"test"`` as a torch Dataset of ``(normalized image, mask)``."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test'; got {name!r}")
        return SegmentationTensorSplit(getattr(self, f"{name}_images"), getattr(self, f"{name}_masks"),
                                       self.mean, self.std)

    def batches(
        self,
        split: str = "train",
        batch_size: int = 16,
        *,
        shuffle: bool = False,
        flip: bool = False,
        drop_last: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate ``(normalized float32 images, int64 masks)`` batches on the data's device.

        ``flip`` applies a random horizontal flip per image (image and mask together).
        Randomness (order, flips) comes from ``generator``.
        """
        images = getattr(self, f"{split}_images")
        masks = getattr(self, f"{split}_masks")
        n = images.shape[0]
        gdev = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gdev) if shuffle else torch.arange(n)
        order = order.to(images.device)
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = (images.index_select(0, idx).to(torch.float32).div_(255.0) - mean) / std
            y = masks.index_select(0, idx)
            if flip:
                f = (torch.rand(idx.numel(), generator=generator, device=gdev) < 0.5).to(images.device)
                x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
                y = torch.where(f.view(-1, 1, 1), y.flip(-1), y)
            yield x, y

    def __repr__(self) -> str:
        return (f"SegmentationData(name={self.name!r}, train={self.train_size}, test={self.test_size}, "
                f"num_classes={self.num_classes}, image_size={self.image_size}, device={self.device})")


@register_dataset
def synthetic_segmentation(
    root: str = "data",
    download: bool = False,
    *,
    num_train: int = 512,
    num_test: int = 128,
    image_size: int = 64,
    max_shapes: int = 3,
    ignore_border: int = 1,
    color_prior: float = 0.5,
    seed: int = 0,
) -> SegmentationData:
    """Registry entry: the synthetic shapes dataset (``root``/``download`` unused).

    Deterministic: the same arguments always give the same tensors (train and test are
    drawn from one generator seeded with ``seed``, train first).
    """
    del root, download
    g = torch.Generator().manual_seed(int(seed))
    kw = dict(max_shapes=max_shapes, ignore_border=ignore_border, color_prior=color_prior, generator=g)
    train_x, train_y = generate_shapes(num_train, image_size, **kw)
    test_x, test_y = generate_shapes(num_test, image_size, **kw)
    mean, std = channel_stats(train_x) if num_train else ((0.5,) * 3, (0.25,) * 3)
    return SegmentationData(
        name="synthetic_segmentation",
        train_images=train_x, train_masks=train_y, test_images=test_x, test_masks=test_y,
        num_classes=len(SHAPE_CLASSES), mean=mean, std=std,
        image_size=(3, *train_x.shape[2:]) if num_train else (3, image_size, image_size),
        ignore_index=IGNORE_INDEX, classes=SHAPE_CLASSES,
    )
