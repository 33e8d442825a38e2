"""Detection and segmentation metrics from the standard implementations.

:class:`DetectionMetric` collects torchvision detector outputs per image and scores them with pycocotools'
``COCOeval`` (box AP, and mask AP when the outputs carry masks). :class:`SegmentationMetric` accumulates a confusion
matrix and gives mIoU, per-class IoU and pixel accuracy. Both gather across processes when ``torch.distributed`` is
initialised, so every process returns the same numbers.

Detection keys (pycocotools' 12 ``stats``, in its order): ``map`` (AP at IoU 0.50:0.95), ``map_50``, ``map_75``,
``map_small``, ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``, ``mar_small``, ``mar_medium``,
``mar_large``; the same with a ``mask_`` prefix (``mask_map``, ...) for masks. As in pycocotools, a value is -1 when
the ground truth has no object of that kind (e.g. no small objects).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.dense import coco_from_targets
from .errors import EngineError

__all__ = ['COCO_STAT_KEYS', 'DetectionMetric', 'SegmentationMetric']

COCO_STAT_KEYS = ('map', 'map_50', 'map_75', 'map_small', 'map_medium', 'map_large',
                  'mar_1', 'mar_10', 'mar_100', 'mar_small', 'mar_medium', 'mar_large')


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _cpu(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu()


def _pycocotools() -> Any:
    """pycocotools' mask module, or one clear line on how to install it."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise EngineError('detection metrics need pycocotools', "pip install 'plugattn[dense]'") from None
    return mask_utils


def _coco_eval(gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: list[int]) -> list[float]:
    """pycocotools' 12 summary numbers for ``results`` on the images ``image_ids`` of ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes refuses an empty list; an empty result set scores 0 (or -1 without ground truth)
            dt = COCO()
            dt.dataset = {'images': gt.dataset['images'], 'categories': gt.dataset['categories'], 'annotations': []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


class DetectionMetric:
    """COCO box (and mask) AP of torchvision detector outputs, computed by pycocotools.

    Args:
        coco_gt: The ground truth as a pycocotools ``COCO`` whose category ids are the model's labels
            (:func:`plugattn.data.dense.coco_ground_truth`). When None, it is built from the targets given to
            :meth:`update` (their boxes, labels, ``iscrowd``, ``area`` and masks, at the targets' size).
        class_names: The K class names, needed only when ``coco_gt`` is None.
        mask_threshold: Probability above which a predicted mask pixel is on.

    Only the images given to :meth:`update` are scored (``COCOeval``'s ``imgIds``), so a partial pass scores the
    images it saw. An image seen twice (a distributed sampler pads the last batch) counts once.
    """

    def __init__(self, coco_gt: Any = None, class_names: Sequence[str] | None = None,
                 mask_threshold: float = 0.5) -> None:
        if coco_gt is None and class_names is None:
            raise EngineError('DetectionMetric needs coco_gt or class_names', 'pass the data set\'s class_names')
        self.coco_gt = coco_gt
        self.class_names = list(class_names) if class_names is not None else None
        self.mask_threshold = mask_threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._boxes: dict[int, list[dict[str, Any]]] = {}
        self._masks: dict[int, list[dict[str, Any]]] = {}
        self._targets: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}

    def update(self, outputs: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch.

        Args:
            outputs: torchvision detector outputs, one dict per image: ``boxes`` (N, 4) XYXY in the input image's
                coordinates, ``scores`` (N,), ``labels`` (N,) and for Mask R-CNN ``masks`` (N, 1, H, W) probabilities.
            targets: The matching targets; ``image_id`` is read (and all of it when no ``coco_gt`` was given).
        """
        if len(outputs) != len(targets):
            raise EngineError(f'DetectionMetric.update got {len(outputs)} outputs for {len(targets)} targets',
                              'pass one output per target')
        for output, target in zip(outputs, targets):
            image_id = int(target['image_id'])
            boxes = _cpu(output['boxes']).float().reshape(-1, 4)
            scores = _cpu(output['scores']).float().tolist()
            labels = _cpu(output['labels']).tolist()
            self._boxes[image_id] = [
                {'image_id': image_id, 'category_id': int(label), 'score': score,
                 'bbox': [x0, y0, x1 - x0, y1 - y0]}
                for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), scores, labels)
            ]
            if 'masks' in output:
                mask_utils = _pycocotools()
                masks = (_cpu(output['masks']).float() > self.mask_threshold).to(torch.uint8)
                masks = masks.reshape(-1, *masks.shape[-2:]).numpy()
                rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
                self._masks[image_id] = [
                    {'image_id': image_id, 'category_id': int(label), 'score': score,
                     'segmentation': {'size': list(rle['size']), 'counts': rle['counts'].decode('ascii')}}
                    for rle, score, label in zip(rles, scores, labels)
                ]
            if self.coco_gt is None:
                boxes_gt = target['boxes']
                size = getattr(boxes_gt, 'canvas_size', None)
                if size is None and 'masks' in target:
                    size = tuple(target['masks'].shape[-2:])
                if size is None:
                    raise EngineError('DetectionMetric without coco_gt needs targets whose boxes are '
                                      'tv_tensors.BoundingBoxes (for the image size)',
                                      'pass coco_gt=coco_ground_truth(dataset)')
                kept = {k: _cpu(target[k]) for k in ('boxes', 'labels', 'iscrowd', 'area', 'masks') if k in target}
                self._targets[image_id] = (tuple(int(s) for s in size), kept)

    def _gathered(self) -> tuple[dict, dict, dict]:
        if not _distributed():
            return self._boxes, self._masks, self._targets
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, (self._boxes, self._masks, self._targets))
        merged: tuple[dict, dict, dict] = ({}, {}, {})
        for part in parts:
            for into, new in zip(merged, part):
                into.update(new)
        return merged

    def compute(self) -> dict[str, float]:
        """The COCO numbers (see the module docstring for the keys), the same on every process.

        Mask keys appear when the outputs carried masks and the ground truth has a segmentation for every object.
        """
        _pycocotools()
        boxes, masks, targets = self._gathered()
        result: dict[str, float] = {}
        if not _distributed() or torch.distributed.get_rank() == 0:
            result = self._score(boxes, masks, targets)
        if _distributed():
            holder = [result]
            torch.distributed.broadcast_object_list(holder, src=0)
            result = holder[0]
        return result

    def _score(self, boxes: dict, masks: dict, targets: dict) -> dict[str, float]:
        image_ids = sorted(boxes)
        if self.coco_gt is not None:
            gt = self.coco_gt
            unknown = sorted(set(image_ids) - set(gt.getImgIds()))
            if unknown:
                raise EngineError(f'DetectionMetric got image ids {unknown[:5]} that its ground truth does not list',
                                  'build the ground truth from the same data set (coco_ground_truth)')
        else:
            gt = coco_from_targets(((i, *targets[i]) for i in image_ids), self.class_names)
        result = {}
        stats = _coco_eval(gt, [r for i in image_ids for r in boxes[i]], 'bbox', image_ids)
        result.update(zip(COCO_STAT_KEYS, stats))
        gt_has_masks = all('segmentation' in ann for ann in gt.dataset['annotations'])
        if masks and gt_has_masks:
            stats = _coco_eval(gt, [r for i in image_ids for r in masks.get(i, [])], 'segm', image_ids)
            result.update(zip((f'mask_{k}' for k in COCO_STAT_KEYS), stats))
        return result


class SegmentationMetric:
    """mIoU, per-class IoU and pixel accuracy from a confusion matrix (``torch.bincount``).

    Rows of the matrix are the true classes, columns the predicted ones. Pixels whose target is ``ignore_index``
    (or outside ``0..num_classes - 1``) are not counted. IoU of class c is ``TP / (TP + FP + FN)``; a class absent
    from both the targets and the predictions has no IoU (``None`` in ``iou_per_class``) and is left out of ``miou``,
    the mean over the other classes (background included, as VOC's mIoU counts it). ``pixel_acc`` is the share of
    counted pixels predicted right.

    Args:
        num_classes: Classes including the background (K + 1).
        ignore_index: Target value of pixels not scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise EngineError(f'SegmentationMetric needs num_classes >= 1, got {num_classes}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, preds: torch.Tensor | Mapping[str, torch.Tensor], target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            preds: Logits ``(N, C, H, W)`` (arg-maxed over C), a label map ``(N, H, W)``, or a torchvision
                segmentation model's output dict (its ``'out'``).
            target: Class indices ``(N, H, W)`` with ``ignore_index`` for pixels not scored.
        """
        if isinstance(preds, Mapping):
            preds = preds['out']
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise EngineError(f'SegmentationMetric.update got predictions {tuple(preds.shape)} for targets '
                              f'{tuple(target.shape)}', 'resize the logits to the target size first')
        if self.confusion.device != target.device:
            self.confusion = self.confusion.to(target.device)
        target = target.reshape(-1).long()
        preds = preds.reshape(-1).long()
        keep = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        n = self.num_classes
        index = target[keep] * n + preds[keep].clamp(0, n - 1)
        self.confusion += torch.bincount(index, minlength=n * n).reshape(n, n)

    def compute(self) -> dict[str, Any]:
        """``{'miou', 'pixel_acc', 'iou_per_class'}`` over every process (summed matrices)."""
        confusion = self.confusion.clone()
        if _distributed():
            torch.distributed.all_reduce(confusion)
        confusion = confusion.cpu().double()
        true_positive = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
        total = confusion.sum()
        return {
            'miou': float(iou[present].mean()) if present.any() else 0.0,
            'pixel_acc': float(true_positive.sum() / total) if total > 0 else 0.0,
            'iou_per_class': [float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())],
        }
