"""Locating, validating and decoding the datasets' files.

Small datasets are decoded into uint8 tensors ``(N, C, H, W)`` plus int64 labels and kept in an
in-process cache keyed by the files' paths, sizes and modification times, so building several
loaders over the same split decodes it once.

Lookup order for ``fashion-mnist`` and ``cifar10``/``cifar100`` (first match wins):

1. ``data_dir`` (the ``--data-dir`` option),
2. ``$PLUGATTN_DATA``,
3. the system folder (``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST, as installed by
   Debian's ``dataset-fashion-mnist`` package),
4. the download cache ``$XDG_CACHE_HOME/plugattn`` (default ``~/.cache/plugattn``),
5. a download through torchvision into ``data_dir`` (or the download cache) when ``download=True``.

Inside each root the usual sub-folders are tried too: ``fashion-mnist/``, ``FashionMNIST/raw/``
(torchvision's layout), ``cifar-10-batches-py/``, ``cifar-100-python/``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .idx import read_idx
from .info import DATASETS, FASHION_MNIST_CLASSES, canonical_name
from .safe_pickle import safe_load

__all__ = [
    "SYSTEM_DIRS",
    "cache_root",
    "clear_cache",
    "load_cifar",
    "load_digits",
    "load_fashion_mnist",
    "load_split",
]

SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "cifar10": (Path("/usr/share/datasets/cifar10"),),
    "cifar100": (Path("/usr/share/datasets/cifar100"),),
}
"""System-wide folders searched after ``data_dir`` and ``$PLUGATTN_DATA`` (tests may patch this)."""

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": ("batches.meta", b"label_names"),
        "label_key": b"labels",
        "num_classes": 10,
        "pretty": "CIFAR-10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": ("meta", b"fine_label_names"),
        "label_key": b"fine_labels",
        "num_classes": 100,
        "pretty": "CIFAR-100",
    },
}

Split = tuple[torch.Tensor, torch.Tensor, tuple[str, ...] | None]

_cache: dict[tuple, Split] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every decoded dataset held in memory."""
    with _cache_lock:
        _cache.clear()


def cache_root() -> Path:
    """Download cache: ``$XDG_CACHE_HOME/plugattn``, default ``~/.cache/plugattn``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "plugattn"


def _file_key(paths: Sequence[Path]) -> tuple:
    key = []
    for p in paths:
        st = p.stat()
        key.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(key)


def _cached(key: tuple, load: Callable[[], Split]) -> Split:
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    value = load()
    with _cache_lock:
        return _cache.setdefault(key, value)


def _roots(name: str, data_dir: str | Path | None) -> list[tuple[str, Path | None]]:
    """(description, folder or None when unset) pairs in lookup order, without the download step."""
    roots: list[tuple[str, Path | None]] = []
    if data_dir is not None:
        roots.append((f"--data-dir {data_dir}", Path(data_dir).expanduser()))
    env = os.environ.get("PLUGATTN_DATA")
    if env:
        roots.append((f"$PLUGATTN_DATA={env}", Path(env).expanduser()))
    else:
        roots.append(("$PLUGATTN_DATA (unset)", None))
    roots.extend((str(p), p) for p in SYSTEM_DIRS.get(name, ()))
    roots.append((str(cache_root()), cache_root()))
    return roots


def _looked_in(roots: list[tuple[str, Path | None]]) -> str:
    return ", ".join(desc for desc, _ in roots)


# ----------------------------------------------------------------------------------------- Fashion-MNIST


def _fashion_files_in(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for stem in _FASHION_FILES[split]:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found[0], found[1]


def _find_fashion(roots: list[tuple[str, Path | None]], split: str) -> tuple[Path, Path] | None:
    for _, root in roots:
        if root is None:
            continue
        for folder in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw", root / "fashion-mnist" / "raw"):
            files = _fashion_files_in(folder, split)
            if files is not None:
                return files
    return None


def _download_fashion_mnist(root: Path) -> None:
    """Download Fashion-MNIST with torchvision into ``root/FashionMNIST/raw``."""
    from torchvision.datasets import FashionMNIST

    root.mkdir(parents=True, exist_ok=True)
    FashionMNIST(root=str(root), train=True, download=True)


def _decode_fashion(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, Fashion-MNIST is 28x28")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels; "
            "the files do not belong together"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{labels_path} holds label {int(labels.max())}, Fashion-MNIST labels are 0..9")
    return (
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        FASHION_MNIST_CLASSES,
    )


def load_fashion_mnist(split: str, data_dir: str | Path | None = None, download: bool = True) -> Split:
    """Decode one split of Fashion-MNIST.

    Args:
        split: ``'train'`` (60000 images) or ``'test'`` (10000 images).
        data_dir: Folder searched first (see the module docstring for the lookup order).
        download: Try a torchvision download when no copy is found.

    Returns:
        ``(images uint8 (N, 1, 28, 28), labels int64 (N,), class names)``.

    Raises:
        DataError: No copy found and the download failed or was disabled, or a file is corrupt.
    """
    roots = _roots("fashion-mnist", data_dir)
    files = _find_fashion(roots, split)
    if files is None:
        reason = "download=False"
        if download:
            target = Path(data_dir).expanduser() if data_dir is not None else cache_root()
            try:
                _download_fashion_mnist(target)
            except Exception as exc:  # any failure (offline, disk full, ...) ends in the same advice
                reason = f"download failed (offline? {type(exc).__name__})"
            files = _find_fashion([("download", target)], split)
    if files is None:
        raise DataError(
            f"Fashion-MNIST not found in {_looked_in(roots)} and {reason}: install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass --data-dir DIR holding the four IDX .gz files"
        )
    return _cached(("fashion-mnist", _file_key(files)), lambda: _decode_fashion(*files))


# ----------------------------------------------------------------------------------------- digits


def _decode_digits() -> tuple[Split, Split]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(
            "the digits dataset needs scikit-learn: pip install scikit-learn (or pip install 'plugattn[data]')"
        ) from None
    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    target = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(target)), test_size=360, stratify=target, random_state=0, shuffle=True
    )
    classes = tuple(str(c) for c in range(10))
    out = []
    for idx in (np.sort(train_idx), np.sort(test_idx)):
        out.append((torch.from_numpy(images[idx].copy()), torch.from_numpy(target[idx].copy()), classes))
    return out[0], out[1]


def load_digits(split: str) -> Split:
    """The 8x8 handwritten digits shipped with scikit-learn, split 1437 train / 360 test.

    The 1797 images (grey levels 0..16) are scaled to uint8 0..255 (``round(v * 255 / 16)``). The
    split is ``sklearn.model_selection.train_test_split(test_size=360, stratify=labels,
    random_state=0)``, each part kept in the original order, so it is fixed and class balanced.

    Args:
        split: ``'train'`` or ``'test'``.

    Returns:
        ``(images uint8 (N, 1, 8, 8), labels int64 (N,), class names)``.

    Raises:
        DataError: scikit-learn is not installed.
    """
    key = ("digits", split)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    train, test = _decode_digits()
    with _cache_lock:
        _cache.setdefault(("digits", "train"), train)
        _cache.setdefault(("digits", "test"), test)
        return _cache[key]


# ----------------------------------------------------------------------------------------- CIFAR


def _cifar_folder_in(root: Path, spec: dict, split: str) -> Path | None:
    name = "cifar10" if spec["num_classes"] == 10 else "cifar100"
    for folder in (root / spec["folder"], root, root / name / spec["folder"], root / name):
        if all((folder / f).is_file() for f in spec[split]):
            return folder
    return None


def _download_cifar(name: str, root: Path) -> None:
    """Download and extract the official CIFAR archive with torchvision (md5 checked)."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


def _get(d: dict, key: bytes):
    if key in d:
        return d[key]
    return d.get(key.decode())


def _decode_cifar(name: str, folder: Path, split: str) -> Split:
    spec = _CIFAR[name]
    datas, labels = [], []
    for fname in spec[split]:
        path = folder / fname
        batch = safe_load(path)
        if not isinstance(batch, dict):
            raise DataError(f"{path} holds a {type(batch).__name__}, expected the official CIFAR dict")
        data = _get(batch, b"data")
        lab = _get(batch, spec["label_key"])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {got}")
        if lab is None:
            raise DataError(f"{path} has no {spec['label_key']!r} entry; is it a {spec['pretty']} file?")
        lab = np.asarray(lab)
        if lab.shape != (data.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{path}: {data.shape[0]} images but labels of shape {lab.shape} ({lab.dtype})")
        if lab.size and (lab.min() < 0 or lab.max() >= spec["num_classes"]):
            bad = int(lab.min()) if lab.min() < 0 else int(lab.max())
            raise DataError(f"{path} holds label {bad}, {spec['pretty']} labels are 0..{spec['num_classes'] - 1}")
        datas.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab.astype(np.int64))
    classes = None
    meta_name, meta_key = spec["meta"]
    if (folder / meta_name).is_file():
        meta = safe_load(folder / meta_name)
        names = _get(meta, meta_key) if isinstance(meta, dict) else None
        if not isinstance(names, list) or len(names) != spec["num_classes"]:
            raise DataError(f"{folder / meta_name} has no list of {spec['num_classes']} names under {meta_key!r}")
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(datas)))
    return images, torch.from_numpy(np.concatenate(labels)), classes


def load_cifar(name: str, split: str, data_dir: str | Path | None = None, download: bool = True) -> Split:
    """Decode one split of CIFAR-10 or CIFAR-100 from the official python-pickle layout.

    Files are read with :func:`~plugattn.data.safe_pickle.safe_load`, which refuses any pickled
    global other than the few numpy ones the official files use.

    Args:
        name: ``'cifar10'`` or ``'cifar100'``.
        split: ``'train'`` or ``'test'``.
        data_dir: Folder searched first (see the module docstring for the lookup order).
        download: Try a torchvision download of the official archive when no copy is found.

    Returns:
        ``(images uint8 (N, 3, 32, 32), labels int64 (N,), class names or None without meta file)``.

    Raises:
        DataError: No copy found and the download failed or was disabled, or a file is corrupt or unsafe.
    """
    spec = _CIFAR[name]
    roots = _roots(name, data_dir)
    folder = None
    for _, root in roots:
        folder = None if root is None else _cifar_folder_in(root, spec, split)
        if folder is not None:
            break
    if folder is None:
        reason = "download=False"
        if download:
            target = Path(data_dir).expanduser() if data_dir is not None else cache_root()
            try:
                _download_cifar(name, target)
            except Exception as exc:  # any failure (offline, disk full, ...) ends in the same advice
                reason = f"download failed (offline? {type(exc).__name__})"
            folder = _cifar_folder_in(target, spec, split)
    if folder is None:
        raise DataError(
            f"{spec['pretty']} not found in {_looked_in(roots)} and {reason}: pass --data-dir DIR holding "
            f"{spec['folder']}/ (the official python version, {', '.join(spec[split])})"
        )
    files = [folder / f for f in spec[split]]
    meta = folder / spec["meta"][0]
    key_files = [*files, meta] if meta.is_file() else files
    return _cached((name, _file_key(key_files)), lambda: _decode_cifar(name, folder, split))


def load_split(name: str, split: str, data_dir: str | Path | None = None, download: bool = True) -> Split:
    """Decode one split of an in-memory dataset (everything but ``imagefolder``).

    Args:
        name: Dataset name.
        split: ``'train'`` or ``'test'``.
        data_dir: Folder searched first.
        download: Allow a download when no local copy exists.

    Returns:
        ``(images uint8 (N, C, H, W), labels int64 (N,), class names or None)``.
    """
    name = canonical_name(name)
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir, download)
    if name == "digits":
        return load_digits(split)
    if name in _CIFAR:
        return load_cifar(name, split, data_dir, download)
    raise DataError(f"{name} is not an in-memory dataset; in-memory ones are {', '.join(DATASETS[:4])}")
