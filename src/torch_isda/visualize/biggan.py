"""BigGAN as the fixed generator of the ImageNet visualisation (Figs. 7 and 14).

The paper (Wang et al., TPAMI 2021, Appendix E) inverts "the pre-trained BigGAN [83] on
ImageNet" with the two steps of :mod:`.inversion` (Step I, Eq. 20; Step II, Eq. 21). This
module adapts the generator of the optional package ``pytorch-pretrained-biggan``
(``pip install 'torch-isda[biggan]'``; Hugging Face's port of DeepMind's BigGAN-deep,
``BigGAN(z, one_hot_class, truncation)``) to that code:

* :class:`BigGANGenerator` holds the model, its **truncation** ``t`` (BigGAN's truncation
  trick: noise from a normal truncated to ``[-2, 2]``, scaled by ``t``; the model also reads
  ``t`` for its batch-norm statistics) and an output size (bilinear resize to the
  classifier's input size). ``forward(z, labels)``: images in ``[-1, 1]`` of ImageNet
  classes ``labels``.
* :class:`ClassBoundGenerator` binds the classes of the images being inverted, so that the
  class-agnostic inversion code sees a map ``z -> image``. Rows of ``z`` are sample-major
  (``k`` rows per image for Step I's restarts or Step II's augmentations) and get their
  image's class. The inversion normalises every latent to zero mean and unit standard
  deviation before the generator (:func:`.inversion.normalize_latent`); the adapter scales
  it by ``t`` (the scale of BigGAN's truncated prior), and Step I starts from truncated
  noise (:meth:`ClassBoundGenerator.sample_latent`, used by :func:`.inversion.invert`).
* Pretrained weights (``biggan-deep-128|256|512``) download on first use into the
  package's cache; a local directory with ``config.json`` and ``pytorch_model.bin`` works
  too (that is how the tests load a randomly initialised model of the same class).

Nearest training neighbours in pixel space (Fig. 14) for image-folder datasets stream the
training split from disk (:func:`imagefolder_nearest_neighbours`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BIGGAN_MODELS",
    "BigGANGenerator",
    "ClassBoundGenerator",
    "build_biggan",
    "imagefolder_images",
    "imagefolder_nearest_neighbours",
    "load_biggan",
    "run_biggan_visualization",
    "truncated_noise",
]

#: Pretrained generators of ``pytorch-pretrained-biggan`` (ImageNet, 1000 classes).
BIGGAN_MODELS = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512")
INSTALL_HINT = ("the BigGAN generator needs the optional package pytorch-pretrained-biggan: "
                "pip install 'torch-isda[biggan]'")


def _biggan_module() -> Any:
    try:
        import pytorch_pretrained_biggan
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None
    return pytorch_pretrained_biggan


def truncated_noise(n: int, dim: int, truncation: float, generator: Optional[torch.Generator] = None,
                    device: Union[str, torch.device, None] = None) -> Tensor:
    """``truncation * x`` with ``x`` standard normal truncated to ``[-2, 2]`` (resampled,
    as BigGAN's ``truncated_noise_sample``), ``n x dim``."""
    x = torch.randn(n, dim, generator=generator, device=device)
    for _ in range(100):
        bad = x.abs() > 2
        if not bool(bad.any()):
            break
        x = torch.where(bad, torch.randn(n, dim, generator=generator, device=device), x)
    return x.clamp(-2.0, 2.0) * float(truncation)


class BigGANGenerator(nn.Module):
    """A ``pytorch_pretrained_biggan.BigGAN`` with a truncation and an output size.

    ``forward(z, labels)``: ``N x z_dim`` noise and ``N`` class indices to ``N x 3 x S x S``
    images in ``[-1, 1]``. Attributes: ``z_dim``, ``num_classes``, ``truncation``,
    ``image_shape``, ``output_range``.
    """

    output_range = (-1.0, 1.0)
    codes = 0

    def __init__(self, model: nn.Module, truncation: float = 0.4, image_size: Optional[int] = None) -> None:
        super().__init__()
        if not 0.0 < float(truncation) <= 1.0:
            raise ValueError(f"BigGAN truncation must be in (0, 1]; got {truncation}")
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "embeddings"):
            raise TypeError(f"expected a pytorch_pretrained_biggan.BigGAN; got {type(model).__name__}")
        self.model = model
        self.truncation = float(truncation)
        self.z_dim, self.num_classes = int(config.z_dim), int(config.num_classes)
        self.native_size = int(config.output_dim)
        size = self.native_size if image_size is None else int(image_size)
        if size < 1:
            raise ValueError(f"image_size must be positive; got {image_size}")
        self.image_shape = (3, size, size)

    def forward(self, z: Tensor, labels: Tensor, codes: Optional[Tensor] = None) -> Tensor:
        onehot = F.one_hot(labels.long(), self.num_classes).to(z.dtype)
        x = self.model(z, onehot, self.truncation)
        if x.shape[-1] != self.image_shape[-1]:
            x = F.interpolate(x, size=self.image_shape[1:], mode="bilinear", align_corners=False,
                              antialias=True).clamp(-1.0, 1.0)
        return x

    def sample(self, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images of classes ``labels`` from truncated noise, without gradients."""
        device = next(self.parameters()).device
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        z = truncated_noise(labels.shape[0], self.z_dim, self.truncation, generator, device)
        with torch.no_grad():
            return self(z, labels)


class ClassBoundGenerator(nn.Module):
    """``z -> G(t * z, labels)``: a :class:`BigGANGenerator` with the classes of the
    inverted images bound (row ``r`` of a batch of ``k N`` latents gets ``labels[r // k]``),
    for :func:`.inversion.invert` / :func:`.inversion.augment_step` / :func:`.inversion.visualize`."""

    output_range = (-1.0, 1.0)

    def __init__(self, generator: BigGANGenerator, labels: Tensor) -> None:
        super().__init__()
        self.generator = generator
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= generator.num_classes):
            raise ValueError(f"BigGAN classes must lie in [0, {generator.num_classes}); got "
                             f"{labels.min()}..{labels.max()}")
        self.register_buffer("labels", labels, persistent=False)
        self.z_dim, self.image_shape = generator.z_dim, generator.image_shape

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Initial latents of Step I: BigGAN's truncated noise (un-scaled; the inversion
        normalises latents and :meth:`forward` scales by the truncation)."""
        return truncated_noise(n, self.z_dim, 1.0, generator, self.labels.device)

    def forward(self, z: Tensor) -> Tensor:
        n = self.labels.shape[0]
        if n == 0 or z.shape[0] % n:
            raise ValueError(f"{z.shape[0]} latents for {n} bound images: expected a multiple of {n}")
        labels = self.labels.repeat_interleave(z.shape[0] // n)
        return self.generator(z * self.generator.truncation, labels)


def build_biggan(config: Union[dict, Any], seed: int = 0) -> nn.Module:
    """A randomly initialised ``BigGAN`` of ``config`` (a ``BigGANConfig`` or its dict).

    The package's constructor leaves the final batch norm's ``weight``/``bias``
    uninitialised (``torch.Tensor(n)``); they are set to 1 and 0 here. For tests and
    untrained baselines: pretrained weights come from :func:`load_biggan`.
    """
    mod = _biggan_module()
    if isinstance(config, dict):
        config = mod.BigGANConfig.from_dict(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = mod.BigGAN(config)
    bn = model.generator.bn
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    return model


def load_biggan(name: Union[str, os.PathLike] = "biggan-deep-256", truncation: float = 0.4,
                image_size: Optional[int] = None, device: Union[str, torch.device] = "cpu",
                cache_dir: Optional[str] = None) -> BigGANGenerator:
    """:class:`BigGANGenerator` of a pretrained model (:data:`BIGGAN_MODELS`, downloaded on
    first use) or of a local directory holding ``config.json`` and ``pytorch_model.bin``;
    eval mode, gradients off."""
    mod = _biggan_module()
    text = str(name)
    if text not in BIGGAN_MODELS:
        path = Path(text)
        missing = [f for f in ("config.json", "pytorch_model.bin") if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"BigGAN model {text!r} is neither one of {', '.join(BIGGAN_MODELS)} "
                                    f"nor a directory with config.json and pytorch_model.bin "
                                    f"(missing: {', '.join(missing)})")
    model = mod.BigGAN.from_pretrained(text, cache_dir=cache_dir)
    G = BigGANGenerator(model, truncation, image_size)
    G.source = text
    return G.requires_grad_(False).to(device).eval()


# --------------------------------------------------------------------------- image folders


def _pixel_transform(size: int) -> Any:
    from ..data.imagefolder import EvalTransform

    # resize the shorter side to `size`, center crop, [0, 1] (mean 0, std 1)
    return EvalTransform(size, size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def imagefolder_images(split: Any, indices: Sequence[int], size: int) -> Tensor:
    """Images ``indices`` of an :class:`~torch_isda.data.imagefolder.ImageFolderSplit`,
    shorter side resized to ``size`` and center-cropped, as ``N x 3 x size x size`` in ``[0, 1]``."""
    transform = _pixel_transform(size)
    return torch.stack([transform(split.load(int(i))) for i in indices]) if len(indices) else \
        torch.zeros(0, 3, size, size)


def imagefolder_nearest_neighbours(images: Tensor, split: Any, k: int = 5, chunk_size: int = 256,
                                   progress: bool = False) -> tuple[Tensor, Tensor]:
    """The ``k`` training images nearest to each of ``images`` (``M x 3 x S x S`` in
    ``[0, 1]``) in pixel space (Fig. 14), streaming ``split`` from disk with the same
    resize / center crop; ``(indices, distances)``, ``M x k`` each, nearest first."""
    import sys

    from .inversion import keep_nearest, nearest_neighbours

    size = int(images.shape[-1])
    transform = _pixel_transform(size)
    q = images.float().cpu()
    best_d = torch.full((q.shape[0], 0), float("inf"))
    best_i = torch.empty((q.shape[0], 0), dtype=torch.long)
    total = len(split)
    if total == 0:
        raise ValueError("the training split is empty: no neighbours to search")
    for start in range(0, total, chunk_size):
        stop = min(total, start + chunk_size)
        chunk = torch.stack([transform(split.load(i)) for i in range(start, stop)])
        idx, dist = nearest_neighbours(q, chunk, k)
        best_d, best_i = keep_nearest(best_d, best_i, dist, idx + start, k)
        if progress:
            print(f"[visualize] neighbours: {stop}/{total} training images", file=sys.stderr, flush=True)
    return best_i, best_d


def run_biggan_visualization(
    out_dir: Union[str, os.PathLike], classifier: nn.Module, estimator: Any,
    generator: BigGANGenerator, data: Any, lam: float, *, class_map: Optional[Sequence[int]] = None,
    num_samples: int = 10, num_augmented: int = 4, split: str = "val", num_neighbours: int = 5,
    seed: int = 0, progress: bool = True, **kwargs: Any,
) -> tuple[Any, dict]:
    """Figs. 7/14 on an image-folder dataset: pick ``num_samples`` images of ``split`` (one
    class after the other), invert BigGAN for each with its class (Step I), augment the
    features with ISDA and invert again (Step II) with :func:`.inversion.visualize`, find
    the nearest training images of every augmented image, and write ``augmented.png``,
    ``neighbours.png`` and ``visualization.json``.

    ``class_map[c]`` is BigGAN's ImageNet class of dataset class ``c`` (default: identity,
    for a dataset with BigGAN's 1000 classes in ImageNet's order). Extra keyword
    arguments go to :func:`.inversion.visualize`.
    """
    from .inversion import save_visualization, select_images, visualize

    parts = getattr(data, split, None)
    if parts is None or not hasattr(parts, "load"):
        raise ValueError(f"split {split!r} is not an image-folder split of {type(data).__name__}")
    num_classes = int(data.num_classes)
    class_map = _checked_class_map(class_map, num_classes, generator.num_classes)
    labels_all = torch.as_tensor(parts.targets, dtype=torch.long)
    idx = select_images(labels_all, num_samples, num_classes, seed)
    size = int(generator.image_shape[-1])
    images = imagefolder_images(parts, idx.tolist(), size)
    labels = labels_all[idx]
    bound = ClassBoundGenerator(generator, torch.tensor(class_map)[labels])
    bound.to(next(generator.parameters()).device)
    result = visualize(classifier, estimator, bound, images, labels, lam, num_augmented,
                       mean=data.mean, std=data.std, seed=seed, progress=progress, **kwargs)
    if num_neighbours > 0:
        _add_imagefolder_neighbours(result, data.train, num_neighbours, size, progress)
    result.settings.update(dataset=str(getattr(data, "name", "")), split=split, indices=idx.tolist(),
                           generator="biggan", truncation=generator.truncation,
                           biggan_classes=[class_map[int(c)] for c in labels])
    title = f"ISDA augmentations with BigGAN (lambda = {lam:g}, truncation = {generator.truncation:g})"
    paths = save_visualization(result, out_dir, class_names=getattr(data, "classes", None), title=title)
    return result, paths


def _checked_class_map(class_map: Optional[Sequence[int]], num_classes: int, biggan_classes: int
                       ) -> list[int]:
    """BigGAN's class of every dataset class (default: the identity, if the counts agree)."""
    if class_map is None:
        if num_classes != biggan_classes:
            raise ValueError(f"the dataset has {num_classes} classes, BigGAN {biggan_classes}: "
                             f"give class_map (--biggan-classes), BigGAN's class of each dataset class")
        class_map = list(range(num_classes))
    class_map = [int(c) for c in class_map]
    if len(class_map) != num_classes:
        raise ValueError(f"class_map has {len(class_map)} entries for {num_classes} dataset classes")
    return class_map


def _add_imagefolder_neighbours(result: Any, train: Any, num_neighbours: int, size: int,
                                progress: bool) -> None:
    """The ``num_neighbours`` nearest training images (pixel space) of every augmented image."""
    N, K = result.augmented.shape[:2]
    nn_idx, nn_dist = imagefolder_nearest_neighbours(result.augmented.flatten(0, 1), train,
                                                     num_neighbours, progress=progress)
    k = nn_idx.shape[1]
    result.neighbour_indices = nn_idx.view(N, K, k)
    result.neighbour_distances = nn_dist.view(N, K, k)
    result.neighbour_images = imagefolder_images(train, nn_idx.flatten().tolist(), size).view(
        N, K, k, *result.augmented.shape[2:])
