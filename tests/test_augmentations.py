"""Tests of the batched Cutout / AutoAugment / RandAugment and their build_augment wiring."""

import pytest
import torch

from torch_isda.data.augment import EXTRA_AUGMENTATIONS, build_augment
from torch_isda.data.autoaugment import CIFAR10_POLICY, OP_NAMES, AutoAugment, apply_op, op_value
from torch_isda.data.cutout import Cutout, cutout, cutout_mask
from torch_isda.data.randaugment import RANDAUGMENT_OPS, RandAugment


def _images(n=6, c=3, h=12, w=10, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)  # no zeros
    return x if dtype == torch.uint8 else x.to(dtype) / 255.0


# ----------------------------------------------------------------------------- cutout


def _bruteforce_mask(n, h, w, size, holes, seed):
    g = torch.Generator().manual_seed(seed)
    cy = torch.randint(0, h, (n, holes), generator=g)
    cx = torch.randint(0, w, (n, holes), generator=g)
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    areas = []
    for i in range(n):
        for k in range(holes):
            y0, x0 = int(cy[i, k]) - size // 2, int(cx[i, k]) - size // 2
            y1, y2 = max(y0, 0), min(y0 + size, h)
            x1, x2 = max(x0, 0), min(x0 + size, w)
            mask[i, y1:y2, x1:x2] = True
            areas.append(max(y2 - y1, 0) * max(x2 - x1, 0))
    return mask, areas


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size", [4, 5, 16])
def test_cutout_zeroes_exactly_the_clipped_square(dtype, size):
    n, h, w = 64, 12, 10
    x = _images(n=n, h=h, w=w, dtype=dtype)
    out = cutout(x, size=size, generator=torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == dtype
    ref_mask, areas = _bruteforce_mask(n, h, w, size, 1, seed=5)
    zero = (out == 0).all(dim=1)
    assert torch.equal(zero, ref_mask)
    assert zero.flatten(1).sum(1).tolist() == areas  # pixel counts per image
    assert torch.equal(out[:, :, ~ref_mask.any(0)], x[:, :, ~ref_mask.any(0)])
    assert torch.equal(torch.where(ref_mask[:, None], x, out), x)  # nothing else touched
    # clipping actually happened for some images (centers near a border), full squares otherwise
    full = min(size, h) * min(size, w)
    assert min(areas) < full and (size > min(h, w) or max(areas) == full)


def test_cutout_several_holes_fill_and_edge_cases():
    x = _images(n=32, h=16, w=16)
    out = cutout(x, size=6, holes=3, fill=7, generator=torch.Generator().manual_seed(1))
    ref_mask, _ = _bruteforce_mask(32, 16, 16, 6, 3, seed=1)
    assert torch.equal((out == 7).all(1) & ref_mask, ref_mask)
    assert torch.equal(out[~ref_mask[:, None].expand_as(x)], x[~ref_mask[:, None].expand_as(x)])
    assert torch.equal(cutout(x, size=0), x) and torch.equal(cutout(x, holes=0), x)
    big = cutout(x, size=40, generator=torch.Generator().manual_seed(0))  # covers everything
    assert torch.count_nonzero(big) == 0
    assert cutout_mask(0, 4, 4).shape == (0, 4, 4)
    xf = x.float() / 255.0 - 0.5  # normalized-style input, fill with a custom value
    outf = Cutout(8, fill=-3.0)(xf, torch.Generator().manual_seed(2))
    assert ((outf == -3.0).all(1).flatten(1).sum(1) > 0).all()


def test_cutout_reproducible_and_validation():
    x = _images(n=16, h=32, w=32)
    a = Cutout()(x, torch.Generator().manual_seed(3))
    b = Cutout()(x, torch.Generator().manual_seed(3))
    c = Cutout()(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert Cutout().size == 16 and Cutout().holes == 1
    with pytest.raises(ValueError, match="size"):
        Cutout(size=-1)
    with pytest.raises(ValueError, match="holes"):
        Cutout(holes=1.5)
    with pytest.raises(ValueError, match="N, C, H, W"):
        cutout(x[0])


# ----------------------------------------------------------------------------- single ops


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_identity_parameters_are_identities(dtype):
    x = _images(n=4, h=9, w=11, dtype=dtype)

    def same(y):
        if dtype == torch.uint8:
            return torch.equal(y, x)
        return torch.allclose(y, x, atol=1e-6, rtol=0)

    assert same(apply_op(apply_op(x, "Invert"), "Invert"))
    assert same(apply_op(x, "Solarize", 256))
    assert same(apply_op(x, "Posterize", 8))
    for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Identity"):
        assert same(apply_op(x, name, 0.0)), name
    for name in ("Contrast", "Color", "Brightness", "Sharpness"):
        assert same(apply_op(x, name, 1.0)), name


def test_pixel_ops_values():
    x = _images(n=3, h=8, w=8)
    assert torch.equal(apply_op(x, "Invert"), 255 - x)
    assert torch.equal(apply_op(x, "Solarize", 0), 255 - x)
    assert torch.equal(apply_op(x, "Solarize", 128), torch.where(x >= 128, 255 - x, x))
    assert torch.equal(apply_op(x, "Posterize", 1), x & 0x80)
    assert torch.equal(apply_op(x, "Posterize", 4), x & 0xF0)
    assert torch.count_nonzero(apply_op(x, "Brightness", 0.0)) == 0
    gray = apply_op(x, "Color", 0.0)  # fully desaturated: all channels equal
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    flat = apply_op(x, "Contrast", 0.0)  # a single gray level per image
    assert all(len(torch.unique(img)) == 1 for img in flat)
    # per-image parameters
    per = apply_op(x, "Solarize", torch.tensor([0.0, 256.0, 256.0]))
    assert torch.equal(per[0], 255 - x[0]) and torch.equal(per[1:], x[1:])
    with pytest.raises(ValueError, match="values"):
        apply_op(x, "Solarize", torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="posterize"):
        apply_op(x, "Posterize", 9)
    with pytest.raises(ValueError, match="unknown operation"):
        apply_op(x, "Blur")
    with pytest.raises(TypeError, match="uint8"):
        apply_op(x.to(torch.int32), "Invert")


def test_autocontrast_stretches_each_channel():
    x = (_images(n=4, h=10, w=10) // 4 + 50).to(torch.uint8)  # values in [50, 113]
    out = apply_op(x, "AutoContrast")
    assert torch.equal(out.amin(dim=(2, 3)), torch.zeros(4, 3, dtype=torch.uint8))
    assert bool((out.amax(dim=(2, 3)) >= 254).all())  # PIL truncates, e.g. int(254.99999...)
    outf = apply_op(x.float() / 255.0, "AutoContrast")  # float input: exact stretch
    torch.testing.assert_close(outf.amax(dim=(2, 3)), torch.ones(4, 3))
    torch.testing.assert_close(outf.amin(dim=(2, 3)), torch.zeros(4, 3))
    const = torch.full((2, 3, 5, 5), 77, dtype=torch.uint8)
    assert torch.equal(apply_op(const, "AutoContrast"), const)
    assert torch.equal(apply_op(const, "Equalize"), const)


def _equalize_reference(channel):
    """PIL ImageOps.equalize for one 8-bit channel (pure Python)."""
    hist = [0] * 256
    for v in channel.flatten().tolist():
        hist[v] += 1
    nonzero = [h for h in hist if h]
    if len(nonzero) <= 1:
        return channel.clone()
    step = (sum(nonzero) - nonzero[-1]) // 255
    if not step:
        return channel.clone()
    lut, acc = [], step // 2
    for i in range(256):
        lut.append(min(acc // step, 255))
        acc += hist[i]
    return torch.tensor(lut, dtype=torch.uint8)[channel.long()]


def test_equalize_matches_reference_and_flattens_histogram():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 3, 48, 48, generator=g)
    x = (255 * u**2).floor().to(torch.uint8)  # a skewed random ramp: mostly dark
    out = apply_op(x, "Equalize")
    for i in range(2):
        for c in range(3):
            assert torch.equal(out[i, c], _equalize_reference(x[i, c]))
    for c in range(3):
        counts = torch.histc(out[0, c].float(), bins=8, min=0, max=256)
        before = torch.histc(x[0, c].float(), bins=8, min=0, max=256)
        assert counts.max() / counts.min() < 1.5, counts  # roughly flat
        assert before.max() / before.min() > 4, before  # the input was far from flat


def test_geometric_ops_conventions():
    x = _images(n=2, h=8, w=8)
    # translation by whole pixels shifts content, uncovered pixels get the fill value
    out = apply_op(x, "TranslateX", 3.0, fill=0)
    assert torch.equal(out[..., :5], x[..., 3:]) and torch.count_nonzero(out[..., 5:]) == 0
    out = apply_op(x, "TranslateY", -2.0, fill=9)
    assert torch.equal(out[..., 2:, :], x[..., :6, :]) and bool((out[..., :2, :] == 9).all())
    # rotation is counter-clockwise (PIL's Image.rotate); 90 degrees is an exact rot90
    assert torch.equal(apply_op(x, "Rotate", 90.0), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(apply_op(x, "Rotate", -90.0), torch.rot90(x, -1, dims=(2, 3)))
    # shear about the top-left corner: the first row (y + 0.5 = 0.5, shift 0.5 * 0.9 < 1) stays
    out = apply_op(x, "ShearX", 0.9)
    assert torch.equal(out[..., 0, :], x[..., 0, :])
    # per-channel fill
    out = apply_op(x, "TranslateX", 8.0, fill=(1, 2, 3))
    assert torch.equal(out[:, :, 0, 0], torch.tensor([[1, 2, 3]] * 2, dtype=torch.uint8))
    bil = apply_op(x.float() / 255, "Rotate", 10.0, interpolation="bilinear")
    assert bil.shape == x.shape and float(bil.min()) >= 0 and float(bil.max()) <= 1
    with pytest.raises(ValueError, match="interpolation"):
        apply_op(x, "Rotate", 10.0, interpolation="bicubic")


def test_ops_match_pillow_exactly():
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    ImageEnhance = pytest.importorskip("PIL.ImageEnhance")
    import numpy as np

    x = _images(n=3, h=14, w=18, seed=4)
    x[1] = x[1] // 3 + 40
    fc = (128, 128, 128)
    cases = [
        ("Equalize", 0, ImageOps.equalize),
        ("AutoContrast", 0, ImageOps.autocontrast),
        ("Solarize", 100, lambda im: ImageOps.solarize(im, 100)),
        ("Posterize", 3, lambda im: ImageOps.posterize(im, 3)),
        ("Contrast", 1.7, lambda im: ImageEnhance.Contrast(im).enhance(1.7)),
        ("Color", 0.3, lambda im: ImageEnhance.Color(im).enhance(0.3)),
        ("Brightness", 1.4, lambda im: ImageEnhance.Brightness(im).enhance(1.4)),
        ("Sharpness", 1.9, lambda im: ImageEnhance.Sharpness(im).enhance(1.9)),
        ("Sharpness", 0.2, lambda im: ImageEnhance.Sharpness(im).enhance(0.2)),
        ("TranslateX", 7.25, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 7.25, 0, 1, 0), fillcolor=fc)),
        ("ShearY", -0.27, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, -0.27, 1, 0), fillcolor=fc)),
        ("Rotate", 25.0, lambda im: im.rotate(25.0, fillcolor=fc)),
    ]
    for name, value, fn in cases:
        ours = apply_op(x, name, value)
        ref = torch.stack(
            [
                torch.from_numpy(np.asarray(fn(Image.fromarray(img.permute(1, 2, 0).numpy()))).copy()).permute(2, 0, 1)
                for img in x
            ]
        )
        assert torch.equal(ours, ref), name


# ----------------------------------------------------------------------------- magnitudes / policy


def test_magnitude_tables():
    assert [op_value("Posterize", l) for l in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert op_value("Solarize", 0) == 256 and op_value("Solarize", 9) == 0
    assert op_value("TranslateX", 9, image_size=(32, 40)) == pytest.approx(150 / 331 * 40)
    assert op_value("TranslateY", 9, image_size=(32, 40), sign=-1) == pytest.approx(-150 / 331 * 32)
    assert op_value("ShearX", 9) == pytest.approx(0.3) and op_value("Rotate", 30, 31) == pytest.approx(30)
    assert op_value("Color", 9, sign=-1) == pytest.approx(0.1)
    assert op_value("Equalize", 5) == 0.0
    with pytest.raises(ValueError, match="level"):
        op_value("Rotate", 10)
    assert len(CIFAR10_POLICY) == 25
    for sub in CIFAR10_POLICY:
        assert len(sub) == 2
        for name, prob, level in sub:
            assert name in OP_NAMES and 0 <= prob <= 1 and 0 <= level <= 9
    assert len(RANDAUGMENT_OPS) == 14 and set(RANDAUGMENT_OPS) <= set(OP_NAMES)


# ----------------------------------------------------------------------------- AutoAugment / RandAugment


@pytest.mark.parametrize("make", [lambda: AutoAugment(), lambda: RandAugment(), lambda: RandAugment(3, 30)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_policies_preserve_shape_dtype_range_and_reproduce(make, dtype):
    aug = make()
    x = _images(n=48, h=16, w=16, dtype=dtype, seed=1)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == dtype and a.device == x.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    if dtype == torch.float32:
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    changed = (a != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 48 or isinstance(aug, RandAugment)
    assert aug(x[:0]).shape == (0,) + x.shape[1:]


def test_autoaugment_per_image_subpolicies_and_untouched_images():
    x = _images(n=64, h=8, w=8, dtype=torch.float32, seed=2)
    aug = AutoAugment([[("Invert", 1.0, 0)], [("Invert", 0.0, 0)], [("Rotate", 1.0, 0)]])
    out = aug(x, torch.Generator().manual_seed(3))
    sub = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(3))
    inverted = sub == 0
    torch.testing.assert_close(out[inverted], 1.0 - x[inverted], atol=1e-6, rtol=0)
    assert torch.equal(out[~inverted], x[~inverted])  # bit-identical, including rotate by 0
    assert 5 < int(inverted.sum()) < 40
    # probability 0 everywhere: identity
    assert torch.equal(AutoAugment([[("Equalize", 0.0, 0), ("Invert", 0.0, 0)]])(x), x)
    # sub-policies of different lengths are padded with no-ops
    assert AutoAugment([[("Invert", 1.0, 0)], [("Invert", 1.0, 0), ("Invert", 1.0, 0)]]).num_ops == 2


def test_autoaugment_apply_probability_and_signs():
    x = _images(n=400, h=6, w=6, seed=5)
    out = AutoAugment([[("Solarize", 0.3, 9)]])(x, torch.Generator().manual_seed(0))  # threshold 0: invert
    frac = (out == 255 - x).flatten(1).all(1).double().mean().item()
    assert abs(frac - 0.3) < 0.08
    # signed ops use both directions
    out = AutoAugment([[("TranslateX", 1.0, 9)]], fill=0)(x, torch.Generator().manual_seed(0))
    left = (out[..., -1] == 0).flatten(1).all(1)
    right = (out[..., 0] == 0).flatten(1).all(1)
    assert int(left.sum()) > 100 and int(right.sum()) > 100 and not bool((left & right).any())


def test_randaugment_ops_and_validation():
    x = _images(n=16, h=8, w=8, seed=6)
    assert torch.equal(RandAugment(2, ops=("Invert",))(x), x)  # inverted twice
    assert torch.equal(RandAugment(1, ops=("Invert",))(x), 255 - x)
    assert torch.equal(RandAugment(0)(x), x)
    assert torch.equal(RandAugment(3, ops=("Identity",))(x), x)
    out = RandAugment(1, 0, ops=("Rotate", "ShearX", "Brightness"))(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)  # magnitude 0: every op is an identity
    ra = RandAugment()
    assert (ra.num_ops, ra.magnitude, ra.num_magnitude_bins) == (2, 9, 31)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(2, 31)
    with pytest.raises(ValueError, match="num_ops"):
        RandAugment(-1)
    with pytest.raises(ValueError, match="unknown operation"):
        RandAugment(ops=("Blur",))
    with pytest.raises(ValueError, match="probability"):
        AutoAugment([[("Invert", 1.5, 0)]])
    with pytest.raises(ValueError, match="level"):
        AutoAugment([[("Rotate", 0.5, 10)]])


# ----------------------------------------------------------------------------- build_augment


def test_build_augment_compositions():
    x = _images(n=32, h=16, w=16, seed=7)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for name in ("crop_flip+cutout", "crop_flip+autoaugment+cutout", "crop_flip+randaugment", "cutout", "crop+randaugment"):
        aug = build_augment(name, mean, std, randaugment_ops=1, randaugment_magnitude=5)
        a = aug(x, torch.Generator().manual_seed(0))
        b = aug(x, torch.Generator().manual_seed(0))
        assert a.shape == x.shape and a.dtype == torch.float32 and torch.equal(a, b), name
        assert not torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    raw = build_augment("crop_flip+autoaugment")(x, torch.Generator().manual_seed(0))
    assert raw.dtype == torch.uint8
    assert "cutout" in EXTRA_AUGMENTATIONS


def test_build_augment_cutout_before_normalization():
    x = _images(n=16, h=16, w=16, seed=8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = build_augment("none+cutout", mean, std, cutout_size=6)(x, torch.Generator().manual_seed(0))
    mask = cutout_mask(16, 16, 16, 6, 1, torch.Generator().manual_seed(0))
    hole = torch.tensor([-m / s for m, s in zip(mean, std)])  # black, then normalized
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[mask], hole.expand(int(mask.sum()), 3))
    # random draws: base (crop, flip) first, then cutout
    aug = build_augment("crop_flip+cutout")
    g = torch.Generator().manual_seed(4)
    from torch_isda.data.augment import random_crop, random_flip

    ref = cutout(random_flip(random_crop(x, 4, g), 0.5, g), 16, 1, 0.0, g)
    assert torch.equal(aug(x, torch.Generator().manual_seed(4)), ref)


def test_build_augment_name_validation():
    for bad in ("rotate", "crop+crop_flip", "crop_flip+autoaugment+randaugment", "crop_flip+cutout+cutout", ""):
        with pytest.raises(ValueError, match="crop_flip|at most one"):
            build_augment(bad)
    assert build_augment("crop_flip").extras == ()
