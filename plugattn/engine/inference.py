"""Inference with a trained checkpoint: ``plugattn predict`` (images prepared with the checkpoint's own evaluation
preprocessing, see :mod:`plugattn.engine.preprocess`)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .distributed import resolve_device
from .errors import EngineError
from .evaluation import load_checkpoint_model
from .preprocess import checkpoint_classes, class_label, preprocessing_from_meta

__all__ = ['ImageFailure', 'Prediction', 'collect_images', 'predict']


@dataclass
class Prediction:
    """Top-k classes of one image.

    Attributes:
        path: The image file.
        topk: ``[{'class': name, 'index': i, 'prob': p}, ...]``, most probable first.
    """

    path: str
    topk: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {'path': self.path, 'topk': self.topk}


@dataclass
class ImageFailure:
    """An input that could not be classified (unreadable file, missing path, folder without images).

    Attributes:
        path: The input.
        error: One line ``<problem>; <fix>``.
    """

    path: str
    error: str


def collect_images(inputs: Iterable[str | Path]) -> Iterator[Path | ImageFailure]:
    """Expand folders into their image files (recursively, sorted); files are passed on whatever their suffix.

    Yields:
        A path per image, or an :class:`ImageFailure` for a missing path or a folder without images.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                           and not any(part.startswith('.') for part in p.relative_to(path).parts))
            if not files:
                yield ImageFailure(str(item), f'folder {item} holds no images ({", ".join(IMG_EXTENSIONS)}); '
                                              'pass image files or folders of them')
            yield from files
        elif path.exists():
            yield path
        else:
            yield ImageFailure(str(item), f'cannot read image {item} (no such file); check the path')


def _chunks(items: Iterator[Path | ImageFailure], size: int) -> Iterator[list[Path | ImageFailure]]:
    chunk: list[Path | ImageFailure] = []
    for item in items:
        chunk.append(item)
        if sum(isinstance(c, Path) for c in chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def predict(
        checkpoint: str | Path,
        inputs: Iterable[str | Path],
        *,
        topk: int = 5,
        batch_size: int = 32,
        device: str = 'auto',
        which: str = 'best',
) -> Iterator[Prediction | ImageFailure]:
    """Classify image files with a trained checkpoint (``plugattn predict``).

    Images are prepared with the checkpoint's evaluation preprocessing (:func:`preprocessing_from_meta`),
    batched, and classified by the model in eval mode; results come in input order. An unreadable file yields an
    :class:`ImageFailure` and the others go on.

    Args:
        checkpoint: Run directory or ``.safetensors`` file.
        inputs: Image files and folders (searched recursively).
        topk: Classes reported per image (at most the number of classes).
        batch_size: Images per forward pass.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
        which: ``'best'`` or ``'last'`` of a run directory.

    Yields:
        A :class:`Prediction` or :class:`ImageFailure` per image.

    Raises:
        EngineError: Unusable checkpoint, bad ``topk`` / ``batch_size`` or device.
    """
    if topk < 1 or batch_size < 1:
        raise EngineError(f'--topk and --batch-size must be >= 1, got {topk} and {batch_size}',
                          'pass positive numbers')
    model, meta, _ = load_checkpoint_model(checkpoint, which)
    dev = resolve_device(device)
    model.to(dev).eval()
    prep = preprocessing_from_meta(meta, model)
    classes = checkpoint_classes(meta)
    k = min(topk, int(model.num_classes))
    for chunk in _chunks(collect_images(inputs), batch_size):
        done: dict[int, Prediction | ImageFailure] = {}
        xs, where = [], []
        for i, item in enumerate(chunk):
            if isinstance(item, ImageFailure):
                done[i] = item
                continue
            try:
                xs.append(prep.load(item))
                where.append(i)
            except EngineError as e:
                done[i] = ImageFailure(str(item), str(e))
        if xs:
            probs = model(torch.stack(xs).to(dev)).float().softmax(dim=1).cpu()
            values, indices = probs.topk(k, dim=1)
            for row, i in enumerate(where):
                top = [{'class': class_label(classes, int(j)), 'index': int(j), 'prob': float(p)}
                       for p, j in zip(values[row].tolist(), indices[row].tolist())]
                done[i] = Prediction(str(chunk[i]), top)
        for i in range(len(chunk)):
            yield done[i]
