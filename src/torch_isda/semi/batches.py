"""Mini-batches mixing labeled and unlabeled samples for semi-supervised training.

Every step draws ``labeled_batch_size`` samples from the (small) labeled set and
``unlabeled_batch_size`` from the unlabeled set (VAT reference: 32 + 128). The two
sets are cycled independently: each is an endless stream of fresh random
permutations, so the labeled set is revisited many times per pass over the unlabeled
set and every batch is full. One epoch is one pass over the unlabeled set by default.

Randomness comes from one ``torch.Generator`` (CPU), from which each stream gets its
own generator at construction: a seed (or the generator's state) fixes every batch.

Note that the reference implementations (Laine & Aila, Tarvainen & Valpola, Miyato et
al.) use *all* training images as unlabeled data, the labeled ones included; pass
``torch.cat([split.labeled, split.unlabeled])`` as ``unlabeled_indices`` to do the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["SemiBatch", "SemiBatchLoader", "SemiBatchSampler"]


class _IndexStream:
    """An endless stream of ``indices`` in successive random permutations."""

    def __init__(self, indices: Tensor, generator: torch.Generator) -> None:
        self.indices = indices
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def take(self, k: int) -> Tensor:
        n = self.indices.numel()
        if k == 0 or n == 0:
            return self.indices.new_empty(0)
        parts = []
        need = k
        while need > 0:
            if self.pos >= self.order.numel():
                self.order = torch.randperm(n, generator=self.generator)
                self.pos = 0
            chunk = self.order[self.pos : self.pos + need]
            self.pos += chunk.numel()
            need -= chunk.numel()
            parts.append(chunk)
        return self.indices.index_select(0, torch.cat(parts))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.pos = int(state["pos"])


def _as_index_tensor(indices: Any, name: str) -> Tensor:
    t = torch.as_tensor(indices)
    if t.dim() != 1 or (t.numel() and (t.is_floating_point() or t.dtype == torch.bool)):
        raise ValueError(f"{name} must be a 1-D tensor of integer indices, got {t.dtype} {tuple(t.shape)}")
    return t.to("cpu", torch.long)


class SemiBatchSampler:
    """Yields ``(labeled_indices, unlabeled_indices)`` pairs, ``len(self)`` per epoch.

    Args:
        labeled_indices, unlabeled_indices: Dataset indices of the two sets.
        labeled_batch_size, unlabeled_batch_size: Samples of each set per step.
        steps_per_epoch: Steps per iteration over the sampler (default: one pass over
            the unlabeled set, ``ceil(len(unlabeled) / unlabeled_batch_size)``; over the
            labeled set if there is no unlabeled data).
        generator: CPU generator the streams are seeded from (default: ``seed``).
        seed: Seed used when no generator is given.

    Iterating again continues the streams (no restart), so successive epochs differ;
    :meth:`state_dict` / :meth:`load_state_dict` resume exactly.
    """

    def __init__(
        self,
        labeled_indices: Any,
        unlabeled_indices: Any,
        labeled_batch_size: int = 32,
        unlabeled_batch_size: int = 128,
        *,
        steps_per_epoch: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        seed: int = 0,
    ) -> None:
        self.labeled = _as_index_tensor(labeled_indices, "labeled_indices")
        self.unlabeled = _as_index_tensor(unlabeled_indices, "unlabeled_indices")
        if labeled_batch_size < 1 or unlabeled_batch_size < 0:
            raise ValueError(
                f"need labeled_batch_size >= 1 and unlabeled_batch_size >= 0, got "
                f"{labeled_batch_size}, {unlabeled_batch_size}"
            )
        if self.labeled.numel() == 0:
            raise ValueError("the labeled set is empty")
        if unlabeled_batch_size > 0 and self.unlabeled.numel() == 0:
            raise ValueError("unlabeled_batch_size > 0 but the unlabeled set is empty")
        self.labeled_batch_size = int(labeled_batch_size)
        self.unlabeled_batch_size = int(unlabeled_batch_size)
        if steps_per_epoch is None:
            if self.unlabeled_batch_size > 0:
                steps_per_epoch = math.ceil(self.unlabeled.numel() / self.unlabeled_batch_size)
            else:
                steps_per_epoch = math.ceil(self.labeled.numel() / self.labeled_batch_size)
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.steps_per_epoch = int(steps_per_epoch)
        master = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        if master.device.type != "cpu":
            raise ValueError("the sampler's generator must be a CPU generator")
        seeds = torch.randint(0, 2**62, (2,), generator=master).tolist()
        self._labeled_stream = _IndexStream(self.labeled, torch.Generator().manual_seed(seeds[0]))
        self._unlabeled_stream = _IndexStream(self.unlabeled, torch.Generator().manual_seed(seeds[1]))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The next ``(labeled_indices, unlabeled_indices)`` pair (CPU ``int64``)."""
        return (
            self._labeled_stream.take(self.labeled_batch_size),
            self._unlabeled_stream.take(self.unlabeled_batch_size),
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(self.steps_per_epoch):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"labeled": self._labeled_stream.state_dict(), "unlabeled": self._unlabeled_stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._labeled_stream.load_state_dict(state["labeled"])
        self._unlabeled_stream.load_state_dict(state["unlabeled"])


class SemiBatch(NamedTuple):
    """One step's data. Unlabeled samples come without their labels."""

    x_labeled: Tensor
    y_labeled: Tensor
    labeled_indices: Tensor
    unlabeled_views: tuple[Tensor, ...]
    unlabeled_indices: Tensor


class SemiBatchLoader:
    """Gathers :class:`SemiBatchSampler` batches from device-resident tensors.

    Args:
        images: ``(N, C, H, W)`` training images on the training device (e.g. ZCA-whitened).
        labels: ``(N,)`` labels (only those of labeled samples are ever returned).
        sampler: The index sampler.
        augment: Optional callable ``(x, generator) -> x`` (e.g.
            :class:`~torch_isda.semi.augment.TranslateFlip`), applied to the labeled
            batch and independently to each unlabeled view.
        num_views: Augmented views of the unlabeled batch (2 for the Pi-model and the
            mean teacher; see ``method.num_views``).
        generator: Generator passed to ``augment`` (on any device).

    Indices in the batches are on ``images.device``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        sampler: SemiBatchSampler,
        *,
        augment: Optional[Callable[..., Tensor]] = None,
        num_views: int = 1,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        if images.dim() < 2 or labels.shape != (images.shape[0],):
            raise ValueError(
                f"need images (N, ...) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if num_views < 1:
            raise ValueError(f"num_views must be positive, got {num_views}")
        n = images.shape[0]
        for name, idx in (("labeled", sampler.labeled), ("unlabeled", sampler.unlabeled)):
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise ValueError(f"{name} indices must lie in [0, {n})")
        self.images = images
        self.labels = labels
        self.sampler = sampler
        self.augment = augment
        self.num_views = int(num_views)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.sampler)

    def _aug(self, x: Tensor) -> Tensor:
        return x if self.augment is None else self.augment(x, self.generator)

    def gather(self, labeled_idx: Tensor, unlabeled_idx: Tensor) -> SemiBatch:
        device = self.images.device
        il = labeled_idx.to(device, non_blocking=True)
        iu = unlabeled_idx.to(device, non_blocking=True)
        x_l = self._aug(self.images.index_select(0, il))
        y_l = self.labels.index_select(0, il)
        x_u = self.images.index_select(0, iu)
        views = tuple(self._aug(x_u) for _ in range(self.num_views))
        return SemiBatch(x_l, y_l, il, views, iu)

    def __iter__(self) -> Iterator[SemiBatch]:
        for labeled_idx, unlabeled_idx in self.sampler:
            yield self.gather(labeled_idx, unlabeled_idx)
