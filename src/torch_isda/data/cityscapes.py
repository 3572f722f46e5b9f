"""Cityscapes semantic segmentation (19 train classes), decoded with Pillow in DataLoader workers.

Official layout (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The ``labelIds`` PNGs hold the 34 Cityscapes label ids (0-33); they are mapped to the 19
training ids of the official ``cityscapesscripts/helpers/labels.py`` table (:data:`ID_TO_TRAINID`),
every other id to ``255`` (ignored). The dataset cannot be downloaded automatically (it
needs a login at cityscapes-dataset.com).

Transforms (on PIL images, randomness from torch's RNG, which
:class:`~torch.utils.data.DataLoader` seeds per worker):

* train (:class:`SegmentationTrainTransform`): random scale in ``[0.5, 2.0]`` (image
  bilinear, labels nearest), pad to the crop size (image with the mean, i.e. 0 after
  normalization; labels with 255), random ``crop_size`` crop (769 x 769 in the paper's
  setup), horizontal flip with probability 0.5;
* eval (:class:`SegmentationEvalTransform`): the full image, optionally resized
  (labels are never resized for evaluation).

Both return ``(float32 3 x H x W normalized image, int64 H x W train-id label map)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, ShardSampler, pil_to_normalized_tensor
from .registry import register_dataset

__all__ = [
    "CITYSCAPES_CLASSES",
    "ID_TO_TRAINID",
    "IGNORE_INDEX",
    "CityscapesLoaders",
    "CityscapesSegmentation",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "cityscapes",
    "create_cityscapes_loaders",
    "label_ids_to_train_ids",
]

IGNORE_INDEX = 255

#: The 19 evaluated classes, in train-id order.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

#: ``label id -> train id`` of the official table; ids not listed map to 255. (License plate,
#: id -1, never appears in the uint8 labelIds PNGs.)
ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _id, _train in ID_TO_TRAINID.items():
    _LUT[_id] = _train


def label_ids_to_train_ids(label_ids: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map a Cityscapes ``labelIds`` array (values 0-255) to train ids (``int64``, 255 ignored)."""
    array = label_ids.cpu().numpy() if isinstance(label_ids, torch.Tensor) else np.asarray(label_ids)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"labelIds must lie in [0, 255]; got [{array.min()}, {array.max()}]")
    return torch.from_numpy(_LUT[array.astype(np.int64)].astype(np.int64))


# --------------------------------------------------------------------------- transforms


def _pil():
    from PIL import Image

    return Image


class SegmentationTrainTransform:
    """Random scale + pad + random crop + horizontal flip of an (RGB image, label) pair.

    Args:
        crop_size: ``(h, w)`` or an int for a square crop.
        scale_range: range of the uniform random scale factor.
        flip_p: probability of a horizontal flip.
        mean, std: normalization (in ``[0, 1]`` pixel units).
        ignore_index: label used for padding.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int] = 769,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if ch < 1 or cw < 1:
            raise ValueError(f"crop_size must be positive; got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high; got {scale_range}")
        self.crop_size = (int(ch), int(cw))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_p = float(flip_p)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)

    def __call__(self, img: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``img``: RGB PIL image; ``label``: PIL image of train ids (mode ``"L"``)."""
        Image = _pil()
        s = torch.empty(1).uniform_(*self.scale_range).item()
        w, h = img.size
        nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            label = label.resize((nw, nh), Image.Resampling.NEAREST)
        x = pil_to_normalized_tensor(img, self.mean, self.std)  # 3 x nh x nw
        y = torch.from_numpy(np.array(label, dtype=np.uint8, copy=True)).to(torch.int64)
        ch, cw = self.crop_size
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:  # pad bottom/right: image with 0 (= the mean), labels with ignore
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=0.0)
            y = torch.nn.functional.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        H, W = y.shape
        top = int(torch.randint(0, H - ch + 1, (1,)).item())
        left = int(torch.randint(0, W - cw + 1, (1,)).item())
        x = x[:, top : top + ch, left : left + cw]
        y = y[top : top + ch, left : left + cw]
        if torch.rand(1).item() < self.flip_p:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()

    def __repr__(self) -> str:
        return (f"SegmentationTrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
                f"flip_p={self.flip_p})")


class SegmentationEvalTransform:
    """Normalize the full image (optionally resized to ``size = (h, w)``); labels untouched."""

    def __init__(
        self,
        size: Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size is not None and (img.height, img.width) != self.size:
            img = img.resize((self.size[1], self.size[0]), _pil().Resampling.BILINEAR)
        x = pil_to_normalized_tensor(img, self.mean, self.std)
        y = torch.from_numpy(np.array(label, dtype=np.uint8, copy=True)).to(torch.int64)
        return x, y

    def __repr__(self) -> str:
        return f"SegmentationEvalTransform(size={self.size})"


# --------------------------------------------------------------------------- dataset


class CityscapesSegmentation(Dataset):
    """One split of Cityscapes: yields ``transform(image, train-id label)``.

    Args:
        root: the dataset root (holding ``leftImg8bit/`` and ``gtFine/``).
        split: ``"train"``, ``"val"`` or ``"test"`` (test labels are all void).
        transform: callable ``(rgb PIL image, train-id PIL label) -> (image, label)``;
            default: :class:`SegmentationTrainTransform` for ``"train"``,
            :class:`SegmentationEvalTransform` otherwise.

    Raises:
        FileNotFoundError: naming the missing split directory, or an image's missing label file.
    """

    num_classes = len(CITYSCAPES_CLASSES)
    classes = CITYSCAPES_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike[str], split: str = "train", transform: Any = None) -> None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test'; got {split!r}")
        self.root = Path(root)
        self.split = split
        self.samples = self.find_samples(self.root, split)
        if transform is None:
            transform = SegmentationTrainTransform() if split == "train" else SegmentationEvalTransform()
        self.transform = transform

    @staticmethod
    def find_samples(root: Path, split: str) -> list[tuple[str, str]]:
        """Sorted ``(image path, labelIds path)`` pairs of ``split``."""
        image_dir = root / "leftImg8bit" / split
        label_dir = root / "gtFine" / split
        for d in (image_dir, label_dir):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"Cityscapes directory not found: '{d}' (expected the official layout "
                    f"root/leftImg8bit/{split}/<city>/*_leftImg8bit.png and "
                    f"root/gtFine/{split}/<city>/*_gtFine_labelIds.png)"
                )
        samples: list[tuple[str, str]] = []
        suffix = "_leftImg8bit.png"
        for city in sorted(e.name for e in os.scandir(image_dir) if e.is_dir()):
            for name in sorted(os.listdir(image_dir / city)):
                if not name.endswith(suffix):
                    continue
                label = label_dir / city / (name[: -len(suffix)] + "_gtFine_labelIds.png")
                if not label.is_file():
                    raise FileNotFoundError(f"Cityscapes label file not found: '{label}'")
                samples.append((str(image_dir / city / name), str(label)))
        if not samples:
            raise FileNotFoundError(f"no '*{suffix}' images found under '{image_dir}/<city>/'")
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Any, Any]:
        """The RGB PIL image and the train-id PIL label (mode ``"L"``) of sample ``index``."""
        Image = _pil()
        image_path, label_path = self.samples[index]
        with open(image_path, "rb") as f, Image.open(f) as img:
            img = img.convert("RGB")
        with open(label_path, "rb") as f, Image.open(f) as lab:
            ids = np.array(lab)
        if ids.ndim != 2:
            raise ValueError(f"'{label_path}' is not a single-channel labelIds image (shape {ids.shape})")
        if (ids.shape[0], ids.shape[1]) != (img.height, img.width):
            raise ValueError(
                f"label '{label_path}' is {ids.shape[1]}x{ids.shape[0]} but its image is {img.width}x{img.height}"
            )
        train_ids = label_ids_to_train_ids(ids).to(torch.uint8).numpy()
        return img, Image.fromarray(train_ids)  # uint8 2-D: mode "L"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, label = self.load(index)
        return self.transform(img, label)

    def __repr__(self) -> str:
        return f"CityscapesSegmentation(root='{self.root}', split={self.split!r}, n={len(self)}, transform={self.transform})"


@register_dataset
def cityscapes(
    root: str = "data/cityscapes", download: bool = False, *, split: str = "train", transform: Any = None
) -> CityscapesSegmentation:
    """Registry entry: one split of Cityscapes at ``root`` (cannot be downloaded)."""
    if download:
        raise ValueError(
            "Cityscapes cannot be downloaded automatically (registration required at "
            "https://www.cityscapes-dataset.com); unpack leftImg8bit and gtFine under root"
        )
    return CityscapesSegmentation(root, split, transform)


# --------------------------------------------------------------------------- loaders


class CityscapesLoaders(NamedTuple):
    """Result of :func:`create_cityscapes_loaders`."""

    train: DataLoader
    val: DataLoader
    num_classes: int
    ignore_index: int
    classes: tuple[str, ...]


def create_cityscapes_loaders(
    root: str | os.PathLike[str],
    batch_size: int,
    workers: int,
    crop_size: int | Sequence[int] = 769,
    *,
    scale_range: tuple[float, float] = (0.5, 2.0),
    val_batch_size: int = 1,
    val_size: Sequence[int] | None = None,
    distributed: bool | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
) -> CityscapesLoaders:
    """Train (random scale/crop/flip, shuffled, ``drop_last``) and val (full images) loaders.

    Under ``distributed`` the train loader uses a :class:`DistributedSampler` (call its
    ``set_epoch``) and the val loader a :class:`ShardSampler` (every image once across ranks;
    sum the per-rank confusion matrices).
    """
    train_ds = CityscapesSegmentation(
        root, "train", SegmentationTrainTransform(crop_size, scale_range)
    )
    val_ds = CityscapesSegmentation(root, "val", SegmentationEvalTransform(val_size))
    dist = torch.distributed
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    train_sampler: Sampler[int] | None = None
    val_sampler: Sampler[int] | None = None
    if distributed:
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
        train_sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank, shuffle=True,
                                           seed=seed or 0)
        val_sampler = ShardSampler(len(val_ds), rank, world_size)
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
        "persistent_workers": workers > 0 if persistent_workers is None else persistent_workers,
    }
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=train_sampler is None, sampler=train_sampler,
                       drop_last=True, generator=generator, **common)
    val = DataLoader(val_ds, batch_size=val_batch_size, shuffle=False, sampler=val_sampler, **common)
    return CityscapesLoaders(train, val, len(CITYSCAPES_CLASSES), IGNORE_INDEX, CITYSCAPES_CLASSES)
