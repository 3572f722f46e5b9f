"""MNIST, Fashion-MNIST and Kuzushiji-MNIST (KMNIST) from their official IDX files.

Each dataset is four IDX files (:mod:`torch_isda.data.idx`) with the official names
``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``
and ``t10k-labels-idx1-ubyte.gz`` (gzip-compressed, or uncompressed without the ``.gz``):
60,000 training and 10,000 test images of 28x28 grey pixels, 10 classes.

Where the files are looked for, in order:

1. ``root/<name>/`` (``--data-dir``; e.g. ``data/fashion_mnist/``), ``root/<alias>/``
   (e.g. ``data/fashion-mnist/``, the Debian directory name) or ``root`` itself (the folder
   holding the files): the first folder that holds all four files wins;
2. only when ``root`` is the default :data:`DEFAULT_ROOT` (``data``, no ``--data-dir``
   given): a system copy in :data:`SYSTEM_ROOTS` (``/usr/share/datasets/<alias>``, where
   Debian's ``dataset-fashion-mnist`` package installs the files). An explicit ``root``
   that does not exist or holds no complete copy is an error naming what was looked for;
3. with ``download=True``, missing files are fetched into ``root/<name>/`` from the
   official site (or ``base_url`` / ``$TORCH_ISDA_DATA_URL``) and MD5-checked.

The dataset's ``source`` names the folder and the files read (the harness logs it and
records it in ``config.json``'s ``resolved``). Downloads are verified against the official
MD5 of the ``.gz`` files (:data:`MD5`). Existing files are not hashed (Debian recompresses
the files, so its ``.gz`` differ from the official ones byte for byte); they are checked by
format instead: IDX magic and dimensions, 28x28 uint8 images, as many labels as images,
labels in ``0..9``.
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

__all__ = ["DEFAULT_ROOT", "FILES", "MD5", "MNIST_SPECS", "SYSTEM_ROOTS", "MnistSpec", "describe_source", "fashion_mnist",
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

#: The default ``root`` (``--data-dir``): only with it are :data:`SYSTEM_ROOTS` searched.
DEFAULT_ROOT = "data"

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


def _files_in(folder: Path) -> Optional[dict[str, Path]]:
    """The four files in ``folder`` (each ``.gz`` or uncompressed), or ``None``."""
    if not folder.is_dir():
        return None
    found = {}
    for key, name in FILES.items():
        candidates = [folder / name, folder / name.removesuffix(".gz")]
        present = [path for path in candidates if path.is_file()]
        if not present:
            return None
        found[key] = present[0]
    return found


def _first_complete(folders: list[Path]) -> Optional[dict[str, Path]]:
    for folder in folders:
        found = _files_in(folder)
        if found is not None:
            return found
    return None


def _not_found_message(spec: MnistSpec, root: Path, searched: list[Path], explicit: bool) -> str:
    wanted = ", ".join(f"{name} (or {name.removesuffix('.gz')})" for name in FILES.values())
    places = ", ".join(f"'{p}'" for p in searched)
    if explicit and not root.is_dir():
        return (f"{spec.name}: the data directory '{root}' does not exist (looked for {wanted} "
                f"in {places}); pass an existing --data-dir, or add --download to fetch the "
                f"files into '{root / spec.name}'")
    return (f"{spec.name}: the files {wanted} were not found together in any of {places}. "
            f"Pass download=True (--download on the command line) to fetch them into "
            f"'{root / spec.name}', or point --data-dir at the folder holding them (or at its "
            f"parent, holding '{spec.name}/').")


def locate_mnist_files(spec: MnistSpec, root: str | Path = DEFAULT_ROOT, download: bool = False,
                       *, base_url: Optional[str] = None, progress: bool = True
                       ) -> dict[str, Path]:
    """The four files of ``spec`` (keys of :data:`FILES`), found or downloaded as
    described in the module docstring.

    Raises:
        FileNotFoundError: no complete copy exists and ``download`` is false; the message
            names the files and the folders searched and suggests ``--download``.
    """
    explicit = str(root) != DEFAULT_ROOT
    root = Path(root)
    local = [root / folder for folder in spec.folders] + [root]
    system = [] if explicit else [Path(s) / folder for s in SYSTEM_ROOTS for folder in spec.folders]
    found = _first_complete(local) or _first_complete(system)
    if found is None and download:
        target = root / spec.name
        for key, name in FILES.items():
            ensure_file(target / name, dataset=spec.name, md5=MD5[spec.name].get(name),
                        download=True, base_url=base_url, progress=progress)
        found = {key: target / name for key, name in FILES.items()}
    if found is None:
        raise FileNotFoundError(_not_found_message(spec, root, local + system, explicit))
    return found


def describe_source(paths: dict[str, Path]) -> str:
    """``"'<folder>' (train-images-idx3-ubyte.gz, ...)"``: where the files were read from."""
    folders = sorted({str(p.parent) for p in paths.values()})
    return f"'{', '.join(folders)}' ({', '.join(p.name for p in paths.values())})"


def load_mnist_family(name: str, root: str | Path = DEFAULT_ROOT, download: bool = False, *,
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
        source=describe_source(paths),
    )


@register_dataset
def mnist(root: str = DEFAULT_ROOT, download: bool = False, *, base_url: Optional[str] = None,
          progress: bool = True, test_split: bool = True) -> ImageDataset:
    """MNIST: 60000 train / 10000 test 28x28 grey handwritten digits, 10 classes."""
    return load_mnist_family("mnist", root, download, base_url=base_url, progress=progress,
                             test_split=test_split)


@register_dataset
def fashion_mnist(root: str = DEFAULT_ROOT, download: bool = False, *,
                  base_url: Optional[str] = None, progress: bool = True,
                  test_split: bool = True) -> ImageDataset:
    """Fashion-MNIST: 60000 train / 10000 test 28x28 grey Zalando article images, 10 classes."""
    return load_mnist_family("fashion_mnist", root, download, base_url=base_url,
                             progress=progress, test_split=test_split)


@register_dataset
def kmnist(root: str = DEFAULT_ROOT, download: bool = False, *, base_url: Optional[str] = None,
           progress: bool = True, test_split: bool = True) -> ImageDataset:
    """Kuzushiji-MNIST: 60000 train / 10000 test 28x28 grey cursive kana, 10 classes."""
    return load_mnist_family("kmnist", root, download, base_url=base_url, progress=progress,
                             test_split=test_split)
