"""ImageNet-style image folders decoded with Pillow in DataLoader workers.

Layout::

    root/train/<class>/<image>.jpg|png|...
    root/val/<class>/<image>.jpg|png|...

Classes are the sorted sub-directory names of ``root/train``; ``val`` must use
a subset of them.  The standard ImageNet transforms are implemented on PIL
images without torchvision, following torchvision's algorithms:

* train: ``RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))``
  (bilinear) + ``RandomHorizontalFlip()``;
* eval: resize the shorter side to ``resize_size`` (``256`` for
  ``image_size=224``; bilinear) + ``CenterCrop(image_size)``;

followed by conversion to a ``float32`` ``(3, S, S)`` tensor normalized with
the ImageNet mean/std.  Randomness uses torch's RNG, which
:class:`~torch.utils.data.DataLoader` seeds differently in every worker.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .registry import register_dataset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "EvalTransform",
    "ImageFolderData",
    "ImageFolderLoaders",
    "ImageFolderSplit",
    "ShardSampler",
    "TrainTransform",
    "create_imagefolder_loaders",
    "imagefolder",
    "load_imagefolder",
    "random_resized_crop_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- transforms


def pil_to_normalized_tensor(
    img: Any, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB PIL image -> ``float32`` ``(3, H, W)`` tensor, ``(x / 255 - mean) / std``."""
    array = np.array(img, dtype=np.uint8, copy=True)  # (H, W, 3)
    x = torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s).contiguous()


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop covering a ``scale`` fraction of the
    area with aspect ratio in ``ratio`` (log-uniform); 10 tries, then a
    central crop with the ratio clamped (torchvision's algorithm)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item()
        )
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
    """RandomResizedCrop + horizontal flip + normalize, on a PIL image."""

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.scale, self.ratio, self.flip_p = size, scale, ratio, flip_p
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Any) -> torch.Tensor:
        from PIL import Image

        top, left, h, w = random_resized_crop_params(img.width, img.height, self.scale, self.ratio)
        img = img.resize(
            (self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )
        if torch.rand(1).item() < self.flip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_normalized_tensor(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class EvalTransform:
    """Resize the shorter side to ``resize_size`` + center crop ``size`` + normalize."""

    def __init__(
        self,
        size: int = 224,
        resize_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = size
        self.resize_size = resize_size if resize_size is not None else int(size * 256 / 224)
        if self.resize_size < size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop {size}")
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Any) -> torch.Tensor:
        from PIL import Image

        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return pil_to_normalized_tensor(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize_size={self.resize_size})"


# --------------------------------------------------------------------------- datasets


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def find_classes(directory: Path) -> list[str]:
    """Sorted names of the class sub-directories of ``directory``."""
    if not directory.is_dir():
        raise FileNotFoundError(
            f"image folder split not found: expected directory '{directory}' with one "
            f"sub-directory per class (e.g. '{directory}/<class>/<image>.jpg')"
        )
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class sub-directories found in '{directory}'")
    return classes


def find_samples(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``directory/<class>/``, in sorted order.

    Raises:
        ValueError: a class directory is unknown (not in ``class_to_idx``).
        FileNotFoundError: no image was found.
    """
    samples: list[tuple[str, int]] = []
    for cls in find_classes(directory):
        if cls not in class_to_idx:
            raise ValueError(
                f"class directory '{directory / cls}' does not exist in the training split"
            )
        for dirpath, dirnames, filenames in os.walk(directory / cls, followlinks=True):
            dirnames.sort()
            samples.extend(
                (os.path.join(dirpath, f), class_to_idx[cls])
                for f in sorted(filenames)
                if _is_image(f)
            )
    if not samples:
        raise FileNotFoundError(
            f"no images with extensions {', '.join(IMG_EXTENSIONS)} found under '{directory}'"
        )
    return samples


class ImageFolderSplit(Dataset):
    """One split of an image folder: yields ``(transform(rgb_image), label)``."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Any
    ) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Any:
        """The decoded RGB PIL image of sample ``index``."""
        from PIL import Image

        path = self.samples[index][0]
        with open(path, "rb") as f, Image.open(f) as img:
            return img.convert("RGB")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.load(index)
        return self.transform(img), self.samples[index][1]


class ImageFolderData:
    """An image-folder dataset: class names plus train/val torch Datasets.

    Attributes:
        name: ``"imagefolder"``.
        root: The dataset root.
        classes: Sorted class names (from ``root/train``).
        num_classes: ``len(classes)``.
        train: :class:`ImageFolderSplit` with the training transform.
        val: :class:`ImageFolderSplit` with the evaluation transform.
        mean, std: ImageNet normalization constants used by the transforms.
        image_size: ``(3, image_size, image_size)`` of produced tensors.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 224,
        *,
        resize_size: int | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.name = "imagefolder"
        self.root = Path(root)
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_size = (3, image_size, image_size)
        self.classes = find_classes(self.root / train_dir)
        self.num_classes = len(self.classes)
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.train = ImageFolderSplit(
            find_samples(self.root / train_dir, class_to_idx),
            self.classes,
            TrainTransform(image_size, scale, ratio, mean=mean, std=std),
        )
        self.val = ImageFolderSplit(
            find_samples(self.root / val_dir, class_to_idx),
            self.classes,
            EvalTransform(image_size, resize_size, mean=mean, std=std),
        )

    def __repr__(self) -> str:
        return (
            f"ImageFolderData(root='{self.root}', num_classes={self.num_classes}, "
            f"train={len(self.train)}, val={len(self.val)}, image_size={self.image_size})"
        )


def load_imagefolder(
    root: str | os.PathLike[str], image_size: int = 224, **kwargs: Any
) -> ImageFolderData:
    """Build an :class:`ImageFolderData` (see its constructor for ``kwargs``)."""
    return ImageFolderData(root, image_size, **kwargs)


@register_dataset
def imagefolder(
    root: str = "data", download: bool = False, *, image_size: int = 224, **kwargs: Any
) -> ImageFolderData:
    """Registry entry: an ImageNet-style folder at ``root`` (cannot be downloaded)."""
    if download:
        raise ValueError("the imagefolder dataset cannot be downloaded; prepare it under root")
    return load_imagefolder(root, image_size, **kwargs)


# --------------------------------------------------------------------------- loaders


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every sample exactly once across
    ranks, without :class:`DistributedSampler`'s padding duplicates (exact
    distributed evaluation by summing per-rank counts)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class ImageFolderLoaders(NamedTuple):
    """Result of :func:`create_imagefolder_loaders`."""

    train: DataLoader
    val: DataLoader
    data: ImageFolderData


def create_imagefolder_loaders(
    root: str | os.PathLike[str], batch_size: int, workers: int, image_size: int = 224, *,
    resize_size: int | None = None, val_batch_size: int | None = None,
    distributed: bool | None = None, rank: int | None = None, world_size: int | None = None,
    seed: int | None = None, pin_memory: bool | None = None, drop_last: bool = True,
    persistent_workers: bool | None = None, prefetch_factor: int | None = None,
    **dataset_kwargs: Any,
) -> ImageFolderLoaders:
    """Train/val :class:`~torch.utils.data.DataLoader` s over an image folder.

    Args:
        root: Folder with ``train/`` and ``val/``.
        batch_size: Per-process training batch size.
        workers: DataLoader worker processes (images are decoded there).
        image_size: Output crop size.
        resize_size: Eval shorter-side size (default ``image_size * 256 / 224``).
        val_batch_size: Defaults to ``batch_size``.
        distributed: Shard across ranks (train: :class:`DistributedSampler`,
            whose ``set_epoch`` the caller must call each epoch; val:
            :class:`ShardSampler`).  Default: whether ``torch.distributed``
            is initialized.
        rank, world_size: Override the process group's values.
        seed: Seeds the shuffling (and workers' base seeds) for reproducibility.
        pin_memory: Defaults to ``torch.cuda.is_available()``.
        drop_last: Drop the last incomplete training batch.
        persistent_workers: Defaults to ``workers > 0``.
        prefetch_factor: Batches prefetched per worker (only with workers).
        **dataset_kwargs: Forwarded to :class:`ImageFolderData`.

    Returns:
        ``ImageFolderLoaders(train, val, data)`` (a named tuple).
    """
    data = ImageFolderData(root, image_size, resize_size=resize_size, **dataset_kwargs)
    dist = torch.distributed
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    train_sampler: Sampler[int] | None = None
    val_sampler: Sampler[int] | None = None
    if distributed:
        train_sampler, val_sampler = _shard_samplers(data, rank, world_size, seed)
    common = _loader_options(workers, pin_memory, persistent_workers, prefetch_factor)
    train = DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=train_sampler is None,
        sampler=train_sampler,
        drop_last=drop_last,
        generator=generator,
        **common,
    )
    val = DataLoader(
        data.val,
        batch_size=val_batch_size or batch_size,
        shuffle=False,
        sampler=val_sampler,
        drop_last=False,
        **common,
    )
    return ImageFolderLoaders(train, val, data)


def _shard_samplers(data: ImageFolderData, rank: int | None, world_size: int | None,
                    seed: int | None) -> tuple[Sampler[int], Sampler[int]]:
    """The training and validation samplers of one rank (default: the process group's)."""
    dist = torch.distributed
    if rank is None:
        rank = dist.get_rank()
    if world_size is None:
        world_size = dist.get_world_size()
    train_sampler = DistributedSampler(
        data.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed or 0
    )
    return train_sampler, ShardSampler(len(data.val), rank, world_size)


def _loader_options(workers: int, pin_memory: bool | None, persistent_workers: bool | None,
                    prefetch_factor: int | None) -> dict[str, Any]:
    """The DataLoader options shared by the training and validation loaders."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "persistent_workers": workers > 0 if persistent_workers is None else persistent_workers,
    }
    if workers > 0 and prefetch_factor is not None:
        common["prefetch_factor"] = prefetch_factor
    return common
