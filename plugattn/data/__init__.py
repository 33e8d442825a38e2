"""Datasets, loaders and batch augmentation for plugattn.

``build_loader`` is the entry point; it serves the in-memory datasets (``fashion-mnist``,
``digits``, ``cifar10``, ``cifar100``) with batched tensor augmentation and ``imagefolder``
through a streaming DataLoader. Every user-facing problem raises :class:`DataError` with a
one-line message.
"""

from .augment import AugConfig, RandAugmentSpec, parse_randaugment
from .errors import DataError
from .info import DATASETS, DatasetInfo, get_dataset_info
from .loader import InMemoryLoader, Loader, StreamingLoader, build_loader, derive_seed
from .mixup import MixupConfig, MixupCutmix, smooth_one_hot

__all__ = [
    "DATASETS",
    "AugConfig",
    "DataError",
    "DatasetInfo",
    "InMemoryLoader",
    "Loader",
    "MixupConfig",
    "MixupCutmix",
    "RandAugmentSpec",
    "StreamingLoader",
    "build_loader",
    "derive_seed",
    "get_dataset_info",
    "parse_randaugment",
    "smooth_one_hot",
]
