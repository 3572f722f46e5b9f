"""Datasets, on-device augmentation and batch iteration for ISDA training.

In-memory datasets (``digits``, ``cifar10``, ``cifar100``, ``svhn``, ``mnist``,
``fashion_mnist``, ``kmnist``) are
returned by :func:`create_dataset` as an :class:`ImageDataset` of ``uint8``
tensors; move it to the accelerator once and iterate with
:class:`DeviceBatchIterator` + :func:`build_augment`::

    ds = create_dataset("cifar10", root="data", download=True).to("cuda")
    gen = torch.Generator("cuda").manual_seed(0)
    train = DeviceBatchIterator(
        ds.train_images, ds.train_labels, 128, generator=gen,
        transform=build_augment(ds.default_augment, ds.mean, ds.std),
    )

ImageNet-style folders go through worker-based DataLoaders instead, see
:func:`create_imagefolder_loaders`.  Optional dependencies (scikit-learn,
SciPy, Pillow, tqdm) are imported only when the dataset that needs them is
built.
"""

from .registry import (
    ImageDataset,
    channel_stats,
    create_dataset,
    dataset_entrypoint,
    is_dataset,
    list_datasets,
    register_dataset,
    take_long_tail,
    take_training_subset,
)

# Importing the dataset modules registers their factories.
from . import cifar, digits, imagefolder, mnist, svhn  # noqa: E402  (registration order)
from . import cityscapes, synthetic_segmentation  # noqa: E402  (segmentation datasets)
from .augment import build_augment, normalize, random_crop, random_flip, to_float
from .autoaugment import AutoAugment
from .cutout import Cutout
from .randaugment import RandAugment
from .download import BASE_URLS, ENV_BASE_URL, ChecksumError, download_file, file_md5
from .idx import IDXFormatError, read_idx
from .subset import balanced_split
from .longtail import long_tail_counts, long_tail_split, shot_groups
from .imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderData,
    ImageFolderLoaders,
    create_imagefolder_loaders,
)
from .loader import DeviceBatchIterator

__all__ = [
    "AutoAugment",
    "BASE_URLS",
    "Cutout",
    "ENV_BASE_URL",
    "IDXFormatError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ChecksumError",
    "DeviceBatchIterator",
    "ImageDataset",
    "ImageFolderData",
    "ImageFolderLoaders",
    "RandAugment",
    "balanced_split",
    "build_augment",
    "channel_stats",
    "cifar",
    "create_dataset",
    "create_imagefolder_loaders",
    "dataset_entrypoint",
    "digits",
    "download_file",
    "file_md5",
    "imagefolder",
    "is_dataset",
    "list_datasets",
    "long_tail_counts",
    "long_tail_split",
    "mnist",
    "normalize",
    "random_crop",
    "random_flip",
    "read_idx",
    "register_dataset",
    "shot_groups",
    "svhn",
    "take_long_tail",
    "take_training_subset",
    "to_float",
]
