"""MNIST, Fashion-MNIST and Kuzushiji-MNIST (KMNIST) from their official IDX files.

Each dataset is four gzip-compressed IDX files (:mod:`torch_isda.data.idx`) with the
official names ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``: 60,000 training and
10,000 test images of 28x28 grey pixels, 10 classes.

Where the files are looked for, in order:

1. ``root/<name>/`` (``--data-dir``; e.g. ``data/fashion_mnist/``) or ``root/<alias>/``
   (e.g. ``data/fashion-mnist/``, the Debian directory name): the first folder that holds
   all four files wins;
2. a system copy in :data:`SYSTEM_ROOTS` (``/usr/share/datasets/<alias>``, where Debian's
   ``dataset-fashion-mnist`` package installs the files);
3. with ``download=True``, missing files are fetched into ``root/<name>/`` from the
   official site (or ``base_url`` / ``$TORCH_ISDA_DATA_URL``) and MD5-checked.

Downloads are verified against the official MD5 of the ``.gz`` files (:data:`MD5`).
Existing files are not hashed (Debian recompresses the files, so its ``.gz`` differ from
the official ones byte for byte); they are checked by format instead: IDX magic and
dimensions, 28x28 uint8 images, as many labels as images, labels in ``0..9``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .download import ensure_file, missing_files
from .idx import IDXFormatError, read_idx
from .registry import ImageDataset, channel_stats, register_dataset

__all__ = ["FILES", "MD5", "MNIST_SPECS", "SYSTEM_ROOTS", "MnistSpec", "fashion_mnist",
           "kmnist", "load_mnist_family", "locate_mnist_files", "mnist", "read_idx_split"]

#: The official file of every split and part.
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: Official MD5 of every ``.gz`` file, per dataset (patchable for tests/mirrors).
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
}

#: Directories searched for a system-wide copy (after ``root``), e.g. Debian's
#: ``/usr/share/datasets/fashion-mnist``. Patchable (tests set it to ``()``).
SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)

IMAGE_SIZE = (1, 28, 28)


@dataclasses.dataclass(frozen=True)
class MnistSpec:
    """One dataset of the family."""

    name: str
    #: Other folder names the files may sit in (``root/<alias>``, system roots).
    aliases: tuple[str, ...]
    #: Standard training augmentation (:func:`~torch_isda.data.augment.build_augment` spec).
    default_augment: str
    classes: tuple[str, ...]

    @property
    def folders(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


#: Fashion-MNIST gets horizontal flips (clothes are mirror-symmetric); the digit sets do
#: not (a mirrored digit or kana is another symbol or none). Crops use 2 pixels of padding
#: (4 on 32x32 CIFAR).
MNIST_SPECS: dict[str, MnistSpec] = {
    "mnist": MnistSpec("mnist", ("MNIST",), "crop(padding=2)",
                       tuple(str(d) for d in range(10))),
    "fashion_mnist": MnistSpec(
        "fashion_mnist", ("fashion-mnist", "FashionMNIST"), "crop_flip(padding=2)",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot")),
    "kmnist": MnistSpec("kmnist", ("KMNIST",), "crop(padding=2)",
                        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}


def read_idx_split(images_path: str | Path, labels_path: str | Path,
                   num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one split into ``uint8`` images ``(N, 1, 28, 28)`` and ``int64`` labels.

    Raises:
        IDXFormatError: a file is malformed, the images are not ``N x 28 x 28`` uint8, the
            labels not ``N`` uint8 values in ``[0, num_classes)``.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXFormatError(f"{images_path}: expected N x 28 x 28 uint8 images (IDX type 0x08, "
                             f"3 dimensions), got {images.dtype} of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(f"{labels_path}: expected a 1-dimensional uint8 label file (IDX "
                             f"type 0x08), got {labels.dtype} of shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise IDXFormatError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                             f"{labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise IDXFormatError(f"{labels_path}: labels must lie in 0..{num_classes - 1}, found "
                             f"{int(labels.max())}")
    return images[:, None], labels.astype(np.int64)


def _complete_folder(folders: list[Path]) -> Optional[Path]:
    for folder in folders:
        if folder.is_dir() and not missing_files(folder, FILES.values()):
            return folder
    return None


def locate_mnist_files(spec: MnistSpec, root: str | Path, download: bool = False, *,
                       base_url: Optional[str] = None, progress: bool = True) -> dict[str, Path]:
    """The four files of ``spec`` (keys of :data:`FILES`), found or downloaded as
    described in the module docstring.

    Raises:
        FileNotFoundError: no complete copy exists and ``download`` is false; the message
            lists the folders searched and suggests ``--download``.
    """
    root = Path(root)
    local = [root / folder for folder in spec.folders]
    system = [Path(s) / folder for s in SYSTEM_ROOTS for folder in spec.folders]
    found = _complete_folder(local) or _complete_folder(system)
    if found is None and download:
        target = root / spec.name
        for key, name in FILES.items():
            ensure_file(target / name, dataset=spec.name, md5=MD5[spec.name].get(name),
                        download=True, base_url=base_url, progress=progress)
        found = target
    if found is None:
        searched = ", ".join(f"'{p}'" for p in local + system)
        raise FileNotFoundError(
            f"{spec.name}: the files {', '.join(FILES.values())} were not found together in "
            f"any of {searched}. Pass download=True (--download on the command line) to "
            f"fetch them into '{root / spec.name}', or point --data-dir at a folder holding "
            f"'{spec.name}/' with them.")
    return {key: found / name for key, name in FILES.items()}


def load_mnist_family(name: str, root: str | Path = "data", download: bool = False, *,
                      base_url: Optional[str] = None, progress: bool = True,
                      test_split: bool = True) -> ImageDataset:
    """Load ``"mnist"``, ``"fashion_mnist"`` or ``"kmnist"`` as an :class:`ImageDataset`
    (``test_split=False``: the test files are not read, the test split is empty)."""
    spec = MNIST_SPECS[name]
    paths = locate_mnist_files(spec, root, download, base_url=base_url, progress=progress)
    train_images, train_labels = read_idx_split(paths["train_images"], paths["train_labels"])
    if test_split:
        test_images, test_labels = read_idx_split(paths["test_images"], paths["test_labels"])
    else:
        test_images, test_labels = train_images[:0], train_labels[:0]
    train_t = torch.from_numpy(np.ascontiguousarray(train_images))
    mean, std = channel_stats(train_t)
    return ImageDataset(
        name=name,
        train_images=train_t,
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(test_labels),
        num_classes=10,
        mean=mean,
        std=std,
        image_size=IMAGE_SIZE,
        default_augment=spec.default_augment,
        classes=spec.classes,
    )


@register_dataset
def mnist(root: str = "data", download: bool = False, *, base_url: Optional[str] = None,
          progress: bool = True, test_split: bool = True) -> ImageDataset:
    """MNIST: 60000 train / 10000 test 28x28 grey handwritten digits, 10 classes."""
    return load_mnist_family("mnist", root, download, base_url=base_url, progress=progress,
                             test_split=test_split)


@register_dataset
def fashion_mnist(root: str = "data", download: bool = False, *,
                  base_url: Optional[str] = None, progress: bool = True,
                  test_split: bool = True) -> ImageDataset:
    """Fashion-MNIST: 60000 train / 10000 test 28x28 grey Zalando article images, 10 classes."""
    return load_mnist_family("fashion_mnist", root, download, base_url=base_url,
                             progress=progress, test_split=test_split)


@register_dataset
def kmnist(root: str = "data", download: bool = False, *, base_url: Optional[str] = None,
           progress: bool = True, test_split: bool = True) -> ImageDataset:
    """Kuzushiji-MNIST: 60000 train / 10000 test 28x28 grey cursive kana, 10 classes."""
    return load_mnist_family("kmnist", root, download, base_url=base_url, progress=progress,
                             test_split=test_split)
