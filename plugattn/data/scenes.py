"""The offline ``scenes`` data set: Fashion-MNIST garments on larger canvases, in the COCO 2017 layout.

Every detection and segmentation command can run without a download on it. Each image is a ``canvas_size`` square
RGB canvas with a mild textured background (smooth colour noise plus a little pixel noise) on which one to
``max_objects`` Fashion-MNIST garments are pasted, each at a random position, a random side between
``min_scale`` and ``max_scale`` pixels and a random colour. A garment's instance mask is its pixels above
``MASK_THRESHOLD`` (of 255) after resizing; a garment pasted later covers the ones below it, whose masks lose the
covered pixels, so masks never overlap. Placements whose box overlaps an earlier one by more than
``MAX_OVERLAP`` (intersection over the smaller box) are redrawn. Boxes are the tight boxes of the visible mask
pixels, so boxes and masks always agree; an object left with fewer than ``MIN_VISIBLE`` pixels is dropped.

Training scenes draw their garments from Fashion-MNIST's training split and validation scenes from its test split,
so no garment is shared. The 10 categories carry Fashion-MNIST's class names with ids 1..10.

The files are written once, in the COCO 2017 layout (``train2017/*.jpg``, ``val2017/*.jpg``,
``annotations/instances_{train,val}2017.json`` with compressed-RLE ``segmentation``, ``area`` = mask pixels and
``iscrowd`` = 0), to ``<root>/scenes-<fingerprint>`` where root defaults to the data cache
(``$XDG_CACHE_HOME/plugattn/scenes``). The fingerprint hashes :data:`GENERATOR_VERSION` and every parameter, so a
changed generator or other sizes land in a new folder. The folder is built under a temporary name next to it and
renamed when complete, so a half-written folder is never used; two processes generating at once both succeed and
one copy survives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .info import FASHION_MNIST_CLASSES

__all__ = [
    'GENERATOR_VERSION',
    'SCENES_CLASSES',
    'ScenesConfig',
    'ensure_scenes',
    'generate_scenes',
    'scenes_root',
]

GENERATOR_VERSION = 2
"""Bump whenever the generator's output changes, so cached copies are regenerated."""

SCENES_CLASSES = tuple(FASHION_MNIST_CLASSES)
MASK_THRESHOLD = 40
MAX_OVERLAP = 0.2
MIN_VISIBLE = 30
_MAX_TRIES = 20


@dataclasses.dataclass(frozen=True)
class ScenesConfig:
    """The generator's parameters (all of them enter the fingerprint).

    Args:
        num_train: Training images.
        num_val: Validation images.
        canvas_size: Side of the square canvas in pixels.
        max_objects: Most garments per image (at least one each).
        min_scale: Smallest garment side in pixels (Fashion-MNIST's are 28).
        max_scale: Largest garment side in pixels.
        seed: Seed of the whole data set.
    """

    num_train: int = 1000
    num_val: int = 200
    canvas_size: int = 128
    max_objects: int = 4
    min_scale: int = 28
    max_scale: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            lowest = 0 if name == 'seed' else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise DataError(f'scenes {name} must be an int >= {lowest}, got {value!r}')
        if not self.min_scale <= self.max_scale <= self.canvas_size:
            raise DataError(f'scenes scales must satisfy min_scale <= max_scale <= canvas_size, got '
                            f'{self.min_scale}, {self.max_scale}, {self.canvas_size}',
                            'pass a smaller max_scale or a larger canvas')

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """12 hex digits of the hash of the generator version and the parameters."""
        text = json.dumps({'generator': GENERATOR_VERSION, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def scenes_root() -> Path:
    """The default parent folder of generated scenes: ``$XDG_CACHE_HOME/plugattn/scenes``."""
    from .sources import cache_root

    return cache_root() / 'scenes'


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A mild texture: a smooth colour field (8x8 noise, bilinear) around a random grey, plus pixel noise."""
    from PIL import Image

    base = rng.uniform(30, 100)
    coarse = (base + rng.uniform(-25, 25, size=(8, 8, 3))).clip(0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse, 'RGB').resize((size, size), Image.BILINEAR), dtype=np.float32)
    return field + rng.standard_normal(field.shape, dtype=np.float32) * 6.0


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection of two XYXY boxes over the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _scene(rng: np.random.Generator, garments: np.ndarray, labels: np.ndarray, cfg: ScenesConfig,
           ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One canvas (H, W, 3 uint8) and its objects as (label 0..9, full-canvas bool mask) pairs, bottom first."""
    from PIL import Image

    size = cfg.canvas_size
    canvas = _background(rng, size)
    placed: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []
    for _ in range(int(rng.integers(1, cfg.max_objects + 1))):
        index = int(rng.integers(len(garments)))
        side = int(rng.integers(cfg.min_scale, cfg.max_scale + 1))
        for _ in range(_MAX_TRIES):
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (x, y, x + side, y + side)
            if all(_overlap(box, other) <= MAX_OVERLAP for _, other, _ in placed):
                break
        else:
            continue
        glyph = np.asarray(Image.fromarray(garments[index]).resize((side, side), Image.BILINEAR), dtype=np.float32)
        colour = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
        colour *= 255.0 / colour.max()  # a saturated, bright colour that stands out of the darker background
        alpha = np.minimum(glyph * (1.5 / 255.0), 1.0)[..., None]
        region = canvas[y:y + side, x:x + side]
        canvas[y:y + side, x:x + side] = region * (1 - alpha) + colour * alpha
        mask = np.zeros((size, size), dtype=bool)
        mask[y:y + side, x:x + side] = glyph > MASK_THRESHOLD
        for _, _, lower in placed:
            lower &= ~mask
        placed.append((int(labels[index]), box, mask))
    canvas = canvas.clip(0, 255).round().astype(np.uint8)
    return canvas, [(label, mask) for label, _, mask in placed if mask.sum() >= MIN_VISIBLE]


def _write_split(out: Path, split: str, count: int, garments: np.ndarray, labels: np.ndarray,
                 cfg: ScenesConfig) -> int:
    from PIL import Image

    folder = out / f'{split}2017'
    folder.mkdir(parents=True)
    rng = np.random.default_rng([cfg.seed, 0 if split == 'train' else 1])
    images, annotations = [], []
    for image_id in range(1, count + 1):
        canvas, objects = _scene(rng, garments, labels, cfg)
        name = f'{image_id:012d}.jpg'
        Image.fromarray(canvas, 'RGB').save(folder / name, quality=90)
        images.append({'id': image_id, 'file_name': name, 'height': cfg.canvas_size, 'width': cfg.canvas_size})
        for label, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id, 'category_id': label + 1,
                'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': int(mask.sum()), 'iscrowd': 0,
                'segmentation': _rle(mask),
            })
    document = {
        'info': {'description': 'plugattn scenes: Fashion-MNIST garments on textured canvases',
                 'version': str(GENERATOR_VERSION), 'parameters': cfg.as_dict()},
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': [{'id': i + 1, 'name': name, 'supercategory': 'garment'}
                       for i, name in enumerate(SCENES_CLASSES)],
    }
    (out / 'annotations').mkdir(exist_ok=True)
    with open(out / 'annotations' / f'instances_{split}2017.json', 'w') as f:
        json.dump(document, f)
    return len(annotations)


def generate_scenes(out: str | Path, cfg: ScenesConfig | None = None, fashion_dir: str | Path | None = None) -> Path:
    """Write the scenes data set into ``out`` (a new folder) without the atomic rename of :func:`ensure_scenes`.

    Args:
        out: Folder to create; it must not exist.
        cfg: Parameters (defaults when None).
        fashion_dir: Folder holding Fashion-MNIST's IDX files (see :mod:`plugattn.data.sources` for the lookup).

    Returns:
        ``out``.

    Raises:
        DataError: Fashion-MNIST is not found, pycocotools is missing or ``out`` already exists.
    """
    from .sources import load_fashion_mnist

    _require_pycocotools()
    cfg = cfg or ScenesConfig()
    out = Path(out)
    if out.exists():
        raise DataError(f'{out} already exists', 'remove it or pick another folder')
    out.mkdir(parents=True)
    for split, fashion_split, count in (('train', 'train', cfg.num_train), ('val', 'test', cfg.num_val)):
        images, labels, _ = load_fashion_mnist(fashion_split, fashion_dir, download=False)
        _write_split(out, split, count, images[:, 0].numpy(), labels.numpy(), cfg)
    with open(out / 'scenes.json', 'w') as f:
        json.dump({'generator': GENERATOR_VERSION, 'fingerprint': cfg.fingerprint(), **cfg.as_dict()}, f)
    return out


def ensure_scenes(root: str | Path | None = None, cfg: ScenesConfig | None = None,
                  fashion_dir: str | Path | None = None) -> Path:
    """The folder of the scenes data set for ``cfg``, generated first when no complete copy exists.

    Args:
        root: Parent folder of the generated copies (default :func:`scenes_root`).
        cfg: Parameters (defaults when None).
        fashion_dir: Folder holding Fashion-MNIST's IDX files.

    Returns:
        ``<root>/scenes-<fingerprint>``, a COCO 2017 layout.

    Raises:
        DataError: Fashion-MNIST is not found, pycocotools is missing or ``root`` is not writable.
    """
    cfg = cfg or ScenesConfig()
    root = Path(root).expanduser() if root is not None else scenes_root()
    final = root / f'scenes-{cfg.fingerprint()}'
    if (final / 'scenes.json').is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f'.{final.name}.', suffix='.tmp', dir=root))
    except OSError as exc:
        raise DataError(f'cannot write the scenes data set under {root} ({exc.strerror or exc})',
                        'pass a writable folder (--data-dir) or set XDG_CACHE_HOME') from None
    try:
        generate_scenes(work / 'data', cfg, fashion_dir)
        try:
            os.rename(work / 'data', final)
        except OSError as exc:
            if not (final / 'scenes.json').is_file():  # not a concurrent writer's finished copy: a real failure
                raise DataError(f'cannot move the generated scenes data set to {final} ({exc.strerror or exc})',
                                'remove that folder; it is generated again') from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _require_pycocotools() -> None:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise DataError('detection and segmentation data need pycocotools',
                        "pip install 'plugattn[dense]'") from None
