"""Reader for the IDX format of (Fashion-)MNIST, with validation, written with numpy alone.

An IDX file is a 4-byte magic number ``00 00 TT DD`` (``TT`` the element type, 0x08 for
unsigned bytes; ``DD`` the number of dimensions), ``DD`` big-endian uint32 sizes, then the data.
Images are ``0x00000803`` (N, rows, cols) and labels ``0x00000801`` (N,). Files may be gzipped.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["read_idx"]

_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read {path}: corrupt or truncated file ({exc}); delete it and download it again"
        ) from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file.

    Args:
        path: The file, gzipped when its name ends in ``.gz``.
        ndim: Number of dimensions the file must have (3 for images, 1 for labels).

    Returns:
        A writable uint8 array of the shape given in the header.

    Raises:
        DataError: The file cannot be read, has a wrong magic number or dimension count, or its
            length does not match its header (truncated or trailing bytes).
    """
    path = Path(path)
    raw = _read_bytes(path)
    fix = "delete it and download it again"
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file (only {len(raw)} bytes); {fix}")
    magic = int.from_bytes(raw[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise DataError(f"{path} has IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {what}: {len(raw)} bytes, header {dims} needs {expected}; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()
