"""Helpers writing tiny datasets in the exact official on-disk formats.

* CIFAR-10/100: pickled dicts with ``bytes`` keys inside ``.tar.gz`` archives
  with the official member names;
* SVHN: MATLAB ``.mat`` files with ``X`` (32x32x3xN uint8) and ``y`` (Nx1,
  label 10 = digit 0) written with :func:`scipy.io.savemat`;
* image folders: ``root/{train,val}/<class>/*.jpg|png`` written with Pillow;
* MNIST / Fashion-MNIST / KMNIST: gzip-compressed IDX files with the official names,
  written byte by byte here (header packed with :mod:`struct`, big-endian);
* a throw-away HTTP server on 127.0.0.1 to test downloads.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                 b"dog", b"frog", b"horse", b"ship", b"truck"]


@dataclass
class TinySplit:
    """Expected content of one split: images ``(N, C, H, W)`` uint8, labels int64."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class TinyDataset:
    """What a fixture wrote: the file path plus the expected splits."""

    path: Path
    train: TinySplit
    test: TinySplit
    extra: dict = field(default_factory=dict)


def md5_of(path: str | os.PathLike[str]) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _pickle_bytes(obj: object) -> bytes:
    # Protocol 2, like the official (Python 2) files.
    return pickle.dumps(obj, protocol=2)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _random_cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10_archive(
    root: str | os.PathLike[str],
    per_batch: int = 3,
    seed: int = 0,
    *,
    omit: tuple[str, ...] = (),
    filename: str = "cifar-10-python.tar.gz",
) -> TinyDataset:
    """Write ``root/cifar-10-python.tar.gz`` with ``per_batch`` images per batch file.

    ``omit`` lists batch files to leave out (to test incomplete archives).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / filename
    train_rows, train_labels = [], []
    with tarfile.open(path, "w:gz") as tar:
        _add_dir(tar, "cifar-10-batches-py")
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            rows = _random_cifar_rows(rng, per_batch)
            labels = rng.integers(0, 10, size=per_batch).tolist()
            batch = {
                b"batch_label": f"{name} of tiny CIFAR-10".encode(),
                b"labels": labels,
                b"data": rows,
                b"filenames": [f"img_{name}_{i}.png".encode() for i in range(per_batch)],
            }
            if name == "test_batch":
                test = TinySplit(rows.reshape(-1, 3, 32, 32), np.asarray(labels, np.int64))
            else:
                train_rows.append(rows)
                train_labels.extend(labels)
            if name not in omit:
                _add_bytes(tar, f"cifar-10-batches-py/{name}", _pickle_bytes(batch))
        meta = {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
        _add_bytes(tar, "cifar-10-batches-py/batches.meta", _pickle_bytes(meta))
        _add_bytes(tar, "cifar-10-batches-py/readme.html", b"<html>tiny</html>")
    train = TinySplit(
        np.concatenate(train_rows).reshape(-1, 3, 32, 32), np.asarray(train_labels, np.int64)
    )
    return TinyDataset(path, train, test)


def make_cifar100_archive(
    root: str | os.PathLike[str], n_train: int = 8, n_test: int = 4, seed: int = 1
) -> TinyDataset:
    """Write ``root/cifar-100-python.tar.gz`` (``train``, ``test``, ``meta``).

    ``extra["train_coarse"]`` / ``extra["test_coarse"]`` hold the coarse labels.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cifar-100-python.tar.gz"
    splits, coarse = {}, {}
    with tarfile.open(path, "w:gz") as tar:
        _add_dir(tar, "cifar-100-python")
        for name, n in (("train", n_train), ("test", n_test)):
            rows = _random_cifar_rows(rng, n)
            fine = rng.integers(0, 100, size=n).tolist()
            crs = rng.integers(0, 20, size=n).tolist()
            batch = {
                b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
                b"batch_label": f"{name} of tiny CIFAR-100".encode(),
                b"fine_labels": fine,
                b"coarse_labels": crs,
                b"data": rows,
            }
            _add_bytes(tar, f"cifar-100-python/{name}", _pickle_bytes(batch))
            splits[name] = TinySplit(rows.reshape(-1, 3, 32, 32), np.asarray(fine, np.int64))
            coarse[f"{name}_coarse"] = np.asarray(crs, np.int64)
        meta = {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        }
        _add_bytes(tar, "cifar-100-python/meta", _pickle_bytes(meta))
    return TinyDataset(path, splits["train"], splits["test"], coarse)


def write_pickle(path: str | os.PathLike[str], obj: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pickle_bytes(obj))
    return path


def write_svhn_mat(path: str | os.PathLike[str], n: int, seed: int = 0) -> TinySplit:
    """Write an official-format SVHN ``.mat``; returns the expected (N, 3, 32, 32)
    images and labels with 10 mapped to 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0, 0] = 10  # make sure the "10 means 0" case is present
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": x, "y": y})
    labels = y[:, 0].astype(np.int64)
    labels[labels == 10] = 0
    return TinySplit(np.transpose(x, (3, 2, 0, 1)).copy(), labels)


def make_svhn(root: str | os.PathLike[str], n_train=6, n_test=4, n_extra=None) -> TinyDataset:
    """Write ``train_32x32.mat``, ``test_32x32.mat`` (and ``extra_32x32.mat``) in root."""
    root = Path(root)
    train = write_svhn_mat(root / "train_32x32.mat", n_train, seed=0)
    test = write_svhn_mat(root / "test_32x32.mat", n_test, seed=1)
    extra = {}
    if n_extra:
        extra["extra"] = write_svhn_mat(root / "extra_32x32.mat", n_extra, seed=2)
    return TinyDataset(root, train, test, extra)


def make_imagefolder(
    root: str | os.PathLike[str],
    classes=("cat", "dog", "fish"),
    n_train: int = 3,
    n_val: int = 2,
    sizes=((40, 30), (30, 50), (64, 64)),
    seed: int = 0,
) -> Path:
    """Write random JPEG/PNG images into ``root/{train,val}/<class>/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(folder / f"img{i}.{ext}")
            (folder / "notes.txt").write_text("not an image")
    return root


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass


#: IDX element type codes (LeCun's MNIST page) of the dtypes the tests write.
IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D,
             "float64": 0x0E}

MNIST_FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of ``array``: 0x00 0x00, type code, ndim, big-endian
    uint32 sizes, big-endian data."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.name]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes(order="C")


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def make_mnist_files(folder: str | os.PathLike[str], n_train: int = 30, n_test: int = 10,
                     seed: int = 0) -> TinyDataset:
    """The four official ``*-ubyte.gz`` files of an MNIST-family dataset in ``folder``,
    28x28 uint8 images and labels cycling through 0..9 (so every class is present)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) + seed) % 10
        rng.shuffle(labels)
        write_idx(folder / MNIST_FILE_NAMES[f"{split}_images"], images)
        write_idx(folder / MNIST_FILE_NAMES[f"{split}_labels"], labels.astype(np.uint8))
        splits[split] = TinySplit(images[:, None], labels.astype(np.int64))
    return TinyDataset(folder, splits["train"], splits["test"])


@contextlib.contextmanager
def serve_directory(directory: str | os.PathLike[str]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``directory`` over HTTP on 127.0.0.1 in a background thread.

    Yields ``(base_url, requested_paths)``; the list records every request path.
    """
    requested: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            requested.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
