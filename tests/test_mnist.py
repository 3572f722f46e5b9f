"""MNIST-family datasets (IDX reader, file lookup, downloads from a local server),
class-balanced training subsets, ``in_chans`` on the CIFAR models and the ``mnist``
preset. Every file is tiny and written here in the exact IDX format; nothing needs the
network or a system copy (the system roots are redirected to a temporary folder)."""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import (
    MNIST_FILE_NAMES,
    idx_bytes,
    make_mnist_files,
    md5_of,
    serve_directory,
    write_idx,
)
from torch_isda.data import (
    ChecksumError,
    IDXFormatError,
    balanced_split,
    build_augment,
    create_dataset,
    list_datasets,
    read_idx,
)
from torch_isda.data import mnist as mnist_mod
from torch_isda.data.idx import parse_idx
from torch_isda.models import create_model, list_models


@pytest.fixture(autouse=True)
def _no_system_copy(tmp_path, monkeypatch):
    """System copies come from a temporary folder (empty unless a test fills it)."""
    monkeypatch.setattr(mnist_mod, "SYSTEM_ROOTS", (str(tmp_path / "system"),))


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ----------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_all_element_types(tmp_path, dtype, compress):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype).newbyteorder("=") and out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, array)


def test_idx_header_is_big_endian():
    # 2 rows of 258 (= 0x00000102: read little-endian it would be 0x02010000)
    data = bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 258) + bytes(range(256)) * 2 + b"\0" * 4
    out = parse_idx(data)
    assert out.shape == (2, 258) and out[0, 257] == 1 and out[1, 0] == 2 and out[1, 253] == 255
    # multi-byte elements are big-endian too
    assert parse_idx(b"\0\0\x0b\x01" + struct.pack(">Ih", 1, -2)).tolist() == [-2]


@pytest.mark.parametrize("data, match", [
    (b"\0\0", "truncated IDX file"),
    (b"\x01\0\x08\x01" + struct.pack(">I", 1) + b"\0", "first two bytes must be 0x00 0x00"),
    (b"\0\0\x07\x01" + struct.pack(">I", 1) + b"\0", "unknown IDX element type 0x07"),
    (b"\0\0\x08\x00", "0 dimensions"),
    (b"\0\0\x08\x03" + struct.pack(">I", 1), "truncated IDX header: 3 dimensions need 16"),
    (b"\0\0\x08\x02" + struct.pack(">II", 2, 3) + b"\0" * 5, "truncated IDX data.*needs 6"),
    (b"\0\0\x0c\x01" + struct.pack(">I", 2) + b"\0" * 7, "truncated IDX data.*needs 8"),
    (b"\0\0\x08\x01" + struct.pack(">I", 2) + b"\0" * 3, "1 unexpected bytes"),
])
def test_idx_malformed_files_name_the_problem(tmp_path, data, match):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(IDXFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_idx_truncated_and_corrupt_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)), mtime=0)
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(IDXFormatError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # inside the CRC32 / size trailer
    (tmp_path / "crc.gz").write_bytes(bytes(flipped))
    with pytest.raises(IDXFormatError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "crc.gz")
    with pytest.raises(FileNotFoundError, match="'missing.gz' not found"):
        read_idx(tmp_path / "missing.gz")


# ----------------------------------------------------------------------------- datasets


def test_mnist_family_registered():
    assert {"mnist", "fashion_mnist", "kmnist"} <= set(list_datasets())
    assert set(mnist_mod.MD5) == {"mnist", "fashion_mnist", "kmnist"}
    for files in mnist_mod.MD5.values():
        assert sorted(files) == sorted(MNIST_FILE_NAMES.values())
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in files.values())


@pytest.mark.parametrize("name, augment", [("fashion_mnist", "crop_flip(padding=2)"),
                                           ("mnist", "crop(padding=2)"),
                                           ("kmnist", "crop(padding=2)")])
def test_load_from_data_dir(tmp_path, name, augment):
    tiny = make_mnist_files(tmp_path / "data" / name, n_train=30, n_test=10)
    ds = create_dataset(name, root=tmp_path / "data")
    assert ds.name == name and ds.image_size == (1, 28, 28) and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train_images.numpy(), tiny.train.images)
    np.testing.assert_array_equal(ds.train_labels.numpy(), tiny.train.labels)
    np.testing.assert_array_equal(ds.test_images.numpy(), tiny.test.images)
    np.testing.assert_array_equal(ds.test_labels.numpy(), tiny.test.labels)
    assert ds.mean[0] == pytest.approx(tiny.train.images.mean() / 255.0)
    assert ds.std[0] == pytest.approx(tiny.train.images.std() / 255.0)
    assert ds.default_augment == augment and len(ds.classes) == 10
    aug = build_augment(ds.default_augment, ds.mean, ds.std)
    assert aug.padding == 2 and (aug.base == "crop_flip") == (name == "fashion_mnist")


def test_lookup_order_data_dir_then_alias_then_system(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default root, "data", is relative
    system = tmp_path / "system" / "fashion-mnist"  # Debian's directory name
    in_system = make_mnist_files(system, seed=1)
    ds = create_dataset("fashion_mnist")
    np.testing.assert_array_equal(ds.train_images.numpy(), in_system.train.images)
    assert ds.source.startswith(f"'{system}' (train-images-idx3-ubyte.gz, ")
    in_alias = make_mnist_files(tmp_path / "data" / "fashion-mnist", seed=2)
    ds = create_dataset("fashion_mnist", root="data")
    np.testing.assert_array_equal(ds.train_images.numpy(), in_alias.train.images)
    in_data = make_mnist_files(tmp_path / "data" / "fashion_mnist", seed=3)
    ds = create_dataset("fashion_mnist")
    np.testing.assert_array_equal(ds.train_images.numpy(), in_data.train.images)
    # an incomplete copy in --data-dir is skipped in favour of a complete one
    (tmp_path / "data" / "fashion_mnist" / MNIST_FILE_NAMES["test_labels"]).unlink()
    ds = create_dataset("fashion_mnist")
    np.testing.assert_array_equal(ds.train_images.numpy(), in_alias.train.images)


def test_missing_files_error_lists_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("kmnist")
    message = str(info.value)
    assert "--download" in message and "train-images-idx3-ubyte.gz" in message
    assert str(Path("data") / "kmnist") in message
    assert str(tmp_path / "system" / "KMNIST") in message


@pytest.mark.parametrize("make_root", [False, True], ids=["missing", "empty"])
def test_explicit_data_dir_never_falls_back_to_the_system_copy(tmp_path, make_root):
    make_mnist_files(tmp_path / "system" / "fashion-mnist", seed=1)
    root = tmp_path / "nonexistent"
    if make_root:
        root.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        create_dataset("fashion_mnist", root=root)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz (or train-images-idx3-ubyte)" in message
    assert f"'{root / 'fashion_mnist'}'" in message and f"'{root}'" in message
    assert "system" not in message
    assert ("does not exist" in message) != make_root
    assert "\n" not in message


def test_the_folder_holding_the_files_is_accepted(tmp_path):
    tiny = make_mnist_files(tmp_path / "files", seed=4)
    ds = create_dataset("fashion_mnist", root=tmp_path / "files")
    np.testing.assert_array_equal(ds.test_images.numpy(), tiny.test.images)
    assert ds.source == (f"'{tmp_path / 'files'}' (train-images-idx3-ubyte.gz, "
                         "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
                         "t10k-labels-idx1-ubyte.gz)")


def test_uncompressed_idx_files_are_read(tmp_path):
    folder = tmp_path / "data" / "mnist"
    tiny = make_mnist_files(folder, seed=5)
    for name in MNIST_FILE_NAMES.values():  # gunzip them: train-images-idx3-ubyte, ...
        packed = folder / name
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    ds = create_dataset("mnist", root=tmp_path / "data")
    np.testing.assert_array_equal(ds.train_images.numpy(), tiny.train.images)
    np.testing.assert_array_equal(ds.test_labels.numpy(), tiny.test.labels)
    assert "(train-images-idx3-ubyte, train-labels-idx1-ubyte, " in ds.source


def test_wrong_data_dir_on_the_command_line_is_one_line_and_leaves_nothing(tmp_path, capsys,
                                                                           monkeypatch):
    from torch_isda.cli import main

    monkeypatch.chdir(tmp_path)
    make_mnist_files(tmp_path / "system" / "fashion-mnist", seed=1)
    code = main(["train", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "nonexistent"),
                 "--model", "resnet20", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "does not exist" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "run").exists()


def test_inconsistent_files_are_rejected(tmp_path):
    folder = tmp_path / "data" / "mnist"
    make_mnist_files(folder, n_train=12, n_test=4)
    write_idx(folder / MNIST_FILE_NAMES["train_labels"], np.zeros(11, np.uint8))
    with pytest.raises(IDXFormatError, match="12 images but .* 11 labels"):
        create_dataset("mnist", root=tmp_path / "data")
    write_idx(folder / MNIST_FILE_NAMES["train_labels"], np.full(12, 10, np.uint8))
    with pytest.raises(IDXFormatError, match=r"labels must lie in 0..9, found 10"):
        create_dataset("mnist", root=tmp_path / "data")
    write_idx(folder / MNIST_FILE_NAMES["train_images"], np.zeros((12, 32, 32), np.uint8))
    with pytest.raises(IDXFormatError, match="N x 28 x 28 uint8"):
        create_dataset("mnist", root=tmp_path / "data")


@pytest.fixture
def served_kmnist(tmp_path, monkeypatch):
    tiny = make_mnist_files(tmp_path / "server", n_train=20, n_test=10)
    for name in MNIST_FILE_NAMES.values():
        monkeypatch.setitem(mnist_mod.MD5["kmnist"], name, md5_of(tmp_path / "server" / name))
    with serve_directory(tmp_path / "server") as (url, requested):
        yield tiny, url, requested


def test_download_from_local_server(tmp_path, served_kmnist, monkeypatch):
    tiny, url, requested = served_kmnist
    monkeypatch.setenv("TORCH_ISDA_DATA_URL", url)
    root = tmp_path / "data"
    ds = create_dataset("kmnist", root=root, download=True, progress=False)
    np.testing.assert_array_equal(ds.test_images.numpy(), tiny.test.images)
    assert sorted(requested) == sorted("/" + n for n in MNIST_FILE_NAMES.values())
    assert _listing(root) == ["kmnist"] + sorted(f"kmnist/{n}" for n in MNIST_FILE_NAMES.values())
    create_dataset("kmnist", root=root, download=True, progress=False)  # all present
    assert len(requested) == 4


def test_download_fetches_only_missing_files(tmp_path, served_kmnist):
    tiny, url, requested = served_kmnist
    folder = tmp_path / "data" / "kmnist"
    folder.mkdir(parents=True)
    name = MNIST_FILE_NAMES["train_images"]
    (folder / name).write_bytes((tmp_path / "server" / name).read_bytes())
    ds = create_dataset("kmnist", root=tmp_path / "data", download=True, base_url=url,
                        progress=False)
    np.testing.assert_array_equal(ds.train_labels.numpy(), tiny.train.labels)
    assert "/" + name not in requested and len(requested) == 3


def test_download_checksum_mismatch_leaves_nothing(tmp_path, served_kmnist, monkeypatch):
    _, url, _ = served_kmnist
    name = MNIST_FILE_NAMES["test_labels"]
    monkeypatch.setitem(mnist_mod.MD5["kmnist"], name, "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError, match=name):
        create_dataset("kmnist", root=root, download=True, base_url=url, progress=False)
    assert name not in os.listdir(root / "kmnist")
    assert not [n for n in os.listdir(root / "kmnist") if n.startswith(".")]


def test_official_urls_are_known():
    from torch_isda.data.download import resolve_url

    for name in ("mnist", "fashion_mnist", "kmnist"):
        url = resolve_url(name, "train-images-idx3-ubyte.gz")
        assert url.startswith("http") and url.endswith("/train-images-idx3-ubyte.gz")


# ----------------------------------------------------------------------------- subsets


def test_balanced_split_counts_and_reproducibility():
    labels = torch.arange(1000) % 10
    train, val = balanced_split(labels, 10, train_size=103, seed=5)
    assert val is None and train.numel() == 103 and len(set(train.tolist())) == 103
    counts = torch.bincount(labels[train], minlength=10)
    assert counts.min() == 10 and counts.max() == 11 and int((counts == 11).sum()) == 3
    assert torch.equal(train, balanced_split(labels, 10, train_size=103, seed=5)[0])
    assert not torch.equal(train, balanced_split(labels, 10, train_size=103, seed=6)[0])
    assert torch.equal(train, train.sort().values)


def test_balanced_split_is_nested_and_val_is_carved_from_the_subset():
    labels = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(0))
    small, _ = balanced_split(labels, 4, train_size=40, seed=1)
    big, _ = balanced_split(labels, 4, train_size=80, seed=1)
    assert set(small.tolist()) <= set(big.tolist())
    train, val = balanced_split(labels, 4, train_size=80, val_size=20, seed=1)
    assert set(train.tolist()) | set(val.tolist()) == set(big.tolist())
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.bincount(labels[val], minlength=4).tolist() == [5, 5, 5, 5]
    assert torch.bincount(labels[train], minlength=4).tolist() == [15, 15, 15, 15]
    all_train, all_val = balanced_split(labels, 4, val_size=8, seed=1)
    assert all_train.numel() == 392 and all_val.numel() == 8


@pytest.mark.parametrize("kwargs, match", [
    ({"train_size": 5}, "cannot be balanced over 10 classes"),
    ({"train_size": 101}, "exceeds the 100 training images"),
    ({"train_size": 0}, "train_size must be a positive integer"),
    ({"train_size": True}, "train_size must be a positive integer"),
    ({"train_size": 10.5}, "train_size must be a positive integer"),
    ({"train_size": 20, "val_size": 20}, "leaves class .* no training image"),
    ({"val_size": -1}, "val_size must be a positive integer"),
    ({"train_size": 20, "seed": "a"}, "subset_seed must be an integer"),
])
def test_balanced_split_errors(kwargs, match):
    labels = torch.arange(100) % 10
    with pytest.raises(ValueError, match=match):
        balanced_split(labels, 10, **kwargs)


def test_balanced_split_short_class():
    labels = torch.tensor([0] * 20 + [1] * 3)
    with pytest.raises(ValueError, match="class 1 has 3 training images, fewer than the 5"):
        balanced_split(labels, 2, train_size=10)


def test_create_dataset_train_size_and_val_size(tmp_path):
    tiny = make_mnist_files(tmp_path / "data" / "mnist", n_train=60, n_test=10)
    full = create_dataset("mnist", root=tmp_path / "data")
    ds = create_dataset("mnist", root=tmp_path / "data", train_size=20, subset_seed=3)
    assert ds.train_size == 20 and torch.bincount(ds.train_labels).tolist() == [2] * 10
    assert ds.test_size == 10 and torch.equal(ds.test_images, full.test_images)
    kept = ds.train_images.float()
    assert ds.mean[0] == pytest.approx(float(kept.mean()) / 255.0)  # recomputed on the subset
    assert full.train_size == 60 and full.mean[0] == pytest.approx(tiny.train.images.mean() / 255)
    val = create_dataset("mnist", root=tmp_path / "data", train_size=20, val_size=10,
                         subset_seed=3)
    assert val.train_size == 10 and val.test_size == 10
    both = torch.cat([val.train_images, val.test_images]).flatten(1)
    assert sorted(map(bytes, both.numpy())) == sorted(map(bytes, ds.train_images.flatten(1).numpy()))
    with pytest.raises(ValueError, match="in-memory dataset"):
        from torch_isda.data import take_training_subset

        take_training_subset(object(), train_size=10)


# ----------------------------------------------------------------------------- models


CIFAR_MODULES = {"resnet_cifar", "wide_resnet", "densenet_cifar", "resnext_cifar",
                 "shake_shake", "cnn13"}


def _cifar_models() -> list[str]:
    """The models defined in the CIFAR model modules of the zoo."""
    from torch_isda.models import model_entrypoint

    return [name for name in list_models()
            if model_entrypoint(name).__module__.rsplit(".", 1)[-1] in CIFAR_MODULES]


def test_every_cifar_model_takes_in_chans():
    names = _cifar_models()
    assert {"resnet20", "resnet32", "resnet110", "wrn28_10", "densenet_bc_100_12",
            "resnext29_8x64d", "shake_shake_26_2x32d", "se_resnet110", "cnn13"} <= set(names)
    for name in names:
        with torch.device("meta"):
            model = create_model(name, 10, in_chans=1)
        stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert stem.in_channels == 1 and model.in_chans == 1 == model.in_channels, name
        assert model.default_input_size[0] == 1


@pytest.mark.parametrize("name", ["resnet20", "cnn13", "shake_shake_26_2x32d"])
def test_cifar_models_run_on_28x28_grey(name):
    model = create_model(name, 10, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        assert model(x).shape == (2, 10)
    assert features.shape == (2, model.num_features)


def test_in_chans_conflict_is_an_error():
    assert create_model("resnet20", 10, in_chans=1, in_channels=1).in_channels == 1
    with pytest.raises(ValueError, match="in_chans=3 and in_channels=1 disagree"):
        create_model("resnet20", 10, in_chans=3, in_channels=1)


# ----------------------------------------------------------------------------- preset + trainer


def test_mnist_preset_is_chosen_by_dataset():
    from torch_isda.train import TrainConfig
    from torch_isda.train.resolve import resolve_config

    for dataset in ("mnist", "fashion_mnist", "kmnist"):
        cfg = resolve_config(TrainConfig(dataset=dataset, model="resnet32", loss="isda"))
        assert cfg.preset == "mnist" and cfg.lr_schedule == "cosine" and cfg.nesterov
        assert (cfg.lr, cfg.batch_size, cfg.lambda0, cfg.kind) == (0.1, 128, 0.5, "full")
    forced = resolve_config(TrainConfig(dataset="fashion_mnist", model="resnet32",
                                        preset="resnet"))
    assert forced.preset == "resnet" and forced.lr_schedule == "step"
    other = resolve_config(TrainConfig(dataset="cifar10", model="resnet32"))
    assert other.preset == "resnet"


def test_train_fashion_mnist_subset_end_to_end(tmp_path):
    from torch_isda.cli import build_parser
    from torch_isda.train import TrainConfig, train
    from torch_isda.train.config import config_overrides_from_args

    make_mnist_files(tmp_path / "data" / "fashion_mnist", n_train=40, n_test=10)
    out = tmp_path / "run"
    args = build_parser().parse_args([
        "train", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "data"),
        "--model", "resnet20", "--model-kwargs", "in_chans=1", "--dataset-kwargs",
        "train_size=20,subset_seed=1", "--epochs", "1", "--batch-size", "8",
        "--out", str(out), "--device", "cpu"])
    cfg = TrainConfig(**config_overrides_from_args(args))
    logged = []
    result = train(cfg, log=logged.append, epoch_log=False)
    assert result["status"] == "trained" and result["epochs_done"] == 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["dataset_kwargs"] == {"train_size": 20, "subset_seed": 1}
    assert saved["config"]["model_kwargs"] == {"in_chans": 1}
    assert saved["config"]["preset"] == "mnist"
    resolved = saved["resolved"]
    folder = tmp_path / "data" / "fashion_mnist"
    assert resolved["data_source"].startswith(f"'{folder}' (train-images-idx3-ubyte.gz, ")
    assert f"fashion_mnist: read from {resolved['data_source']}" in logged
    assert resolved["train_size"] == 20 and resolved["test_size"] == 10
    assert resolved["image_size"] == [1, 28, 28] and resolved["augment"] == "crop_flip(padding=2)"
    # without in_chans the stem follows the dataset's channel count
    auto = train(cfg.replace(model_kwargs={}, out=str(tmp_path / "auto")), quiet=True)
    assert auto["num_parameters"] == result["num_parameters"]
    assert auto["num_parameters"] == sum(
        p.numel() for p in create_model("resnet20", 10, in_chans=1).parameters())
