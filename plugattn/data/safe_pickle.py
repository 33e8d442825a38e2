"""A restricted unpickler for the official CIFAR python pickles.

The official ``cifar-10-batches-py`` and ``cifar-100-python`` files are Python 2 pickles of dicts
holding lists, byte strings, ints and one uint8 numpy array. Unpickling them with :mod:`pickle`
would execute any callable a tampered file names; :class:`SafeUnpickler` instead resolves exactly
these globals and refuses every other one:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``, only with
  ``numpy.ndarray`` as the array type;
* ``numpy.ndarray``;
* ``numpy.dtype``, refusing dtypes that hold Python objects;
* ``_codecs.encode`` restricted to latin-1 (how Python 3 writes ``bytes`` at protocol 2).
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["SafeUnpickler", "safe_load"]

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global that is not on the allow-list."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise ForbiddenGlobal(f"numpy _reconstruct of {subtype!r} is not allowed, only numpy.ndarray")
    return _np_reconstruct(np.ndarray, shape, dtype)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise ForbiddenGlobal(f"numpy dtype from {type(spec).__name__} is not allowed")
    dt = np.dtype(spec, align, copy)
    if dt.hasobject:
        raise ForbiddenGlobal("numpy arrays of Python objects are not allowed")
    return dt


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise ForbiddenGlobal("_codecs.encode is only allowed for latin-1 text")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals the official CIFAR files need.

    ``find_class`` returns wrappers from a fixed table and raises :class:`ForbiddenGlobal` for
    any other ``module.name``, so a tampered file cannot run code (e.g. ``os.system``).
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"refusing to load global {module}.{name}") from None


def safe_load(path: str | Path) -> Any:
    """Load a CIFAR pickle with :class:`SafeUnpickler`.

    Byte strings written by Python 2 come back as ``bytes`` (``encoding='bytes'``), as with the
    usual ``pickle.load(f, encoding='bytes')`` recipe.

    Args:
        path: The pickle file.

    Returns:
        The unpickled object.

    Raises:
        DataError: The file is missing, corrupt, truncated, or names a forbidden global.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ForbiddenGlobal as exc:
        raise DataError(
            f"{path} is not an official CIFAR pickle ({exc}); it was NOT loaded - replace it with the official file"
        ) from None
    except Exception as exc:  # any decoding failure means a corrupt file
        raise DataError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from None
