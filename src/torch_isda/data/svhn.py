"""SVHN (Street View House Numbers), cropped-digits format.

Files looked for in ``root``: ``train_32x32.mat``, ``test_32x32.mat`` and,
with ``include_extra=True``, ``extra_32x32.mat`` (appended to the training
set).  Each is a MATLAB file read with :func:`scipy.io.loadmat` holding
``X``, a ``(32, 32, 3, N)`` ``uint8`` array, and ``y``, an ``(N, 1)`` array of
labels in ``1..10`` where ``10`` stands for the digit ``0`` (mapped to ``0``).
With ``download=True`` missing files are fetched and MD5-checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .download import ensure_file
from .registry import ImageDataset, channel_stats, register_dataset

__all__ = ["FILES", "MD5", "read_svhn_mat", "svhn"]

#: File name of every split.
FILES: dict[str, str] = {
    "train": "train_32x32.mat",
    "test": "test_32x32.mat",
    "extra": "extra_32x32.mat",
}

#: Official MD5 of every file, keyed by file name (patchable for tests/mirrors).
MD5: dict[str, str] = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b69d2a69b4",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}

IMAGE_SIZE = (3, 32, 32)


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN ``.mat`` file into ``uint8`` images ``(N, 3, 32, 32)`` and
    ``int64`` labels in ``0..9``.

    Raises:
        ValueError: the file is not a MATLAB file with ``X`` (32x32x3xN uint8)
            and ``y`` (N labels in 1..10).
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SVHN file '{path.name}' not found in directory '{path.parent}'")
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as err:  # scipy raises ValueError/TypeError/NotImplementedError...
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    missing = [key for key in ("X", "y") if key not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(
            f"{path}: expected MATLAB variables 'X' (32x32x3xN uint8) and 'y' (Nx1 labels), "
            f"missing {missing} (found {found})"
        )
    x = mat["X"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(
            f"{path}: 'X' must be a 32x32x3xN uint8 array, got {x.dtype} array of shape {x.shape}"
        )
    y = np.asarray(mat["y"]).reshape(-1)
    if y.shape[0] != x.shape[3]:
        raise ValueError(f"{path}: 'X' holds {x.shape[3]} images but 'y' {y.shape[0]} labels")
    labels = y.astype(np.int64)
    if labels.size and (
        not np.array_equal(labels, y) or labels.min() < 1 or labels.max() > 10
    ):
        raise ValueError(f"{path}: 'y' labels must be integers in 1..10 (10 meaning digit 0)")
    labels[labels == 10] = 0
    # (H, W, C, N) -> (N, C, H, W)
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
    return images, labels


def _ensure_split(
    split: str, root: Path, download: bool, base_url: str | None, progress: bool
) -> Path:
    name = FILES[split]
    return ensure_file(
        root / name,
        dataset="svhn",
        md5=MD5.get(name),
        download=download,
        base_url=base_url,
        progress=progress,
    )


@register_dataset
def svhn(
    root: str = "data",
    download: bool = False,
    *,
    include_extra: bool = False,
    base_url: str | None = None,
    progress: bool = True,
) -> ImageDataset:
    """SVHN: 73257 train (+531131 extra) / 26032 test 32x32 RGB digits, 10 classes.

    Args:
        root: Directory holding the ``*_32x32.mat`` files.
        download: Fetch missing files from the official site (or ``base_url``
            / ``$TORCH_ISDA_DATA_URL``), MD5-checked.
        include_extra: Append ``extra_32x32.mat`` to the training set.
        base_url: Mirror to download from.
        progress: Show a download progress bar.
    """
    root = Path(root)
    splits = ("train", "extra", "test") if include_extra else ("train", "test")
    # Resolve (and download) every file before the slow parsing starts.
    paths = {split: _ensure_split(split, root, download, base_url, progress) for split in splits}
    train_images, train_labels = read_svhn_mat(paths["train"])
    if include_extra:
        extra_images, extra_labels = read_svhn_mat(paths["extra"])
        train_images = np.concatenate([train_images, extra_images])
        train_labels = np.concatenate([train_labels, extra_labels])
        del extra_images, extra_labels
    test_images, test_labels = read_svhn_mat(paths["test"])
    train_t = torch.from_numpy(train_images)
    mean, std = channel_stats(train_t)
    return ImageDataset(
        name="svhn",
        train_images=train_t,
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(test_labels),
        num_classes=10,
        mean=mean,
        std=std,
        image_size=IMAGE_SIZE,
        default_augment="crop",
        classes=tuple(str(d) for d in range(10)),
    )
