"""Tests of ``torch_isda.data``: datasets from tiny official-format files,
downloads from a local HTTP server, batched augmentation and the device
batch iterator."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_fixtures import (
    make_cifar10_archive,
    make_cifar100_archive,
    make_imagefolder,
    make_svhn,
    md5_of,
    serve_directory,
    write_pickle,
    write_svhn_mat,
)
from torch_isda.data import (
    ChecksumError,
    DeviceBatchIterator,
    ImageDataset,
    build_augment,
    create_dataset,
    create_imagefolder_loaders,
    list_datasets,
    normalize,
    random_crop,
    random_flip,
    register_dataset,
)
from torch_isda.data import cifar as cifar_mod
from torch_isda.data import download as download_mod
from torch_isda.data import svhn as svhn_mod
from torch_isda.data.imagefolder import EvalTransform, random_resized_crop_params


def _listing(root: Path) -> list[str]:
    """All entries (recursively, hidden ones included) below ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _assert_split(images: torch.Tensor, labels: torch.Tensor, expected) -> None:
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), expected.images)
    np.testing.assert_array_equal(labels.numpy(), expected.labels)


# ----------------------------------------------------------------------------- registry


def test_registry_lists_builtin_datasets():
    assert {"digits", "cifar10", "cifar100", "svhn", "imagefolder"} <= set(list_datasets())
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]


def test_unknown_dataset_lists_available():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'") as info:
        create_dataset("cifar")
    message = str(info.value)
    assert "cifar10" in message and "digits" in message and "svhn" in message


def test_register_dataset_rejects_conflicts():
    with pytest.raises(ValueError, match="lower-case"):
        register_dataset("Bad")(lambda root, download: None)
    with pytest.raises(ValueError, match="already registered"):

        @register_dataset("digits")
        def other(root="data", download=False):  # pragma: no cover - never called
            return None


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_values_and_split():
    from sklearn.datasets import load_digits

    ds = create_dataset("digits")
    assert isinstance(ds, ImageDataset)
    assert ds.train_images.shape == (1257, 1, 8, 8) and ds.test_images.shape == (540, 1, 8, 8)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.num_classes == 10 and ds.image_size == (1, 8, 8) and ds.default_augment == "none"
    assert len(ds.mean) == len(ds.std) == 1 and 0 < ds.mean[0] < 1 and 0 < ds.std[0] < 1
    # exact scaling round(v * 255 / 16), values reach both ends
    values = set(np.unique(ds.train_images.numpy()).tolist())
    assert {0, 255} <= values <= {round(v * 255 / 16) for v in range(17)}
    # split is a partition of the 1797 images, stratified
    bunch = load_digits()
    all_scaled = np.floor(bunch.images * 255 / 16 + 0.5).astype(np.uint8)
    joined = np.concatenate([ds.train_images.numpy(), ds.test_images.numpy()])[:, 0]
    assert sorted(map(bytes, joined)) == sorted(map(bytes, all_scaled))
    train_counts = torch.bincount(ds.train_labels, minlength=10).float()
    test_counts = torch.bincount(ds.test_labels, minlength=10).float()
    fraction = test_counts / (train_counts + test_counts)
    assert torch.all((fraction - 0.3).abs() < 0.01)
    # mean/std are the training-set statistics
    pixels = ds.train_images.double() / 255
    assert ds.mean[0] == pytest.approx(pixels.mean().item())
    assert ds.std[0] == pytest.approx(pixels.std(unbiased=False).item())


def test_digits_deterministic():
    a, b = create_dataset("digits"), create_dataset("digits")
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)


def test_image_dataset_to_and_validation():
    ds = create_dataset("digits")
    moved = ds.to("cpu")
    assert moved is not ds and moved.num_classes == 10
    assert torch.equal(moved.train_images, ds.train_images)
    assert "train=1257" in repr(ds)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(
            "x", ds.train_images.float(), ds.train_labels, ds.test_images, ds.test_labels,
            10, ds.mean, ds.std, (1, 8, 8),
        )
    with pytest.raises(ValueError, match="default_augment"):
        ImageDataset(
            "x", ds.train_images, ds.train_labels, ds.test_images, ds.test_labels,
            10, ds.mean, ds.std, (1, 8, 8), default_augment="bogus",
        )


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_from_archive_then_from_folder(tmp_path):
    tiny = make_cifar10_archive(tmp_path, per_batch=3)
    ds = create_dataset("cifar10", root=str(tmp_path))
    assert ds.train_images.shape == (15, 3, 32, 32) and ds.test_images.shape == (3, 3, 32, 32)
    _assert_split(ds.train_images, ds.train_labels, tiny.train)
    _assert_split(ds.test_images, ds.test_labels, tiny.test)
    assert ds.num_classes == 10 and ds.default_augment == "crop_flip" and ds.name == "cifar10"
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    expected_mean = tiny.train.images.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(ds.mean, expected_mean, rtol=1e-9)
    # extracted atomically: the folder is there, no temporary directory is left
    assert _listing(tmp_path)[:2] == ["cifar-10-batches-py", "cifar-10-batches-py/batches.meta"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    # second load reads the extracted folder (archive no longer needed)
    tiny.path.unlink()
    again = create_dataset("cifar10", root=tmp_path)
    assert torch.equal(again.train_images, ds.train_images)


def test_cifar100_fine_and_coarse(tmp_path):
    tiny = make_cifar100_archive(tmp_path, n_train=8, n_test=4)
    fine = create_dataset("cifar100", root=tmp_path)
    assert fine.num_classes == 100 and fine.train_images.shape == (8, 3, 32, 32)
    _assert_split(fine.train_images, fine.train_labels, tiny.train)
    _assert_split(fine.test_images, fine.test_labels, tiny.test)
    assert fine.classes[3] == "fine3"
    coarse = create_dataset("cifar100", root=tmp_path, label_type="coarse")
    assert coarse.num_classes == 20 and coarse.classes[0] == "coarse0"
    np.testing.assert_array_equal(coarse.train_labels.numpy(), tiny.extra["train_coarse"])
    np.testing.assert_array_equal(coarse.test_labels.numpy(), tiny.extra["test_coarse"])
    with pytest.raises(ValueError, match="label_type"):
        create_dataset("cifar100", root=tmp_path, label_type="medium")


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "--download" in message
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
        create_dataset("cifar100", root=tmp_path / "nowhere")


def test_cifar_archive_missing_member(tmp_path):
    make_cifar10_archive(tmp_path, omit=("data_batch_3",))
    with pytest.raises(ValueError, match="data_batch_3"):
        create_dataset("cifar10", root=tmp_path)
    assert _listing(tmp_path) == ["cifar-10-python.tar.gz"]  # nothing half-extracted


def test_cifar_corrupt_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz"):
        create_dataset("cifar10", root=tmp_path)
    assert _listing(tmp_path) == ["cifar-10-python.tar.gz"]


def test_cifar_incomplete_folder(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete.*data_batch_1"):
        create_dataset("cifar10", root=tmp_path)


def test_cifar_wrong_pickle_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    pixels = np.zeros((2, 3072), np.uint8)
    write_pickle(folder / "train", {b"pixels": pixels, b"fine_labels": [0, 1]})
    write_pickle(folder / "test", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(ValueError, match=r"cifar-100-python/train.*b'data'"):
        create_dataset("cifar100", root=tmp_path)
    write_pickle(folder / "train", {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(ValueError, match="3072"):
        create_dataset("cifar100", root=tmp_path)
    (folder / "train").write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match=r"cifar-100-python/train"):
        create_dataset("cifar100", root=tmp_path)


# ----------------------------------------------------------------------------- SVHN


def test_svhn_from_mat_files(tmp_path):
    tiny = make_svhn(tmp_path, n_train=6, n_test=4, n_extra=5)
    ds = create_dataset("svhn", root=tmp_path)
    assert ds.train_images.shape == (6, 3, 32, 32) and ds.default_augment == "crop"
    _assert_split(ds.train_images, ds.train_labels, tiny.train)
    _assert_split(ds.test_images, ds.test_labels, tiny.test)
    assert ds.train_labels[0] == 0 and int(ds.train_labels.max()) <= 9
    with_extra = create_dataset("svhn", root=tmp_path, include_extra=True)
    assert with_extra.train_images.shape == (11, 3, 32, 32)
    np.testing.assert_array_equal(with_extra.train_images[6:].numpy(), tiny.extra["extra"].images)
    np.testing.assert_array_equal(with_extra.train_labels[6:].numpy(), tiny.extra["extra"].labels)


def test_svhn_pixel_layout(tmp_path):
    """X[h, w, c, n] must land at images[n, c, h, w] (MATLAB row = image row)."""
    from scipy.io import loadmat

    make_svhn(tmp_path)
    x = loadmat(tmp_path / "train_32x32.mat")["X"]
    ds = create_dataset("svhn", root=tmp_path)
    assert ds.train_images[2, 1, 5, 17] == x[5, 17, 1, 2]
    assert ds.train_images[4, 2, 31, 0] == x[31, 0, 2, 4]


def test_svhn_missing_and_malformed(tmp_path):
    write_svhn_mat(tmp_path / "train_32x32.mat", 3)
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("svhn", root=tmp_path)
    assert "test_32x32.mat" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="extra_32x32.mat"):
        create_dataset("svhn", root=tmp_path, include_extra=True)
    from scipy.io import savemat

    savemat(tmp_path / "test_32x32.mat", {"images": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"test_32x32\.mat.*'X'"):
        create_dataset("svhn", root=tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"test_32x32\.mat"):
        create_dataset("svhn", root=tmp_path)


# ----------------------------------------------------------------------------- downloads


@pytest.fixture
def served_cifar10(tmp_path, monkeypatch):
    """A tiny CIFAR-10 archive served over HTTP with its MD5 patched in."""
    tiny = make_cifar10_archive(tmp_path / "server", per_batch=2)
    monkeypatch.setitem(cifar_mod.MD5, "cifar-10-python.tar.gz", md5_of(tiny.path))
    with serve_directory(tmp_path / "server") as (url, requested):
        yield tiny, url, requested


def test_download_cifar10_with_base_url(tmp_path, served_cifar10):
    tiny, url, requested = served_cifar10
    root = tmp_path / "data"
    ds = create_dataset("cifar10", root=root, download=True, base_url=url, progress=False)
    _assert_split(ds.train_images, ds.train_labels, tiny.train)
    assert requested == ["/cifar-10-python.tar.gz"]
    assert _listing(root)[0] == "cifar-10-batches-py"
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # already there: no second request
    create_dataset("cifar10", root=root, download=True, base_url=url, progress=False)
    assert len(requested) == 1


def test_download_url_from_env_and_mapping(tmp_path, served_cifar10, monkeypatch):
    tiny, url, requested = served_cifar10
    monkeypatch.setenv(download_mod.ENV_BASE_URL, url)
    create_dataset("cifar10", root=tmp_path / "a", download=True, progress=False)
    monkeypatch.delenv(download_mod.ENV_BASE_URL)
    monkeypatch.setitem(download_mod.BASE_URLS, "cifar10", url)
    ds = create_dataset("cifar10", root=tmp_path / "b", download=True, progress=True)
    _assert_split(ds.test_images, ds.test_labels, tiny.test)
    assert len(requested) == 2


def test_download_checksum_mismatch_leaves_nothing(tmp_path, served_cifar10, monkeypatch):
    tiny, url, _ = served_cifar10
    wrong = "0" * 32
    monkeypatch.setitem(cifar_mod.MD5, "cifar-10-python.tar.gz", wrong)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        create_dataset("cifar10", root=root, download=True, base_url=url, progress=False)
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and wrong in message and md5_of(tiny.path) in message
    assert isinstance(info.value, RuntimeError)
    assert _listing(root) == []  # no archive, no extracted folder, no temp files


def test_download_corrupted_file(tmp_path, served_cifar10):
    tiny, url, _ = served_cifar10
    good_md5 = md5_of(tiny.path)
    data = bytearray(tiny.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tiny.path.write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match=f"expected {good_md5}"):
        create_dataset("cifar10", root=root, download=True, base_url=url, progress=False)
    assert _listing(root) == []


def test_download_http_error_leaves_nothing(tmp_path):
    root = tmp_path / "data"
    (tmp_path / "empty").mkdir()
    with serve_directory(tmp_path / "empty") as (url, _):  # every request is a 404
        with pytest.raises(RuntimeError, match="Failed to download"):
            create_dataset("cifar100", root=root, download=True, base_url=url, progress=False)
    assert _listing(root) == []


def test_download_replaces_corrupt_existing_archive(tmp_path, served_cifar10):
    tiny, url, requested = served_cifar10
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    ds = create_dataset("cifar10", root=root, download=True, base_url=url, progress=False)
    _assert_split(ds.train_images, ds.train_labels, tiny.train)
    assert md5_of(root / "cifar-10-python.tar.gz") == md5_of(tiny.path)


def test_download_svhn(tmp_path, monkeypatch):
    server = tmp_path / "server"
    tiny = make_svhn(server, n_train=3, n_test=2)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        monkeypatch.setitem(svhn_mod.MD5, name, md5_of(server / name))
    monkeypatch.setitem(svhn_mod.MD5, "extra_32x32.mat", "f" * 32)
    with serve_directory(server) as (url, requested):
        monkeypatch.setenv("TORCH_ISDA_DATA_URL", url)
        ds = create_dataset("svhn", root=tmp_path / "data", download=True, progress=False)
        _assert_split(ds.train_images, ds.train_labels, tiny.train)
        assert sorted(requested) == ["/test_32x32.mat", "/train_32x32.mat"]
    assert sorted(os.listdir(tmp_path / "data")) == ["test_32x32.mat", "train_32x32.mat"]


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_datasets_and_loaders(tmp_path):
    root = make_imagefolder(tmp_path / "folder")
    data = create_dataset("imagefolder", root=root, image_size=32)
    assert data.classes == ["cat", "dog", "fish"] and data.num_classes == 3
    assert len(data.train) == 9 and len(data.val) == 6
    x, y = data.train[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    # eval transform is deterministic and matches resize(36 short side)+center crop 32
    from PIL import Image

    a, _ = data.val[1]
    b, _ = data.val[1]
    assert torch.equal(a, b)
    img = Image.open(data.val.samples[1][0]).convert("RGB")  # 30x50 (w x h)
    img = img.resize((36, 60), Image.Resampling.BILINEAR).crop((2, 14, 34, 46))
    ref = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    ref = (ref - torch.tensor(data.mean).view(3, 1, 1)) / torch.tensor(data.std).view(3, 1, 1)
    torch.testing.assert_close(a, ref)

    train, val, info = create_imagefolder_loaders(
        root, batch_size=4, workers=1, image_size=32, seed=0
    )
    assert info.num_classes == 3 and len(train) == 2 and len(val) == 2
    xb, yb = next(iter(train))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    labels = torch.cat([yv for _, yv in val])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagefolder_distributed_val_shards(tmp_path):
    root = make_imagefolder(tmp_path / "folder", n_train=2, n_val=3)
    seen = []
    for rank in range(2):
        loaders = create_imagefolder_loaders(
            root, batch_size=2, workers=0, image_size=16, distributed=True, rank=rank, world_size=2
        )
        seen += [int(y) for _, yb in loaders.val for y in yb]
    assert sorted(seen) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # every val image exactly once


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        create_dataset("imagefolder", root=tmp_path)
    root = make_imagefolder(tmp_path / "f", n_train=1, n_val=1)
    (root / "val" / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra"):
        create_dataset("imagefolder", root=root)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        create_dataset("imagefolder", root=root, download=True)


def test_random_resized_crop_params_bounds():
    g = torch.Generator().manual_seed(0)
    for width, height in [(10, 10), (300, 200), (50, 400), (1, 1)]:
        for _ in range(20):
            top, left, h, w = random_resized_crop_params(width, height, generator=g)
            assert 0 < h <= height and 0 < w <= width
            assert 0 <= top <= height - h and 0 <= left <= width - w
    # impossible scale falls back to a central crop with clamped ratio
    assert random_resized_crop_params(400, 100, scale=(2.0, 2.0)) == (0, 133, 100, 133)
    assert EvalTransform(224).resize_size == 256


# ----------------------------------------------------------------------------- augmentation


def _unique_batch(n=16, c=3, h=10, w=12, dtype=torch.uint8):
    """Images whose pixels (1..) identify their position, 0 reserved for padding."""
    x = torch.arange(1, n * c * h * w + 1).reshape(n, c, h, w) % 251 + 1
    return x.to(dtype)


def _reflect_pad(x, p):
    """Brute-force reflection padding (mirror without repeating the edge), as the official
    ISDA CIFAR code's ``F.pad(x, (4, 4, 4, 4), mode='reflect')``."""
    h, w = x.shape[-2:]
    rows = [abs(i) if i < h else 2 * (h - 1) - i for i in range(-p, h + p)]
    cols = [abs(j) if j < w else 2 * (w - 1) - j for j in range(-p, w + p)]
    return x[..., rows, :][..., cols]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_random_crop_matches_bruteforce(dtype, pad_mode):
    x = _unique_batch(dtype=dtype)
    p = 4
    out = random_crop(x, padding=p, generator=torch.Generator().manual_seed(3), pad_mode=pad_mode)
    assert out.shape == x.shape and out.dtype == dtype
    padded = _reflect_pad(x, p) if pad_mode == "reflect" else F.pad(x, (p, p, p, p))
    h, w = x.shape[2:]
    offsets = set()
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1, f"image {i} is not a shifted crop of the padded input"
        offsets.add(matches[0])
    assert len(offsets) > 4  # independent offsets per image
    # the documented draw order: offsets = randint(0, 2p+1, (2, N)) from the generator
    g = torch.Generator().manual_seed(3)
    ref_offsets = torch.randint(0, 2 * p + 1, (2, x.shape[0]), generator=g)
    for i in range(x.shape[0]):
        dy, dx = ref_offsets[:, i].tolist()
        assert torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])


def test_random_crop_reflects_by_default():
    x = _unique_batch(n=8)
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    assert torch.equal(random_crop(x, 4, g()), random_crop(x, 4, g(), pad_mode="reflect"))
    assert not torch.equal(random_crop(x, 4, g()), random_crop(x, 4, g(), pad_mode="zeros"))
    assert build_augment("crop_flip").pad_mode == "reflect"
    assert build_augment("crop(pad_mode=zeros)").pad_mode == "zeros"
    assert build_augment("crop_flip(padding=2, pad_mode='zeros')").pad_mode == "zeros"
    with pytest.raises(ValueError, match="pad_mode must be one of reflect, zeros"):
        build_augment("crop(pad_mode=edge)")
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        random_crop(x, 4, pad_mode="constant")


def test_random_crop_padding_edge_cases():
    x = _unique_batch(n=6)
    assert random_crop(x, padding=0) is x
    with pytest.raises(ValueError, match="padding"):
        random_crop(x, padding=-1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop(x[0], padding=2)
    # reflection needs a padding smaller than the image
    with pytest.raises(ValueError, match="reflect padding of 10 pixels needs images larger"):
        random_crop(x, padding=10)
    # zero padding larger than the image: crops may be entirely padding
    p = 13
    out = random_crop(x, padding=p, generator=torch.Generator().manual_seed(5), pad_mode="zeros")
    padded = F.pad(x, (p, p, p, p))
    offsets = torch.randint(0, 2 * p + 1, (2, 6), generator=torch.Generator().manual_seed(5))
    for i, (dy, dx) in enumerate(offsets.T.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 12])


def test_random_flip():
    x = _unique_batch(n=64)
    assert torch.equal(random_flip(x, p=0.0), x)
    assert torch.equal(random_flip(x, p=1.0), x.flip(-1))
    out = random_flip(x, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert torch.all(flipped ^ kept) and 10 < int(flipped.sum()) < 54


def test_augment_seeded_reproducibility():
    x = _unique_batch(n=32)
    aug = build_augment("crop_flip")
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == x.shape


def test_normalize_and_build_augment():
    x = _unique_batch(n=4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expected = (x.float() / 255 - m) / s
    torch.testing.assert_close(normalize(x, mean, std), expected)
    xf = x.float() / 255
    before = xf.clone()
    torch.testing.assert_close(normalize(xf, mean, std), expected)
    assert torch.equal(xf, before)  # input untouched
    torch.testing.assert_close(build_augment("none", mean, std)(x), expected)
    out = build_augment("crop", mean, std)(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    with pytest.raises(ValueError, match="crop_flip"):
        build_augment("rotate")


# ----------------------------------------------------------------------------- loader


def _indexed_data(n=23):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return images, torch.arange(n, dtype=torch.int64)


def test_device_batch_iterator_covers_epoch_and_reproduces_from_state():
    images, labels = _indexed_data()
    gen = torch.Generator().manual_seed(0)
    it = DeviceBatchIterator(images, labels, 5, generator=gen)
    assert len(it) == 5
    state = gen.get_state()
    epoch = [(x, y) for x, y in it]
    assert [len(y) for _, y in epoch] == [5, 5, 5, 5, 3]
    seen = torch.cat([y for _, y in epoch])
    assert sorted(seen.tolist()) == list(range(23)) and seen.tolist() != list(range(23))
    for x, y in epoch:  # images stay aligned with labels; output is float in [0, 1]
        assert x.dtype == torch.float32
        torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 255)
    second = torch.cat([y for _, y in it])
    assert second.tolist() != seen.tolist()  # a fresh permutation each pass
    gen.set_state(state)  # restoring the checkpointed generator replays the order
    assert torch.cat([y for _, y in it]).tolist() == seen.tolist()
    assert torch.cat([y for _, y in it]).tolist() == second.tolist()


def test_device_batch_iterator_options():
    images, labels = _indexed_data()
    it = DeviceBatchIterator(images, labels, 5, shuffle=False, drop_last=True)
    assert len(it) == 4
    assert torch.cat([y for _, y in it]).tolist() == list(range(20))
    mean, std = (0.1,), (0.5,)
    it = DeviceBatchIterator(
        images, labels, 8, shuffle=False, transform=build_augment("none", mean, std)
    )
    x, y = next(iter(it))
    torch.testing.assert_close(x, normalize(images[:8], mean, std))
    with pytest.raises(ValueError):
        DeviceBatchIterator(images, labels[:3], 4)
    with pytest.raises(ValueError):
        DeviceBatchIterator(images, labels, 0)


def test_device_batch_iterator_with_augment_is_reproducible():
    ds = create_dataset("digits")
    aug = build_augment("crop_flip", ds.mean, ds.std, padding=2)

    def run(seed):
        it = DeviceBatchIterator(
            ds.train_images, ds.train_labels, 256, generator=torch.Generator().manual_seed(seed),
            transform=aug,
        )
        return [x for x, _ in it]

    a, b = run(1), run(1)
    assert len(a) == 5 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], run(2)[0])
