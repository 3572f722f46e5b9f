"""CIFAR-10 / CIFAR-100 from the official "python version" pickle archives.

Files looked for in ``root``:

* CIFAR-10: folder ``cifar-10-batches-py/`` with ``data_batch_1`` ...
  ``data_batch_5`` and ``test_batch`` (plus optional ``batches.meta``), or the
  archive ``cifar-10-python.tar.gz``;
* CIFAR-100: folder ``cifar-100-python/`` with ``train`` and ``test`` (plus
  optional ``meta``), or the archive ``cifar-100-python.tar.gz``.

Each batch file is a pickled dict with ``bytes`` keys: ``b"data"`` is an
``N x 3072`` ``uint8`` array (channel-major RGB 32x32), labels are under
``b"labels"`` (CIFAR-10) or ``b"fine_labels"``/``b"coarse_labels"``
(CIFAR-100).  An archive is extracted atomically next to itself; with
``download=True`` a missing archive is fetched and MD5-checked first.

Note: the batch files are pickles, so only load archives from a trusted
source (downloads are verified against the official MD5).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .download import ensure_file, extract_tar, missing_files
from .registry import ImageDataset, channel_stats, register_dataset

__all__ = ["CIFAR_SPECS", "MD5", "cifar10", "cifar100", "load_cifar", "read_cifar_batch"]

#: Official MD5 of every archive, keyed by file name (patchable for tests/mirrors).
MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}

IMAGE_SIZE = (3, 32, 32)


@dataclasses.dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives inside its archive."""

    name: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str

    @property
    def required(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
    ),
}


def _unpickle(path: Path) -> dict[bytes, Any]:
    """Load a CIFAR pickle, normalising ``str`` keys to ``bytes``."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path}: not a CIFAR python-pickle batch file (unpickling failed: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def read_cifar_batch(
    path: str | Path, label_key: bytes = b"labels"
) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into ``uint8`` images ``(N, 3, 32, 32)`` and ``int64`` labels.

    Raises:
        ValueError: the file is not a pickled dict with ``b"data"`` (an
            ``N x 3072`` uint8 array) and ``label_key`` (``N`` integers).
    """
    path = Path(path)
    batch = _unpickle(path)
    missing = [key for key in (b"data", label_key) if key not in batch]
    if missing:
        raise ValueError(
            f"{path}: expected a CIFAR batch dict with keys {[b'data', label_key]}, "
            f"missing {missing} (found {sorted(batch, key=repr)})"
        )
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' must be an N x 3072 uint8 array (channel-major RGB 32x32), "
            f"got {data.dtype} array of shape {data.shape}"
        )
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{path}: {data.shape[0]} images but {labels.shape[0]} entries under {label_key!r}"
        )
    return data.reshape(-1, *IMAGE_SIZE), labels


def _read_split(
    folder: Path, files: tuple[str, ...], label_key: bytes
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the batch files of one split into image and label tensors."""
    parts = [read_cifar_batch(folder / name, label_key) for name in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def _read_class_names(path: Path, key: bytes, num_classes: int) -> tuple[str, ...] | None:
    """Class names from the optional meta file, or ``None`` if unavailable."""
    if not path.is_file():
        return None
    names = _unpickle(path).get(key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        return None
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def locate_cifar(
    spec: CifarSpec,
    root: str | Path,
    download: bool = False,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the extracted folder of ``spec``, extracting/downloading as needed.

    Raises:
        FileNotFoundError: neither the folder nor the archive is in ``root``
            and ``download`` is false.
    """
    root = Path(root)
    folder = root / spec.folder
    if folder.exists():
        lacking = missing_files(folder, spec.required)
        if not lacking:
            return folder
        raise FileNotFoundError(
            f"{spec.name}: folder '{folder}' is incomplete, missing {', '.join(lacking)}; "
            f"delete it so that it is re-extracted from {spec.archive}."
        )
    hint = f" (or the extracted folder '{spec.folder}/' with {', '.join(spec.required)})"
    archive = ensure_file(
        root / spec.archive,
        dataset=spec.name,
        md5=MD5.get(spec.archive),
        download=download,
        base_url=base_url,
        progress=progress,
        hint=hint,
    )
    return extract_tar(archive, root, spec.folder, spec.required)


def load_cifar(
    name: str,
    root: str | Path = "data",
    download: bool = False,
    *,
    label_type: str = "fine",
    base_url: str | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Load ``"cifar10"`` or ``"cifar100"`` from ``root`` as an :class:`ImageDataset`.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: Directory with the extracted folder or the ``.tar.gz`` archive.
        download: Fetch the archive if absent (official URL unless overridden
            by ``base_url`` or ``$TORCH_ISDA_DATA_URL``).
        label_type: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"``
            (20 super-classes).
        base_url: Mirror to download from.
        progress: Show a download progress bar.
    """
    spec = CIFAR_SPECS[name]
    if name == "cifar10":
        label_key, num_classes, names_key = b"labels", 10, b"label_names"
    elif label_type in ("fine", "coarse"):
        label_key = f"{label_type}_labels".encode()
        num_classes = 100 if label_type == "fine" else 20
        names_key = f"{label_type}_label_names".encode()
    else:
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")

    folder = locate_cifar(spec, root, download, base_url=base_url, progress=progress)
    train_images, train_labels = _read_split(folder, spec.train_files, label_key)
    test_images, test_labels = _read_split(folder, spec.test_files, label_key)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{folder}: {split} labels under {label_key!r} must lie in [0, {num_classes}), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
    mean, std = channel_stats(train_images)
    return ImageDataset(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        image_size=IMAGE_SIZE,
        default_augment="crop_flip",
        classes=_read_class_names(folder / spec.meta_file, names_key, num_classes),
    )


@register_dataset
def cifar10(
    root: str = "data",
    download: bool = False,
    *,
    base_url: str | None = None,
    progress: bool = True,
) -> ImageDataset:
    """CIFAR-10: 50000 train / 10000 test 32x32 RGB images, 10 classes."""
    return load_cifar("cifar10", root, download, base_url=base_url, progress=progress)


@register_dataset
def cifar100(
    root: str = "data",
    download: bool = False,
    *,
    label_type: str = "fine",
    base_url: str | None = None,
    progress: bool = True,
) -> ImageDataset:
    """CIFAR-100: 50000 train / 10000 test 32x32 RGB images, 100 fine or 20 coarse classes."""
    return load_cifar(
        "cifar100", root, download, label_type=label_type, base_url=base_url, progress=progress
    )
