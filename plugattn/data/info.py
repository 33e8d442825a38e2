"""Static metadata of the supported datasets, name resolution and the ImageFolder layout check.

:func:`get_dataset_info` answers without reading image data (for ``imagefolder`` it scans the
class folders once, with :func:`scan_imagefolder`). This module imports no other data module but
the errors: the decoders (:mod:`.sources`) and the loaders build on it. Normalisation constants
of the built-in datasets were computed once from their training sets (per channel, pixel values
scaled to [0, 1]) and are hard-coded here.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetInfo",
    "canonical_name",
    "get_dataset_info",
    "imagefolder_info",
    "scan_imagefolder",
]

DATASETS: tuple[str, ...] = ("fashion-mnist", "digits", "cifar10", "cifar100", "imagefolder")

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "imagefolder",
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an engine need to know about a dataset.

    Attributes:
        name: Canonical dataset name, one of :data:`DATASETS`.
        num_classes: Number of classes (labels are ``0 .. num_classes - 1``).
        in_chans: Number of image channels.
        image_size: ``(H, W)`` of the images the loader yields.
        mean: Per-channel normalisation mean (pixel values in [0, 1]).
        std: Per-channel normalisation standard deviation.
        train_size: Number of training samples, or None when not known yet (imagefolder).
        test_size: Number of test (``val/``) samples, or None when not known yet.
        classes: Class names in label order, or None when unknown.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None
    test_size: int | None
    classes: tuple[str, ...] | None = None


_STATIC: dict[str, DatasetInfo] = {
    # mean/std of the 60000 training images: 0.28604, 0.35302.
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, 1, (28, 28), (0.2860,), (0.3530,), 60000, 10000, FASHION_MNIST_CLASSES
    ),
    # mean/std of the 1437-image training split (see sources.load_digits): 0.30543, 0.37596.
    "digits": DatasetInfo("digits", 10, 1, (8, 8), (0.3054,), (0.3760,), 1437, 360, tuple("0123456789")),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50000, 10000
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 50000, 10000
    ),
}

IMAGEFOLDER_DEFAULT_SIZE = 224


def canonical_name(name: str) -> str:
    """Resolve a user-given dataset name to its canonical spelling.

    Matching ignores case and treats ``_`` like ``-``; a few aliases (``fmnist``, ``cifar-10``, ...)
    are accepted.

    Args:
        name: Dataset name as typed by the user.

    Returns:
        One of :data:`DATASETS`.

    Raises:
        DataError: The name is unknown; the message suggests the closest known names.
    """
    if not isinstance(name, str):
        known = ", ".join(DATASETS)
        raise DataError(f"dataset name must be a string, got {type(name).__name__}; choose one of {known}")
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return key
    close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=3, cutoff=0.5)
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise DataError(f"unknown dataset {name!r}: {hint}known datasets are {', '.join(DATASETS)}")


def scan_imagefolder(data_dir: str | Path | None) -> tuple[Path, Path, tuple[str, ...]]:
    """Check an ImageFolder root and list its classes.

    Args:
        data_dir: Root holding ``train/<class>/*`` and ``val/<class>/*``.

    Returns:
        ``(train folder, val folder, class names sorted as torchvision sorts them)``.

    Raises:
        DataError: No root given, or ``train/``/``val/`` missing, empty of class folders, or ``val/``
            having classes that ``train/`` lacks.
    """
    layout = "DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg"
    if data_dir is None:
        raise DataError(f"the imagefolder dataset needs --data-dir DIR laid out as {layout}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder --data-dir {root} does not exist; pass a folder laid out as {layout}")
    classes = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"imagefolder {root} has no {split}/ folder; lay it out as {layout}")
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise DataError(f"imagefolder {folder} has no class folders; lay it out as {layout}")
        classes[split] = names
    extra = sorted(set(classes["val"]) - set(classes["train"]))
    if extra:
        raise DataError(
            f"imagefolder {root}/val has classes missing from train/: {', '.join(extra[:5])}; "
            "val/ must use the train/ class folder names"
        )
    return root / "train", root / "val", tuple(classes["train"])


def imagefolder_info(classes: tuple[str, ...]) -> DatasetInfo:
    """The :class:`DatasetInfo` of an ImageFolder with these classes (from :func:`scan_imagefolder`).

    The image size is the default 224x224, ImageNet mean/std are used, and ``train_size``/``test_size`` are None.
    """
    size = IMAGEFOLDER_DEFAULT_SIZE
    return DatasetInfo("imagefolder", len(classes), 3, (size, size), IMAGENET_MEAN, IMAGENET_STD, None, None, classes)


def get_dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Metadata of a dataset without loading its images.

    Args:
        name: Dataset name (see :func:`canonical_name`).
        data_dir: Root folder of an ``imagefolder`` dataset (needed there to count the classes);
            ignored by the built-in datasets, whose metadata is fixed.

    Returns:
        The dataset's :class:`DatasetInfo`. For ``imagefolder`` the image size is the default
        224x224, ImageNet mean/std are used, and ``train_size``/``test_size`` are None.

    Raises:
        DataError: Unknown name, or an ``imagefolder`` root without ``train/`` and ``val/`` class folders.
    """
    key = canonical_name(name)
    if key in _STATIC:
        return _STATIC[key]
    return imagefolder_info(scan_imagefolder(data_dir)[2])
