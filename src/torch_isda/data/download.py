"""Crash-safe downloading, MD5 verification and atomic archive extraction.

Invariants kept by this module:

* a file only appears under its final name once it is complete and its MD5
  matched: downloads stream into a hidden temporary file in the destination
  directory which is :func:`os.replace`-d into place afterwards;
* an archive is extracted into a hidden temporary directory inside ``root``
  and its top-level folder is renamed into place only after every required
  member was found, so a partially extracted folder never looks complete;
* on any failure (bad checksum, network error, Ctrl-C) the temporary files
  are removed.

Mirrors: the base URL of every dataset comes from, in order of precedence,
the ``base_url`` argument, the ``TORCH_ISDA_DATA_URL`` environment variable
and the module-level :data:`BASE_URLS` mapping.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Any
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..utils.file_mode import move_into_place

__all__ = [
    "BASE_URLS",
    "ENV_BASE_URL",
    "ChecksumError",
    "download_file",
    "ensure_file",
    "extract_tar",
    "file_md5",
    "missing_files",
    "resolve_url",
]

#: Official base URL of every downloadable dataset (override for mirrors/tests).
BASE_URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",
    # yann.lecun.com no longer serves anonymous downloads; PyTorch's mirror of the official
    # files (same MD5) is the one torchvision tries first.
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "kmnist": "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
}

#: Environment variable overriding the base URL of every dataset.
ENV_BASE_URL = "TORCH_ISDA_DATA_URL"

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A downloaded file does not have the expected MD5 digest."""


def resolve_url(dataset: str, filename: str, base_url: str | None = None) -> str:
    """URL of ``filename`` for ``dataset``: ``base_url`` > ``$TORCH_ISDA_DATA_URL``
    > :data:`BASE_URLS`."""
    base = base_url or os.environ.get(ENV_BASE_URL) or BASE_URLS.get(dataset)
    if not base:
        raise ValueError(f"no download URL known for dataset {dataset!r}; pass base_url=")
    return base.rstrip("/") + "/" + filename


def file_md5(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """Hex MD5 digest of the file at ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar(total: int | None, desc: str, enabled: bool):
    """A tqdm bar if tqdm is installed and ``enabled``, else a no-op stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
        except ImportError:  # pragma: no cover - tqdm is an optional dependency
            pass

    class _NoBar:
        def update(self, n: int) -> None:
            pass

        def close(self) -> None:
            pass

    return _NoBar()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``md5`` if given.

    The body is streamed into a temporary file next to ``dest`` (with a tqdm
    progress bar when ``progress``), hashed on the fly, and renamed to
    ``dest`` only if the digest matches.  ``dest``'s directory is created.

    Raises:
        ChecksumError: the digest differs; the message names the file, the
            expected and the actual MD5, and nothing is left behind.
        RuntimeError: the download failed (HTTP/network error, truncated body).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            received, total = _stream(url, dest, out, digest, progress, timeout)
            if total is not None and received != total:
                raise RuntimeError(
                    f"Download of {url} is truncated: got {received} of {total} bytes"
                )
        actual = digest.hexdigest()
        if md5 is not None and actual.lower() != md5.lower():
            raise ChecksumError(
                f"MD5 mismatch for {dest.name} downloaded from {url}: expected {md5}, "
                f"got {actual}. The corrupted download was removed; try again or use a "
                f"different mirror."
            )
        move_into_place(tmp, dest)  # with the mode open() gives (mkstemp's is 0600)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _stream(url: str, dest: Path, out: Any, digest: Any, progress: bool, timeout: float
            ) -> tuple[int, int | None]:
    """Copy the body of ``url`` into ``out``, updating ``digest``; ``(bytes received, the
    announced length or None)``. Network errors become a ``RuntimeError`` naming ``dest``."""
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "torch-isda"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _progress_bar(total, dest.name, progress)
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(
            f"Failed to download {url} to {dest}: {err}. Set {ENV_BASE_URL} or pass "
            f"base_url= to use a mirror, or place the file in {dest.parent} manually."
        ) from err
    return received, total


def ensure_file(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    md5: str | None,
    download: bool,
    base_url: str | None = None,
    progress: bool = True,
    hint: str = "",
) -> Path:
    """Return ``path``, downloading it first if it is missing and ``download``.

    With ``download=True`` an existing file whose MD5 does not match is
    downloaded again; with ``download=False`` an existing file is trusted.

    Raises:
        FileNotFoundError: ``path`` is missing and ``download`` is false; the
            message names the file and directory and suggests ``--download``.
    """
    path = Path(path)
    if path.is_file() and (not download or md5 is None or file_md5(path) == md5.lower()):
        return path
    if not download:
        raise FileNotFoundError(
            f"{dataset}: expected file {path.name!r} in directory '{path.parent}'"
            f"{hint}, but it does not exist. Pass download=True (--download on the "
            f"command line) to fetch it from {resolve_url(dataset, path.name, base_url)}."
        )
    return download_file(resolve_url(dataset, path.name, base_url), path, md5, progress=progress)


def missing_files(folder: str | os.PathLike[str], required: Iterable[str]) -> list[str]:
    """The entries of ``required`` (paths relative to ``folder``) that are not files."""
    folder = Path(folder)
    return [name for name in required if not (folder / name).is_file()]


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    """``extractall`` refusing absolute paths, ``..`` and links leaving ``dest``."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()  # pragma: no cover - only on Pythons without tar filters
    for member in tar.getmembers():  # pragma: no cover
        target = (root / member.name).resolve()
        if root not in target.parents and target != root or member.issym() or member.islnk():
            raise ValueError(f"refusing to extract unsafe archive member {member.name!r}")
    tar.extractall(dest)  # pragma: no cover


def extract_tar(
    archive: str | os.PathLike[str],
    root: str | os.PathLike[str],
    folder: str,
    required: Sequence[str] = (),
) -> Path:
    """Extract ``archive`` and atomically move its top-level ``folder`` into ``root``.

    The archive is unpacked into a hidden temporary directory inside ``root``;
    ``folder`` is renamed to ``root/folder`` only if it contains every file of
    ``required`` (relative to ``folder``).  If another process finished the
    same extraction first, its complete copy is kept.

    Raises:
        ValueError: the archive is unreadable or lacks required members.
        RuntimeError: ``root/folder`` exists but is incomplete.
    """
    archive, root = Path(archive), Path(root)
    target = root / folder
    if target.exists():
        lacking = missing_files(target, required)
        if not lacking:
            return target
        raise RuntimeError(
            f"'{target}' exists but is incomplete (missing {', '.join(lacking)}); "
            f"delete it so it can be re-extracted from {archive}."
        )
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extracting", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _safe_extractall(tar, tmp_dir)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"{archive}: cannot extract archive: {err}") from err
        lacking = missing_files(tmp_dir / folder, required)
        if lacking:
            raise ValueError(
                f"{archive}: archive does not contain the expected members "
                f"{', '.join(f'{folder}/{name}' for name in lacking)}"
            )
        try:
            os.replace(tmp_dir / folder, target)
        except OSError:
            # target exists: fine if a concurrent extraction completed it.
            lacking = missing_files(target, required)
            if not target.is_dir() or lacking:
                raise RuntimeError(
                    f"'{target}' exists but is incomplete (missing {', '.join(lacking)}); "
                    f"delete it so it can be re-extracted from {archive}."
                ) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target
