"""Reader of the IDX file format of MNIST, Fashion-MNIST and Kuzushiji-MNIST.

An IDX file (LeCun et al., http://yann.lecun.com/exdb/mnist/) is::

    bytes 0-1   0x00 0x00 (magic)
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions D
    4 * D bytes the sizes of the dimensions, big-endian unsigned 32-bit integers
    the data    prod(sizes) elements, big-endian, C (row-major) order

The official files are gzip-compressed (``*-ubyte.gz``); :func:`read_idx` reads both
compressed and raw files (recognised by the gzip magic ``1f 8b``). Truncated, corrupt or
trailing data raise :class:`IDXFormatError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_DTYPES", "IDXFormatError", "parse_idx", "read_idx"]

#: Element type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """A file is not a well-formed IDX file (bad magic, truncated, trailing bytes...)."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the (uncompressed) bytes of an IDX file into an array in native byte order.

    Raises:
        IDXFormatError: the header is malformed, or the data is shorter or longer than
            the header's dimensions say. ``name`` appears in the message.
    """
    if len(data) < 4:
        raise IDXFormatError(f"{name}: truncated IDX file: {len(data)} bytes, the header "
                             f"alone needs 4")
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{name}: not an IDX file: the first two bytes must be 0x00 0x00, "
                             f"got {data[:2].hex(' ')}")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IDXFormatError(f"{name}: unknown IDX element type 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise IDXFormatError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{name}: truncated IDX header: {ndim} dimensions need {header} "
                             f"bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise IDXFormatError(f"{name}: truncated IDX data: shape {shape} of {dtype.name} needs "
                             f"{expected} bytes after the header, the file has {actual}")
    if actual > expected:
        raise IDXFormatError(f"{name}: corrupt IDX file: {actual - expected} unexpected bytes "
                             f"after the {expected} bytes of data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array in native byte order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IDXFormatError: the gzip stream is corrupt or truncated, or the IDX content is
            malformed (see :func:`parse_idx`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file '{path.name}' not found in directory '{path.parent}'")
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip file ({err}); delete it "
                                 f"and download it again") from err
    return parse_idx(raw, str(path))
