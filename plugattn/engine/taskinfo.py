"""The names each task of the engine logs: ``summary.csv`` columns, the metric of the best checkpoint, labels."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ['CLASSIFICATION_COLUMNS', 'TASKS', 'format_metrics', 'metric_label', 'primary_metric', 'task_columns']

TASKS = ('classification', 'detection', 'segmentation')
CLASSIFICATION_COLUMNS = ('epoch', 'train_loss', 'test_loss', 'top1', 'top5', 'lr', 'seconds')
# what each task writes per epoch (summary.csv columns) and the metric that picks best.safetensors
_COLUMNS = {
    'classification': CLASSIFICATION_COLUMNS,
    'detection': ('epoch', 'train_loss', 'map', 'map_50', 'map_75', 'lr', 'seconds'),
    'segmentation': ('epoch', 'train_loss', 'test_loss', 'miou', 'pixel_acc', 'lr', 'seconds'),
}
_PRIMARY = {'classification': 'top1', 'detection': 'map', 'segmentation': 'miou'}
_LABELS = {'top1': 'top-1', 'top5': 'top-5', 'map': 'AP', 'map_50': 'AP50', 'map_75': 'AP75', 'miou': 'mIoU',
           'pixel_acc': 'pixel acc', 'test_loss': 'test loss'}


def primary_metric(task: str) -> str:
    """The record key that picks the best checkpoint: ``top1``, ``map`` or ``miou``."""
    return _PRIMARY[task]


def task_columns(task: str) -> tuple[str, ...]:
    """The ``summary.csv`` columns of a task."""
    return _COLUMNS[task]


def metric_label(key: str) -> str:
    """How a metric key is printed (``map`` -> ``AP``)."""
    return _LABELS.get(key, key)


def format_metrics(record: Mapping[str, Any], keys: Sequence[str], prefix: str = '') -> list[str]:
    """``['AP 0.123', ...]`` for the metrics of a record that are set (fractions with 4 decimals)."""
    out = []
    for key in keys:
        value = record.get(prefix + key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out.append(f'{prefix.replace("ema_", "EMA ")}{metric_label(key)} {value:.4f}')
    return out
