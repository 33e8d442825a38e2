"""COCO-layout detection data written in the YOLO (ultralytics) format: images, one label text per image, data.yaml.

Reads any folder in the COCO 2017 layout (``annotations/instances_<split>.json`` next to the ``<split>/`` image
folders, e.g. ``train2017/`` and ``val2017/``) and writes::

    out_dir/images/<train|val>/<file>      (hard links where the file system allows, else copies)
    out_dir/labels/<train|val>/<stem>.txt  (one line "class cx cy w h" per box, normalised to [0, 1])
    out_dir/data.yaml                      (train, val, nc, names; no path: the root is the file's folder)

Class indices follow the order of the categories' ids (COCO ids 1..N become 0..N-1, gaps closed); crowd boxes and
boxes without area are left out; an image without boxes gets an empty label file (ultralytics: a background image).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ['coco_to_yolo']


def _split_name(coco_split: str) -> str:
    """``'train2017'`` -> ``'train'``, ``'val2017'`` -> ``'val'`` (other names stay)."""
    return coco_split.rstrip('0123456789') or coco_split


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _yaml_text(splits: dict[str, str], names: list[str]) -> str:
    # no 'path': ultralytics then takes the folder of this file as the data set root, so the folder can move;
    # JSON strings are valid YAML scalars: names with colons, quotes or non-ASCII stay intact
    lines = ['# YOLO data set written by plugattn.data.yolo_format.coco_to_yolo; root: the folder of this file']
    lines += [f'{key}: {json.dumps(value)}' for key, value in splits.items()]
    lines.append(f'nc: {len(names)}')
    lines.append('names:')
    lines += [f'  {i}: {json.dumps(name)}' for i, name in enumerate(names)]
    return '\n'.join(lines) + '\n'


def _convert_split(coco: dict[str, Any], image_dir: Path, out_dir: Path, split: str,
                   index_of: dict[int, int]) -> int:
    boxes: dict[int, list[dict[str, Any]]] = {}
    for ann in coco.get('annotations', []):
        if ann.get('iscrowd', 0):
            continue
        boxes.setdefault(int(ann['image_id']), []).append(ann)
    (out_dir / 'images' / split).mkdir(parents=True, exist_ok=True)
    (out_dir / 'labels' / split).mkdir(parents=True, exist_ok=True)
    for img in coco['images']:
        src = image_dir / img['file_name']
        if not src.is_file():
            raise DataError(f'image {src} listed in the annotations does not exist',
                            'check that the COCO folder is complete')
        width, height = float(img['width']), float(img['height'])
        rows = []
        for ann in boxes.get(int(img['id']), []):
            x, y, w, h = (float(v) for v in ann['bbox'])
            x0, y0 = max(x, 0.0), max(y, 0.0)
            x1, y1 = min(x + w, width), min(y + h, height)
            if x1 <= x0 or y1 <= y0:
                continue
            if int(ann['category_id']) not in index_of:
                raise DataError(f"annotation {ann.get('id')} names category {ann['category_id']}, which is not in "
                                'the categories', 'check the annotation file')
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            rows.append(f"{index_of[int(ann['category_id'])]} {cx:.6f} {cy:.6f} "
                        f'{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}')
        name = Path(img['file_name']).name
        _link_or_copy(src, out_dir / 'images' / split / name)
        (out_dir / 'labels' / split / f'{Path(name).stem}.txt').write_text(
            '\n'.join(rows) + ('\n' if rows else ''), encoding='utf-8')
    return len(coco['images'])


def coco_to_yolo(coco_root: str | Path, out_dir: str | Path) -> Path:
    """Write the COCO-layout data set ``coco_root`` in the YOLO format under ``out_dir``; returns its data.yaml.

    Args:
        coco_root: folder with ``annotations/instances_<split>.json`` and the ``<split>/`` image folders (every
            split found is converted; ``train*`` and ``val*`` become ``train`` and ``val``, a data set without a
            validation split is validated on its training split).
        out_dir: output folder (created; files of an earlier conversion are replaced).

    Raises:
        DataError: no annotation file, an image folder or image missing, or categories that differ between splits.
    """
    root, out = Path(coco_root), Path(out_dir)
    files = sorted((root / 'annotations').glob('instances_*.json'))
    if not files:
        raise DataError(f'no annotations/instances_<split>.json in {root}',
                        'give a folder in the COCO layout (annotations/, train2017/, val2017/)')
    names: list[str] | None = None
    index_of: dict[int, int] = {}
    splits: dict[str, str] = {}
    for file in files:
        coco_split = file.stem[len('instances_'):]
        image_dir = root / coco_split
        if not image_dir.is_dir():
            raise DataError(f'image folder {image_dir} for {file.name} not found', 'check the COCO folder layout')
        coco = json.loads(file.read_text(encoding='utf-8'))
        cats = sorted(coco.get('categories', []), key=lambda c: int(c['id']))
        these = [str(c['name']) for c in cats]
        if names is None:
            names, index_of = these, {int(c['id']): i for i, c in enumerate(cats)}
        elif these != names:
            raise DataError(f'{file.name} has other categories than {files[0].name}',
                            'every split must list the same categories')
        split = _split_name(coco_split)
        _convert_split(coco, image_dir, out, split, index_of)
        splits[split] = f'images/{split}'
    if 'train' not in splits:
        raise DataError(f'no training split (annotations/instances_train*.json) in {root}',
                        'a YOLO data set needs a training split')
    splits.setdefault('val', splits['train'])
    ordered = {'train': splits['train'], 'val': splits['val'],
               **{k: v for k, v in splits.items() if k not in ('train', 'val')}}
    out.mkdir(parents=True, exist_ok=True)
    yaml_path = out / 'data.yaml'
    yaml_path.write_text(_yaml_text(ordered, names or []), encoding='utf-8')
    return yaml_path
