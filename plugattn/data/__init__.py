"""Datasets, loaders and batch augmentation for plugattn.

``build_loader`` is the entry point; it serves the in-memory datasets (``fashion-mnist``,
``digits``, ``cifar10``, ``cifar100``) with batched tensor augmentation and ``imagefolder``
through a streaming DataLoader. ``build_dense_dataset`` serves detection and segmentation data (``scenes``,
``coco``, ``voc``; see :mod:`plugattn.data.dense`). Every user-facing problem raises :class:`DataError` with a
one-line message.
"""

from .augment import AugConfig, RandAugmentSpec, parse_randaugment
from .dense import (
    build_dense_dataset,
    coco_ground_truth,
    dense_transforms,
    detection_collate,
    segmentation_collate,
)
from .errors import DataError
from .info import DATASETS, DatasetInfo, get_dataset_info
from .loader import InMemoryLoader, Loader, StreamingLoader, build_loader, derive_seed
from .mixup import MixupConfig, MixupCutmix, smooth_one_hot
from .scenes import ScenesConfig, ensure_scenes

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
    "ScenesConfig",
    "StreamingLoader",
    "build_dense_dataset",
    "build_loader",
    "coco_ground_truth",
    "dense_transforms",
    "derive_seed",
    "detection_collate",
    "ensure_scenes",
    "get_dataset_info",
    "parse_randaugment",
    "segmentation_collate",
    "smooth_one_hot",
]
