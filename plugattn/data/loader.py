"""``build_loader``: deterministic, shardable training and evaluation loaders.

Two paths share one interface (iterate ``(images, labels)``, ``len``, ``set_epoch``, ``info``,
``num_samples``, ``dataset_size``):

* :class:`InMemoryLoader` for ``fashion-mnist``, ``digits``, ``cifar10`` and ``cifar100``: the
  decoded uint8 tensors stay in memory and each batch is gathered, augmented and normalised with
  batched tensor ops in the calling process (``num_workers`` is ignored).
* :class:`StreamingLoader` for ``imagefolder``: a :class:`torch.utils.data.DataLoader` with workers
  decodes and transforms images one by one, with timm's own training transform when timm is
  installed (``aug.pipeline``, see :func:`use_timm_pipeline`), else with this package's.

Determinism: the epoch's order comes from ``torch.randperm`` with a generator seeded by
``seed + epoch`` (the :class:`~torch.utils.data.distributed.DistributedSampler` convention), and
every augmentation draw from generators seeded by a hash of ``(seed, epoch, batch or sample)``.
Nothing reads the global RNG, so resuming at epoch ``k`` (or at batch ``j`` of it, ``set_epoch(k, j)``) reproduces
an uninterrupted run bit for bit.

Sharding: with ``world_size`` W, per-rank batch b and N samples, the epoch's permutation is padded by
repeating its start to a multiple of W (as DistributedSampler does; the test split is not shuffled,
only padded). The in-memory path then cuts it into global batches of W*b: global batch i is
``perm[i*W*b:(i+1)*W*b]`` and rank r takes its slice ``r*b:(r+1)*b`` (the last, shorter global batch
is split evenly, so every rank gets the same number of batches and samples). The union of all ranks'
batch i is therefore exactly batch i of a single-process run with batch W*b, augmentation included
(augmentation parameters are drawn for the whole global batch and sliced). The only difference is
the padding, which the single-process run does not need. The streaming path uses DistributedSampler
itself (rank r gets ``perm[r::W]``), so there the union of batch i is the same set of samples in a
different order; its augmentations depend on ``(seed, epoch, sample index)`` only (timm's transform
included: the global generators it draws from are seeded from that triple for each sample and
restored afterwards).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import math
import random
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .augment import AugConfig, BatchAugmenter, Normalizer, sample_resized_crop, slice_params
from .errors import DataError
from .info import (
    IMAGEFOLDER_DEFAULT_SIZE,
    DatasetInfo,
    canonical_name,
    get_dataset_info,
    imagefolder_info,
    scan_imagefolder,
)
from .sources import load_split

__all__ = [
    "STOP_SIGNALS",
    "InMemoryLoader",
    "Loader",
    "StreamingLoader",
    "build_loader",
    "derive_seed",
    "timm_train_transform",
    "use_timm_pipeline",
    "worker_batches",
]

_SPLITS = {"train": "train", "test": "test", "val": "test"}


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed derived from ``keys`` by hashing, so nearby inputs give unrelated seeds.

    Args:
        *keys: Integers or strings, e.g. ``(seed, epoch, "aug", batch_index)``.

    Returns:
        A non-negative integer below ``2**63``.
    """
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


PREP_THREADS: int | None = 1
"""Intra-op threads used while the in-memory path prepares a batch (None: leave torch's setting).

Batch preparation is many small memory-bound ops. On the 2-core development machine a Fashion-MNIST
epoch with crop+flip took 0.21 s with one thread and 0.13 s with two when the machine was idle, but
0.4-0.7 s with one and 1-3 s with two while other processes were busy, so one thread is the
default. The setting is restored before each batch is yielded: the caller's own computation keeps
its thread count.
"""


@contextlib.contextmanager
def _prep_threads() -> Iterator[None]:
    """Run torch ops on :data:`PREP_THREADS` intra-op threads, restoring the previous setting afterwards."""
    previous = torch.get_num_threads()
    if PREP_THREADS is None or previous == PREP_THREADS:
        yield
        return
    torch.set_num_threads(PREP_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _epoch_order(n: int, shuffle: bool, seed: int, epoch: int, world_size: int, drop_last: bool) -> torch.Tensor:
    """The epoch's global sample order, padded by repetition to a multiple of ``world_size``."""
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if not drop_last:
        total = math.ceil(n / world_size) * world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
    return order


class InMemoryLoader:
    """Batches of an in-memory uint8 dataset, augmented with tensor ops.

    Build it with :func:`build_loader`.

    Args:
        images: uint8 ``(N, C, H, W)``.
        labels: int64 ``(N,)``.
        info: Metadata reported as :attr:`info`.
        batch_size: Per-rank batch size.
        train: Shuffle and augment.
        aug: Augmentation settings (used when ``train``).
        seed: Base seed.
        rank: This process' rank.
        world_size: Number of processes.
        drop_last: Drop the last incomplete batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        *,
        batch_size: int,
        train: bool,
        aug: AugConfig,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
    ) -> None:
        self.images = images
        self.labels = labels
        self.info = info
        self.batch_size = batch_size
        self.train = train
        self.aug = aug
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.dataset_size = int(images.shape[0])
        self.normalize = Normalizer(info.mean, info.std)
        self.augmenter = (
            BatchAugmenter(aug, info.mean, info.std, tuple(images.shape[-2:])) if train and aug.enabled else None
        )
        n, global_batch = self.dataset_size, batch_size * world_size
        if drop_last:
            self._num_batches = n // global_batch
            self.num_samples = self._num_batches * batch_size
            if self._num_batches == 0:
                raise DataError(
                    f"batch_size {batch_size} x world_size {world_size} exceeds the {n} samples of "
                    f"{info.name}/{'train' if train else 'test'} with drop_last=True, so an epoch has no batch; "
                    "lower batch_size or pass drop_last=False"
                )
        else:
            padded = math.ceil(n / world_size) * world_size
            self._num_batches = math.ceil(padded / global_batch)
            self.num_samples = padded // world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order and augmentations the next iteration produces.

        Args:
            epoch: 0-based epoch.
            start_batch: Skip the epoch's first batches in the next iteration only (resuming inside an epoch);
                the remaining batches are exactly those of an uninterrupted iteration.
        """
        self.epoch = _check_int("epoch", epoch, 0)
        self.start_batch = _check_int("start_batch", start_batch, 0)

    def __len__(self) -> int:
        return self._num_batches

    def batch_indices(self, epoch: int | None = None) -> list[torch.Tensor]:
        """Dataset indices of this rank's batches in an epoch (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        order = _epoch_order(self.dataset_size, self.train, self.seed, epoch, self.world_size, self.drop_last)
        out = []
        gb, w, r = self.batch_size * self.world_size, self.world_size, self.rank
        for i in range(self._num_batches):
            start = i * gb
            per_rank = (min(start + gb, len(order)) - start) // w
            out.append(order[start + r * per_rank : start + (r + 1) * per_rank])
        return out

    def _batch(self, epoch: int, i: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images.index_select(0, idx)
        y = self.labels.index_select(0, idx)
        if self.augmenter is None:
            return self.normalize(x), y
        per_rank, r = len(idx), self.rank
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "aug", i))
        params = self.augmenter.sample(per_rank * self.world_size, g)
        return self.augmenter.apply(x, slice_params(params, r * per_rank, (r + 1) * per_rank)), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start, self.start_batch = self.epoch, self.start_batch, 0
        for i, idx in enumerate(self.batch_indices(epoch)):
            if i < start:
                continue
            with _prep_threads():
                batch = self._batch(epoch, i, idx)
            yield batch


# --------------------------------------------------------------------------------------------- streaming


class _SeededSampler(Sampler):
    """Wraps a DistributedSampler to yield ``(index, per-sample seed)`` pairs."""

    def __init__(self, base: DistributedSampler, seed: int) -> None:
        self.base = base
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # samples skipped by the next iteration only (resuming inside an epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip, self.skip = self.skip, 0  # read now: the DataLoader creates the iterator before the first batch
        return self._pairs(self.epoch, skip)

    def _pairs(self, epoch: int, skip: int) -> Iterator[tuple[int, int]]:
        for idx in itertools.islice(iter(self.base), skip, None):
            yield idx, derive_seed(self.seed, epoch, "sample", int(idx))

    def __len__(self) -> int:
        return len(self.base)


class _StreamTransform:
    """PIL image + seed → normalised float tensor ``(C, size, size)``; all randomness from the seed.

    Training images go through timm's transform (:func:`timm_train_transform`) when
    :func:`use_timm_pipeline` says so, else through this module's crop and :class:`BatchAugmenter`.
    """

    def __init__(self, aug: AugConfig, train: bool, info: DatasetInfo, size: int) -> None:
        from torchvision.transforms.v2 import InterpolationMode

        self.aug = aug
        self.train = train
        self.size = size
        self.interp = {
            "nearest": InterpolationMode.NEAREST,
            "bilinear": InterpolationMode.BILINEAR,
            "bicubic": InterpolationMode.BICUBIC,
        }[aug.interpolation]
        self.normalize = Normalizer(info.mean, info.std)
        self.timm = timm_train_transform(aug, info, size) if train and use_timm_pipeline(aug) else None
        self.augmenter = (
            BatchAugmenter(aug, info.mean, info.std, (size, size), resized_crop=False)
            if train and aug.enabled and self.timm is None
            else None
        )

    def __call__(self, img: Any, seed: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if self.timm is not None:
            with _seeded_global_rngs(seed):
                return self.timm(img)
        g = torch.Generator().manual_seed(seed)
        if self.train and self.aug.random_resized_crop:
            box = sample_resized_crop(1, img.height, img.width, self.aug.scale, self.aug.ratio, g)
            top, left, h, w = box[0].tolist()
            img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], self.interp, antialias=True)
        else:
            img = TF.resize(img, int(self.size / 0.875), self.interp, antialias=True)
            img = TF.center_crop(img, [self.size, self.size])
        x = TF.pil_to_tensor(img).unsqueeze(0)
        if self.augmenter is None:
            return self.normalize(x)[0]
        return self.augmenter.apply(x, self.augmenter.sample(1, g))[0]


def use_timm_pipeline(aug: AugConfig) -> bool:
    """Whether the ``imagefolder`` training transform is timm's, following ``aug.pipeline``.

    ``auto`` picks timm when it is installed and the settings map onto its training transform (a random
    resized crop, no padded random crop); ``timm`` insists on it.

    Raises:
        DataError: ``pipeline: timm`` without timm, or with settings timm's training transform cannot express.
    """
    import importlib.util

    mappable = aug.random_resized_crop and not aug.random_crop_padding
    if aug.pipeline == "plugattn":
        return False
    if aug.pipeline == "auto":
        return mappable and importlib.util.find_spec("timm") is not None
    if not mappable:
        raise DataError(
            "aug.pipeline=timm needs random_resized_crop=true and random_crop_padding=0 (timm's training "
            "transform always starts with a random resized crop); set aug.pipeline=plugattn or auto"
        )
    if importlib.util.find_spec("timm") is None:
        raise DataError("aug.pipeline=timm needs timm, which is not installed: pip install timm (or use plugattn)")
    return True


def timm_train_transform(aug: AugConfig, info: DatasetInfo, size: int) -> Callable[[Any], torch.Tensor]:
    """timm's own ImageNet training transform for these settings (PIL image -> normalised float tensor).

    ``timm.data.transforms_factory.transforms_imagenet_train`` with the same crop, flip, RandAugment string,
    interpolation, normalisation and random erasing (``mode='pixel'``). Colour jitter is passed with
    ``force_color_jitter=True``, so that ``aug.color_jitter`` means the same on both pipelines (timm's
    ``create_transform`` would drop it under RandAugment; the recipes that reproduce a timm run set it to 0).
    Its randomness comes from Python's ``random``, numpy and torch: :class:`_StreamTransform` seeds them per
    sample.
    """
    from timm.data.transforms_factory import transforms_imagenet_train

    return transforms_imagenet_train(
        size,
        scale=aug.scale,
        ratio=aug.ratio,
        hflip=0.5 if aug.hflip else 0.0,
        vflip=0.0,
        color_jitter=float(aug.color_jitter) if aug.color_jitter else None,
        force_color_jitter=True,
        auto_augment=aug.randaugment,
        interpolation=aug.interpolation,
        mean=info.mean,
        std=info.std,
        re_prob=float(aug.random_erasing),
        re_mode="pixel",
        re_count=1,
    )


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's ``random``, numpy's and torch's global generators, restoring their states afterwards.

    Third-party transforms (timm's) draw from the global generators; seeding them per sample makes each sample's
    augmentation a function of ``(seed, epoch, index)`` alone, in a worker or in the main process, and restoring
    the states keeps the caller's own random stream (dropout, for instance) untouched.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _FolderDataset(Dataset):
    """``(path, label)`` samples read with PIL; items are fetched by ``(index, seed)`` (a bare index
    uses the seed of epoch 0 with base seed 0)."""

    def __init__(self, samples: list[tuple[str, int]], transform: _StreamTransform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        from .images import open_rgb

        index, seed = (item, derive_seed(0, 0, "sample", int(item))) if isinstance(item, int) else item
        path, label = self.samples[index]
        return self.transform(open_rgb(path), seed), label  # DataError naming the file when it is unusable


def _worker_message(exc: BaseException) -> str:
    """The original one-line message of an exception re-raised from a DataLoader worker."""
    text = str(exc)
    if "DataLoader worker" not in text:
        return text
    last = next((line for line in reversed(text.splitlines()) if line.strip()), text)
    head, sep, tail = last.partition(": ")
    return tail if sep and head.rsplit(".", 1)[-1].endswith("Error") else last


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1")
"""Signals that stop a training run cleanly (schedulers send SIGTERM, or SIGUSR1 ahead of a time limit; SIGHUP: the
terminal closed); the main process handles them and DataLoader workers ignore them. Those the platform lacks are
skipped."""
_STOP_SIGNALS = {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}


@contextlib.contextmanager
def _stop_signals_blocked(active: bool) -> Iterator[None]:
    """The stop signals blocked in the main thread while DataLoader workers are started.

    A worker signalled after the fork but before :func:`_worker_init` ignores the signal would die of it, and the
    main process would fail with 'DataLoader worker killed by signal' instead of stopping cleanly. Blocked, the
    signal waits: in the main process for its handler (right after the workers are started), in a new worker until
    it has set the signal to ignored. Workers inherit the blocked mask, whether forked or spawned.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    if not (active and main_thread and hasattr(signal, "pthread_sigmask")):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's per-worker seed (for third-party code), and leave
    the stop signals to the main process, which stops at its next safe point (Ctrl-C, schedulers and a closed
    terminal signal the whole process group; a worker dying of it would turn that stop into a DataLoader error)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # forked with them blocked (_stop_signals_blocked): a pending one is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


_LIVE_LOADERS: weakref.WeakSet[StreamingLoader] = weakref.WeakSet()


def _register_for_exit(loader: StreamingLoader) -> None:
    if not _LIVE_LOADERS:
        atexit.register(_close_live_loaders)  # after multiprocessing's exit handler, so it runs before it
    _LIVE_LOADERS.add(loader)


def _close_live_loaders() -> None:
    """At interpreter exit, stop the workers of the loaders still alive. The workers ignore SIGTERM (see
    :func:`_worker_init`), and multiprocessing's own exit handler stops daemonic children with SIGTERM and then joins
    them: without this, a script that exits with a loader alive would wait forever."""
    for loader in list(_LIVE_LOADERS):
        loader.close()


class StreamingLoader:
    """ImageFolder batches through a DataLoader; build it with :func:`build_loader`.

    Args:
        dataset: The folder dataset.
        info: Metadata reported as :attr:`info`.
        batch_size: Per-rank batch size.
        train: Shuffle and augment.
        seed: Base seed.
        rank: This process' rank.
        world_size: Number of processes.
        num_workers: DataLoader worker processes (persistent when > 0).
        drop_last: Drop the last incomplete batch.
    """

    def __init__(
        self,
        dataset: _FolderDataset,
        info: DatasetInfo,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        drop_last: bool,
    ) -> None:
        self.dataset = dataset
        self.info = info
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.dataset_size = len(dataset)
        base = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=False
        )
        self.sampler = _SeededSampler(base, seed)
        per_rank = base.num_samples
        self.num_samples = (per_rank // batch_size) * batch_size if drop_last else per_rank
        if drop_last and self.num_samples == 0:
            raise DataError(
                f"batch_size {batch_size} exceeds the {per_rank} samples per rank of imagefolder with "
                "drop_last=True, so an epoch has no batch; lower batch_size or pass drop_last=False"
            )
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
            worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(seed),
        )
        if num_workers > 0:
            _register_for_exit(self)

    def close(self) -> None:
        """Stop the persistent workers now (they would otherwise live as long as this loader)."""
        # deleting torch's persistent iterator is what shuts its workers down
        self.loader._iterator = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order and augmentations the next iteration produces.

        Args:
            epoch: 0-based epoch.
            start_batch: Skip the epoch's first batches in the next iteration only (resuming inside an epoch).
        """
        self.epoch = _check_int("epoch", epoch, 0)
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = _check_int("start_batch", start_batch, 0) * self.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return worker_batches(self.loader)


def worker_batches(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """The batches of ``loader``: its workers start with the stop signals blocked (the main process handles them),
    and a worker's DataError arrives as the one line it was, not as torch's re-raised traceback."""
    with _stop_signals_blocked(loader.num_workers > 0):
        it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except DataError as exc:
            # A worker's error arrives as 'Caught DataError in DataLoader worker ...' plus the traceback.
            raise DataError(_worker_message(exc)) from None
        yield batch


Loader = InMemoryLoader | StreamingLoader


# --------------------------------------------------------------------------------------------- build


_resize_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _resize_images(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize a whole uint8 dataset once (cached per source tensor, size and mode)."""
    key = (id(images), size, mode)
    hit = _resize_cache.get(key)
    if hit is not None and hit[0] is images:
        return hit[1]
    out = []
    for chunk in images.split(4096):
        xf = chunk.to(torch.float32)
        antialias = mode in ("bilinear", "bicubic") and size < max(chunk.shape[-2:])
        kwargs = {"align_corners": False} if mode != "nearest" else {}
        y = F.interpolate(xf, size=(size, size), mode=mode, antialias=antialias, **kwargs)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    resized = torch.cat(out)
    if len(_resize_cache) > 8:
        _resize_cache.clear()
    _resize_cache[key] = (images, resized)
    return resized


def build_loader(
    name: str,
    split: str,
    *,
    batch_size: int,
    train: bool,
    data_dir: str | Path | None = None,
    aug: AugConfig | dict[str, Any] | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool | None = None,
    download: bool = True,
) -> Loader:
    """Build the loader of one split of a dataset.

    Args:
        name: Dataset name, one of :data:`~plugattn.data.DATASETS`.
        split: ``'train'`` or ``'test'`` (for ``imagefolder`` ``'test'`` reads ``val/``; ``'val'``
            is accepted as a synonym).
        batch_size: Per-rank batch size.
        train: Shuffle each epoch and apply ``aug``; False keeps the file order and only resizes
            and normalises.
        data_dir: Folder searched first for the dataset files (the ImageFolder root for ``imagefolder``).
        aug: Augmentation settings, or a dict for :meth:`AugConfig.from_dict`; None means none.
        seed: Base seed of the order and of every augmentation draw.
        rank: This process' rank in ``[0, world_size)``.
        world_size: Number of data-parallel processes.
        num_workers: Worker processes of the streaming path; the in-memory path ignores it.
        drop_last: Drop the last incomplete batch; defaults to ``train`` (BatchNorm cannot train on
            a batch of one).
        download: Allow downloading a missing built-in dataset.

    Returns:
        An :class:`InMemoryLoader` or :class:`StreamingLoader` yielding ``(images, labels)`` with
        images float32 ``(B, C, H, W)`` normalised by the dataset mean/std and labels int64 ``(B,)``.

    Raises:
        DataError: Unknown dataset or split, invalid argument, or missing/corrupt files.
    """
    key = canonical_name(name)
    if split not in _SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    split = _SPLITS[split]
    batch_size = _check_int("batch_size", batch_size, 1)
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise DataError(f"rank {rank} must be smaller than world_size {world_size}")
    num_workers = _check_int("num_workers", num_workers, 0)
    seed = _check_int("seed", seed, 0)
    aug = AugConfig.from_dict(aug)
    train = bool(train)
    drop_last = train if drop_last is None else bool(drop_last)

    if key == "imagefolder":
        return _build_imagefolder(
            data_dir,
            split,
            aug,
            batch_size=batch_size,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            drop_last=drop_last,
        )

    images, labels, classes = load_split(key, split, data_dir, download)
    info = get_dataset_info(key)
    if aug.image_size is not None and tuple(images.shape[-2:]) != (aug.image_size, aug.image_size):
        images = _resize_images(images, aug.image_size, aug.interpolation)
    sizes = {"train_size": len(labels)} if split == "train" else {"test_size": len(labels)}
    info = replace(info, image_size=tuple(images.shape[-2:]), classes=classes or info.classes, **sizes)
    return InMemoryLoader(
        images,
        labels,
        info,
        batch_size=batch_size,
        train=train,
        aug=aug,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )


def _build_imagefolder(data_dir: str | Path | None, split: str, aug: AugConfig, **kwargs: Any) -> StreamingLoader:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    train_dir, val_dir, classes = scan_imagefolder(data_dir)
    folder = train_dir if split == "train" else val_dir
    class_to_idx = {c: i for i, c in enumerate(classes)}
    try:
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"cannot list images in {folder}: {exc}") from None
    if not samples:
        raise DataError(
            f"imagefolder {folder} holds no images ({', '.join(IMG_EXTENSIONS)}) in its class folders; "
            "add images as DIR/<split>/<class>/<file>"
        )
    size = aug.image_size or IMAGEFOLDER_DEFAULT_SIZE
    base = imagefolder_info(classes)  # the folder was scanned once, above
    sizes = {"train_size": len(samples)} if split == "train" else {"test_size": len(samples)}
    info = replace(base, image_size=(size, size), **sizes)
    dataset = _FolderDataset(samples, _StreamTransform(aug, kwargs["train"], info, size))
    return StreamingLoader(dataset, info, **kwargs)
