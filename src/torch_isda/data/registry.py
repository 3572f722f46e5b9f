"""Dataset registry and the in-memory :class:`ImageDataset` container.

Dataset factories are plain functions decorated with :func:`register_dataset`;
by default the function name is the dataset name.  Every factory takes
``root`` and ``download`` plus dataset-specific keyword arguments::

    @register_dataset
    def digits(root="data", download=False):
        ...

    ds = create_dataset("cifar100", root="data", download=True, label_type="coarse")

Small datasets (digits, CIFAR, SVHN) are returned as an :class:`ImageDataset`:
every image is held as one ``uint8`` tensor so that the whole dataset can be
moved to the accelerator once (:meth:`ImageDataset.to`) and batched there by
:class:`~torch_isda.data.loader.DeviceBatchIterator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from inspect import signature
from typing import Any, TypeVar, overload

import torch

from ..utils.registry import Registry

__all__ = [
    "ImageDataset",
    "channel_stats",
    "create_dataset",
    "dataset_entrypoint",
    "is_dataset",
    "list_datasets",
    "register_dataset",
    "take_long_tail",
    "take_training_subset",
]

_F = TypeVar("_F", bound=Callable[..., Any])

_DATASETS = Registry("dataset")

#: Valid values of :attr:`ImageDataset.default_augment`.
AUGMENT_NAMES = ("none", "crop", "crop_flip")


@dataclasses.dataclass(eq=False, repr=False)
class ImageDataset:
    """A fully in-memory image classification dataset with a train/test split.

    Attributes:
        name: Registry name of the dataset (e.g. ``"cifar10"``).
        train_images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        train_labels: ``int64`` tensor of shape ``(N,)`` with values in
            ``[0, num_classes)``.
        test_images: ``uint8`` tensor of shape ``(M, C, H, W)``.
        test_labels: ``int64`` tensor of shape ``(M,)``.
        num_classes: Number of classes.
        mean: Per-channel mean of the training images, in ``[0, 1]`` pixel units.
        std: Per-channel standard deviation of the training images, in
            ``[0, 1]`` pixel units.
        image_size: ``(C, H, W)``.
        default_augment: Name of the standard training augmentation
            (``"none"``, ``"crop"`` or ``"crop_flip"``, optionally with options such as
            ``"crop_flip(padding=2)"``), see :func:`~torch_isda.data.augment.build_augment`.
        classes: Optional human-readable class names, ``num_classes`` long.
        meta_images, meta_labels: Optional balanced held-out set carved from the training
            images (``val_per_class``, see :mod:`~torch_isda.data.longtail`), e.g. the meta
            set of MetaSAug; ``None`` when there is none.
        source: Where the data was read from (folder and files), for the log and
            ``config.json``; ``None`` for built-in or generated data.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int, int]
    default_augment: str = "none"
    classes: tuple[str, ...] | None = None
    meta_images: torch.Tensor | None = None
    meta_labels: torch.Tensor | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.image_size = tuple(int(s) for s in self.image_size)  # type: ignore[assignment]
        if self.classes is not None:
            self.classes = tuple(str(c) for c in self.classes)
        self._validate()

    def _validate(self) -> None:
        if self.default_augment not in AUGMENT_NAMES:
            from .augment import build_augment

            try:  # a spec with options, e.g. "crop_flip(padding=2)"
                build_augment(self.default_augment)
            except ValueError as err:
                raise ValueError(
                    f"{self.name}: default_augment must be one of {AUGMENT_NAMES} or a spec "
                    f"accepted by build_augment, got {self.default_augment!r} ({err})"
                ) from None
        channels = self.image_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.name}: mean/std need {channels} entries, got {self.mean} / {self.std}"
            )
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes"
            )
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split}_images must be a uint8 (N, C, H, W) tensor, "
                    f"got {images.dtype} of shape {tuple(images.shape)}"
                )
            if tuple(images.shape[1:]) != self.image_size:
                raise ValueError(
                    f"{self.name}: {split}_images have shape {tuple(images.shape[1:])}, "
                    f"expected image_size {self.image_size}"
                )
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{self.name}: {split}_labels must be an int64 tensor of shape "
                    f"({images.shape[0]},), got {labels.dtype} of shape {tuple(labels.shape)}"
                )
            if images.device != labels.device:
                raise ValueError(
                    f"{self.name}: {split}_images on {images.device} but labels on {labels.device}"
                )

    @property
    def train_size(self) -> int:
        """Number of training images."""
        return int(self.train_images.shape[0])

    @property
    def test_size(self) -> int:
        """Number of test images."""
        return int(self.test_images.shape[0])

    @property
    def device(self) -> torch.device:
        """Device holding the tensors."""
        return self.train_images.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageDataset:
        """Return a copy whose four tensors live on ``device`` (self is unchanged)."""
        device = torch.device(device)

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        meta = {} if self.meta_images is None else {
            "meta_images": move(self.meta_images), "meta_labels": move(self.meta_labels)}
        return dataclasses.replace(
            self,
            train_images=move(self.train_images),
            train_labels=move(self.train_labels),
            test_images=move(self.test_images),
            test_labels=move(self.test_labels),
            **meta,
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={self.train_size}, test={self.test_size}, "
            f"num_classes={self.num_classes}, image_size={self.image_size}, "
            f"default_augment={self.default_augment!r}, device={self.device})"
        )


def channel_stats(
    images: torch.Tensor, chunk_size: int = 8192, min_std: float = 1e-6
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``uint8`` images.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        chunk_size: Images processed at once, bounding the float64 temporaries.
        min_std: Lower bound applied to the std so that constant channels
            cannot cause a division by zero when normalizing.

    Returns:
        ``(mean, std)`` as tuples of ``C`` floats in ``[0, 1]`` pixel units.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk_size):
        chunk = images[start : start + chunk_size].to("cpu", torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt().clamp_min(min_std * 255.0)
    return tuple((mean / 255.0).tolist()), tuple((std / 255.0).tolist())


@overload
def register_dataset(fn: _F) -> _F: ...
@overload
def register_dataset(fn: str) -> Callable[[_F], _F]: ...


def register_dataset(fn: _F | str) -> _F | Callable[[_F], _F]:
    """Register a dataset factory.

    Use as ``@register_dataset`` (the function name is the dataset name) or as
    ``@register_dataset("name")``.  Names must be lower-case.  Registering a
    different function under a taken name raises ``ValueError``; re-registering
    the same function (e.g. after a module reload) replaces the old entry.
    """
    if isinstance(fn, str):
        name = fn
        return lambda f: _register(name, f)
    return _register(fn.__name__, fn)


def _register(name: str, fn: _F) -> _F:
    if name != name.lower() or not name:
        raise ValueError(f"dataset names must be non-empty and lower-case, got {name!r}")
    return _DATASETS.register(name, fn)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered datasets, optionally ``fnmatch``-filtered."""
    return _DATASETS.names(pattern)


def is_dataset(name: str) -> bool:
    """Whether a dataset called ``name`` is registered."""
    return name in _DATASETS


def dataset_entrypoint(name: str) -> Callable[..., Any]:
    """Return the factory registered under ``name``.

    Raises:
        ValueError: if ``name`` is unknown; the message lists the available
            datasets and suggests the closest match.
    """
    return _DATASETS.get(name)


def create_dataset(name: str, root: str = "data", download: bool = False, **kwargs: Any) -> Any:
    """Build the registered dataset ``name``.

    Args:
        name: Registered dataset name, see :func:`list_datasets`.
        root: Directory holding (or receiving) the dataset files.
        download: Fetch missing files from the official mirror (MD5-verified).
        **kwargs: Dataset-specific options (``label_type`` for CIFAR-100,
            ``include_extra`` for SVHN, ``base_url``/``progress`` for
            downloads, ...), plus, for every in-memory dataset:
            ``train_size`` (a class-balanced subset of that many training
            images), ``val_size`` (that many images of the subset become the
            evaluation split instead of the test set, for hyper-parameter
            selection; a loader with a ``test_split`` option then skips its test
            files) and ``subset_seed`` (seed of the draw, default 0); see
            :func:`~torch_isda.data.subset.balanced_split`; or the long-tailed
            options ``imbalance``, ``profile``, ``val_per_class`` and ``n_max``
            (:func:`~torch_isda.data.longtail.long_tail_split`). The mean/std are
            recomputed on the images kept for training.

    Returns:
        An :class:`ImageDataset` for the in-memory datasets, an
        :class:`~torch_isda.data.imagefolder.ImageFolderData` for
        ``"imagefolder"``.

    Raises:
        ValueError: if ``name`` is not registered.
        FileNotFoundError: if the files are missing and ``download`` is false.
    """
    from .longtail import LONG_TAIL_OPTIONS
    from .subset import SUBSET_OPTIONS

    subset = {key: kwargs.pop(key) for key in SUBSET_OPTIONS if key in kwargs}
    long_tail = {key: kwargs.pop(key) for key in LONG_TAIL_OPTIONS if key in kwargs}
    if long_tail and "imbalance" not in long_tail:
        raise ValueError(f"{', '.join(sorted(long_tail))} need imbalance=rho (a long-tailed "
                         f"subset)")
    if long_tail and ({"train_size", "val_size"} & subset.keys()):
        raise ValueError("imbalance cannot be combined with train_size/val_size (use n_max "
                         "and val_per_class)")
    entrypoint = dataset_entrypoint(name)
    if subset.get("val_size") is not None and "test_split" in signature(entrypoint).parameters:
        kwargs["test_split"] = False  # replaced by the validation split: never read it
    data = entrypoint(root=root, download=download, **kwargs)
    if long_tail:
        data = take_long_tail(data, **long_tail, subset_seed=subset.get("subset_seed", 0))
    elif subset:
        data = take_training_subset(data, **subset)
    return data


def take_long_tail(data: ImageDataset, imbalance: float, profile: str = "exp",
                   val_per_class: int | None = None, n_max: int | None = None,
                   subset_seed: int = 0, many_shot: int = 100, few_shot: int = 20
                   ) -> ImageDataset:
    """A copy of ``data`` whose training split is long-tailed
    (:func:`~torch_isda.data.longtail.long_tail_split`), with the balanced held-out set as
    ``meta_images``/``meta_labels`` when ``val_per_class`` is given; the test split is kept.
    ``data`` is unchanged. ``many_shot``/``few_shot`` (the report's shot thresholds) are
    only checked."""
    from .longtail import long_tail_split, shot_groups

    shot_groups([], many_shot, few_shot)

    if not isinstance(data, ImageDataset):
        raise ValueError(f"imbalance needs an in-memory dataset, got {type(data).__name__}")
    split = long_tail_split(data.train_labels, data.num_classes, imbalance, profile,
                            val_per_class, n_max, subset_seed)
    train_idx = split.train.to(data.device)
    images = data.train_images[train_idx]
    changes: dict[str, Any] = {"train_images": images, "train_labels": data.train_labels[train_idx]}
    if split.held_out is not None:
        held = split.held_out.to(data.device)
        changes["meta_images"] = data.train_images[held]
        changes["meta_labels"] = data.train_labels[held]
    changes["mean"], changes["std"] = channel_stats(images)
    return dataclasses.replace(data, **changes)


def take_training_subset(data: ImageDataset, train_size: int | None = None,
                         val_size: int | None = None, subset_seed: int = 0) -> ImageDataset:
    """A copy of ``data`` restricted to a class-balanced training subset
    (:func:`~torch_isda.data.subset.balanced_split`); with ``val_size`` the test split is
    replaced by a validation split carved out of that subset. ``data`` is unchanged."""
    from .subset import balanced_split

    if not isinstance(data, ImageDataset):
        raise ValueError(
            f"train_size/val_size/subset_seed need an in-memory dataset, got "
            f"{type(data).__name__}"
        )
    train_idx, val_idx = balanced_split(
        data.train_labels, data.num_classes, train_size, val_size, subset_seed
    )
    train_idx = train_idx.to(data.device)
    images = data.train_images[train_idx]
    changes: dict[str, Any] = {"train_images": images, "train_labels": data.train_labels[train_idx]}
    if val_idx is not None:
        val_idx = val_idx.to(data.device)
        changes["test_images"] = data.train_images[val_idx]
        changes["test_labels"] = data.train_labels[val_idx]
    changes["mean"], changes["std"] = channel_stats(images)
    return dataclasses.replace(data, **changes)
