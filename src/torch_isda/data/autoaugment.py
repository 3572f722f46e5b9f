"""Batched AutoAugment (Cubuk, Zoph, Mane, Vasudevan & Le, CVPR 2019) with the CIFAR-10
policy, and the image operations it shares with RandAugment (:mod:`.randaugment`).

Everything runs on whole ``(N, C, H, W)`` batches on the images' device: every image
draws its own sub-policy (and its own apply decisions and signs), images are then
grouped by operation and each group is transformed with one batched call (one
host-device sync per stage, no per-image Python loop).

Images: ``uint8`` in ``[0, 255]`` or floating point in ``[0, 1]`` -- apply these *before*
normalization; dtype, shape, device and value range are preserved.  Internally the
operations work on floating "pixel" values in ``[0, 255]`` and follow PIL's 8-bit
semantics (the PyTorch AutoAugment used by the official ISDA code is PIL based): on
``uint8`` input every operation reproduces Pillow's result exactly, integer rounding
included (``tests/test_augmentations.py`` compares them); float input is not quantized,
except that Posterize and Equalize (defined on 8-bit values) round it to 256 levels.
Images that no operation touched are returned bit-identical.

Operations (``value`` is the operation's own parameter, see :func:`op_value`):

* ``ShearX/Y`` (shear factor; PIL affine ``(1, v, 0, 0, 1, 0)`` about the top-left
  corner), ``TranslateX/Y`` (pixels), ``Rotate`` (degrees, counter-clockwise about the
  center): inverse-mapped sampling at pixel centers, ``"nearest"`` (exact PIL
  nearest-neighbour indexing, the default) or ``"bilinear"``; uncovered pixels get
  ``fill`` (default 128 gray, as in the ISDA / DeepVoltaire code);
* ``AutoContrast`` (per-channel min/max stretch), ``Invert`` (``255 - x``),
  ``Equalize`` (PIL's per-channel histogram equalization), ``Solarize`` (invert pixels
  ``>= threshold``; 256 = identity), ``Posterize`` (keep the top ``bits`` bits; 8 =
  identity);
* ``Contrast``, ``Color``, ``Brightness``, ``Sharpness`` (PIL ``ImageEnhance`` with
  factor ``v``: blend with the mean gray level, the grayscale image, black, and the
  3x3 "smooth" filtered image (borders kept) respectively; factor 1 = identity);
* ``Identity``.

Magnitudes (as in the ISDA/DeepVoltaire CIFAR10Policy and torchvision): a level ``l`` on
a scale of ``num_bins`` levels (``0 .. num_bins-1``; 10 for AutoAugment) maps linearly
to ``[0, max]`` with ``max`` = 0.3 (shear), ``150/331`` of the image width/height
(translate), 30 degrees (rotate), 0.9 (enhance ops, factor ``1 +- v``); ``Posterize``
bits ``8 - round(4 l / (num_bins - 1))``, ``Solarize`` threshold
``256 (1 - l / (num_bins - 1))``.  Shear, translate, rotate and the enhance ops get a
random sign per image.  (The original TensorFlow code differs slightly: e.g. translate
up to 10 pixels and enhance factors in ``[0.1, 1.9]`` without sign.)  Two deliberate
differences from the PIL code shipped with ISDA (DeepVoltaire's CIFAR10Policy): there,
Rotate has no random sign (always counter-clockwise; the TF original and torchvision
draw a sign, as here), and ShearX/Y use bicubic resampling (here nearest by default,
or bilinear).

The Cutout operation of the AutoAugment search space is not part of the CIFAR-10
policy; AutoAugment papers (and the ISDA code) apply a 16x16 Cutout *after* the policy,
see :mod:`.cutout` and ``build_augment("crop_flip+autoaugment+cutout", ...)``.

Random numbers (fixed order, drawn on the generator's device and moved): sub-policy
indices ``randint(0, P, (N,))``, apply decisions ``rand(N, K)``, signs
``randint(0, 2, (N, K))`` (``K`` operations per sub-policy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AutoAugment",
    "CIFAR10_POLICY",
    "OP_NAMES",
    "apply_op",
    "op_value",
]

#: All operations implemented here.
OP_NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "AutoContrast",
    "Invert",
    "Equalize",
    "Solarize",
    "Posterize",
    "Contrast",
    "Color",
    "Brightness",
    "Sharpness",
)
_OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
_GEOMETRIC = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
_ENHANCE = frozenset({"Contrast", "Color", "Brightness", "Sharpness"})
_SIGNED = _GEOMETRIC | _ENHANCE
_INTERPOLATIONS = ("nearest", "bilinear")

#: The 25 sub-policies of the AutoAugment CIFAR-10 policy, ``((op, probability, level),
#: (op, probability, level))`` with levels on the 0-9 scale, as listed in Cubuk et al.
#: (2019, appendix) and in the official ISDA code (``autoaugment.py``, CIFAR10Policy);
#: levels of magnitude-free operations are ignored.
CIFAR10_POLICY = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.8, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)

Fill = Union[float, Sequence[float]]


# ----------------------------------------------------------------------------- helpers


def check_batch(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")


def gen_device(generator: Optional[torch.Generator], x: Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def check_op(name: str) -> str:
    if name not in _OP_INDEX:
        raise ValueError(f"unknown operation {name!r}; choose one of {OP_NAMES}")
    return name


def check_interpolation(interpolation: str) -> str:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}; got {interpolation!r}")
    return interpolation


def check_fill(fill: Fill) -> Union[float, tuple[float, ...]]:
    if isinstance(fill, (int, float)):
        return float(fill)
    values = tuple(float(v) for v in fill)
    if not values:
        raise ValueError("fill must be a number or a non-empty per-channel sequence")
    return values


def to_pixels(x: Tensor) -> Tensor:
    """Floating pixel values in ``[0, 255]`` (a new tensor)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32)
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating-point images, got {x.dtype}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.to(work) * 255.0


def _from_pixels(p: Tensor, like: Tensor) -> Tensor:
    if like.dtype == torch.uint8:
        return p.round().clamp_(0, 255).to(torch.uint8)
    return (p / 255.0).clamp_(0.0, 1.0).to(like.dtype)


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _fill_tensor(fill: Union[float, tuple[float, ...]], p: Tensor) -> Tensor:
    t = torch.as_tensor(fill, dtype=p.dtype, device=p.device).reshape(-1)
    if t.numel() not in (1, p.shape[1]):
        raise ValueError(f"fill has {t.numel()} values for {p.shape[1]} channels")
    return t.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- operations
# Each works on float pixels p (n, C, H, W) in [0, 255] and a per-image parameter v (n,).


def _affine(p: Tensor, coef: tuple, fill, interpolation: str) -> Tensor:
    """Sample ``p`` at ``(a X + b Y + c, d X + e Y + f)`` for every output pixel center
    ``(X, Y) = (col + 0.5, row + 0.5)``; ``coef`` holds six ``(n,)`` tensors (or floats)."""
    n, ch, h, w = p.shape
    xs = (torch.arange(w, device=p.device, dtype=p.dtype) + 0.5).view(1, 1, w)
    ys = (torch.arange(h, device=p.device, dtype=p.dtype) + 0.5).view(1, h, 1)
    a, b, c, d, e, f = (
        (k.to(p.dtype).view(-1, 1, 1) if isinstance(k, Tensor) else torch.full((1, 1, 1), float(k), dtype=p.dtype, device=p.device))
        for k in coef
    )
    sx = a * xs + b * ys + c  # (n, h, w)
    sy = d * xs + e * ys + f
    sx, sy = torch.broadcast_tensors(sx, sy)
    sx, sy = sx.expand(n, h, w), sy.expand(n, h, w)
    fill_t = _fill_tensor(fill, p)
    if interpolation == "nearest":
        ix = torch.floor(sx)
        iy = torch.floor(sy)
        valid = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        flat = (iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)).long().reshape(n, 1, h * w)
        out = p.reshape(n, ch, h * w).gather(2, flat.expand(n, ch, h * w)).view(n, ch, h, w)
        return torch.where(valid[:, None], out, fill_t)
    grid = torch.stack((sx / w * 2.0 - 1.0, sy / h * 2.0 - 1.0), dim=-1)
    out = F.grid_sample(p, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cover = F.grid_sample(
        torch.ones(n, 1, h, w, dtype=p.dtype, device=p.device),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out + (1.0 - cover) * fill_t


def _shear_x(p, v, fill, interpolation, u8):
    return _affine(p, (1.0, v, 0.0, 0.0, 1.0, 0.0), fill, interpolation)


def _shear_y(p, v, fill, interpolation, u8):
    return _affine(p, (1.0, 0.0, 0.0, v, 1.0, 0.0), fill, interpolation)


def _translate_x(p, v, fill, interpolation, u8):
    return _affine(p, (1.0, 0.0, v, 0.0, 1.0, 0.0), fill, interpolation)


def _translate_y(p, v, fill, interpolation, u8):
    return _affine(p, (1.0, 0.0, 0.0, 0.0, 1.0, v), fill, interpolation)


def _rotate(p, v, fill, interpolation, u8):
    # PIL Image.rotate(angle): counter-clockwise about (W/2, H/2); inverse mapping
    # x_in = cos (X - cx) - sin (Y - cy) + cx, y_in = sin (X - cx) + cos (Y - cy) + cy.
    h, w = p.shape[2:]
    rad = v.to(p.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = w / 2.0, h / 2.0
    coef = (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
    return _affine(p, coef, fill, interpolation)


def _gray(p: Tensor, u8: bool) -> Tensor:
    """``(n, 1, H, W)`` luminance ``L = 0.299 R + 0.587 G + 0.114 B`` (channel mean for
    channel counts other than 1 and 3); for 8-bit input PIL's rounded integer formula
    ``(19595 R + 38470 G + 7471 B + 2^15) >> 16`` (exact in float32)."""
    c = p.shape[1]
    if c == 1:
        return p
    if c == 3:
        if u8:
            wts = torch.tensor([19595.0, 38470.0, 7471.0], dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
            return torch.floor(((p * wts).sum(dim=1, keepdim=True) + 32768.0) / 65536.0)
        wts = torch.tensor([0.299, 0.587, 0.114], dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
        return (p * wts).sum(dim=1, keepdim=True)
    mean = p.mean(dim=1, keepdim=True)
    return torch.floor(mean + 0.5) if u8 else mean


def _blend(img: Tensor, degenerate: Tensor, factor: Tensor, u8: bool) -> Tensor:
    """PIL ``Image.blend(degenerate, img, factor)`` clipped to ``[0, 255]`` (truncated to
    integers for 8-bit input, as PIL does)."""
    out = (degenerate + _col(factor.to(img.dtype)) * (img - degenerate)).clamp_(0.0, 255.0)
    return out.floor_() if u8 else out


def _contrast(p, v, fill, interpolation, u8):
    mean = _gray(p, u8).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(p, torch.floor(mean + 0.5) if u8 else mean, v, u8)


def _color(p, v, fill, interpolation, u8):
    return _blend(p, _gray(p, u8), v, u8)


def _brightness(p, v, fill, interpolation, u8):
    return _blend(p, torch.zeros_like(p[:, :1, :1, :1]), v, u8)


def _sharpness(p, v, fill, interpolation, u8):
    n, c, h, w = p.shape
    degenerate = p.clone()
    if h > 2 and w > 2:
        kernel = torch.ones(1, 1, 3, 3, dtype=p.dtype, device=p.device)
        kernel[0, 0, 1, 1] = 5.0
        smooth = F.conv2d(p.reshape(n * c, 1, h, w), kernel).view(n, c, h - 2, w - 2) / 13.0
        degenerate[:, :, 1:-1, 1:-1] = torch.floor(smooth + 0.5) if u8 else smooth
    return _blend(p, degenerate, v, u8)


def _auto_contrast(p, v, fill, interpolation, u8):
    n, c, h, w = p.shape
    lo = p.amin(dim=(2, 3), keepdim=True)
    hi = p.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    # (note: ``255.0 / t`` is evaluated as ``255 * reciprocal(t)`` by torch, which is not
    # correctly rounded; divide two tensors instead)
    scale = torch.full_like(span, 255.0) / torch.where(span > 0, span, torch.ones_like(span))
    if not u8:
        return torch.where(span > 0, (p - lo) * scale, p).clamp_(0.0, 255.0)
    # PIL: lut[i] = int(i * scale - lo * scale) in double precision, clipped.
    lo64 = lo.reshape(n * c, 1).double()
    span64 = span.reshape(n * c, 1).double()
    scale64 = torch.full_like(span64, 255.0) / torch.where(span64 > 0, span64, torch.ones_like(span64))
    levels = torch.arange(256, dtype=torch.float64, device=p.device).unsqueeze(0)
    lut = torch.floor(levels * scale64 - lo64 * scale64).clamp_(0.0, 255.0).to(p.dtype)
    q = p.round().clamp(0, 255).to(torch.int64).reshape(n * c, h * w)
    out = lut.gather(1, q).view(n, c, h, w)
    return torch.where(span > 0, out, p)


def _invert(p, v, fill, interpolation, u8):
    return 255.0 - p


def _solarize(p, v, fill, interpolation, u8):
    return torch.where(p >= _col(v.to(p.dtype)), 255.0 - p, p)


def _posterize(p, v, fill, interpolation, u8):
    q = p.round().clamp(0, 255).to(torch.int32)
    shift = (8 - v.round().to(torch.int32)).clamp(0, 8).view(-1, 1, 1, 1)
    mask = torch.bitwise_left_shift(torch.bitwise_right_shift(torch.full_like(shift, 255), shift), shift)
    return torch.bitwise_and(q, mask).to(p.dtype)


def _equalize(p, v, fill, interpolation, u8):
    """PIL ``ImageOps.equalize``: per channel, ``step = (count - count[last value]) // 255``,
    ``lut[i] = (step // 2 + #pixels below i) // step`` (identity when ``step == 0``)."""
    n, c, h, w = p.shape
    rows, size = n * c, h * w
    q = p.round().clamp(0, 255).to(torch.int64).reshape(rows, size)
    offsets = torch.arange(rows, device=p.device).unsqueeze(1) * 256
    hist = torch.bincount((q + offsets).reshape(-1), minlength=rows * 256).view(rows, 256)
    last = hist.gather(1, q.amax(dim=1, keepdim=True))
    step = (size - last) // 255
    below = hist.cumsum(dim=1) - hist
    lut = ((below + step // 2) // step.clamp_min(1)).clamp_(max=255)
    out = torch.where(step > 0, lut.gather(1, q), q)
    return out.view(n, c, h, w).to(p.dtype)


def _identity(p, v, fill, interpolation, u8):
    return p


_OPS = {
    "Identity": _identity,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
    "AutoContrast": _auto_contrast,
    "Invert": _invert,
    "Equalize": _equalize,
    "Solarize": _solarize,
    "Posterize": _posterize,
    "Contrast": _contrast,
    "Color": _color,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
}


# ----------------------------------------------------------------------------- magnitudes


def op_value(
    name: str, level: float, num_bins: int = 10, image_size: tuple[int, int] = (32, 32), sign: int = 1
) -> float:
    """The parameter of operation ``name`` at magnitude ``level`` on a ``num_bins``-level
    scale (``0 <= level <= num_bins - 1``), for ``image_size = (H, W)``.

    Shear factor ``0.3 f``, translation ``150/331 * W f`` (X) or ``* H f`` (Y) pixels,
    rotation ``30 f`` degrees, enhance factor ``1 + 0.9 f`` (all multiplied by ``sign``, the
    enhance ops as ``1 + sign 0.9 f``), posterize bits ``8 - round(4 f)``, solarize
    threshold ``256 (1 - f)``, with ``f = level / (num_bins - 1)``; 0 for magnitude-free
    operations.
    """
    check_op(name)
    if int(num_bins) < 2:
        raise ValueError(f"num_bins must be >= 2; got {num_bins}")
    if not 0 <= level <= num_bins - 1:
        raise ValueError(f"level must lie in [0, {num_bins - 1}]; got {level}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1; got {sign}")
    frac = float(level) / float(num_bins - 1)
    h, w = image_size
    if name in ("ShearX", "ShearY"):
        return sign * 0.3 * frac
    if name == "TranslateX":
        return sign * 150.0 / 331.0 * w * frac
    if name == "TranslateY":
        return sign * 150.0 / 331.0 * h * frac
    if name == "Rotate":
        return sign * 30.0 * frac
    if name in _ENHANCE:
        return 1.0 + sign * 0.9 * frac
    if name == "Posterize":
        return float(8 - round(4.0 * frac))
    if name == "Solarize":
        return 256.0 * (1.0 - frac)
    return 0.0


# ----------------------------------------------------------------------------- application


def apply_op(
    x: Tensor,
    name: str,
    value: Union[float, Tensor] = 0.0,
    *,
    fill: Fill = 128.0,
    interpolation: str = "nearest",
) -> Tensor:
    """Apply one operation with parameter ``value`` (a number, or one per image) to every
    image of a ``uint8`` / ``[0, 1]`` float batch; see the module docstring for the
    parameter of each operation (e.g. ``apply_op(x, "Rotate", 15.0)``,
    ``apply_op(x, "Solarize", 128)``, ``apply_op(x, "Posterize", 4)``)."""
    check_batch(x)
    check_op(name)
    check_interpolation(interpolation)
    fill = check_fill(fill)
    n = x.shape[0]
    if n == 0:
        return x.clone()
    p = to_pixels(x)
    v = torch.as_tensor(value, dtype=p.dtype, device=x.device).reshape(-1)
    if v.numel() == 1:
        v = v.expand(n)
    if v.numel() != n:
        raise ValueError(f"need one value or {n} values; got {v.numel()}")
    if name == "Posterize" and not bool(torch.all((v >= 0) & (v <= 8))):
        raise ValueError("posterize bits must lie in [0, 8]")
    out = _OPS[name](p, v, fill, interpolation, x.dtype == torch.uint8)
    return _from_pixels(out, x)


def apply_stage(
    p: Tensor,
    choice: Tensor,
    values: Tensor,
    touched: Tensor,
    names: Sequence[str],
    fill,
    interpolation: str,
    quantize: bool,
) -> None:
    """In place: for every operation index ``k`` present in ``choice`` (``-1`` = skip),
    transform the images with ``choice == k`` by ``names[k]`` with their ``values``.
    ``touched`` (CPU bool) records which images changed."""
    choice_cpu = choice.cpu()  # the stage's single host-device sync
    for k in torch.unique(choice_cpu).tolist():
        if k < 0 or names[k] == "Identity":
            continue
        sel = (choice_cpu == k).nonzero().squeeze(1)
        touched[sel] = True
        idx = sel.to(p.device)
        res = _OPS[names[k]](p.index_select(0, idx), values.index_select(0, idx), fill, interpolation, quantize)
        if quantize:
            res = res.round().clamp_(0.0, 255.0)
        p.index_copy_(0, idx, res.to(p.dtype))


def finish(p: Tensor, x: Tensor, touched: Tensor) -> Tensor:
    if x.dtype == torch.uint8:  # untouched rows hold x exactly
        return _from_pixels(p, x)
    out = x.clone()
    if bool(touched.any()):
        idx = touched.nonzero().squeeze(1).to(x.device)
        out.index_copy_(0, idx, _from_pixels(p.index_select(0, idx), x))
    return out


def signed_tables(names: Sequence[str], levels: Sequence[float], num_bins: int, hw, device, dtype):
    """Per-entry parameter for sign +1 and sign -1."""
    pos = [op_value(nm, lv, num_bins, hw, 1) for nm, lv in zip(names, levels)]
    neg = [op_value(nm, lv, num_bins, hw, -1) if nm in _SIGNED else p for nm, lv, p in zip(names, levels, pos)]
    return (
        torch.tensor(pos, dtype=dtype, device=device),
        torch.tensor(neg, dtype=dtype, device=device),
    )


class AutoAugment:
    """Batched AutoAugment, callable ``(images, generator=None) -> images``.

    Every image draws one sub-policy uniformly, then applies its operations in order,
    each with its probability (and, for signed operations, a random sign).

    Args:
        policy: sequence of sub-policies, each a sequence of ``(op, probability, level)``
            (default: :data:`CIFAR10_POLICY`).  Sub-policies shorter than the longest are
            padded with no-ops.
        num_bins: number of magnitude levels (10 for AutoAugment: levels 0-9).
        fill: value of pixels uncovered by geometric ops, in ``[0, 255]`` pixel units
            (scalar or per channel; default 128, as the ISDA code).
        interpolation: ``"nearest"`` (default) or ``"bilinear"``.
    """

    def __init__(
        self,
        policy: Sequence[Sequence[tuple[str, float, float]]] = CIFAR10_POLICY,
        *,
        num_bins: int = 10,
        fill: Fill = 128.0,
        interpolation: str = "nearest",
    ) -> None:
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2; got {num_bins}")
        policy = [list(sub) for sub in policy]
        if not policy or any(len(sub) == 0 for sub in policy):
            raise ValueError("policy must be a non-empty sequence of non-empty sub-policies")
        width = max(len(sub) for sub in policy)
        for sub in policy:
            for entry in sub:
                if len(entry) != 3:
                    raise ValueError(f"policy entries must be (op, probability, level); got {entry!r}")
                name, prob, level = entry
                check_op(name)
                if not 0.0 <= float(prob) <= 1.0:
                    raise ValueError(f"probability must lie in [0, 1]; got {prob} for {name}")
                if not 0 <= float(level) <= num_bins - 1:
                    raise ValueError(f"level must lie in [0, {num_bins - 1}]; got {level} for {name}")
            sub.extend([("Identity", 0.0, 0)] * (width - len(sub)))
        self.policy = tuple(tuple((str(n), float(p), float(l)) for n, p, l in sub) for sub in policy)
        self.num_ops = width
        self.num_bins = int(num_bins)
        self.fill = check_fill(fill)
        self.interpolation = check_interpolation(interpolation)
        self._tables: dict = {}

    def _get_tables(self, hw: tuple[int, int], device: torch.device, dtype: torch.dtype):
        key = (hw, device, dtype)
        if key not in self._tables:
            flat = [e for sub in self.policy for e in sub]
            names = [e[0] for e in flat]
            ops = torch.tensor([_OP_INDEX[nm] for nm in names], device=device).view(len(self.policy), -1)
            probs = torch.tensor([e[1] for e in flat], dtype=torch.float64, device=device).view_as(ops)
            pos, neg = signed_tables(names, [e[2] for e in flat], self.num_bins, hw, device, dtype)
            self._tables[key] = (ops, probs, pos.view_as(ops), neg.view_as(ops))
        return self._tables[key]

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        check_batch(x)
        n = x.shape[0]
        if n == 0:
            return x.clone()
        gdev = gen_device(generator, x)
        k = self.num_ops
        sub = torch.randint(0, len(self.policy), (n,), generator=generator, device=gdev).to(x.device)
        u = torch.rand(n, k, generator=generator, device=gdev, dtype=torch.float64).to(x.device)
        sign = torch.randint(0, 2, (n, k), generator=generator, device=gdev).to(x.device)
        p = to_pixels(x)
        ops, probs, pos, neg = self._get_tables(tuple(x.shape[2:]), x.device, p.dtype)
        touched = torch.zeros(n, dtype=torch.bool)
        for s in range(k):
            choice = torch.where(u[:, s] < probs[sub, s], ops[sub, s], torch.full_like(sub, -1))
            values = torch.where(sign[:, s] > 0, pos[sub, s], neg[sub, s])
            apply_stage(p, choice, values, touched, OP_NAMES, self.fill, self.interpolation, x.dtype == torch.uint8)
        return finish(p, x, touched)

    def __repr__(self) -> str:
        return (
            f"AutoAugment({len(self.policy)} sub-policies, num_bins={self.num_bins}, "
            f"fill={self.fill}, interpolation={self.interpolation!r})"
        )
