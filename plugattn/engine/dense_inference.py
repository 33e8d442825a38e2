"""Detection and segmentation checkpoints: rebuilt from their metadata, evaluated (``plugattn eval``) and run on
image files (``plugattn predict``, with ``--draw DIR`` pictures of boxes or coloured masks).

A checkpoint written by a detection or segmentation run records its ``task``, model name, backbone, attention,
class names, the model's build options (``model_kwargs``), the data it was trained on and its transform settings
(``dense``), so that nothing but the file is needed to rebuild and use it.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_state_dict_fits, read_weights
from .distributed import DistContext, resolve_device
from .errors import EngineError
from .evaluation import resolve_checkpoint
from .inference import ImageFailure, collect_images

__all__ = ['DensePrediction', 'checkpoint_task', 'evaluate_dense_checkpoint', 'load_dense_model', 'predict_dense']

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def checkpoint_task(path: str | Path, which: str = 'best') -> str:
    """The task a checkpoint was trained for (``classification`` for checkpoints without a ``task`` field)."""
    _, meta = read_weights(resolve_checkpoint(path, which))
    return str(meta.get('task') or 'classification')


def load_dense_model(path: str | Path, which: str = 'best') -> tuple[nn.Module, dict[str, Any], Path]:
    """Rebuild a detection or segmentation checkpoint's model and load its weights.

    Returns:
        ``(model, meta, file)``, the model in eval mode on the CPU.

    Raises:
        EngineError: A classification checkpoint, or weights that do not fit the recorded model.
    """
    from .tasks import build_task_model

    file = resolve_checkpoint(path, which)
    state, meta = read_weights(file)
    task = meta.get('task') or 'classification'
    if task == 'classification':
        raise EngineError(f'checkpoint {file} holds a classification model ({meta.get("model")}), not a detection or '
                          'segmentation model', 'use it with the classification commands (plugattn eval / predict '
                                                'read it as such)')
    net = build_task_model(meta['model'], meta.get('model_kwargs') or {}, pretrained=False)
    check_state_dict_fits(net, state, str(file), meta['model'], meta['model'])
    net.load_state_dict(state)
    return net.eval(), meta, file


def _config(meta: dict[str, Any], data: str | None, data_dir: str | None, batch_size: int | None) -> dict[str, Any]:
    from .config import validate_config

    dmeta = meta.get('data') or {}
    name = data or dmeta.get('name')
    raw = {
        'task': meta['task'],
        'model': {'name': meta['model']},
        'data': {'name': name, 'data_dir': data_dir or (dmeta.get('data_dir') if name == dmeta.get('name') else None)},
        'dense': meta.get('dense') or {},
        'train': {'batch_size': batch_size or int(meta.get('eval_batch_size') or 8)},
    }
    if raw['task'] == 'segmentation' and raw['dense'].get('crop_size') is None:
        raw['dense']['crop_size'] = 512
    return validate_config(raw)


def evaluate_dense_checkpoint(
        path: str | Path,
        *,
        which: str = 'best',
        data: str | None = None,
        data_dir: str | None = None,
        batch_size: int | None = None,
        device: str = 'auto',
        amp: bool = False,
        progress: bool = False,
) -> dict[str, Any]:
    """COCO AP (detection) or mIoU and pixel accuracy (segmentation) of a checkpoint on a validation split.

    Args:
        path: Run directory or ``.safetensors`` file.
        which: ``'best'`` or ``'last'`` of a run directory.
        data: ``scenes``, ``coco`` or ``voc`` (default: the training data).
        data_dir: Its folder (default: the training run's).
        batch_size: Images per forward pass (default: the run's evaluation batch size).
        device: Device spec.
        amp: bfloat16 (CPU) / float16 (CUDA) autocast.
        progress: Show a progress bar.

    Returns:
        ``{'checkpoint', 'task', 'model', 'data', 'epoch', 'weights', 'images', <metrics>}`` with ``map``,
        ``map_50``, ``map_75``, ... or ``miou``, ``pixel_acc``, ``test_loss``.

    Raises:
        EngineError: Unusable checkpoint, a data set with other classes, or a data problem.
    """
    from .tasks import DenseTask

    if batch_size is not None and batch_size < 1:
        raise EngineError(f'--batch-size must be >= 1, got {batch_size}', 'pass a positive batch size')
    net, meta, file = load_dense_model(path, which)
    cfg = _config(meta, data, data_dir, batch_size)
    dev = resolve_device(device)
    task = DenseTask(cfg, DistContext(device=dev))
    loader = task.test_loader()
    trained = list(meta.get('classes') or [])
    if trained and loader.info.classes != trained:
        raise EngineError(f'checkpoint {file} was trained on other classes than {loader.info.name} has '
                          f'({len(trained)} vs {len(loader.info.classes)} classes, or other names)',
                          f'evaluate on the data it was trained on ({(meta.get("data") or {}).get("name")})')
    net.to(dev)
    amp_dtype = torch.float16 if dev.type == 'cuda' else torch.bfloat16
    metrics = task.evaluate(net, loader, amp=(amp, amp_dtype), progress=progress)
    return {'checkpoint': str(file), 'task': meta['task'], 'model': meta['model'], 'backbone': meta.get('backbone'),
            'attn': meta.get('attn'), 'data': loader.info.name, 'epoch': meta.get('epoch'),
            'weights': meta.get('weights', 'model'), 'images': loader.dataset_size, **metrics}


# --------------------------------------------------------------------------------------------- predict


@dataclass
class DensePrediction:
    """What a detection or segmentation model found in one image.

    Attributes:
        path: The image file.
        detections: Detection: ``[{'class', 'label', 'score', 'box': [x0, y0, x1, y1]}, ...]``, best first.
        classes: Segmentation: ``{class name: share of the image's pixels}`` of the classes predicted.
        drawn: The picture written with ``draw_dir`` (boxes or coloured masks with a legend).
    """

    path: str
    detections: list[dict[str, Any]] | None = None
    classes: dict[str, float] | None = None
    drawn: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {'path': self.path}
        if self.detections is not None:
            out['detections'] = self.detections
        if self.classes is not None:
            out['classes'] = self.classes
        if self.drawn is not None:
            out['drawn'] = self.drawn
        return out


def _palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours (background black), the PASCAL VOC palette's bit pattern."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def _read(path: Path) -> torch.Tensor:
    """An image file as uint8 RGB ``(3, H, W)``."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as e:
        raise EngineError(f'cannot read image {path} ({" ".join(str(e).split())[:80]})',
                          'pass a readable PNG/JPEG file') from None


def _legend(image: torch.Tensor, names: list[str], colours: list[tuple[int, int, int]]) -> torch.Tensor:
    """The image with a legend strip below it: a colour swatch and the name of each class shown."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()  # Pillow's bundled font: nothing is fetched
    row = 14
    _, h, w = image.shape
    canvas = Image.new('RGB', (max(w, 120), h + row * len(names) + 4), (255, 255, 255))
    canvas.paste(Image.fromarray(image.permute(1, 2, 0).numpy()), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(zip(names, colours)):
        y = h + 2 + i * row
        draw.rectangle([2, y + 1, 12, y + row - 3], fill=colour, outline=(0, 0, 0))
        draw.text((16, y), name, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1)


def _write_png(image: torch.Tensor, path: Path) -> None:
    from torchvision.io import write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    write_png(image.contiguous(), str(tmp))
    tmp.replace(path)


@torch.no_grad()
def predict_dense(
        checkpoint: str | Path,
        inputs: Iterable[str | Path],
        *,
        score_thresh: float = 0.3,
        device: str = 'auto',
        which: str = 'best',
        draw_dir: str | Path | None = None,
) -> Iterator[DensePrediction | ImageFailure]:
    """Run a detection or segmentation checkpoint on image files (``plugattn predict``).

    Args:
        checkpoint: Run directory or ``.safetensors`` file.
        inputs: Image files and folders (searched recursively).
        score_thresh: Detection: the lowest score reported.
        device: Device spec.
        which: ``'best'`` or ``'last'`` of a run directory.
        draw_dir: Write ``<stem>.png`` there: the image with labelled boxes (detection) or its coloured class map
            blended over it with a legend (segmentation).

    Yields:
        A :class:`DensePrediction` or :class:`ImageFailure` per image, in input order.
    """
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if not 0.0 <= score_thresh <= 1.0:
        raise EngineError(f'--score-thresh must be in [0, 1], got {score_thresh}', 'e.g. --score-thresh 0.3')
    model, meta, _ = load_dense_model(checkpoint, which)
    dev = resolve_device(device)
    model.to(dev)
    for owner in (model, getattr(model, 'roi_heads', None)):  # the model's own filter must not hide what is asked
        if owner is not None and isinstance(getattr(owner, 'score_thresh', None), float):
            owner.score_thresh = min(owner.score_thresh, score_thresh)
    names = ['background', *(meta.get('classes') or [])]
    colours = _palette(max(len(names), 2))
    task = meta['task']
    min_size = (meta.get('dense') or {}).get('min_size')
    out_dir = Path(draw_dir).expanduser() if draw_dir is not None else None
    for item in collect_images(inputs):
        if isinstance(item, ImageFailure):
            yield item
            continue
        try:
            raw = _read(item)
        except EngineError as e:
            yield ImageFailure(str(item), str(e))
            continue
        x = raw.float().div(255.0)
        result = DensePrediction(str(item))
        if task == 'detection':
            out = model([x.to(dev)])[0]
            keep = (out['scores'] >= score_thresh) & (out['labels'] > 0)  # one-stage heads may score the background
            boxes, scores, labels = out['boxes'][keep].cpu(), out['scores'][keep].cpu(), out['labels'][keep].cpu()
            result.detections = [
                {'class': names[int(j)] if int(j) < len(names) else str(int(j)), 'label': int(j),
                 'score': round(float(p), 4), 'box': [round(float(v), 2) for v in b]}
                for b, p, j in zip(boxes, scores, labels)]
            picture = draw_bounding_boxes(raw, boxes, [f'{d["class"]} {d["score"]:.2f}' for d in result.detections],
                                          colors=[colours[int(j) % len(colours)] for j in labels], width=2) \
                if len(boxes) else raw
        else:
            h, w = x.shape[-2:]
            inp = TF.resize(x, [min_size]) if min_size else x
            inp = TF.normalize(inp, list(_MEAN), list(_STD))
            logits = model(inp.unsqueeze(0).to(dev))['out'].float()
            pred = torch.nn.functional.interpolate(logits, size=(h, w), mode='bilinear').argmax(1)[0].cpu()
            counts = torch.bincount(pred.flatten(), minlength=len(names))
            present = [int(c) for c in torch.nonzero(counts).flatten()]
            result.classes = {names[c] if c < len(names) else str(c): round(float(counts[c]) / pred.numel(), 4)
                              for c in present}
            masks = torch.stack([pred == c for c in present])
            picture = draw_segmentation_masks(raw, masks, alpha=0.6, colors=[colours[c] for c in present])
            picture = _legend(picture, [names[c] for c in present], [colours[c] for c in present])
        if out_dir is not None:
            target = out_dir / f'{item.stem}.png'
            _write_png(picture, target)
            result.drawn = str(target)
        yield result
