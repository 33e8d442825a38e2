"""What a trained checkpoint records about its inputs and outputs: its preprocessing and its class names.

A checkpoint written by :func:`~plugattn.engine.train` records how its inputs were prepared for evaluation
(``meta['preprocessing']``, see :class:`Preprocessing`) and the names of its classes (``meta['classes']``), so that
images from disk are classified exactly as the test split was evaluated, and so that an export (ONNX, TorchScript)
can carry the same description.

Evaluation-time preprocessing of the two data paths (:mod:`plugattn.data.loader`), reproduced here for one image:

* in-memory datasets (Fashion-MNIST, digits, CIFAR): the uint8 image is resized to the input size as a whole
  (``resize_mode='stretch'``, no crop; ``torch.nn.functional.interpolate``, antialiased when it shrinks, rounded back
  to uint8), then scaled to [0, 1] and normalised with the training set's mean/std;
* ImageFolder: the shorter side is resized to ``resize_size = int(size / crop_pct)`` (``crop_pct = 0.875``, PIL
  resampling through torchvision), the centre ``size x size`` is cropped, then scaled and normalised (ImageNet
  mean/std).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import EngineError

__all__ = [
    'EVAL_CROP_PCT',
    'Preprocessing',
    'checkpoint_classes',
    'class_label',
    'preprocessing_from_meta',
]

EVAL_CROP_PCT = 0.875
"""Centre-crop fraction of ImageFolder evaluation (resize the shorter side to ``size / 0.875``, crop ``size``)."""

RESIZE_MODES = ('stretch', 'shorter')


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input, as the evaluation loaders do it.

    Attributes:
        input_size: ``(C, H, W)`` of the model input.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by.
        interpolation: ``'nearest'``, ``'bilinear'`` or ``'bicubic'``.
        resize_mode: ``'stretch'``: resize the whole image to ``(H, W)``, no crop; ``'shorter'``: resize the shorter
            side to ``resize_size`` (aspect ratio kept), then crop the centre ``(H, W)``.
        resize_size: Target of the shorter side for ``'shorter'`` (``int(H / crop_pct)``); ``H`` for ``'stretch'``.
        crop_pct: ``H / resize_size`` (1.0 for ``'stretch'``).
        color_mode: PIL mode the image is converted to first, ``'L'`` (1 channel) or ``'RGB'`` (3 channels).
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = 'bilinear'
    resize_mode: str = 'stretch'
    resize_size: int = 0
    crop_pct: float = 1.0
    color_mode: str = ''

    def __post_init__(self) -> None:
        c = self.input_size[0]
        if c not in (1, 3):
            raise EngineError(f'images can be prepared for 1- or 3-channel models only, not {c} channels',
                              'prepare the inputs yourself')
        if self.resize_mode not in RESIZE_MODES:
            raise EngineError(f'unknown resize_mode {self.resize_mode!r}', f'use one of {", ".join(RESIZE_MODES)}')
        if not self.color_mode:
            object.__setattr__(self, 'color_mode', 'L' if c == 1 else 'RGB')
        if not self.resize_size:
            object.__setattr__(self, 'resize_size', int(self.input_size[1] / self.crop_pct))

    @classmethod
    def for_dataset(cls, info: Any, image_size: int | None, interpolation: str = 'bilinear') -> Preprocessing:
        """The evaluation preprocessing of a dataset (a :class:`~plugattn.data.DatasetInfo` of the loader)."""
        h, w = info.image_size
        if image_size:
            h = w = int(image_size)
        size = (int(info.in_chans), int(h), int(w))
        if info.name == 'imagefolder':
            return cls(size, tuple(info.mean), tuple(info.std), interpolation, 'shorter', int(h / EVAL_CROP_PCT),
                       EVAL_CROP_PCT)
        return cls(size, tuple(info.mean), tuple(info.std), interpolation, 'stretch', int(h), 1.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                input_size=tuple(int(v) for v in d['input_size']), mean=tuple(float(v) for v in d['mean']),
                std=tuple(float(v) for v in d['std']), interpolation=str(d.get('interpolation', 'bilinear')),
                resize_mode=str(d.get('resize_mode', 'stretch')), resize_size=int(d.get('resize_size') or 0),
                crop_pct=float(d.get('crop_pct', 1.0)), color_mode=str(d.get('color_mode') or ''),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineError(f'unusable preprocessing record ({type(e).__name__}: {e})',
                              'use a checkpoint written by plugattn train') from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists instead of tuples); the scale factor is spelled out for other runtimes."""
        d = asdict(self)
        d.update(input_size=list(self.input_size), mean=list(self.mean), std=list(self.std), pixel_scale=1 / 255)
        return d

    def __call__(self, image: Any) -> Tensor:
        """A PIL image -> the normalised float32 input ``(C, H, W)``."""
        from PIL import Image

        from ..data.images import to_mode

        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        return self._to_input(to_mode(image, self.color_mode))  # 16-bit, float and palette images as the loaders

    def _to_input(self, img: Any) -> Tensor:
        """A PIL image already in :attr:`color_mode` -> the normalised float32 input ``(C, H, W)``."""
        _, h, w = self.input_size
        if self.resize_mode == 'shorter':
            from torchvision.transforms.v2 import InterpolationMode
            from torchvision.transforms.v2 import functional as TF

            mode = InterpolationMode(self.interpolation)
            img = TF.resize(img, self.resize_size, mode, antialias=True)
            img = TF.center_crop(img, [h, w])
            x = TF.pil_to_tensor(img).unsqueeze(0)
        else:
            from torchvision.transforms.v2 import functional as TF

            x = TF.pil_to_tensor(img).unsqueeze(0)
            if tuple(x.shape[-2:]) != (h, w):
                # as the in-memory loaders resize a whole dataset: float interpolate, round, back to uint8
                shrink = self.interpolation != 'nearest' and max(h, w) < max(x.shape[-2:])
                kwargs = {'align_corners': False} if self.interpolation != 'nearest' else {}
                y = F.interpolate(x.to(torch.float32), size=(h, w), mode=self.interpolation, antialias=shrink,
                                  **kwargs)
                x = y.round_().clamp_(0, 255).to(torch.uint8)
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).float().view(1, -1, 1, 1)
        bias = (-mean / std).float().view(1, -1, 1, 1)
        return x.to(torch.float32).mul_(scale).add_(bias)[0]

    def load(self, path: str | Path) -> Tensor:
        """Read an image file and prepare it.

        Raises:
            EngineError: The file cannot be opened or decoded.
        """
        from ..data import DataError
        from ..data.images import read_image

        try:
            image = read_image(path, self.color_mode)  # in color_mode already
        except DataError as e:  # the one wording of cam and the loaders
            raise EngineError(e.problem, e.fix) from None
        return self._to_input(image)


def preprocessing_from_meta(meta: Mapping[str, Any], model: nn.Module | None = None) -> Preprocessing:
    """The preprocessing a checkpoint records, else the one its training data implies (older checkpoints).

    Args:
        meta: Checkpoint metadata.
        model: The model (its ``in_chans`` and ``default_cfg`` are the last fallback).
    """
    if isinstance(meta.get('preprocessing'), Mapping):
        return Preprocessing.from_dict(meta['preprocessing'])
    data = meta.get('data') if isinstance(meta.get('data'), Mapping) else {}
    name = data.get('name')
    if isinstance(name, str):
        try:
            from ..data import get_dataset_info

            info = get_dataset_info(name, data.get('data_dir'))
        except ValueError:
            info = None
        if info is not None:
            prep = Preprocessing.for_dataset(info, data.get('image_size'), data.get('interpolation') or 'bilinear')
            if data.get('input_size') and prep.resize_mode == 'stretch':
                c, h, w = (int(v) for v in data['input_size'])
                prep = Preprocessing((c, h, w), prep.mean, prep.std, prep.interpolation, 'stretch', h, 1.0)
            return prep
    from ..data.info import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(model, 'default_cfg', None) or {}
    c = int(getattr(model, 'in_chans', 3))
    _, h, w = cfg.get('input_size', (c, 224, 224))
    mean = tuple(cfg.get('mean', IMAGENET_MEAN))
    std = tuple(cfg.get('std', IMAGENET_STD))
    if c == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if data.get('input_size'):  # a training record without a data set name
        _, h, w = data['input_size']
    elif data.get('image_size'):
        h = w = data['image_size']
    crop = float(cfg.get('crop_pct', 1.0))
    return Preprocessing((c, int(h), int(w)), mean, std, str(cfg.get('interpolation', 'bilinear')),
                         'shorter' if crop < 1.0 else 'stretch', int(h / crop), crop)


def checkpoint_classes(meta: Mapping[str, Any]) -> list[str] | None:
    """Class names a checkpoint records, else those of its (fixed) training dataset for older checkpoints."""
    classes = meta.get('classes')
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return list(classes)
    data = meta.get('data') if isinstance(meta.get('data'), Mapping) else {}
    name = data.get('name')
    if isinstance(name, str) and name != 'imagefolder':
        try:
            from ..data import get_dataset_info

            known = get_dataset_info(name).classes
        except ValueError:
            known = None
        return list(known) if known else None
    return None


def class_label(classes: Sequence[str] | None, index: int) -> str:
    """The name of class ``index``, or ``'class <index>'`` when the names are unknown."""
    return classes[index] if classes is not None and 0 <= index < len(classes) else f'class {index}'
