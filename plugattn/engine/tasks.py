"""What differs between the engine's tasks: classification, detection and segmentation.

The trainer (:mod:`plugattn.engine.trainer`) runs the same loop for every task (optimizer, schedule, AMP, EMA,
DDP, checkpoints, resume, signals, logs); a task gives it the data loaders, the model, the loss of one batch, the
evaluation and the metric that picks the best checkpoint:

* ``classification``: the trainer's own path (in-memory and ImageFolder loaders, cross-entropy, top-1/top-5);
* ``detection``: torchvision's detectors (:func:`plugattn.dense.build_dense_model`) on ``scenes``, COCO or VOC
  (:func:`plugattn.data.dense.build_dense_dataset`); the loss is the sum of the detector's own losses, the metric
  COCO AP from pycocotools (``map``, ``map_50``, ``map_75``, ...);
* ``segmentation``: torchvision's segmenters; cross-entropy with 255 ignored (plus 0.5 x the auxiliary head's, as
  torchvision's reference recipe), the metric mIoU and pixel accuracy from a confusion matrix.

:class:`DenseLoader` makes the dense data deterministic and shardable like the classification loaders: the epoch's
order comes from a ``DistributedSampler`` seeded by ``seed + epoch`` and every sample's random transforms from a
generator seeded by ``(seed, epoch, index)``, so that resuming inside an epoch (``set_epoch(epoch, batch)``)
reproduces an uninterrupted run bit for bit. The test split is sharded without padding (rank r evaluates samples
r, r + W, ...), and the metrics gather over the processes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import DistContext, all_reduce_sum
from .errors import EngineError
from .logger import Progress
from .taskinfo import CLASSIFICATION_COLUMNS, TASKS, primary_metric, task_columns

__all__ = [
    'CLASSIFICATION_COLUMNS',
    'DENSE_DATA',
    'TASKS',
    'DenseInfo',
    'DenseLoader',
    'DenseTask',
    'build_task_model',
    'check_dense_config',
    'dense_task',
    'primary_metric',
    'task_columns',
]

DENSE_DATA = ('scenes', 'coco', 'voc')
IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------- data


@dataclass
class DenseInfo:
    """What the engine reports about a dense data set.

    Attributes:
        name: ``scenes``, ``coco`` or ``voc``.
        task: ``detection`` or ``segmentation``.
        classes: The K class names (background excluded).
        num_classes: K + 1 (the background is class 0, torchvision's convention).
        in_chans: Image channels (3).
        image_size: ``(H, W)`` the model cost is measured at.
    """

    name: str
    task: str
    classes: list[str]
    num_classes: int
    in_chans: int = 3
    image_size: tuple[int, int] = (128, 128)
    extra: dict[str, Any] = field(default_factory=dict)


class _ShardSampler(Sampler):
    """Evaluation order: rank r takes samples r, r + W, ... (no padding, no shuffle), each with a fixed seed."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[tuple[int, int]]:
        from ..data import derive_seed

        return iter([(i, derive_seed(0, 0, 'sample', i)) for i in self.indices])

    def __len__(self) -> int:
        return len(self.indices)


class _SeededItems(Dataset):
    """Items fetched by ``(index, seed)``: the data set's random transforms run with torch's generator seeded by
    ``seed`` and restored afterwards (``transforms.v2`` draws from torch's global generator only, so Python's and
    numpy's are left alone: seeding all three cost twice as much per image)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


class DenseLoader:
    """Deterministic, shardable batches of a dense data set (see the module docstring).

    Args:
        dataset: A map-style data set of ``(image, target)``.
        info: Reported as :attr:`info`.
        collate: ``detection_collate`` or ``segmentation_collate``.
        batch_size: Per-process batch size.
        train: Shuffle each epoch (else the file order, sharded without padding).
        seed: Base seed of the order and the transforms.
        rank: This process' rank.
        world_size: Number of processes.
        num_workers: DataLoader worker processes.
        drop_last: Drop the last incomplete batch.
    """

    def __init__(self, dataset: Dataset, info: DenseInfo, collate: Callable, *, batch_size: int, train: bool,
                 seed: int, rank: int, world_size: int, num_workers: int, drop_last: bool) -> None:
        from torch.utils.data.distributed import DistributedSampler

        from ..data.loader import _SeededSampler, _worker_init

        self.info = info
        self.batch_size = batch_size
        self.dataset_size = len(dataset)  # type: ignore[arg-type]
        if train:
            base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                      drop_last=False)
            self.sampler: Any = _SeededSampler(base, seed)
            per_rank = base.num_samples
        else:
            self.sampler = _ShardSampler(self.dataset_size, rank, world_size)
            per_rank = len(self.sampler)
        self.num_samples = (per_rank // batch_size) * batch_size if drop_last else per_rank
        if train and drop_last and self.num_samples == 0:
            raise EngineError(f'--batch-size {batch_size} exceeds the {per_rank} training images per process of '
                              f'{info.name}, so an epoch has no batch', 'lower --batch-size')
        self.loader = DataLoader(_SeededItems(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, collate_fn=collate, drop_last=drop_last,
                                 persistent_workers=num_workers > 0, worker_init_fn=_worker_init)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The epoch whose order and transforms the next iteration gives, skipping its first ``start_batch``
        batches (resuming inside an epoch)."""
        self.sampler.set_epoch(epoch)
        if hasattr(self.sampler, 'skip'):
            self.sampler.skip = start_batch * self.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        from ..data.loader import worker_batches

        return worker_batches(self.loader)

    def close(self) -> None:
        """Stop persistent workers."""
        self.loader._iterator = None


# --------------------------------------------------------------------------------------------- config checks


def check_dense_config(cfg: Mapping[str, Any]) -> None:
    """A detection or segmentation config's model and data names fit its task (before anything is read).

    Raises:
        EngineError: A model of the other task (or a classification name), or a data set without dense labels.
    """
    from ..dense import model_task
    from ..errors import PlugattnError

    task, name, data = cfg['task'], cfg['model']['name'], cfg['data']['name']
    try:
        kind = model_task(name)
    except PlugattnError as e:
        raise EngineError(f'--task {task}: {e.problem}', e.fix or 'choose a detection or segmentation --model') \
            from None
    if kind != task:
        raise EngineError(f'{name} is a {kind} model, not a {task} model',
                          f'pass --task {kind}, or a {task} model with --model')
    if data not in DENSE_DATA:
        raise EngineError(f'--task {task} takes --data {", ".join(DENSE_DATA)}, not {data!r}',
                          'use --data scenes (generated offline) or --data coco / voc with --data-dir DIR')


# --------------------------------------------------------------------------------------------- tasks


def _plain(t: Any) -> Any:
    """A tv_tensor as a plain tensor (torchvision's models take plain tensors)."""
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


class DenseTask:
    """Data, model, loss and evaluation of detection or segmentation runs.

    Args:
        cfg: The validated config.
        ctx: The process context.
    """

    def __init__(self, cfg: Mapping[str, Any], ctx: DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.name = cfg['task']
        self.primary = primary_metric(self.name)
        self.columns = task_columns(self.name)
        self.coco_gt: Any = None

    # ----------------------------------------------------------------------------------------- data

    def _transforms(self, train: bool) -> Callable:
        from ..data.dense import dense_transforms

        d = self.cfg['dense']
        mean, std = (None, None)
        if self.name == 'segmentation':  # detectors normalise inside (GeneralizedRCNNTransform), segmenters do not
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return dense_transforms(self.name, train, min_size=d['min_size'], max_size=d['max_size'],
                                crop_size=d['crop_size'], scale_range=tuple(d['scale_range']), hflip=d['hflip'],
                                mean=mean, std=std)

    def dataset(self, split: str, train: bool) -> Dataset:
        """One split of the configured data with the task's transforms."""
        from ..data.dense import build_dense_dataset
        from ..data.scenes import ScenesConfig

        d, dense = self.cfg['data'], self.cfg['dense']
        scenes = None
        if d['name'] == 'scenes':
            size = dense['scenes_size']  # garments of 28-64 px on 128 px canvases, scaled with the canvas
            scenes = ScenesConfig(num_train=dense['scenes_train'], num_val=dense['scenes_val'], canvas_size=size,
                                  min_scale=max(1, size * 28 // 128), max_scale=max(1, size // 2))
        return build_dense_dataset(d['name'], d['data_dir'], split, self.name, self._transforms(train),
                                   with_masks=self.cfg['model']['name'].startswith('maskrcnn'), scenes=scenes)

    def info(self, dataset: Any) -> DenseInfo:
        """What the engine reports about a data set of this task."""
        d, dense = self.cfg['data'], self.cfg['dense']
        size = dense['crop_size'] or dense['min_size'] or (dense['scenes_size'] if d['name'] == 'scenes' else 512)
        return DenseInfo(name=d['name'], task=self.name, classes=list(dataset.class_names),
                         num_classes=int(dataset.num_classes), image_size=(size, size))

    def test_loader(self, seed: int = 0, batch_size: int | None = None) -> DenseLoader:
        """The validation split, sharded over the processes without padding (sets the COCO ground truth)."""
        from ..data.dense import detection_collate, segmentation_collate

        tc = self.cfg['train']
        test_set = self.dataset('val', False)
        collate = detection_collate if self.name == 'detection' else segmentation_collate
        if self.name == 'detection':
            from ..data.dense import coco_ground_truth

            self.coco_gt = coco_ground_truth(test_set)
        return DenseLoader(test_set, self.info(test_set), collate,
                           batch_size=batch_size or tc['eval_batch_size'] or tc['batch_size'], train=False,
                           drop_last=False, seed=seed, rank=self.ctx.rank, world_size=self.ctx.world_size,
                           num_workers=self.cfg['data']['num_workers'])

    def loaders(self, seed: int) -> tuple[DenseLoader, DenseLoader, DenseInfo]:
        """``(train loader, test loader, info)``."""
        from ..data.dense import detection_collate, segmentation_collate

        tc = self.cfg['train']
        train_set = self.dataset('train', True)
        info = self.info(train_set)
        test = self.test_loader(seed)
        if test.info.classes != info.classes:
            raise EngineError(f'the train and val splits of {info.name} have different classes',
                              'use the annotation files of one data set')
        collate = detection_collate if self.name == 'detection' else segmentation_collate
        train = DenseLoader(train_set, info, collate, batch_size=tc['batch_size'], train=True, drop_last=True,
                            seed=seed, rank=self.ctx.rank, world_size=self.ctx.world_size,
                            num_workers=self.cfg['data']['num_workers'])
        return train, test, info

    # ----------------------------------------------------------------------------------------- model

    def model_kwargs(self, num_classes: int) -> dict[str, Any]:
        """Everything :func:`build_dense_model` needs to rebuild the model (saved in the checkpoints)."""
        m = self.cfg['model']
        return {'task': self.name, 'num_classes': num_classes, 'backbone': m['backbone'],
                'output_stride': m['output_stride'], **m['kwargs']}

    # ----------------------------------------------------------------------------------------- steps

    def loss(self, model: nn.Module, batch: Any, autocast: Callable[[], contextlib.AbstractContextManager]
             ) -> tuple[torch.Tensor, int]:
        """The loss of one training batch and its number of images."""
        device = self.ctx.device
        inputs, targets = batch
        if self.name == 'detection':
            images = [_plain(x).to(device, non_blocking=True) for x in inputs]
            targets = [{k: _plain(v).to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                        for k, v in t.items()} for t in targets]
            with autocast():
                losses = model(images, targets)
            loss = sum(v.float() for v in losses.values())
            return loss, len(images)
        x = _plain(inputs).to(device, non_blocking=True)
        y = _plain(targets).to(device, non_blocking=True)
        with autocast():
            out = model(x)
        loss = F.cross_entropy(out['out'].float(), y, ignore_index=IGNORE_INDEX)
        if 'aux' in out:
            loss = loss + 0.5 * F.cross_entropy(out['aux'].float(), y, ignore_index=IGNORE_INDEX)
        return loss, x.shape[0]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DenseLoader, *, amp: tuple[bool, torch.dtype] = (False, torch.float32),
                 progress: bool = False, desc: str = 'eval') -> dict[str, float]:
        """The task's metrics on the test loader, gathered over every process (see :data:`_COLUMNS`)."""
        from .dense_metrics import DetectionMetric, SegmentationMetric

        ctx = self.ctx
        was_training = model.training
        model.eval()
        num_classes = loader.info.num_classes
        metric: Any = (DetectionMetric(self.coco_gt, class_names=loader.info.classes) if self.name == 'detection'
                       else SegmentationMetric(num_classes, ignore_index=IGNORE_INDEX))
        loss_sum, pixels = 0.0, 0
        with Progress(len(loader), desc, enabled=progress and ctx.is_main, leave=False, interval=10**9) as bar:
            for inputs, targets in loader:
                with torch.autocast(ctx.device.type, dtype=amp[1], enabled=amp[0]):
                    if self.name == 'detection':
                        outputs = model([_plain(x).to(ctx.device) for x in inputs])
                    else:
                        outputs = model(_plain(inputs).to(ctx.device))
                if self.name == 'detection':
                    metric.update([{k: v.float().cpu() if v.is_floating_point() else v.cpu()
                                    for k, v in o.items()} for o in outputs], targets)
                else:
                    y = _plain(targets).to(ctx.device)
                    logits = outputs['out'].float()
                    loss_sum += float(F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction='sum'))
                    pixels += int((y != IGNORE_INDEX).sum())
                    metric.update(logits.argmax(1), y)
                bar.update()
        model.train(was_training)
        result = metric.compute()
        if self.name == 'detection':
            return {k: float(v) for k, v in result.items()}
        total, count = all_reduce_sum([loss_sum, pixels], ctx)
        return {'test_loss': total / max(count, 1.0), 'miou': float(result['miou']),
                'pixel_acc': float(result['pixel_acc'])}


def dense_task(cfg: Mapping[str, Any], ctx: DistContext) -> DenseTask | None:
    """The :class:`DenseTask` of a detection or segmentation config, ``None`` for classification."""
    return None if cfg['task'] == 'classification' else DenseTask(cfg, ctx)


def build_task_model(name: str, kwargs: Mapping[str, Any], *, pretrained: bool | None = None) -> nn.Module:
    """A detection or segmentation model from its recorded kwargs (:meth:`DenseTask.model_kwargs`), with user
    errors as :class:`EngineError`.

    Args:
        name: The model name (``fcos``, ``deeplabv3``, a torchvision builder name).
        kwargs: ``num_classes``, ``backbone``, ``output_stride``, ``attn``, ``warm_start`` and the model options.
        pretrained: Override the recorded ``pretrained`` (False when the weights come from a checkpoint).
    """
    from ..dense import build_dense_model
    from ..errors import PlugattnError

    kw = dict(kwargs)
    kw.pop('task', None)
    kw.pop('in_chans', None)
    num_classes = int(kw.pop('num_classes'))
    recorded = bool(kw.pop('pretrained', False))
    kw['pretrained_backbone'] = recorded if pretrained is None else pretrained
    kw['warm_start'] = bool(kw.pop('warm_start', False) or False)
    try:
        return build_dense_model(name, num_classes, **kw)
    except EngineError:
        raise
    except PlugattnError as e:
        raise EngineError(e.problem, e.fix or 'check --model, --backbone, --attn and model.kwargs') from None
    except TypeError as e:
        raise EngineError(f'cannot build {name}: {" ".join(str(e).split())}', 'check model.kwargs') from None
