"""Detection and segmentation data: COCO 2017 and Pascal VOC 2012 folders and the generated ``scenes`` set.

:func:`build_dense_dataset` is the entry point. Every data set yields ``(image, target)`` pairs:

* ``image``: a :class:`torchvision.tv_tensors.Image`, float32 ``(3, H, W)`` in [0, 1] (or normalised when the
  transforms say so);
* detection ``target``: ``{'boxes': BoundingBoxes (N, 4) XYXY float32, 'labels': int64 (N,) in 1..K,
  'masks': Mask (N, H, W) uint8 (COCO and scenes), 'image_id': int, 'area': float32 (N,), 'iscrowd': int64 (N,)}``,
  labels contiguous with 0 left for the background, as torchvision's detectors expect;
* segmentation ``target``: a :class:`torchvision.tv_tensors.Mask` ``(H, W)`` int64, 0 = background, 1..K the
  classes, 255 = ignore.

Each data set has ``class_names`` (K names, background excluded) and ``num_classes`` (K + 1).

Sources:

* ``coco``: the COCO 2017 layout under ``root`` (``train2017/``, ``val2017/``,
  ``annotations/instances_{train,val}2017.json``). Category ids (COCO's run 1..90 with gaps) map to labels 1..K in
  increasing id order (``dataset.category_ids[label - 1]`` gives the id back). Crowd annotations (``iscrowd=1``)
  are left out of detection targets (the metric still reads them from the file). Segmentation renders the
  instances into one semantic mask: a pixel takes its instance's label; pixels claimed by instances of different
  classes, and crowd regions, become 255 (ignore), the rule of torchvision's reference scripts for overlaps.
* ``voc``: ``root`` holds ``VOCdevkit/VOC2012`` or ``VOC2012``, or is that folder. Segmentation reads the
  ``SegmentationClass`` palette PNGs (class indices, 255 on object borders = ignore) for the images listed in
  ``ImageSets/Segmentation/{split}.txt``; detection reads ``Annotations/*.xml`` for ``ImageSets/Main/{split}.txt``.
  VOC's pixel boxes (1-based, inclusive) become ``(xmin - 1, ymin - 1, xmax, ymax)``. Objects marked
  ``difficult`` are left out of the training targets and enter the ground truth of the metric as crowd regions, so
  finding them neither counts nor costs. ``image_id`` is the position in the split list.
* ``scenes``: generated once into the cache by :mod:`plugattn.data.scenes` and read through the COCO path.

Bad input raises :class:`DataError` with one line naming the file or entry and the fix: a missing or malformed
annotation file, a listed image that is missing (checked when the data set is built) or unreadable (checked when
it is read), a category id not in ``categories`` or a VOC class name outside the 20, an RLE or VOC mask whose size
differs from its image, and mask values outside the classes (other than 255). Boxes with no area inside their
image (zero or negative width or height, or entirely outside the image) are **skipped**, as torchvision's
reference scripts do, and counted in one warning per data set; boxes partly outside are clipped to the image.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError

__all__ = [
    'DENSE_SOURCES',
    'DENSE_TASKS',
    'VOC_CLASSES',
    'CocoDense',
    'VocDense',
    'build_dense_dataset',
    'coco_from_targets',
    'coco_ground_truth',
    'dense_transforms',
    'detection_collate',
    'find_voc_root',
    'segmentation_collate',
]

DENSE_SOURCES = ('scenes', 'coco', 'voc')
DENSE_TASKS = ('detection', 'segmentation')
IGNORE_INDEX = 255

VOC_CLASSES = (
    'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable', 'dog',
    'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
)

_DENSE_FIX = "pip install 'plugattn[dense]'"


def _pycocotools_mask() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise DataError('detection and segmentation data need pycocotools', _DENSE_FIX) from None
    return mask_utils


def _new_coco(document: dict[str, Any]) -> Any:
    """A pycocotools ``COCO`` over an in-memory document (its index built quietly)."""
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DataError('COCO data and metrics need pycocotools', _DENSE_FIX) from None
    coco = COCO()
    coco.dataset = document
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_split(split: str) -> str:
    if split not in ('train', 'val'):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    return split


def _check_task(task: str) -> str:
    if task not in DENSE_TASKS:
        raise DataError(f"task must be 'detection' or 'segmentation', got {task!r}")
    return task


def _read_image(path: Path) -> torch.Tensor:
    """The RGB image file as a uint8 ``tv_tensors.Image`` (3, H, W); DataError naming the file when unreadable."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2.functional import pil_to_tensor

    from .images import open_rgb

    return tv_tensors.Image(pil_to_tensor(open_rgb(path)))


def _finish(image: torch.Tensor, target: Any, transforms: Callable | None) -> tuple[torch.Tensor, Any]:
    from torchvision.transforms.v2.functional import to_dtype

    if transforms is not None:
        image, target = transforms(image, target)
    if image.dtype == torch.uint8:
        image = to_dtype(image, torch.float32, scale=True)
    return image, target


def _clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[float, ...] | None:
    """The XYXY box clipped to the image, or None when it has no area inside it."""
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _warn_skipped(count: int, where: str) -> None:
    if count:
        warnings.warn(f'{where}: skipped {count} box{"es" if count > 1 else ""} with no area inside their image '
                      '(zero or negative size, or outside the image)', stacklevel=3)


# ----------------------------------------------------------------------------------------- COCO


def _load_coco_json(path: Path) -> dict[str, Any]:
    fix = 'point --data-dir at the COCO 2017 layout (annotations/instances_{train,val}2017.json)'
    if not path.is_file():
        raise DataError(f'annotation file {path} not found', fix)
    try:
        with open(path, encoding='utf-8') as f:
            document = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f'annotation file {path} is not valid JSON ({exc})', 'restore the file from its source') \
            from None
    if not isinstance(document, dict):
        raise DataError(f'annotation file {path} holds a {type(document).__name__}, not a COCO object',
                        'restore the file from its source')
    missing = [key for key in ('images', 'annotations', 'categories') if not isinstance(document.get(key), list)]
    if missing:
        raise DataError(f'annotation file {path} has no list {", ".join(repr(k) for k in missing)}',
                        'use a COCO instances file (images, annotations, categories)')
    return document


class CocoDense(torch.utils.data.Dataset):
    """A COCO-format folder for detection or segmentation (see the module docstring for the rules).

    Args:
        image_dir: Folder holding the images (``file_name`` is relative to it).
        ann_file: The COCO instances JSON file.
        task: ``'detection'`` or ``'segmentation'``.
        transforms: A callable ``(image, target) -> (image, target)``, e.g. :func:`dense_transforms`.
        with_masks: Decode instance masks into detection targets (only Mask R-CNN needs them).

    Raises:
        DataError: See the module docstring.
    """

    def __init__(
            self,
            image_dir: str | Path,
            ann_file: str | Path,
            task: str = 'detection',
            transforms: Callable | None = None,
            with_masks: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.task = _check_task(task)
        self.transforms = transforms
        self.with_masks = with_masks
        document = _load_coco_json(self.ann_file)
        where = str(self.ann_file)
        try:
            categories = sorted(document['categories'], key=lambda c: int(c['id']))
            self.category_ids = [int(c['id']) for c in categories]
            self.class_names = [str(c['name']) for c in categories]
            # id -> (file name, (height, width)); the document itself stays as read, for the metric
            images = {int(im['id']): (str(im['file_name']), (int(im['height']), int(im['width'])))
                      for im in document['images']}
        except (KeyError, TypeError, ValueError) as exc:
            what = f'a {exc} field' if isinstance(exc, KeyError) else 'a valid id, file_name, height, width or name'
            raise DataError(f'{where}: an image or category entry lacks {what}',
                            'give every image id, file_name, height, width and every category id, name') from None
        if not self.category_ids:
            raise DataError(f'{where} lists no categories', 'add the categories the annotations use')
        if len(set(self.category_ids)) < len(self.category_ids) or len(images) < len(document['images']):
            raise DataError(f'{where} lists a category id or an image id twice', 'give each entry its own id')
        self.num_classes = len(self.class_names) + 1
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self._label_of = label_of
        per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        skipped = 0
        for ann in document['annotations']:
            ann_id = ann.get('id', '?') if isinstance(ann, dict) else '?'
            try:
                image_id, category_id = int(ann['image_id']), int(ann['category_id'])
                x, y, w, h = (float(v) for v in ann['bbox'])
            except (KeyError, TypeError, ValueError):
                raise DataError(f'{where}: annotation {ann_id} lacks a valid image_id, category_id or bbox '
                                '[x, y, w, h]', 'fix or remove the annotation') from None
            if image_id not in images:
                raise DataError(f'{where}: annotation {ann_id} refers to image id {image_id}, which is not listed',
                                'fix or remove the annotation')
            if category_id not in label_of:
                raise DataError(f'{where}: annotation {ann_id} has category id {category_id}, not in categories '
                                f'{self.category_ids[:20]}{"..." if len(self.category_ids) > 20 else ""}',
                                'fix the annotation or add the category')
            height, width = images[image_id][1]
            seg = ann.get('segmentation')
            if isinstance(seg, dict) and [int(s) for s in seg.get('size', ())] != [height, width]:
                raise DataError(f'{where}: annotation {ann_id} has a mask of size {seg.get("size")}, its image '
                                f'{images[image_id][0]} is {height}x{width}',
                                'fix the annotation (RLE size is [height, width])')
            box = _clip_box(x, y, w, h, width, height)
            if box is None:
                skipped += 1
                continue
            per_image[image_id].append({'box': box, 'label': label_of[category_id], 'seg': seg,
                                        'area': float(ann.get('area', w * h)), 'iscrowd': int(ann.get('iscrowd', 0))})
        _warn_skipped(skipped, where)
        self.skipped_boxes = skipped
        self.ids = sorted(images)
        for image_id in self.ids:
            path = self.image_dir / images[image_id][0]
            if not path.is_file():
                raise DataError(f'image {path} listed in {where} (id {image_id}) not found',
                                'restore the file or remove its entry')
        self._images = images
        self._annotations = per_image
        self._document = document
        self._coco = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def coco(self) -> Any:
        """The annotation file as a pycocotools ``COCO`` (original category ids, crowd annotations included)."""
        if self._coco is None:
            self._coco = _new_coco(self._document)
        return self._coco

    def _masks(self, anns: list[dict[str, Any]], height: int, width: int, image_id: int) -> np.ndarray:
        mask_utils = _pycocotools_mask()
        out = np.zeros((len(anns), height, width), dtype=np.uint8)
        rles, slots = [], []
        for i, ann in enumerate(anns):
            seg = ann['seg']
            if not seg:
                x0, y0, x1, y1 = (round(v) for v in ann['box'])  # no outline given: the box is the mask
                out[i, y0:y1, x0:x1] = 1
                continue
            try:
                rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg, list) or isinstance(
                    seg.get('counts'), list) else seg
                rles.append(mask_utils.merge(rle) if isinstance(rle, list) else rle)
            except Exception as exc:  # pycocotools raises TypeError, ValueError, IndexError for broken outlines
                raise DataError(f'{self.ann_file}: a segmentation of image id {image_id} cannot be decoded '
                                f'({type(exc).__name__})', 'give polygons [[x, y, ...]] or an RLE {size, counts}') \
                    from None
            slots.append(i)
        if rles:
            with warnings.catch_warnings():  # pycocotools' own use of numpy 2 (np.array(copy=False) on its RLEs)
                warnings.filterwarnings('ignore', message='__array__ implementation', category=DeprecationWarning)
                out[slots] = mask_utils.decode(rles).transpose(2, 0, 1)
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        from torchvision import tv_tensors

        image_id = self.ids[index]
        file_name, (height, width) = self._images[image_id]
        path = self.image_dir / file_name
        image = _read_image(path)
        if tuple(image.shape[-2:]) != (height, width):
            raise DataError(f'image {path} is {image.shape[-2]}x{image.shape[-1]} but {self.ann_file} says '
                            f'{height}x{width}', 'fix height and width of its entry')
        anns = self._annotations[image_id]
        if self.task == 'segmentation':
            masks = self._masks(anns, height, width, image_id)
            semantic = np.zeros((height, width), dtype=np.int64)
            claimed = np.zeros((height, width), dtype=np.int64)  # label of the pixel's instances, -1 when mixed
            for ann, mask in zip(anns, masks):
                on = mask.astype(bool)
                if ann['iscrowd']:
                    claimed[on] = -1
                    continue
                mixed = on & (claimed != 0) & (claimed != ann['label'])
                claimed[on & (claimed == 0)] = ann['label']
                claimed[mixed] = -1
            semantic[claimed > 0] = claimed[claimed > 0]
            semantic[claimed < 0] = IGNORE_INDEX
            return _finish(image, tv_tensors.Mask(torch.from_numpy(semantic)), self.transforms)
        anns = [a for a in anns if not a['iscrowd']]
        boxes = torch.tensor([a['box'] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {
            'boxes': tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=(height, width)),
            'labels': torch.tensor([a['label'] for a in anns], dtype=torch.int64),
            'image_id': image_id,
            'area': torch.tensor([a['area'] for a in anns], dtype=torch.float32),
            'iscrowd': torch.zeros(len(anns), dtype=torch.int64),
        }
        if self.with_masks:
            target['masks'] = tv_tensors.Mask(torch.from_numpy(self._masks(anns, height, width, image_id)))
        return _finish(image, target, self.transforms)


# ----------------------------------------------------------------------------------------- VOC


def find_voc_root(data_dir: str | Path) -> Path:
    """The ``VOC2012`` folder in ``data_dir``: ``data_dir/VOCdevkit/VOC2012``, ``data_dir/VOC2012`` or itself.

    Raises:
        DataError: None of them holds ``ImageSets``.
    """
    data_dir = Path(data_dir).expanduser()
    candidates = (data_dir / 'VOCdevkit' / 'VOC2012', data_dir / 'VOC2012', data_dir)
    for folder in candidates:
        if (folder / 'ImageSets').is_dir():
            return folder
    raise DataError(f'no VOC2012 folder in {data_dir} (looked for {", ".join(str(c) for c in candidates)} '
                    'holding ImageSets/)', 'pass --data-dir the folder that holds VOCdevkit/VOC2012 (the extracted '
                    'VOCtrainval_11-May-2012.tar)')


def _parse_voc_xml(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
        size = root.find('size')
        width, height = int(size.findtext('width')), int(size.findtext('height'))
        objects = []
        for obj in root.iter('object'):
            bnd = obj.find('bndbox')
            objects.append({
                'name': (obj.findtext('name') or '').strip(),
                'difficult': int(obj.findtext('difficult') or 0),
                'box': tuple(float(bnd.findtext(k)) for k in ('xmin', 'ymin', 'xmax', 'ymax')),
            })
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        why = 'not well-formed XML' if isinstance(exc, ET.ParseError) else 'no size/width/height or bndbox numbers'
        raise DataError(f'annotation file {path} is malformed ({why})', 'restore the file from VOC2012') from None
    return {'size': (height, width), 'objects': objects}


class VocDense(torch.utils.data.Dataset):
    """Pascal VOC 2012 for detection (XML) or segmentation (palette PNGs); see the module docstring.

    Args:
        root: Folder holding ``VOCdevkit/VOC2012`` or ``VOC2012``, or that folder itself.
        split: ``'train'`` or ``'val'`` (the ``ImageSets`` list of that name).
        task: ``'detection'`` or ``'segmentation'``.
        transforms: A callable ``(image, target) -> (image, target)``.

    Raises:
        DataError: See the module docstring.
    """

    class_names = list(VOC_CLASSES)
    num_classes = len(VOC_CLASSES) + 1

    def __init__(self, root: str | Path, split: str = 'train', task: str = 'segmentation',
                 transforms: Callable | None = None) -> None:
        self.root = find_voc_root(root)
        self.split = _check_split(split)
        self.task = _check_task(task)
        self.transforms = transforms
        list_file = self.root / 'ImageSets' / ('Segmentation' if task == 'segmentation' else 'Main') / f'{split}.txt'
        if not list_file.is_file():
            raise DataError(f'VOC split list {list_file} not found', f'restore ImageSets of VOC2012 under {self.root}')
        self.names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not self.names:
            raise DataError(f'VOC split list {list_file} is empty', 'restore the file from VOC2012')
        need = [('JPEGImages', '.jpg'), ('SegmentationClass', '.png') if task == 'segmentation' else
                ('Annotations', '.xml')]
        for name in self.names:
            for folder, suffix in need:
                path = self.root / folder / f'{name}{suffix}'
                if not path.is_file():
                    raise DataError(f'{path} (listed in {list_file}) not found', 'restore the file or remove its line')
        self.ids = list(range(len(self.names)))
        self._annotations: list[dict[str, Any]] = []
        if task == 'detection':
            skipped = 0
            for name in self.names:
                path = self.root / 'Annotations' / f'{name}.xml'
                parsed = _parse_voc_xml(path)
                height, width = parsed['size']
                kept = []
                for obj in parsed['objects']:
                    if obj['name'] not in VOC_CLASSES:
                        raise DataError(f'annotation file {path} names class {obj["name"]!r}, not one of VOC\'s 20',
                                        'fix the <name> of the object')
                    x0, y0, x1, y1 = obj['box']
                    box = _clip_box(x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1, width, height)
                    if box is None:
                        skipped += 1
                        continue
                    kept.append({'box': box, 'label': VOC_CLASSES.index(obj['name']) + 1,
                                 'difficult': obj['difficult']})
                self._annotations.append({'size': (height, width), 'objects': kept})
            _warn_skipped(skipped, str(self.root / 'Annotations'))
            self.skipped_boxes = skipped

    def __len__(self) -> int:
        return len(self.names)

    def _segmentation(self, index: int, height: int, width: int) -> torch.Tensor:
        from PIL import Image

        path = self.root / 'SegmentationClass' / f'{self.names[index]}.png'
        try:
            with Image.open(path) as png:
                mode = png.mode
                values = np.asarray(png)
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for broken files
            raise DataError(f'mask {path} cannot be read ({type(exc).__name__})', 'restore the file') from None
        if mode not in ('P', 'L'):
            raise DataError(f'mask {path} is a {mode} image, not a palette PNG of class indices',
                            'use the official SegmentationClass PNGs (mode P, 255 = ignore)')
        if values.shape != (height, width):
            raise DataError(f'mask {path} is {values.shape[0]}x{values.shape[1]}, its image is {height}x{width}',
                            'restore the matching mask')
        bad = np.unique(values[(values >= self.num_classes) & (values != IGNORE_INDEX)])
        if bad.size:
            raise DataError(f'mask {path} holds class values {bad[:5].tolist()} outside 0..{self.num_classes - 1} '
                            f'and {IGNORE_INDEX} (ignore)', 'restore the official mask')
        return torch.from_numpy(values.astype(np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        from torchvision import tv_tensors

        image = _read_image(self.root / 'JPEGImages' / f'{self.names[index]}.jpg')
        height, width = image.shape[-2:]
        if self.task == 'segmentation':
            return _finish(image, tv_tensors.Mask(self._segmentation(index, height, width)), self.transforms)
        ann = self._annotations[index]
        objects = [o for o in ann['objects'] if not o['difficult']]
        boxes = torch.tensor([o['box'] for o in objects], dtype=torch.float32).reshape(-1, 4)
        target = {
            'boxes': tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=(height, width)),
            'labels': torch.tensor([o['label'] for o in objects], dtype=torch.int64),
            'image_id': index,
            'area': (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            'iscrowd': torch.zeros(len(objects), dtype=torch.int64),
        }
        return _finish(image, target, self.transforms)


# ----------------------------------------------------------------------------------------- entry point


def build_dense_dataset(
        source: str,
        root: str | Path | None = None,
        split: str = 'train',
        task: str = 'detection',
        transforms: Callable | None = None,
        *,
        with_masks: bool = True,
        scenes: Any = None,
) -> torch.utils.data.Dataset:
    """One split of a detection or segmentation data set.

    Args:
        source: ``'scenes'``, ``'coco'`` or ``'voc'``.
        root: The data folder (``--data-dir``): the COCO 2017 layout, the folder holding ``VOCdevkit/VOC2012``,
            or for scenes the parent of the generated copies (default: the data cache).
        split: ``'train'`` or ``'val'``.
        task: ``'detection'`` or ``'segmentation'``.
        transforms: A callable ``(image, target) -> (image, target)``, e.g. :func:`dense_transforms`.
        with_masks: Put instance masks into COCO and scenes detection targets.
        scenes: A :class:`~plugattn.data.scenes.ScenesConfig` for the generated set (default sizes when None).

    Returns:
        A map-style data set of ``(image, target)`` with ``class_names``, ``num_classes`` and ``ids``.

    Raises:
        DataError: Unknown source, split or task, missing folder or files, or bad annotations.
    """
    _check_split(split)
    _check_task(task)
    if source == 'voc':
        if root is None:
            raise DataError('--data voc needs --data-dir DIR', 'pass the folder that holds VOCdevkit/VOC2012')
        return VocDense(root, split, task, transforms)
    if source == 'scenes':
        from .scenes import ensure_scenes

        folder = ensure_scenes(root, scenes)
    elif source == 'coco':
        if root is None:
            raise DataError('--data coco needs --data-dir DIR', 'pass the folder holding train2017/, val2017/ and '
                            'annotations/')
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise DataError(f'COCO folder {folder} not found', 'pass --data-dir the folder holding train2017/, '
                            'val2017/ and annotations/')
    else:
        raise DataError(f'unknown dense data source {source!r}', f'use one of {", ".join(DENSE_SOURCES)}')
    return CocoDense(folder / f'{split}2017', folder / 'annotations' / f'instances_{split}2017.json', task,
                     transforms, with_masks=with_masks)


# ----------------------------------------------------------------------------------------- transforms


def _sanitized_entries(inputs: Any) -> tuple[torch.Tensor, ...]:
    """What SanitizeBoundingBoxes drops along with the boxes (a module-level function, so workers can pickle it)."""
    target = inputs[1]
    return tuple(target[key] for key in ('labels', 'area', 'iscrowd') if key in target)


def dense_transforms(
        task: str,
        train: bool,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        crop_size: int | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
) -> Callable:
    """Joint image and target transforms (``torchvision.transforms.v2``) for a dense data set.

    Detection, training: horizontal flip with probability ``hflip``, a resize of the shorter side to ``min_size``
    (longer side at most ``max_size``) when ``min_size`` is given, then clamping and
    :class:`~torchvision.transforms.v2.SanitizeBoundingBoxes` (drops boxes under 1 pixel with their labels, masks,
    areas and crowd flags). Detection, evaluation: no geometric change, because torchvision's detectors resize
    internally and return boxes in the input's coordinates, which the COCO metric compares with the file's.

    Segmentation, training (torchvision's reference recipe): the shorter side resized to a random size in
    ``scale_range`` times ``min_size`` (default the crop size), a flip, and a random ``crop_size`` square crop,
    padding the image with 0 and the mask with 255 (ignore) where it is too small. Segmentation, evaluation: the
    shorter side resized to ``min_size`` when given (masks by nearest neighbour), otherwise unchanged.

    Images end as float32 in [0, 1], then normalised with ``mean`` and ``std`` when both are given.

    Args:
        task: ``'detection'`` or ``'segmentation'``.
        train: Training (random) or evaluation (deterministic) transforms.
        min_size: Shorter side in pixels (see above).
        max_size: Longest longer side after a detection resize.
        crop_size: Side of the segmentation training crop (required for segmentation training).
        scale_range: Random scale range of segmentation training, relative to ``min_size``.
        hflip: Probability of the horizontal flip in training.
        mean: Per-channel mean for normalisation.
        std: Per-channel standard deviation for normalisation.

    Returns:
        A ``transforms.v2.Compose`` taking and returning ``(image, target)``.
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    _check_task(task)
    steps: list[Any] = []
    if task == 'detection':
        if train and hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if train and min_size is not None:
            steps.append(v2.RandomShortestSize(min_size, max_size))
        if train:
            steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=_sanitized_entries)]
    elif train:
        if crop_size is None:
            raise DataError('segmentation training transforms need crop_size', 'pass crop_size, e.g. 480 for VOC')
        base = min_size or crop_size
        low = max(1, round(base * scale_range[0]))
        steps.append(v2.RandomResize(low, max(low + 1, round(base * scale_range[1]) + 1)))  # upper bound exclusive
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Mask: IGNORE_INDEX,
                                                                         'others': 0}))
    elif min_size is not None:
        steps.append(v2.Resize(min_size))
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, 'others': None}, scale=True))
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list, list]:
    """``(images, targets)`` as two lists, the input torchvision's detectors take."""
    return [item[0] for item in batch], [item[1] for item in batch]


def segmentation_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, H, W)`` and masks ``(B, H, W)`` stacked; smaller ones padded at the bottom and right to the
    largest size in the batch (images with 0, masks with 255 = ignore)."""
    height = max(item[0].shape[-2] for item in batch)
    width = max(item[0].shape[-1] for item in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for i, (image, mask) in enumerate(batch):
        images[i, :, :image.shape[-2], :image.shape[-1]] = image
        masks[i, :mask.shape[-2], :mask.shape[-1]] = mask
    return images, masks


# ----------------------------------------------------------------------------------------- ground truth


def _mask_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = _pycocotools_mask().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def coco_from_targets(items: Iterable[tuple[int, tuple[int, int], dict[str, Any]]], class_names: Sequence[str],
                      ) -> Any:
    """A pycocotools ``COCO`` ground truth built from detection targets.

    Args:
        items: ``(image_id, (height, width), target)`` per image; the target's ``boxes`` (XYXY), ``labels`` and,
            when present, ``iscrowd``, ``area`` and ``masks`` (encoded as RLE) are used.
        class_names: The K class names; category ids are the labels 1..K.

    Returns:
        The ``COCO`` object (category ids = labels).
    """
    images, annotations = [], []
    for image_id, (height, width), target in items:
        images.append({'id': int(image_id), 'height': int(height), 'width': int(width)})
        boxes = torch.as_tensor(target['boxes']).detach().float().cpu().reshape(-1, 4)
        labels = torch.as_tensor(target['labels']).cpu().tolist()
        crowd = target.get('iscrowd')
        crowd = [0] * len(labels) if crowd is None else torch.as_tensor(crowd).cpu().tolist()
        areas = target.get('area')
        masks = target.get('masks')
        for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            ann = {'id': len(annotations) + 1, 'image_id': int(image_id), 'category_id': int(labels[j]),
                   'bbox': [x0, y0, x1 - x0, y1 - y0], 'iscrowd': int(crowd[j])}
            if masks is not None:
                ann['segmentation'] = _mask_rle(torch.as_tensor(masks[j]).cpu().numpy())
            ann['area'] = float(areas[j]) if areas is not None else (x1 - x0) * (y1 - y0)
            annotations.append(ann)
    categories = [{'id': i + 1, 'name': name} for i, name in enumerate(class_names)]
    return _new_coco({'images': images, 'annotations': annotations, 'categories': categories})


def coco_ground_truth(dataset: torch.utils.data.Dataset) -> Any:
    """The ground truth of a detection data set as a pycocotools ``COCO``, category ids = the data set's labels.

    COCO and scenes: the annotation file itself (crowd annotations and all), its category ids renumbered to the
    labels 1..K when they differ. VOC: built from the XML files at their original size (difficult objects as crowd
    regions). Any other data set with ``class_names``: built from its targets, reading every item once.

    Args:
        dataset: A data set from :func:`build_dense_dataset` (or any detection data set of ``(image, target)``).

    Returns:
        The ``COCO`` object whose image ids are the targets' ``image_id``. For a ``Subset`` it is the whole data
        set's: :class:`~plugattn.engine.dense_metrics.DetectionMetric` scores only the images it was given.
    """
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if isinstance(dataset, CocoDense):
        if dataset.category_ids == list(range(1, len(dataset.category_ids) + 1)):
            return dataset.coco
        doc = dict(dataset._document)
        doc['annotations'] = [dict(a, category_id=dataset._label_of[int(a['category_id'])])
                              for a in dataset._document['annotations']]
        doc['categories'] = [{'id': i + 1, 'name': name} for i, name in enumerate(dataset.class_names)]
        return _new_coco(doc)
    if isinstance(dataset, VocDense):
        if dataset.task != 'detection':
            raise DataError('the COCO ground truth is for detection data', "build the VOC data with task='detection'")
        items = []
        for index, ann in enumerate(dataset._annotations):
            objects = ann['objects']
            boxes = torch.tensor([o['box'] for o in objects], dtype=torch.float32).reshape(-1, 4)
            items.append((index, ann['size'], {'boxes': boxes, 'labels': torch.tensor([o['label'] for o in objects]),
                                               'iscrowd': torch.tensor([o['difficult'] for o in objects])}))
        return coco_from_targets(items, dataset.class_names)
    items = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        items.append((int(target.get('image_id', index)), tuple(image.shape[-2:]), target))
    return coco_from_targets(items, dataset.class_names)
