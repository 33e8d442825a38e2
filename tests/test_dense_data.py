"""Detection and segmentation data and metrics: COCO and VOC loaders on files written here in the official formats,
the generated scenes set, transforms, pycocotools AP on hand-checked cases, mIoU on a hand-computed confusion
matrix, and the one-line DataError of every bad input."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('pycocotools')

from plugattn.data import DataError
from plugattn.data.dense import (
    VOC_CLASSES,
    build_dense_dataset,
    coco_ground_truth,
    dense_transforms,
    detection_collate,
    segmentation_collate,
)
from plugattn.engine.dense_metrics import DetectionMetric, SegmentationMetric
from plugattn.errors import PlugattnError

# ----------------------------------------------------------------------------------------- writers


def _write_image(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)  # PNG: lossless, so flipped pixels can be compared exactly
    return pixels


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': list(rle['size']), 'counts': rle['counts'].decode()}


def _coco_document() -> dict:
    """Two images (30x40 and 20x20), categories with COCO-style gaps (3 'cat', 7 'dog')."""
    square = np.zeros((30, 40), dtype=np.uint8)
    square[5:15, 20:30] = 1
    return {
        'images': [{'id': 11, 'file_name': 'a.png', 'height': 30, 'width': 40},
                   {'id': 12, 'file_name': 'b.png', 'height': 20, 'width': 20}],
        'annotations': [
            # a polygon rectangle from x 2 to 12 and y 4 to 10: pycocotools fills pixels 2..11 x 4..9 (area 60)
            {'id': 1, 'image_id': 11, 'category_id': 3, 'bbox': [2, 4, 10, 6], 'area': 60, 'iscrowd': 0,
             'segmentation': [[2, 4, 12, 4, 12, 10, 2, 10]]},
            {'id': 2, 'image_id': 11, 'category_id': 7, 'bbox': [20, 5, 10, 10], 'area': 100, 'iscrowd': 0,
             'segmentation': _rle(square)},
            {'id': 3, 'image_id': 12, 'category_id': 7, 'bbox': [0, 0, 20, 20], 'area': 400, 'iscrowd': 1,
             'segmentation': _rle(np.ones((20, 20)))},
        ],
        'categories': [{'id': 3, 'name': 'cat'}, {'id': 7, 'name': 'dog'}],
    }


def _write_coco(root: Path, document: dict | None = None, split: str = 'train') -> dict[str, np.ndarray]:
    document = document or _coco_document()
    pixels = {im['file_name']: _write_image(root / f'{split}2017' / im['file_name'], im['height'], im['width'], i)
              for i, im in enumerate(document['images'])}
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    (root / 'annotations' / f'instances_{split}2017.json').write_text(json.dumps(document))
    return pixels


def _voc_palette_png(path: Path, values: np.ndarray) -> None:
    from PIL import Image

    png = Image.fromarray(values.astype(np.uint8), mode='P')
    palette = [0] * 768
    palette[15 * 3:15 * 3 + 3] = [192, 128, 128]
    palette[255 * 3:255 * 3 + 3] = [224, 224, 192]
    png.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    png.save(path)


_VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>32</width><height>24</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
<bndbox><xmin>3</xmin><ymin>5</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
<bndbox><xmin>12</xmin><ymin>2</ymin><xmax>30</xmax><ymax>22</ymax></bndbox></object>
</annotation>"""


def _write_voc(data_dir: Path) -> Path:
    voc = data_dir / 'VOCdevkit' / 'VOC2012'
    _write_image(voc / 'JPEGImages' / 'x1.jpg', 24, 32)
    seg = np.zeros((24, 32), dtype=np.uint8)
    seg[4:12, 6:20] = 15  # person
    seg[4, 6:20] = 255  # border = ignore
    _voc_palette_png(voc / 'SegmentationClass' / 'x1.png', seg)
    (voc / 'Annotations').mkdir(parents=True)
    (voc / 'Annotations' / 'x1.xml').write_text(_VOC_XML.format(name='x1'))
    for sub in ('Segmentation', 'Main'):
        (voc / 'ImageSets' / sub).mkdir(parents=True)
        (voc / 'ImageSets' / sub / 'train.txt').write_text('x1\n')
    return voc


# ----------------------------------------------------------------------------------------- COCO


def test_coco_detection_targets(tmp_path):
    pixels = _write_coco(tmp_path)
    ds = build_dense_dataset('coco', tmp_path, 'train', 'detection')
    assert ds.class_names == ['cat', 'dog'] and ds.num_classes == 3 and ds.category_ids == [3, 7]
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert torch.allclose(image * 255, torch.from_numpy(pixels['a.png']).permute(2, 0, 1).float(), atol=1e-3)
    assert target['image_id'] == 11
    assert target['boxes'].tolist() == [[2, 4, 12, 10], [20, 5, 30, 15]]
    assert target['boxes'].format.value == 'XYXY' and tuple(target['boxes'].canvas_size) == (30, 40)
    assert target['labels'].tolist() == [1, 2] and target['labels'].dtype == torch.int64
    masks = target['masks']
    assert masks.shape == (2, 30, 40) and masks.dtype == torch.uint8
    assert masks[1].sum() == 100 and masks[1, 5:15, 20:30].all()
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) == (2, 4, 11, 9) and masks[0].sum() == 60
    _, crowd_only = ds[1]  # the crowd annotation stays out of the targets
    assert crowd_only['boxes'].shape == (0, 4) and crowd_only['masks'].shape == (0, 20, 20)


def test_coco_flip_moves_boxes_masks_and_pixels_together(tmp_path):
    _write_coco(tmp_path)
    plain = build_dense_dataset('coco', tmp_path, 'train', 'detection')
    flipped = build_dense_dataset('coco', tmp_path, 'train', 'detection',
                                  dense_transforms('detection', train=True, hflip=1.0))
    (image, target), (image_f, target_f) = plain[0], flipped[0]
    assert torch.equal(image_f, image.flip(-1))
    assert torch.equal(target_f['masks'], target['masks'].flip(-1))
    width = 40
    expected = target['boxes'].clone()
    expected[:, 0], expected[:, 2] = width - target['boxes'][:, 2], width - target['boxes'][:, 0]
    assert torch.equal(target_f['boxes'].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))
    for mask, box in zip(target_f['masks'], target_f['boxes'].tolist()):  # boxes still enclose their masks
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box[0] <= xs.min() and xs.max() < box[2] + 1 and box[1] <= ys.min() and ys.max() < box[3] + 1
    images, targets = detection_collate([flipped[0], flipped[1]])
    assert len(images) == len(targets) == 2 and targets[1]['image_id'] == 12


def test_coco_semantic_mask_and_ground_truth(tmp_path):
    _write_coco(tmp_path)
    ds = build_dense_dataset('coco', tmp_path, 'train', 'segmentation')
    _, mask = ds[0]
    assert mask.shape == (30, 40) and mask.dtype == torch.int64
    assert (mask == 2).sum() == 100 and mask[5:15, 20:30].eq(2).all()
    assert (mask == 1).sum() == 60 and mask[4:10, 2:12].eq(1).all()
    assert set(mask.unique().tolist()) == {0, 1, 2}
    _, crowd = ds[1]
    assert crowd.eq(255).all()  # crowd regions are ignored
    gt = coco_ground_truth(build_dense_dataset('coco', tmp_path, 'train', 'detection'))
    assert sorted(gt.getCatIds()) == [1, 2] and sorted(gt.getImgIds()) == [11, 12]
    assert [a['category_id'] for a in gt.loadAnns(gt.getAnnIds(imgIds=[11]))] == [1, 2]
    subset = torch.utils.data.Subset(build_dense_dataset('coco', tmp_path, 'train', 'detection'), [1])
    assert sorted(coco_ground_truth(subset).getImgIds()) == [11, 12]


# ----------------------------------------------------------------------------------------- VOC


def test_voc_segmentation_palette_png(tmp_path):
    _write_voc(tmp_path)
    for root in (tmp_path, tmp_path / 'VOCdevkit' / 'VOC2012'):  # DIR holds VOCdevkit/VOC2012, or is VOC2012
        ds = build_dense_dataset('voc', root, 'train', 'segmentation')
        assert ds.num_classes == 21 and ds.class_names[14] == 'person'
        image, mask = ds[0]
        assert image.shape == (3, 24, 32) and mask.shape == (24, 32) and mask.dtype == torch.int64
        assert (mask == 15).sum() == 7 * 14 and (mask == 255).sum() == 14 and mask[0, 0] == 0
    train = build_dense_dataset('voc', tmp_path, 'train', 'segmentation', dense_transforms(
        'segmentation', train=True, min_size=24, crop_size=40, scale_range=(1.0, 1.0)))
    image, mask = train[0]  # 24x32 kept (scale 1) and padded to 40x40: 255 in the mask, 0 in the image
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)
    assert (mask == 255).sum() == 40 * 40 - 24 * 32 + 14 and (mask == 15).sum() == 7 * 14
    assert image.eq(0).all(0).sum() >= 40 * 40 - 24 * 32
    images, masks = segmentation_collate([train[0], build_dense_dataset('voc', tmp_path, 'train', 'segmentation')[0]])
    assert images.shape == (2, 3, 40, 40) and masks[1, 24:].eq(255).all() and masks[1, :, 32:].eq(255).all()


def test_voc_detection_xml(tmp_path):
    _write_voc(tmp_path)
    ds = build_dense_dataset('voc', tmp_path, 'train', 'detection')
    _, target = ds[0]
    assert target['boxes'].tolist() == [[2, 4, 10, 20]]  # 1-based inclusive pixels to XYXY edges
    assert target['labels'].tolist() == [VOC_CLASSES.index('dog') + 1] and target['image_id'] == 0
    assert 'masks' not in target  # the difficult person is left out of training
    gt = coco_ground_truth(ds)
    anns = gt.loadAnns(gt.getAnnIds())
    assert [(a['category_id'], a['iscrowd']) for a in anns] == [(12, 0), (15, 1)]
    assert anns[0]['bbox'] == [2, 4, 8, 16]


# ----------------------------------------------------------------------------------------- scenes


def _fashion_available() -> bool:
    from plugattn.data.sources import load_fashion_mnist

    try:
        load_fashion_mnist('test', download=False)
    except DataError:
        return False
    return True


@pytest.fixture(scope='module')
def scenes_cfg():
    if not _fashion_available():
        pytest.skip('Fashion-MNIST is not installed')
    from plugattn.data.scenes import ScenesConfig

    return ScenesConfig(num_train=6, num_val=3, canvas_size=64, max_objects=3, min_scale=16, max_scale=32, seed=5)


def test_scenes_deterministic_boxes_inside_masks_agree(tmp_path, scenes_cfg):
    from plugattn.data.scenes import ScenesConfig, ensure_scenes

    first = ensure_scenes(tmp_path / 'a', scenes_cfg)
    second = ensure_scenes(tmp_path / 'b', scenes_cfg)
    assert first.name == second.name == f'scenes-{scenes_cfg.fingerprint()}'
    assert [p.name for p in (tmp_path / 'a').iterdir()] == [first.name]  # no temporary folder left behind
    for rel in ('annotations/instances_train2017.json', 'annotations/instances_val2017.json',
                'train2017/000000000006.jpg', 'val2017/000000000003.jpg'):
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
    stamp = (first / 'scenes.json').stat().st_mtime_ns
    assert ensure_scenes(tmp_path / 'a', scenes_cfg) == first and (first / 'scenes.json').stat().st_mtime_ns == stamp
    clash = tmp_path / 'c' / first.name  # a folder in the way that is not a finished copy: one line, no leftovers
    (clash / 'train2017').mkdir(parents=True)
    with pytest.raises(DataError, match='remove that folder'):
        ensure_scenes(tmp_path / 'c', scenes_cfg)
    assert [p.name for p in (tmp_path / 'c').iterdir()] == [first.name]
    other = ScenesConfig(**{**scenes_cfg.as_dict(), 'seed': 6})
    assert other.fingerprint() != scenes_cfg.fingerprint()

    ds = build_dense_dataset('scenes', tmp_path / 'a', 'train', 'detection', scenes=scenes_cfg)
    assert len(ds) == 6 and ds.num_classes == 11 and ds.class_names[0] == 'T-shirt/top'
    count = 0
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.shape == (3, 64, 64) and 1 <= len(target['labels']) <= 3
        assert target['labels'].min() >= 1 and target['labels'].max() <= 10
        boxes = target['boxes']
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert target['masks'].sum(0).max() <= 1  # a garment on top hides the ones below: masks never overlap
        for mask, box, area in zip(target['masks'], boxes.tolist(), target['area'].tolist()):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box and mask.sum() == area
            count += 1
    assert count >= 6
    _, semantic = build_dense_dataset('scenes', tmp_path / 'a', 'val', 'segmentation', scenes=scenes_cfg)[0]
    assert semantic.shape == (64, 64) and 0 < semantic.gt(0).sum() < 64 * 64 and semantic.max() <= 10


# ----------------------------------------------------------------------------------------- detection metric


def _gt(boxes: list[list[float]], labels: list[int], image_id: int = 1, size: tuple[int, int] = (64, 64)) -> dict:
    from torchvision import tv_tensors

    return {'boxes': tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format='XYXY',
                                              canvas_size=size),
            'labels': torch.tensor(labels), 'image_id': image_id}


def _out(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    return {'boxes': torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), 'labels': torch.tensor(labels),
            'scores': torch.tensor(scores)}


def test_detection_metric_perfect_empty_and_mixed():
    boxes = [[2, 2, 12, 12], [30, 30, 40, 40]]  # two 10x10 objects of class 1 (small: area 100 < 32**2)
    target = _gt(boxes, [1, 1])
    metric = DetectionMetric(class_names=['thing'])
    metric.update([_out(boxes, [1, 1], [0.9, 0.8])], [target])
    perfect = metric.compute()
    assert perfect['map'] == perfect['map_50'] == perfect['map_small'] == perfect['mar_100'] == 1.0
    assert perfect['map_medium'] == -1.0  # no medium objects in the ground truth
    metric.reset()
    metric.update([_out([], [], [])], [target])
    assert metric.compute()['map'] == 0.0 and metric.compute()['mar_100'] == 0.0
    # One of the two found, exactly: recall reaches 0.5 at precision 1, so 51 of the 101 recall points (0, 0.01,
    # ..., 0.50) have precision 1 and the rest 0, at every IoU threshold: AP = 51/101.
    metric.reset()
    metric.update([_out(boxes[:1], [1], [0.9])], [target])
    found_one = metric.compute()
    assert found_one['map'] == pytest.approx(51 / 101) and found_one['mar_100'] == pytest.approx(0.5)
    # A false positive scored above it halves the precision at recall 0.5: AP = 0.5 * 51/101.
    metric.reset()
    metric.update([_out([boxes[0], [50, 2, 60, 12]], [1, 1], [0.5, 0.9])], [target])
    assert metric.compute()['map'] == pytest.approx(0.5 * 51 / 101)


def test_detection_metric_equals_cocoeval_on_written_files(tmp_path):
    """The metric on a data set equals pycocotools run by hand on the annotation file and a results file."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _write_coco(tmp_path)
    ds = build_dense_dataset('coco', tmp_path, 'train', 'detection')
    outputs = {11: _out([[2, 4, 12, 11], [20, 5, 29, 15], [0, 0, 5, 5]], [1, 2, 2], [0.9, 0.7, 0.8]),
               12: _out([[0, 0, 20, 20]], [2], [0.6])}
    metric = DetectionMetric(coco_ground_truth(ds))
    results = []
    for index in range(len(ds)):
        _, target = ds[index]
        out = outputs[target['image_id']]
        metric.update([out], [target])
        for (x0, y0, x1, y1), label, score in zip(out['boxes'].tolist(), out['labels'].tolist(),
                                                  out['scores'].tolist()):
            results.append({'image_id': target['image_id'], 'category_id': ds.category_ids[label - 1],
                            'bbox': [x0, y0, x1 - x0, y1 - y0], 'score': score})
    ours = metric.compute()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / 'annotations' / 'instances_train2017.json'))
        evaluator = COCOeval(gt, gt.loadRes(results), 'bbox')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert [ours[k] for k in ('map', 'map_50', 'map_75', 'mar_1', 'mar_100')] == pytest.approx(
        [evaluator.stats[i] for i in (0, 1, 2, 6, 8)])
    assert 0 < ours['map'] < 1


def test_detection_metric_masks():
    mask = torch.zeros(2, 64, 64)
    mask[0, 2:12, 2:12] = 1
    mask[1, 30:40, 30:40] = 1
    target = {**_gt([[2, 2, 12, 12], [30, 30, 40, 40]], [1, 2]), 'masks': mask.to(torch.uint8)}
    output = {**_out([[2, 2, 12, 12], [30, 30, 40, 40]], [1, 2], [0.9, 0.8]), 'masks': mask[:, None] * 0.9}
    metric = DetectionMetric(class_names=['a', 'b'])
    metric.update([output], [target])
    assert metric.compute()['mask_map'] == pytest.approx(1.0)
    output['masks'] = torch.zeros(2, 1, 64, 64)  # right boxes, empty masks
    metric.reset()
    metric.update([output], [target])
    result = metric.compute()
    assert result['map'] == pytest.approx(1.0) and result['mask_map'] == 0.0


# ----------------------------------------------------------------------------------------- segmentation metric


def test_segmentation_metric_hand_computed():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    preds = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    # counted (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2); rows gt [1,1,0], [0,2,0], [0,0,1]
    # IoU0 = 1/(2+1-1) = 0.5, IoU1 = 2/(2+3-2) = 2/3, IoU2 = 1, class 3 absent from both: left out
    metric = SegmentationMetric(num_classes=4)
    metric.update(preds, target)
    assert metric.confusion[:3, :3].tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    result = metric.compute()
    assert result['iou_per_class'][:3] == pytest.approx([0.5, 2 / 3, 1.0]) and result['iou_per_class'][3] is None
    assert result['miou'] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert result['pixel_acc'] == pytest.approx(4 / 5)
    logits = torch.nn.functional.one_hot(preds, 4).permute(0, 3, 1, 2).float()  # logits and the output dict agree
    again = SegmentationMetric(num_classes=4)
    again.update({'out': logits}, target)
    assert again.compute() == result


def test_metrics_gather_across_processes(monkeypatch):
    """With torch.distributed initialised, each metric combines every process's part (here rank 0 of a world of
    two, whose other part comes from a second metric through the patched collectives)."""
    import torch.distributed as dist

    boxes = [[2, 2, 12, 12], [30, 30, 40, 40]]
    detections = [DetectionMetric(class_names=['thing']) for _ in range(2)]
    segmentations = [SegmentationMetric(num_classes=3) for _ in range(2)]
    gts = (torch.tensor([[[0, 0, 1]]]), torch.tensor([[[1, 2, 255]]]))
    preds = (torch.tensor([[[0, 1, 1]]]), torch.tensor([[[1, 2, 0]]]))
    for rank in range(2):  # each process sees one image with two objects and finds one; image 2 is seen twice
        detections[rank].update([_out(boxes[rank:rank + 1], [1], [0.9])], [_gt(boxes, [1, 1], image_id=rank + 1)])
        detections[rank].update([_out(boxes[:1], [1], [0.9])], [_gt(boxes, [1, 1], image_id=2)])
        segmentations[rank].update(preds[rank], gts[rank])

    def all_gather_object(parts, obj):
        parts[0], parts[1] = obj, (detections[1]._boxes, detections[1]._masks, detections[1]._targets)

    monkeypatch.setattr(dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(dist, 'get_world_size', lambda group=None: 2)
    monkeypatch.setattr(dist, 'get_rank', lambda group=None: 0)
    monkeypatch.setattr(dist, 'all_gather_object', all_gather_object)
    monkeypatch.setattr(dist, 'broadcast_object_list', lambda objects, src=0: None)
    monkeypatch.setattr(dist, 'all_reduce', lambda tensor, op=None: tensor.add_(segmentations[1].confusion))
    assert detections[0].compute()['map'] == pytest.approx(51 / 101)  # 2 of 4 objects found, image 2 counted once
    assert segmentations[0].compute()['miou'] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert segmentations[0].confusion.sum() == 3  # compute() reduces a copy: calling it again does not double


# ----------------------------------------------------------------------------------------- bad input


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert '\n' not in text
    return text


def test_coco_bad_input_messages(tmp_path):
    with pytest.raises(DataError) as exc:
        build_dense_dataset('coco', tmp_path, 'val', 'detection')
    assert 'instances_val2017.json not found' in _one_line(exc)

    _write_coco(tmp_path)
    ann_file = tmp_path / 'annotations' / 'instances_train2017.json'
    ann_file.write_text('{"images": [')
    with pytest.raises(DataError) as exc:
        build_dense_dataset('coco', tmp_path, 'train', 'detection')
    assert 'instances_train2017.json is not valid JSON' in _one_line(exc)

    def broken(change) -> str:
        document = _coco_document()
        change(document)
        ann_file.write_text(json.dumps(document))
        with pytest.raises(DataError) as exc:
            build_dense_dataset('coco', tmp_path, 'train', 'detection')
        return _one_line(exc)

    assert 'train2017/gone.png listed in' in broken(lambda d: d['images'][1].update(file_name='gone.png'))
    assert 'annotation 2 has category id 5, not in categories [3, 7]' in broken(
        lambda d: d['annotations'][1].update(category_id=5))
    assert 'annotation 2 has a mask of size [10, 10], its image a.png is 30x40' in broken(
        lambda d: d['annotations'][1].update(segmentation=_rle(np.ones((10, 10)))))
    assert "an image or category entry lacks a 'height' field" in broken(lambda d: d['images'][0].pop('height'))
    assert 'lists a category id or an image id twice' in broken(lambda d: d['categories'][1].update(id=3))
    assert 'annotation 1 refers to image id 99' in broken(lambda d: d['annotations'][0].update(image_id=99))

    document = _coco_document()
    document['annotations'][0]['bbox'] = [2, 4, 0, 6]  # zero width
    document['annotations'][1]['bbox'] = [50, 5, 10, 10]  # right of the 40-pixel-wide image
    ann_file.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match='skipped 2 boxes with no area inside their image'):
        ds = build_dense_dataset('coco', tmp_path, 'train', 'detection')
    assert ds.skipped_boxes == 2 and len(ds[0][1]['boxes']) == 0

    ann_file.write_text(json.dumps(_coco_document()))
    (tmp_path / 'train2017' / 'a.png').write_bytes(b'not an image')
    ds = build_dense_dataset('coco', tmp_path, 'train', 'detection')  # listed files exist: decoding fails on read
    with pytest.raises(DataError) as exc:
        ds[0]
    assert 'a.png' in _one_line(exc)


def test_voc_bad_input_messages(tmp_path):
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'train', 'segmentation')
    assert 'no VOC2012 folder in' in _one_line(exc) and 'VOCdevkit/VOC2012' in str(exc.value)
    voc = _write_voc(tmp_path)
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'val', 'segmentation')
    assert 'Segmentation/val.txt not found' in _one_line(exc)

    _voc_palette_png(voc / 'SegmentationClass' / 'x1.png', np.zeros((10, 32)))
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'train', 'segmentation')[0]
    assert 'x1.png is 10x32, its image is 24x32' in _one_line(exc)
    values = np.zeros((24, 32))
    values[0, 0] = 30
    _voc_palette_png(voc / 'SegmentationClass' / 'x1.png', values)
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'train', 'segmentation')[0]
    assert 'holds class values [30] outside 0..20' in _one_line(exc)

    (voc / 'Annotations' / 'x1.xml').write_text(_VOC_XML.format(name='x1').replace('>dog<', '>dragon<'))
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'train', 'detection')
    assert "x1.xml names class 'dragon'" in _one_line(exc)
    (voc / 'Annotations' / 'x1.xml').write_text('<annotation><size>')
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'train', 'detection')
    assert 'x1.xml is malformed' in _one_line(exc)
    (voc / 'Annotations' / 'x1.xml').unlink()
    with pytest.raises(DataError) as exc:
        build_dense_dataset('voc', tmp_path, 'train', 'detection')
    assert 'x1.xml (listed in' in _one_line(exc)


def test_missing_pycocotools_names_the_extra(monkeypatch, tmp_path):
    import sys

    from plugattn.data.scenes import ensure_scenes

    _write_coco(tmp_path)
    ds = build_dense_dataset('coco', tmp_path, 'train', 'detection')
    monkeypatch.setitem(sys.modules, 'pycocotools', None)
    monkeypatch.setitem(sys.modules, 'pycocotools.mask', None)
    with pytest.raises(DataError, match=r"pip install 'plugattn\[dense\]'"):
        ds[0]
    with pytest.raises(DataError, match=r"pip install 'plugattn\[dense\]'"), warnings.catch_warnings():
        ensure_scenes(tmp_path / 'scenes')
    metric = DetectionMetric(class_names=['thing'])
    metric.update([_out([[0, 0, 4, 4]], [1], [0.5])], [_gt([[0, 0, 4, 4]], [1])])
    with pytest.raises(PlugattnError, match=r"pip install 'plugattn\[dense\]'"):
        metric.compute()
