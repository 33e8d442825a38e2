"""Decoding image files for the ``imagefolder`` dataset: colour conversion, decompression bombs and a preflight.

:func:`to_rgb` turns every Pillow mode into 8-bit RGB without losing the value range (Pillow's own
``convert('RGB')`` clips 16-bit greyscale to 255 and drops alpha as it is). :func:`open_rgb` opens one file and
refuses decompression bombs by name. :func:`preflight_imagefolder` decodes every file of an ImageFolder root once,
in parallel threads, before training starts, and names the files that cannot be read; folders that passed are
remembered (by the names, sizes and modification times of their files) and are not decoded again until they change.

Conversions (``to_rgb``):

* 16-bit greyscale (``I;16*``, and 32-bit ``I`` whose values exceed 255, read as 16-bit): scaled to 0..255 by
  ``round(v / 257)``, so 65535 becomes 255 instead of everything above 255 being clipped; 32-bit values below 0 or
  above 65535 are refused (no scale is implied);
  32-bit float (``F``): values in [0, 1] are scaled by 255, values in [0, 255] kept; negative, larger or non-finite
  values are refused (a clear :class:`DataError`, not a silently clipped image);
* palette (``P``) and palette with transparency: expanded through the palette;
* alpha (``RGBA``, ``LA``, ``PA``, a palette or greyscale image with a transparent colour): composited over
  white, so transparent pixels do not take the arbitrary colour stored under them;
* CMYK, YCbCr, LAB, HSV, 1-bit and 8-bit greyscale: Pillow's conversion to RGB (greyscale replicated).

:func:`to_mode` gives the same values as 8-bit greyscale (``L``) for 1-channel models: greyscale images stay grey,
others go through :func:`to_rgb` and Pillow's luma conversion.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import summarise_cause
from .errors import DataError

__all__ = ["PreflightResult", "open_rgb", "preflight_imagefolder", "read_image", "to_mode", "to_rgb"]

_BACKGROUND = (255, 255, 255)
_PREFLIGHT_VERSION = 1


def _grey8(img: Any) -> Any:
    """The 8-bit greyscale (``L``) image of a 16-bit, 32-bit integer or float one (see the module docstring)."""
    from PIL import Image

    mode = img.mode
    arr = np.asarray(img, dtype=np.float64)
    low, high = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode == "F":
        if not np.isfinite(arr).all():
            raise DataError("float image holds NaN or infinite pixel values",
                            "save it as an 8-bit or 16-bit image with values that mean brightness")
        if low < 0 or high > 255:
            raise DataError(f"float image holds pixel values in [{low:g}, {high:g}], neither 0..1 nor 0..255",
                            "rescale it to 0..1 (or save it as an 8-bit or 16-bit image)")
        if high <= 1.0:
            arr = arr * 255.0
    else:
        if low < 0 or high > 65535:
            raise DataError(f"32-bit integer image holds pixel values in [{low:g}, {high:g}], beyond 16 bits",
                            "rescale it to 0..65535 (or save it as an 8-bit or 16-bit image)")
        # mode I also holds 8-bit data converted by other tools; only a range beyond 8 bits is rescaled
        if mode != "I" or high > 255:
            arr = arr / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _high_depth(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def to_rgb(img: Any) -> Any:
    """An 8-bit RGB copy of a Pillow image of any mode (see the module docstring for each mode).

    Args:
        img: A loaded ``PIL.Image.Image``.

    Returns:
        A ``PIL.Image.Image`` in mode ``RGB``.

    Raises:
        DataError: A 32-bit or float image whose values have no 8-bit meaning (negative, beyond 16 bits, NaN).
    """
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if _high_depth(mode):
        return _grey8(img).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_mode(img: Any, mode: str) -> Any:
    """An 8-bit ``RGB`` or ``L`` (greyscale) copy of a Pillow image of any mode, with :func:`to_rgb`'s conversions.

    Args:
        img: A loaded ``PIL.Image.Image``.
        mode: ``'RGB'`` or ``'L'``.

    Returns:
        A ``PIL.Image.Image`` in ``mode``.

    Raises:
        DataError: As :func:`to_rgb`.
    """
    if mode == "RGB":
        return to_rgb(img)
    if mode != "L":
        raise ValueError(f"to_mode converts to 'RGB' or 'L', not {mode!r}")
    if img.mode == "L" and "transparency" not in img.info:
        return img.copy()
    if _high_depth(img.mode):
        return _grey8(img)
    return to_rgb(img).convert("L")


def _bomb_text(exc: BaseException) -> str:
    from PIL import Image

    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    size = f"{numbers[0]:,} pixels, " if numbers else ""
    return f"a decompression bomb ({size}Pillow's limit is {Image.MAX_IMAGE_PIXELS:,})"


def _bomb(path: str | Path, exc: BaseException) -> DataError:
    return DataError(f"image {path} is {_bomb_text(exc)}; remove the file, or raise PIL.Image.MAX_IMAGE_PIXELS "
                     "if it is a genuine image")


def _decode(path: str | Path, check_only: bool = False) -> Any:
    """Open, decode and convert one file (the caller sets the DecompressionBombWarning filter)."""
    from PIL import Image

    with Image.open(path) as im:
        if check_only and im.format == "JPEG":
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # all data decoded, at 1/8 scale
        im.load()
        return to_rgb(im)


def _reason(exc: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb_text(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(exc, DataError):
        return exc.problem
    text = summarise_cause(exc) if str(exc).strip() else ""
    return f"cannot be decoded ({type(exc).__name__}: {text})" if text else f"cannot be decoded ({type(exc).__name__})"


def open_rgb(path: str | Path) -> Any:
    """Open and decode one image file as 8-bit RGB.

    Args:
        path: The file.

    Returns:
        The ``PIL.Image.Image`` in mode ``RGB``.

    Raises:
        DataError: Naming the file: not an image, truncated or corrupt, or a decompression bomb (more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(path)
    except DataError as exc:  # pixel values with no 8-bit meaning
        raise DataError(f"image {path}: {exc.problem}", exc.fix) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(path, exc) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
        raise DataError(f"image {path}: {_reason(exc)}; remove or replace the file") from None


def read_image(path: str | Path, mode: str = "RGB") -> Any:
    """Open and decode one image file given by the user (``predict``, ``cam``) as 8-bit ``mode``, as the loaders do.

    Args:
        path: The file.
        mode: ``'RGB'`` or ``'L'`` (see :func:`to_mode`).

    Returns:
        The ``PIL.Image.Image`` in ``mode``.

    Raises:
        DataError: One wording for every command, ``'cannot read image PATH (<why>); <fix>'``: ``(no such file);
            check the path``, ``(a folder)``, not an image, corrupt, or pixel values with no 8-bit meaning.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_mode(im, mode)
    except FileNotFoundError:
        raise DataError(f"cannot read image {path} (no such file)", "check the path") from None
    except IsADirectoryError:
        raise DataError(f"cannot read image {path} (a folder)", "pass image files") from None
    except DataError as exc:
        raise DataError(f"cannot read image {path} ({exc.problem})", exc.fix) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
        raise DataError(f"cannot read image {path} ({_reason(exc)})",
                        "pass image files PIL can open (PNG, JPEG, ...)") from None


# --------------------------------------------------------------------------------------------- preflight


@dataclass(frozen=True)
class PreflightResult:
    """Outcome of :func:`preflight_imagefolder`.

    Attributes:
        files: Image files in the folder.
        decoded: Files decoded by this call (the others were in folders unchanged since a passed check).
        seconds: Wall time of the check.
        threads: Decoding threads used.
    """

    files: int
    decoded: int
    seconds: float
    threads: int


def _cache_file(root: Path) -> Path:
    from .sources import cache_root

    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
    return cache_root() / "preflight" / f"{key}.json"


def _folder_files(root: Path) -> dict[str, list[tuple[str, int, int]]]:
    """``{'train/<class>': [(name, size, mtime_ns), ...]}`` of the image files, sorted by name."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from .info import scan_imagefolder

    train_dir, val_dir, _ = scan_imagefolder(root)
    folders: dict[str, list[tuple[str, int, int]]] = {}
    for split_dir in (train_dir, val_dir):
        for cls in sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")):
            entries = []
            for dirpath, _dirs, names in os.walk(split_dir / cls, followlinks=True):
                for name in names:
                    if name.lower().endswith(IMG_EXTENSIONS):
                        full = os.path.join(dirpath, name)
                        try:
                            st = os.stat(full)
                        except OSError:
                            st = None
                        rel = os.path.relpath(full, split_dir / cls)
                        entries.append((rel, st.st_size if st else -1, st.st_mtime_ns if st else -1))
            folders[f"{split_dir.name}/{cls}"] = sorted(entries)
    return folders


def _digest(entries: list[tuple[str, int, int]]) -> str:
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _PREFLIGHT_VERSION:
        return {}
    folders = data.get("folders")
    return folders if isinstance(folders, dict) else {}


def _write_cache(path: Path, root: Path, folders: dict[str, str]) -> None:
    text = json.dumps({"version": _PREFLIGHT_VERSION, "root": str(root.resolve()), "folders": folders})
    with contextlib.suppress(OSError):  # a read-only cache only costs a second check next time
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".preflight.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)


def preflight_imagefolder(
    data_dir: str | Path | None,
    *,
    threads: int | None = None,
    cache: bool = True,
    echo: Callable[[str], None] | None = None,
    max_listed: int = 5,
) -> PreflightResult:
    """Decode every image of an ImageFolder root (``train/`` and ``val/``) and stop on unreadable files.

    Each file is opened, fully decoded (JPEGs at 1/8 scale, which still reads all of their data), checked against
    Pillow's decompression-bomb limit and converted with :func:`to_rgb`, in ``threads`` threads. A class folder
    that passed is recorded in ``$XDG_CACHE_HOME/plugattn/preflight/`` with a digest of its files' names, sizes and
    modification times and is skipped until one of them changes.

    Args:
        data_dir: The ImageFolder root.
        threads: Decoding threads (default: the CPU count, at most 16).
        cache: Read and write the record of folders that passed.
        echo: Line printer for a one-line report (None: silent).
        max_listed: Bad files named in the error (the count covers all of them).

    Returns:
        The :class:`PreflightResult`.

    Raises:
        DataError: Naming the bad files and why each failed, with the fix.
    """
    from PIL import Image

    t0 = time.perf_counter()
    root = Path(data_dir).expanduser() if data_dir is not None else None
    folders = _folder_files(root)  # also validates the layout (scan_imagefolder)
    assert root is not None
    cache_path = _cache_file(root)
    passed = _read_cache(cache_path) if cache else {}
    digests = {name: _digest(entries) for name, entries in folders.items()}
    todo = [name for name in folders if passed.get(name) != digests[name]]
    paths = [root / name / rel for name in todo for rel, _size, _mtime in folders[name]]
    n_threads = max(1, min(threads or os.cpu_count() or 1, 16))
    bad: list[tuple[str, str]] = []

    def check(path: Path) -> tuple[str, str] | None:
        try:
            _decode(path, check_only=True)
        except Exception as exc:  # every failure is reported with the file's name
            return str(path), _reason(exc)
        return None

    with warnings.catch_warnings():  # set once here: the filter list is shared by the threads
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if n_threads == 1 or len(paths) < 2:
            results = map(check, paths)
            bad = [r for r in results if r is not None]
        else:
            with concurrent.futures.ThreadPoolExecutor(n_threads, thread_name_prefix="plugattn-preflight") as pool:
                bad = [r for r in pool.map(check, paths, chunksize=64) if r is not None]
    seconds = time.perf_counter() - t0
    if bad:
        bad.sort()
        listed = ", ".join(f"{p} ({why})" for p, why in bad[:max_listed])
        more = f" and {len(bad) - max_listed} more" if len(bad) > max_listed else ""
        raise DataError(
            f"imagefolder {root} has {len(bad)} unreadable image{'s' if len(bad) != 1 else ''}: {listed}{more}; "
            "remove or replace them (or skip this check with --no-preflight)"
        )
    if cache:
        _write_cache(cache_path, root, digests)
    total = sum(len(v) for v in folders.values())
    if echo is not None:
        if paths:
            echo(f"  preflight of {root}: {len(paths):,} images decoded in {seconds:.1f} s ({n_threads} threads)"
                 + (f", {total - len(paths):,} unchanged since the last check" if total > len(paths) else ""))
        else:
            echo(f"  preflight of {root}: {total:,} images unchanged since the last check")
    return PreflightResult(files=total, decoded=len(paths), seconds=seconds, threads=n_threads)
