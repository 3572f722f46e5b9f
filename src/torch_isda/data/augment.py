"""Batched, on-device data augmentation for ``(N, C, H, W)`` image tensors.

Everything works on whole batches with tensor ops (no Python loop over
images), on ``uint8`` or floating-point tensors, on any device.  Randomness
comes from an optional :class:`torch.Generator` (which may live on another
device than the images: the few random numbers are drawn on the generator's
device and moved), so results are reproducible from a seed or a saved
generator state.  Random numbers are drawn in a fixed order: crop offsets
(``2 * N`` integers), then flip decisions (``N`` floats), then those of the optional
AutoAugment / RandAugment stage, then those of Cutout.

The pad-crop pads with reflection by default, as the official ISDA CIFAR pipeline
(``F.pad(x, (4, 4, 4, 4), mode='reflect')`` before ``RandomCrop(32)``); ``pad_mode="zeros"``
(``crop(pad_mode=zeros)``) gives the zero padding of ``RandomCrop(32, padding=4)``.

:func:`build_augment` also composes the non-semantic augmentations of the ISDA paper
(Table 4) with a dataset's standard crop/flip, e.g. ``"crop_flip+cutout"``,
``"crop_flip+autoaugment+cutout"`` or ``"crop_flip+randaugment"``; each term may carry
options, e.g. ``"crop(padding=1)+cutout(size=4)"`` (see :data:`TERM_OPTIONS`).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from ..utils.spec_grammar import key_value_items, match_term, split_top_level
from .autoaugment import AutoAugment, check_batch, gen_device
from .cutout import Cutout
from .randaugment import RandAugment

__all__ = [
    "AUGMENTATIONS",
    "EXTRA_AUGMENTATIONS",
    "PAD_MODES",
    "TERM_OPTIONS",
    "BatchAugment",
    "build_augment",
    "normalize",
    "random_crop",
    "random_flip",
    "to_float",
]

#: Base names accepted by :func:`build_augment` (a dataset's standard augmentation).
AUGMENTATIONS = ("none", "crop", "crop_flip")

#: Extras that :func:`build_augment` composes with a base name using ``"+"``.
EXTRA_AUGMENTATIONS = ("autoaugment", "randaugment", "cutout")

#: Padding of the pad-crop: ``"reflect"`` (the official ISDA CIFAR code, the default) or
#: ``"zeros"``.
PAD_MODES = ("reflect", "zeros")


#: Options a term of an augmentation spec may carry, e.g. ``"crop(padding=1)+cutout(size=4)"``:
#: ``{term: {option: build_augment keyword}}``.
TERM_OPTIONS = {
    "none": {},
    "crop": {"padding": "padding", "pad_mode": "pad_mode"},
    "crop_flip": {"padding": "padding", "flip_p": "flip_p", "pad_mode": "pad_mode"},
    "cutout": {"size": "cutout_size", "holes": "cutout_holes"},
    "autoaugment": {"fill": "fill"},
    "randaugment": {"n": "randaugment_ops", "m": "randaugment_magnitude", "fill": "fill"},
}

def _parse_term_options(term: str, arg_text: str, name: str) -> dict[str, object]:
    """``"size=4, holes=2"`` of term ``cutout`` -> ``{"cutout_size": 4, "cutout_holes": 2}``."""
    allowed = TERM_OPTIONS[term]
    options: dict[str, object] = {}
    for key, value in key_value_items(arg_text, name, "augmentation options", "augmentation spec"):
        if key not in allowed:
            accepted = ", ".join(allowed) or "no options"
            raise ValueError(f"unknown option {key!r} for augmentation {term!r} in {name!r}; "
                             f"it accepts: {accepted}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare word is a string: crop(pad_mode=zeros)
            if not value.isidentifier():
                parsed = None
        if not isinstance(parsed, (int, float, str)):  # every option is a number or a word
            raise ValueError(f"invalid value {value!r} for {term}({key}=...) in {name!r}")
        options[allowed[key]] = parsed
    return options


def _split_terms(name: str, usage: str) -> list[str]:
    """The ``'+'``-joined terms of ``name`` (unbalanced brackets: the usage error)."""
    try:
        return split_top_level(name, "+", "augmentation spec")
    except ValueError:
        raise ValueError(f"unknown augmentation {name!r}; {usage}") from None


def _parse_spec(name: str) -> tuple[str, tuple[str, ...], dict[str, object]]:
    """``"crop(padding=1)+cutout(size=4)"`` -> ``("crop", ("cutout",), {"padding": 1,
    "cutout_size": 4})``: the base name, the extras and the :func:`build_augment` keyword
    arguments given by the terms' options (see :data:`TERM_OPTIONS`). The grammar is
    :mod:`torch_isda.utils.spec_grammar`'s."""
    if not isinstance(name, str):
        raise ValueError(f"augmentation name must be a string; got {name!r}")
    usage = (f"choose one of {AUGMENTATIONS}, optionally followed by '+'-joined extras from "
             f"{EXTRA_AUGMENTATIONS} (e.g. 'crop_flip+autoaugment+cutout'); each term may carry "
             f"options such as 'cutout(size=4)'")
    parts, options = [], {}
    for raw in _split_terms(name, usage):
        parsed = match_term(raw)
        term = parsed[0] if parsed else raw.strip()
        if parsed and term in TERM_OPTIONS and parsed[1] is not None:
            options.update(_parse_term_options(term, parsed[1], name))
        parts.append(term)
    base = [t for t in parts if t in AUGMENTATIONS]
    extras = [t for t in parts if t in EXTRA_AUGMENTATIONS]
    unknown = [t for t in parts if t not in AUGMENTATIONS and t not in EXTRA_AUGMENTATIONS]
    if unknown or len(base) > 1 or len(set(extras)) != len(extras) or (not base and not extras):
        raise ValueError(f"unknown augmentation {name!r}; {usage}")
    if "autoaugment" in extras and "randaugment" in extras:
        raise ValueError(f"{name!r}: use at most one of 'autoaugment' and 'randaugment'")
    return (base[0] if base else "none"), tuple(extras), options


def _parse_name(name: str) -> tuple[str, tuple[str, ...]]:
    """``"crop_flip+autoaugment+cutout"`` -> ``("crop_flip", ("autoaugment", "cutout"))``."""
    base, extras, _ = _parse_spec(name)
    return base, extras


def _check_pad_mode(pad_mode: object, where: str = "") -> None:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}; got {pad_mode!r}{where}")


def random_crop(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Pad every image by ``padding`` pixels and crop back to ``H x W`` at an
    independent uniformly random offset per image (the CIFAR "pad-crop").

    Equivalent to, for each image ``i`` with offsets ``dy_i, dx_i`` drawn from
    ``[0, 2 * padding]``: ``F.pad(x[i], [padding] * 4, mode)[:, dy_i:dy_i + H,
    dx_i:dx_i + W]``, computed for the whole batch with one advanced-indexing gather.

    Args:
        x: ``(N, C, H, W)`` tensor of any dtype; the result has the same dtype,
            shape and device.
        padding: Pixels of padding on every side; ``0`` returns ``x``.
        generator: Source of randomness (default: the global RNG).
        pad_mode: ``"reflect"`` (mirror without repeating the edge, the official ISDA
            CIFAR code; needs ``padding`` smaller than ``H`` and ``W``) or ``"zeros"``.
    """
    check_batch(x)
    _check_pad_mode(pad_mode)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 or x.shape[0] == 0:
        return x
    n, c, h, w = x.shape
    if pad_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding of {padding} pixels needs images larger than that; "
                         f"got {h}x{w} (use pad_mode='zeros' or a smaller padding)")
    offsets = torch.randint(
        0, 2 * padding + 1, (2, n), generator=generator, device=gen_device(generator, x)
    ).to(x.device)
    pad = (padding, padding, padding, padding)
    padded = F.pad(x, pad, mode="reflect") if pad_mode == "reflect" else F.pad(x, pad)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(
    x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image horizontally, independently with probability ``p``.

    Args:
        x: ``(N, C, H, W)`` tensor of any dtype; the result has the same dtype,
            shape and device.
        p: Flip probability.
        generator: Source of randomness (default: the global RNG).
    """
    check_batch(x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if x.shape[0] == 0:
        return x
    flip = torch.rand(x.shape[0], generator=generator, device=gen_device(generator, x)) < p
    flip = flip.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new ``dtype`` tensor: ``uint8`` images are scaled to ``[0, 1]``,
    floating images (assumed in ``[0, 1]``) are copied/cast."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating-point images, got {x.dtype}")
    return x.to(dtype, copy=True)


def _stats_tensor(
    values: Sequence[float] | torch.Tensor, channels: int, ref: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=dtype, device=ref.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"need {channels} per-channel values, got {t.numel()}")
    return t.view(1, channels, 1, 1)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x - mean) / std`` per channel, returning a new ``dtype`` tensor.

    ``mean``/``std`` are in ``[0, 1]`` pixel units.  ``uint8`` input is first
    scaled by ``1/255``; floating input is assumed to be in ``[0, 1]`` already.
    """
    check_batch(x)
    c = x.shape[1]
    m = _stats_tensor(mean, c, x, dtype)
    s = _stats_tensor(std, c, x, dtype)
    return to_float(x, dtype).sub_(m).div_(s)


class BatchAugment:
    """Callable ``(images, generator=None) -> images`` built by :func:`build_augment`.

    Applies, in this order: the base augmentation (crop / crop + flip), AutoAugment or
    RandAugment, Cutout, and then, if ``mean``/``std`` were given, :func:`normalize`
    (returning float); without them the input dtype is kept.  This is the order of the
    official ISDA CIFAR code (``RandomCrop, RandomHorizontalFlip, CIFAR10Policy, ToTensor,
    Cutout, Normalize``): AutoAugment/RandAugment and Cutout see ``uint8`` (or ``[0, 1]``
    float) pixels, and Cutout's holes are black before normalization.
    """

    def __init__(
        self,
        name: str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        padding: int = 4,
        flip_p: float = 0.5,
        dtype: torch.dtype = torch.float32,
        cutout_size: int = 16,
        cutout_holes: int = 1,
        randaugment_ops: int = 2,
        randaugment_magnitude: int = 9,
        fill: float = 128.0,
        pad_mode: str = "reflect",
    ) -> None:
        base, extras, options = _parse_spec(name)
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std, or neither")
        # options written in the name (e.g. "cutout(size=4)") override the keywords
        padding = options.get("padding", padding)
        flip_p = options.get("flip_p", flip_p)
        cutout_size = options.get("cutout_size", cutout_size)
        cutout_holes = options.get("cutout_holes", cutout_holes)
        randaugment_ops = options.get("randaugment_ops", randaugment_ops)
        randaugment_magnitude = options.get("randaugment_magnitude", randaugment_magnitude)
        fill = options.get("fill", fill)
        pad_mode = options.get("pad_mode", pad_mode)
        _check_pad_mode(pad_mode, f" in {name!r}")
        if isinstance(padding, bool) or int(padding) != padding or int(padding) < 0:
            raise ValueError(f"crop padding must be an integer >= 0; got {padding!r} in {name!r}")
        if not isinstance(flip_p, (int, float)) or not 0.0 <= float(flip_p) <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1]; got {flip_p!r} in {name!r}")
        self.name = name
        self.base = base
        self.extras = extras
        self.policy: Optional[object] = None
        if "autoaugment" in extras:
            self.policy = AutoAugment(fill=fill)
        elif "randaugment" in extras:
            self.policy = RandAugment(randaugment_ops, randaugment_magnitude, fill=fill)
        self.cutout = Cutout(cutout_size, cutout_holes, 0.0) if "cutout" in extras else None
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.padding = int(padding)
        self.pad_mode = pad_mode
        self.flip_p = float(flip_p)
        self.dtype = dtype
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.base in ("crop", "crop_flip"):
            x = random_crop(x, self.padding, generator, self.pad_mode)
        if self.base == "crop_flip":
            x = random_flip(x, self.flip_p, generator)
        if self.policy is not None:
            x = self.policy(x, generator)
        if self.cutout is not None:
            x = self.cutout(x, generator)
        if self.mean is None:
            return x
        key = (x.device, self.dtype)
        if key not in self._stats:  # cache the (1, C, 1, 1) tensors per device
            c = x.shape[1]
            self._stats[key] = (
                _stats_tensor(self.mean, c, x, self.dtype),
                _stats_tensor(self.std, c, x, self.dtype),
            )
        m, s = self._stats[key]
        return to_float(x, self.dtype).sub_(m).div_(s)

    def __repr__(self) -> str:
        extra = "".join(f", {obj!r}" for obj in (self.policy, self.cutout) if obj is not None)
        return (
            f"BatchAugment({self.name!r}, mean={self.mean}, std={self.std}, "
            f"padding={self.padding}, pad_mode={self.pad_mode!r}, flip_p={self.flip_p}{extra})"
        )


def build_augment(
    name: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
    padding: int = 4, flip_p: float = 0.5, dtype: torch.dtype = torch.float32,
    cutout_size: int = 16, cutout_holes: int = 1, randaugment_ops: int = 2,
    randaugment_magnitude: int = 9, fill: float = 128.0, pad_mode: str = "reflect",
) -> BatchAugment:
    """Build a batch augmentation by name.

    Args:
        name: ``"none"`` (identity), ``"crop"`` (pad-crop, e.g. SVHN) or
            ``"crop_flip"`` (pad-crop + horizontal flip, e.g. CIFAR), optionally
            followed by ``"+"``-joined extras: ``"cutout"``
            (:class:`~torch_isda.data.cutout.Cutout`), ``"autoaugment"`` (CIFAR-10
            policy, :class:`~torch_isda.data.autoaugment.AutoAugment`) or
            ``"randaugment"`` (:class:`~torch_isda.data.randaugment.RandAugment`).
            The ISDA paper's Table 4 columns are ``"crop_flip+cutout"``,
            ``"crop_flip+randaugment"`` and ``"crop_flip+autoaugment+cutout"`` (the
            official code always adds Cutout to AutoAugment).  The order of the parts
            in the name does not matter: they always run as described in
            :class:`BatchAugment`.  Each term may carry options in parentheses
            (:data:`TERM_OPTIONS`), which override the keyword arguments below:
            ``crop(padding=, pad_mode=)``, ``crop_flip(padding=, flip_p=, pad_mode=)``,
            ``cutout(size=, holes=)``, ``autoaugment(fill=)``, ``randaugment(n=, m=,
            fill=)``; e.g.
            ``"crop(padding=1)+cutout(size=4)"`` for 8x8 digits (the defaults, padding 4
            and a 16x16 hole, are the 32x32 CIFAR settings: a 16x16 hole blanks an 8x8
            image completely).
        mean: Per-channel mean; with ``std`` the callable also normalizes and
            returns ``dtype`` tensors.
        std: Per-channel standard deviation.
        padding: Padding of the random crop.
        flip_p: Horizontal flip probability.
        dtype: Floating dtype of normalized output.
        cutout_size: Side of the Cutout square (default 16).
        cutout_holes: Number of Cutout squares per image (default 1).
        randaugment_ops: RandAugment ``N`` (default 2).
        randaugment_magnitude: RandAugment ``M`` on the 0-30 scale (default 9).
        fill: Pixel value (``[0, 255]`` units) for areas uncovered by AutoAugment /
            RandAugment geometric operations (default 128).
        pad_mode: Padding of the random crop: ``"reflect"`` (default, the official ISDA
            CIFAR pipeline) or ``"zeros"``.

    Returns:
        A callable ``f(images, generator=None)``.
    """
    return BatchAugment(
        name, mean, std, padding=padding, flip_p=flip_p, dtype=dtype, cutout_size=cutout_size,
        cutout_holes=cutout_holes, randaugment_ops=randaugment_ops,
        randaugment_magnitude=randaugment_magnitude, fill=fill, pad_mode=pad_mode,
    )
