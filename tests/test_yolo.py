"""plugattn in ultralytics YOLO models: the attach family, training through ultralytics, the COCO -> YOLO converter
and the CLI (CPU, tiny inputs; skipped without ultralytics)."""
from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import plugattn
from plugattn import yolo
from plugattn.data.yolo_format import coco_to_yolo
from plugattn.errors import PlugattnError

try:  # the way plugattn imports it: offline, Pillow's Image.open and the thread settings of the process kept
    ultralytics = yolo.import_ultralytics()
except PlugattnError:
    pytest.skip("ultralytics is not installed (pip install 'plugattn[yolo]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def built():
    """One plain model per YAML (building runs ultralytics' stride probe), copied by each test."""
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel, SegmentationModel

    torch.manual_seed(0)
    return {
        'yolov8n': DetectionModel('yolov8n.yaml', nc=2, verbose=False),
        'yolo11n': DetectionModel('yolo11n.yaml', nc=2, verbose=False),
        'yolov5n': DetectionModel('yolov5n.yaml', nc=2, verbose=False),  # v5-style C3 blocks
        'yolov8n-seg': SegmentationModel('yolov8n-seg.yaml', nc=2, verbose=False),
        'yolov8n-cls': ClassificationModel('yolov8n-cls.yaml', nc=3, verbose=False),
    }


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out for t in _flat(v)]


def _randomize_blend(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if name.endswith('attn.blend'):
            p.data.fill_(0.5)


# number of attention modules / new keys of each attention on each model (where='csp')
EXPECTED = {('yolov8n', 'ca'): 10, ('yolov8n', 'bav2'): 8, ('yolov8n', 'dia'): 8,
            ('yolo11n', 'ca'): 11, ('yolo11n', 'bav2'): 8, ('yolo11n', 'dia'): 8}


@pytest.mark.parametrize('name', ['yolov8n', 'yolo11n'])
@pytest.mark.parametrize('attn', ['ca', 'bav2', 'dia'])
def test_attach_keeps_keys_and_warm_start_is_the_original(built, name, attn, tmp_path):
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.patches import torch_save

    plain = copy.deepcopy(built[name]).eval()
    model = copy.deepcopy(plain)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = _flat(plain(x))
    plugattn.attach(model, attn, warm_start=True)
    before, after = plain.state_dict(), model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), 'an original key changed'
    new = [k for k in after if k not in before]
    assert new and all('.attn.' in k for k in new)
    assert len(model.attention_modules()) == EXPECTED[name, attn]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(ref, _flat(model(x)), strict=True))  # bitwise: blend = 0

    # the un-attached weights load with only the attention keys missing
    fresh = plugattn.attach(copy.deepcopy(plain), attn, warm_start=True)
    result = fresh.load_state_dict(before, strict=False)
    # (a BatchNorm fills in a missing num_batches_tracked itself, as for old checkpoints)
    assert sorted(result.missing_keys) == sorted(k for k in new if not k.endswith('num_batches_tracked'))
    assert not result.unexpected_keys

    # forward and backward in training mode reach the attention (blend away from 0: the gates matter)
    _randomize_blend(model)
    model.train()
    sum(t.float().mean() for t in _flat(model(x))).backward()
    grads = [p.grad for n, p in model.named_parameters() if '.attn.' in n and not n.endswith('blend')]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    # pickled and unpickled by ultralytics' own save / load functions, attention included
    model.eval()
    with torch.no_grad():
        out = _flat(model(x))
    torch_save({'model': model, 'train_args': {}}, tmp_path / 'w.pt')
    loaded, _ = load_checkpoint(tmp_path / 'w.pt')
    assert len(loaded.attention_modules()) == EXPECTED[name, attn]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(out, _flat(loaded.eval()(x)), strict=True))


def test_attention_keeps_the_papers_batchnorm(built):
    model = plugattn.attach(copy.deepcopy(built['yolov8n']), 'ca')
    host = model.model[2].cv1.bn
    attn_bn = model.model[2].m[0].attn.bn1
    assert (host.eps, host.momentum) == (1e-3, 0.03)  # ultralytics' initialize_weights
    assert (attn_bn.eps, attn_bn.momentum) == (1e-5, 0.1)  # CA's own, untouched when attached after the build


def test_placements(built):
    v8 = built['yolov8n']
    model = plugattn.attach(copy.deepcopy(v8), 'cbam', where='block')
    assert sorted(model.attention_modules()) == ['model.2.attn', 'model.4.attn', 'model.6.attn', 'model.8.attn']
    model = plugattn.attach(copy.deepcopy(v8), 'se', where='backbone_end')
    assert list(model.attention_modules()) == ['model.9.attn']  # SPPF
    assert model.model[9].attn.fc[0].in_features == v8.model[9].cv2.conv.out_channels  # width from the host
    model = plugattn.attach(copy.deepcopy(v8), 'dia', where='backbone')
    assert sorted(model.attention_modules()) == ['model.2.m.attn', 'model.4.m.attn', 'model.6.m.attn',
                                                 'model.8.m.attn']
    model = plugattn.attach(copy.deepcopy(built['yolo11n']), 'eca', where='backbone_end')
    assert list(model.attention_modules()) == ['model.10.attn']  # C2PSA
    with pytest.raises(PlugattnError, match="where='nowhere' is not a YOLO placement"):
        plugattn.attach(copy.deepcopy(v8), 'ca', where='nowhere')
    with pytest.raises(PlugattnError, match='takes a gate-level attention'):
        plugattn.attach(copy.deepcopy(v8), 'bav2', where='block')
    assert plugattn.attach.found_blocks(v8)['family'] == 'ultralytics yolo'
    assert set(plugattn.attach.attachable(v8)) >= {'ca', 'cbam', 'ela_b', 'bav2', 'dia', 'se', 'eca'}


@pytest.mark.parametrize('name, attn, count', [('yolov8n-seg', 'ca', 10), ('yolov8n-cls', 'bav2', 4),
                                               ('yolov8n-cls', 'se', 1), ('yolov5n', 'bav2', 8),
                                               ('yolov5n', 'dia', 8)])
def test_other_tasks_and_c3_models(built, name, attn, count):
    plain = copy.deepcopy(built[name]).eval()
    model = copy.deepcopy(plain)
    plugattn.attach(model, attn, warm_start=True, **({'where': 'backbone_end'} if attn == 'se' else {}))
    assert len(model.attention_modules()) == count
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_flat(plain(x)), _flat(model(x)), strict=True))


def _write_coco(root: Path, images: int = 8, size: int = 64) -> None:
    """Two-class boxes (red and green rectangles) in the COCO 2017 layout."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / 'annotations').mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (root / split).mkdir()
        imgs, anns = [], []
        for i in range(images):
            img = np.full((size, size, 3), 40, np.uint8)
            x, y = (int(v) for v in rng.integers(2, size // 2, 2))
            w, h = (int(v) for v in rng.integers(16, size // 2, 2))
            cat = 3 if i % 2 else 7  # non-contiguous ids: class index = order of the ids
            img[y:y + h, x:x + w] = (230, 40, 40) if cat == 3 else (40, 230, 40)
            Image.fromarray(img).save(root / split / f'{i}.jpg')
            imgs.append({'id': i + 1, 'file_name': f'{i}.jpg', 'width': size, 'height': size})
            anns.append({'id': i + 1, 'image_id': i + 1, 'category_id': cat, 'bbox': [x, y, w, h],
                         'area': w * h, 'iscrowd': 0})
        anns.append({'id': 99, 'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 5, 5], 'area': 25, 'iscrowd': 1})
        cats = [{'id': 7, 'name': 'green box'}, {'id': 3, 'name': 'red: box'}]
        (root / 'annotations' / f'instances_{split}.json').write_text(
            json.dumps({'images': imgs, 'annotations': anns, 'categories': cats}))


def test_coco_to_yolo(tmp_path):
    import yaml

    root = tmp_path / 'coco'
    _write_coco(root, images=2)
    data = coco_to_yolo(root, tmp_path / 'yolo')
    spec = yaml.safe_load(data.read_text())
    assert spec['names'] == {0: 'red: box', 1: 'green box'} and spec['nc'] == 2
    assert (spec['train'], spec['val']) == ('images/train', 'images/val')
    assert 'path' not in spec  # ultralytics takes the file's folder as the root: the folder can be moved
    coco = json.loads((root / 'annotations' / 'instances_train2017.json').read_text())
    x, y, w, h = coco['annotations'][0]['bbox']  # image 0, category 7 -> class 1; the crowd box is left out
    row = (tmp_path / 'yolo' / 'labels' / 'train' / '0.txt').read_text().split()
    assert row[0] == '1' and np.allclose([float(v) for v in row[1:]],
                                         [(x + w / 2) / 64, (y + h / 2) / 64, w / 64, h / 64], atol=1e-6)
    assert len((tmp_path / 'yolo' / 'labels' / 'train' / '0.txt').read_text().splitlines()) == 1
    assert (tmp_path / 'yolo' / 'images' / 'val' / '1.jpg').is_file()
    with pytest.raises(PlugattnError, match=r'no annotations/instances_<split>\.json'):
        coco_to_yolo(tmp_path / 'yolo', tmp_path / 'again')


@pytest.fixture
def no_network(monkeypatch):
    """Every network connection attempt fails and is recorded."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError('network disabled in this test')

    monkeypatch.setattr(socket.socket, 'connect', lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, 'getaddrinfo', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)
    return attempts


def test_train_validate_reload_offline(tmp_path, no_network):
    _write_coco(tmp_path / 'coco')
    data = coco_to_yolo(tmp_path / 'coco', tmp_path / 'yolo')
    model = yolo.train('yolov8n.yaml', 'ca', data=data, epochs=1, imgsz=64, batch=4, workers=0, device='cpu',
                       project=str(tmp_path / 'runs'), name='ca', seed=0, verbose=False)
    box = model.metrics.box
    assert math.isfinite(box.map) and 0.0 <= box.map <= 1.0 and 0.0 <= box.map50 <= 1.0
    best = Path(model.trainer.best)
    assert best.is_file()
    loaded = yolo.load(best)  # whole pickled model: attention and its blend come back
    assert len(loaded.model.attention_modules()) == 10
    assert yolo.attached_spec(loaded.model) == {'attn': 'ca', 'warm_start': True, 'where': 'csp', 'attn_kwargs': {}}
    metrics = yolo.val(best, data=data, imgsz=64, batch=4, workers=0, device='cpu', verbose=False)
    assert math.isfinite(metrics.box.map) and 0.0 <= metrics.box.map <= 1.0
    results = yolo.predict(best, tmp_path / 'yolo' / 'images' / 'val', imgsz=64, device='cpu', verbose=False)
    assert len(results) == 8
    assert not no_network, f'network access attempted: {no_network}'


def test_onnx_export_holds_the_attention(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.patches import torch_save

    torch.manual_seed(0)
    model = DetectionModel('yolov8n.yaml', nc=2, verbose=False)
    yolo.attach_yolo(model, {'attn': 'ca', 'warm_start': False, 'where': 'csp', 'attn_kwargs': {}})
    torch_save({'model': model, 'train_args': {}}, tmp_path / 'ca.pt')
    onnx_file = yolo.export(tmp_path / 'ca.pt', imgsz=64, device='cpu')  # ultralytics' exporter (fuses, traces)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    session = ort.InferenceSession(onnx_file)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x))[0].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-3
    graph = onnx.load(onnx_file).graph  # CA's h-swish, found nowhere else in YOLOv8: one per attached module
    assert sum(node.op_type == 'HardSwish' for node in graph.node) == len(model.attention_modules()) == 10


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(PlugattnError, match="unknown attention 'nope'"):
        yolo.train('yolov8n.yaml', 'nope', data=tmp_path / 'data.yaml')
    with pytest.raises(PlugattnError, match=r'not found; give the path of a data\.yaml'):
        yolo.train('yolov8n.yaml', 'ca', data=tmp_path / 'data.yaml')
    with pytest.raises(PlugattnError, match='plugattn does not download weights'):
        yolo.val(tmp_path / 'yolov8n.pt')
    from ultralytics import YOLO

    wrapper = plugattn.attach(YOLO('yolov8n.yaml', verbose=False), 'ca')  # the YOLO object: its .model gets it
    assert len(wrapper.attention_modules()) == 10 and 'model.model.2.m.0.attn' in wrapper.attention_modules()
    (tmp_path / 'data.yaml').write_text('names: {0: a}\n')
    with pytest.raises(PlugattnError, match='which the trainer cannot rebuild'):  # its trainer would drop it
        yolo.train(wrapper, 'ca', data=tmp_path / 'data.yaml')
    (tmp_path / 'data.yaml').write_text('train: images/train\nval: images/val\nnames: {0: a}\n')
    with pytest.raises(PlugattnError, match=r"^Dataset .* images not found.*; check the paths and names"):
        yolo.train('yolov8n.yaml', 'ca', data=tmp_path / 'data.yaml', device='cpu')


def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from plugattn.cli import main

    monkeypatch.chdir(tmp_path)
    for argv, expected in ((['yolo', 'train', '--data', 'missing.yaml'], "dataset file 'missing.yaml' not found"),
                           (['yolo', 'train', '--data', 'x.yaml', '--attn', 'nope'], "unknown attention 'nope'"),
                           (['yolo', 'val', '--model', 'yolov8n.yaml', 'epochs'], 'key=value'),
                           (['yolo', 'val', '--model', 'yolov8n.pt'], 'plugattn does not download weights')):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and err.strip().count('\n') == 0, err


def test_plugattn_does_not_import_ultralytics():
    code = ('import sys, torchvision, plugattn, plugattn.yolo\n'
            'plugattn.attach(torchvision.models.resnet18(), "se")\n'
            'assert "ultralytics" not in sys.modules, "ultralytics was imported"\n')
    env = {k: v for k, v in os.environ.items() if k != 'YOLO_OFFLINE'}
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**env, 'PYTHONPATH':
                                                                                          str(ROOT)}, timeout=120)
    assert res.returncode == 0, res.stderr


def test_trainer_attaches_before_loading_a_checkpoint(built):
    """The trainer's get_model (what ultralytics calls for ``YOLO('x.pt').train``): attention attached, then the
    plain checkpoint loaded into it by key, so every original weight arrives and the function is the checkpoint's."""
    from types import SimpleNamespace

    from ultralytics.models.yolo.detect import DetectionTrainer

    checkpoint = copy.deepcopy(built['yolov8n']).eval()
    for p in checkpoint.parameters():  # weights unlike a fresh build's
        p.data.add_(torch.randn_like(p) * 0.01)
    cls = yolo.attaching_trainer(DetectionTrainer, {'attn': 'eca', 'warm_start': True, 'where': 'csp',
                                                    'attn_kwargs': {}})
    trainer = cls.__new__(cls)
    trainer.data, trainer.args = {'nc': 2, 'channels': 3, 'names': {0: 'a', 1: 'b'}}, SimpleNamespace(cls_remap=True)
    model = trainer.get_model(cfg=checkpoint.yaml, weights=checkpoint, verbose=False).eval()
    assert len(model.attention_modules()) == 10 and yolo.attached_spec(model)['attn'] == 'eca'
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in checkpoint.state_dict().items())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_flat(checkpoint(x)), _flat(model(x)), strict=True))


def test_cli_data_scenes_is_converted_once(tmp_path, monkeypatch):
    import plugattn.data.scenes as scenes
    from plugattn.cli.yolo import scenes_yaml

    _write_coco(tmp_path / 'scenes-x', images=2)
    monkeypatch.setattr(scenes, 'ensure_scenes', lambda: tmp_path / 'scenes-x')
    data = scenes_yaml()
    assert data == tmp_path / 'scenes-x-yolo' / 'data.yaml' and data.is_file()
    assert len(list((tmp_path / 'scenes-x-yolo' / 'labels' / 'train').glob('*.txt'))) == 2
    stamp = data.stat().st_mtime_ns
    assert scenes_yaml() == data and data.stat().st_mtime_ns == stamp  # the converted copy is reused


def test_safe_load_refusal_names_the_fix(tmp_path, monkeypatch):
    from ultralytics.nn import tasks
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.patches import torch_save

    model = DetectionModel('yolov8n.yaml', nc=2, verbose=False)
    yolo.attach_yolo(model, {'attn': 'se', 'warm_start': True, 'where': 'backbone_end', 'attn_kwargs': {}})
    torch_save({'model': model, 'train_args': {}}, tmp_path / 'se.pt')
    monkeypatch.setattr(tasks, 'SAFE_LOAD', True)  # as ULTRALYTICS_SAFE_LOAD=1 at import
    with pytest.raises(PlugattnError, match='unset ULTRALYTICS_SAFE_LOAD to load a file you trust'):
        yolo.load(tmp_path / 'se.pt')


def test_importing_ultralytics_through_plugattn_keeps_pillow_and_threads(tmp_path):
    """ultralytics patches PIL.Image.open to install pi-heif on any unidentified file and sets OMP_NUM_THREADS=1 for
    the process; plugattn undoes both, so an unreadable image stays Pillow's error (plugattn's data checks name it),
    nothing is installed, and later runs in the process choose their thread count as before."""
    from PIL import Image, UnidentifiedImageError

    yolo.import_ultralytics()
    (tmp_path / 'notes.jpg').write_text('not an image')
    assert Image.open.__module__ == 'PIL.Image'
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / 'notes.jpg')
    assert 'OMP_NUM_THREADS' not in os.environ  # ultralytics' import sets it to 1; plugattn's runs choose their own
