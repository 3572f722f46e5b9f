"""Mini-batch iteration over device-resident tensors.

For small datasets (digits, CIFAR, SVHN) the whole training set fits in
accelerator memory, so a :class:`torch.utils.data.DataLoader` with worker
processes is pure overhead: :class:`DeviceBatchIterator` indexes the
device tensors directly and augments whole batches on the device.

Reproducibility is driven by the generator alone (there is no
``set_epoch``): each pass draws a fresh permutation from ``generator`` and the
transform draws its randomness from the same generator.  Saving
``generator.get_state()`` between epochs and restoring it reproduces the
following epochs' order and augmentations exactly.  Resuming in the middle of
an epoch is not supported (restore the state saved at the epoch start and
skip batches instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .augment import to_float

__all__ = ["DeviceBatchIterator"]

#: ``transform(images, generator) -> images``, e.g. a :func:`build_augment` result.
Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


class DeviceBatchIterator:
    """Iterate ``(images, labels)`` mini-batches of tensors already on a device.

    Args:
        images: ``(N, C, H, W)`` tensor (typically ``uint8``) on any device.
        labels: ``(N,)`` tensor on the same device.
        batch_size: Samples per batch.
        shuffle: Draw a new random permutation at the start of every pass.
        drop_last: Drop the final incomplete batch.
        generator: Source of the shuffling and of the transform's randomness
            (default: the global RNG).  Its device may differ from the data's.
        transform: Called as ``transform(batch, generator)`` on every batch,
            e.g. ``build_augment("crop_flip", mean, std)`` (augment + normalize).

    Yields:
        ``(images, labels)``; images are floating point: the transform's output,
        or, if it returns ``uint8`` / there is no transform, the batch scaled to
        ``[0, 1]`` float32 (normalization is the transform's job).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        transform: Transform | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{images.shape[0]} images but {labels.shape[0]} labels"
            )
        if images.device != labels.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.transform = transform

    @property
    def num_samples(self) -> int:
        """Number of samples in the underlying tensors."""
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the data and of every yielded batch."""
        return self.images.device

    def __len__(self) -> int:
        """Number of batches per pass."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def _permutation(self) -> torch.Tensor:
        gen_device = self.generator.device if self.generator is not None else self.device
        order = torch.randperm(self.num_samples, generator=self.generator, device=gen_device)
        return order.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._permutation() if self.shuffle else None
        for b in range(len(self)):
            start = b * self.batch_size
            stop = min(start + self.batch_size, self.num_samples)
            if order is None:
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                idx = order[start:stop]
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if self.transform is not None:
                x = self.transform(x, self.generator)
            if not x.is_floating_point():
                x = to_float(x)
            yield x, y

    def __repr__(self) -> str:
        return (
            f"DeviceBatchIterator(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, device={self.device}, "
            f"transform={self.transform!r})"
        )
