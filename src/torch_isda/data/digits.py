"""scikit-learn's bundled 8x8 handwritten digits (no download needed).

The 1797 images of :func:`sklearn.datasets.load_digits` have integer values
``0..16``; they are rescaled to ``uint8`` as ``round(v * 255 / 16)`` and split
once, deterministically and stratified by class, with
``train_test_split(test_size=0.3, stratify=y, random_state=0)``
(1257 train / 540 test images).
"""

from __future__ import annotations

import numpy as np
import torch

from .registry import ImageDataset, channel_stats, register_dataset

__all__ = ["digits", "load_digits_arrays"]

TEST_SIZE = 0.3
SPLIT_SEED = 0


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All digits as ``uint8`` images ``(1797, 1, 8, 8)`` and ``int64`` labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8), 0..16
    images = np.floor(values * 255.0 / 16.0 + 0.5).astype(np.uint8)[:, None]
    return images, np.asarray(bunch.target, dtype=np.int64)


@register_dataset
def digits(root: str = "data", download: bool = False) -> ImageDataset:
    """The scikit-learn digits dataset as an :class:`ImageDataset`.

    ``root`` and ``download`` are accepted for interface uniformity and
    ignored: the data ships with scikit-learn.
    """
    from sklearn.model_selection import train_test_split

    images, labels = load_digits_arrays()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    train_images = torch.from_numpy(np.ascontiguousarray(images[train_idx]))
    mean, std = channel_stats(train_images)
    return ImageDataset(
        name="digits",
        train_images=train_images,
        train_labels=torch.from_numpy(labels[train_idx]),
        test_images=torch.from_numpy(np.ascontiguousarray(images[test_idx])),
        test_labels=torch.from_numpy(labels[test_idx]),
        num_classes=10,
        mean=mean,
        std=std,
        image_size=(1, 8, 8),
        default_augment="none",
        classes=tuple(str(d) for d in range(10)),
    )
