"""From a trained run to a deployed model: self-describing checkpoints, ``plugattn predict``, class checks in
``eval``, export metadata and named axes, the onnxruntime example of docs/export.md, and ``cam``'s labelled composite.

The data is a tiny ImageFolder made from scikit-image's sample photos (astronaut, chelsea the cat, coffee), cropped
and flipped at random and saved small, so one epoch of a CIFAR ResNet-20 takes a few seconds.
"""
from __future__ import annotations

import importlib.util
import json
import re
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from plugattn.cli import main
from plugattn.engine import EngineError, read_weights, save_weights
from plugattn.engine.inference import predict
from plugattn.engine.preprocess import Preprocessing

pytest.importorskip('skimage')
pytest.importorskip('sklearn')  # the digits dataset comes from scikit-learn

HAS_ONNX = all(importlib.util.find_spec(m) for m in ('onnx', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs the optional onnx and onnxruntime packages')
pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')

CLASSES = ['astronaut', 'cat', 'coffee']
EXPORT_DOC = Path(__file__).resolve().parents[1] / 'docs' / 'export.md'


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {'astronaut': data.astronaut(), 'cat': data.chelsea(), 'coffee': data.coffee(), 'rocket': data.rocket()}


def make_folder(root: Path, classes: list[str], seed: int = 0) -> Path:
    """``root/{train,val}/<class>/*.png``: random square crops (70-100 % of the short side), random flips,
    saved at 24x20 (non-square, so the evaluation resize and centre crop both matter)."""
    from PIL import Image

    photos = _photos()
    rng = np.random.default_rng(seed)
    for split, count in (('train', 6), ('val', 2)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            img = photos[name]
            h, w = img.shape[:2]
            for i in range(count):
                side = int(min(h, w) * rng.uniform(0.7, 1.0))
                top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
                crop = img[top:top + side, left:left + side]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                Image.fromarray(np.ascontiguousarray(crop)).resize((24, 20), Image.BILINEAR).save(folder / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def setup(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch ResNet-20 run on the tiny folder (16x16 inputs), a folder with other classes and a photo."""
    from PIL import Image

    base = tmp_path_factory.mktemp('deploy')
    folder = make_folder(base / 'photos', CLASSES)
    other = make_folder(base / 'other', ['astronaut', 'coffee', 'rocket'], seed=1)
    argv = ['train', '--data', 'imagefolder', '--data-dir', str(folder), '--model', 'resnet20', '--epochs', '1',
            '--batch-size', '6', '--lr', '0.02', '--threads', '1', '--set', 'aug.image_size=16', '--no-progress',
            '--output', str(base / 'runs'), '--name', 'tiny']
    assert main(argv) == 0
    photo = base / 'photo.jpg'
    Image.fromarray(_photos()['cat']).resize((45, 30), Image.BILINEAR).save(photo, quality=90)
    return {'run': base / 'runs' / 'tiny', 'folder': folder, 'other': other, 'photo': photo, 'base': base}


def one_line_error(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('plugattn: error: ') and '; ' in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------------------- checkpoint metadata


def test_checkpoint_and_run_json_describe_the_model(setup):
    run = setup['run']
    for name in ('best.safetensors', 'last.safetensors'):
        _, meta = read_weights(run / name)
        assert meta['model'] == 'resnet20' and meta['model_kwargs'] == {'num_classes': 3, 'in_chans': 3}
        assert meta['classes'] == CLASSES
        prep = meta['preprocessing']
        assert prep['input_size'] == [3, 16, 16] and prep['color_mode'] == 'RGB'
        assert prep['resize_mode'] == 'shorter' and prep['resize_size'] == 18 and prep['crop_pct'] == 0.875
        assert prep['interpolation'] == 'bilinear'
        assert prep['mean'] == pytest.approx([0.485, 0.456, 0.406]) and prep['std'] == pytest.approx([0.229, 0.224,
                                                                                                      0.225])
        assert re.fullmatch('[0-9a-f]{64}', meta['metadata_sha256'])
    info = json.loads((run / 'run.json').read_text())
    assert info['command'].startswith('plugattn train --data imagefolder') and '--lr 0.02' in info['command']
    env = info['environment']
    import platform

    import torchvision

    assert env['torch'] == torch.__version__ and env['torchvision'] == torchvision.__version__
    assert env['python'] == platform.python_version() and env['plugattn'] and env['device'] == 'cpu'
    assert env['git_revision'] is None or re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', env['git_revision'])
    assert info['classes'] == CLASSES and info['preprocessing'] == meta['preprocessing']
    assert info['model_kwargs'] == meta['model_kwargs']


def test_loaded_model_cfg_carries_the_preprocessing(setup):
    """timm's data config of a loaded checkpoint is its training preprocessing, and its transform gives the same
    input as the evaluation path."""
    timm_data = pytest.importorskip('timm.data')
    from PIL import Image

    from plugattn.engine.evaluation import load_checkpoint_model

    model, meta, _ = load_checkpoint_model(setup['run'])
    cfg = timm_data.resolve_data_config(model=model)
    assert cfg['input_size'] == (3, 16, 16) and cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bilinear'
    assert model.pretrained_cfg['label_names'] == tuple(CLASSES)
    x = timm_data.create_transform(**cfg)(Image.open(setup['photo']).convert('RGB'))
    expected = Preprocessing.from_dict(meta['preprocessing']).load(setup['photo'])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_resume_records_its_command(setup, tmp_path):
    argv = ['train', '--data', 'imagefolder', '--data-dir', str(setup['folder']), '--model', 'resnet20', '--epochs',
            '2', '--batch-size', '6', '--threads', '1', '--set', 'aug.image_size=16', '--no-progress', '--output',
            str(tmp_path), '--name', 'r', '--stop-after', '1']
    assert main(argv) == 0
    assert main(['train', '--resume', str(tmp_path / 'r'), '--no-progress']) == 0
    info = json.loads((tmp_path / 'r' / 'run.json').read_text())
    assert info['status'] == 'finished' and info['command'].endswith('--stop-after 1')
    assert info['resumed_with'] == [f'plugattn train --resume {tmp_path / "r"} --no-progress']


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_header(path: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)
    path.write_bytes(struct.pack('<Q', len(text)) + text + body)


def test_tampered_metadata_is_rejected(setup, tmp_path):
    header, body = _header(setup['run'] / 'best.safetensors')

    def forged(edit) -> Path:
        meta = json.loads(header['__metadata__']['plugattn'])
        edit(meta)
        new = {**header, '__metadata__': {**header['__metadata__'], 'plugattn': json.dumps(meta)}}
        path = tmp_path / 'forged.safetensors'
        _write_header(path, new, body)
        return path

    # an untouched rewrite of the header reads back: the checks are about the content, not the bytes
    assert read_weights(forged(lambda m: None))[1]['classes'] == CLASSES
    with pytest.raises(EngineError, match='altered metadata'):
        read_weights(forged(lambda m: m.update(classes=['cat', 'astronaut', 'coffee'])))
    with pytest.raises(EngineError, match='altered metadata'):
        read_weights(forged(lambda m: m['preprocessing'].update(mean=[0.5, 0.5, 0.5])))
    with pytest.raises(EngineError, match='altered metadata'):  # dropping the checksum does not help
        read_weights(forged(lambda m: (m.pop('metadata_sha256'), m.update(classes=['x', 'y', 'z']))))
    # a checkpoint from before the metadata checksum (no classes, no preprocessing) still loads
    legacy = forged(lambda m: [m.pop(k) for k in ('metadata_sha256', 'classes', 'preprocessing')])
    assert read_weights(legacy)[1]['model'] == 'resnet20'
    code = main(['predict', '--checkpoint', str(forged(lambda m: m.update(classes=['a', 'b', 'c']))),
                 str(setup['photo'])])
    assert code == 2


# --------------------------------------------------------------------------------------------- predict


def test_preprocessing_is_the_evaluation_loaders(setup, tmp_path):
    """Preprocessing reproduces both evaluation paths bit for bit: ImageFolder (resize + centre crop) and the
    in-memory data sets (native size, and resized)."""
    from PIL import Image

    from plugattn.data import build_loader, get_dataset_info

    _, meta = read_weights(setup['run'] / 'best.safetensors')
    prep = Preprocessing.from_dict(meta['preprocessing'])
    loader = build_loader('imagefolder', 'test', batch_size=64, train=False, data_dir=setup['folder'],
                          aug={'image_size': 16})
    images, _ = next(iter(loader))
    ours = torch.stack([prep.load(path) for path, _ in loader.dataset.samples])
    assert torch.equal(ours, images)

    digits = build_loader('digits', 'test', batch_size=20, train=False)
    x8, _ = next(iter(digits))
    for i in range(20):  # the uint8 test images as 8x8 PNG files
        raw = (x8[i, 0] * 0.3760 + 0.3054) * 255
        Image.fromarray(raw.round().clamp(0, 255).to(torch.uint8).numpy()).save(tmp_path / f'{i}.png')
    info = get_dataset_info('digits')
    for size in (None, 20):
        expected = x8 if size is None else next(iter(build_loader('digits', 'test', batch_size=20, train=False,
                                                                  aug={'image_size': size})))[0]
        prep = Preprocessing.for_dataset(info, size)
        assert prep.resize_mode == 'stretch' and prep.input_size == (1, size or 8, size or 8)
        got = torch.stack([prep.load(tmp_path / f'{i}.png') for i in range(20)])
        assert torch.equal(got, expected), size


def test_predict_names_the_classes(setup, capsys):
    run, folder = setup['run'], setup['folder']
    bad = setup['base'] / 'broken.png'
    bad.write_bytes(b'not an image')
    code = main(['predict', '--checkpoint', str(run), str(folder / 'val'), str(bad), str(setup['photo']),
                 '--topk', '2', '--batch-size', '4'])
    out, err = capsys.readouterr()
    assert code == 2  # one unreadable file: reported, the others classified, non-zero exit at the end
    one_line_error(err, f'cannot read image {bad}')
    lines = out.strip().splitlines()
    assert len(lines) == 7 and lines[-1].startswith(f'{setup["photo"]}: ')
    for line in lines:
        top = re.findall(r'(\w+) ([01]\.\d{3})', line.split(': ', 1)[1])
        assert len(top) == 2 and {name for name, _ in top} <= set(CLASSES)
        assert float(top[0][1]) >= float(top[1][1])

    code = main(['predict', '--checkpoint', str(run / 'last.safetensors'), str(folder / 'val' / 'cat'), '--json',
                 '--topk', '5', '--device', 'cpu'])
    out, err = capsys.readouterr()
    assert code == 0 and err == ''
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r['path']).name for r in records] == ['0.png', '1.png']
    for r in records:
        assert len(r['topk']) == 3 and sorted(t['class'] for t in r['topk']) == CLASSES
        assert sum(t['prob'] for t in r['topk']) == pytest.approx(1.0, abs=1e-5)
        assert all(CLASSES[t['index']] == t['class'] for t in r['topk'])

    # the probabilities are the model's on the evaluation inputs, whatever the batch size
    from plugattn.engine.evaluation import load_checkpoint_model

    model, meta, _ = load_checkpoint_model(run)
    prep = Preprocessing.from_dict(meta['preprocessing'])
    paths = sorted((folder / 'val').rglob('*.png'))
    with torch.no_grad():
        probs = model.eval()(torch.stack([prep.load(p) for p in paths])).softmax(1)
    for batch in (1, 4):
        results = list(predict(run, [folder / 'val'], topk=3, batch_size=batch))
        assert [r.path for r in results] == [str(p) for p in paths]
        for r, p in zip(results, probs):
            assert [t['prob'] for t in r.topk] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-6)


def test_predict_errors(setup, capsys, tmp_path):
    code = main(['predict', '--checkpoint', str(setup['run']), str(tmp_path / 'missing.png'), str(tmp_path)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == '' and len(lines) == 2
    assert 'missing.png (no such file)' in lines[0] and f'folder {tmp_path} holds no images' in lines[1]
    code = main(['predict', '--checkpoint', str(tmp_path), str(setup['photo'])])
    one_line_error(capsys.readouterr().err, 'not a plugattn run directory')
    assert code == 2
    assert main(['predict', '--checkpoint', str(setup['run']), str(setup['photo']), '--topk', '0']) == 2
    one_line_error(capsys.readouterr().err, '--topk')


# --------------------------------------------------------------------------------------------- eval


def test_eval_refuses_a_dataset_with_other_classes(setup, capsys):
    run = str(setup['run'])
    code = main(['eval', '--checkpoint', run, '--data-dir', str(setup['other'])])
    assert code == 2
    one_line_error(capsys.readouterr().err, 'trained on other classes', "class 1 is 'cat'", "'coffee'",
                   '--allow-class-mismatch')
    code = main(['eval', '--checkpoint', run, '--data-dir', str(setup['other']), '--allow-class-mismatch', '--json'])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)['samples'] == 6
    assert main(['eval', '--checkpoint', run, '--json']) == 0  # its own data
    assert json.loads(capsys.readouterr().out)['samples'] == 6


def test_eval_refuses_another_builtin_dataset(tmp_path, capsys):
    """An older checkpoint (no class names recorded) of Fashion-MNIST evaluated on digits: same class count and
    channels, other classes."""
    from plugattn.models import create_model

    model = create_model('resnet20', num_classes=10, in_chans=1)
    legacy = {'model': 'resnet20', 'model_kwargs': {'num_classes': 10, 'in_chans': 1},
              'data': {'name': 'fashion-mnist'}}
    save_weights(tmp_path / 'w.safetensors', model.state_dict(), legacy)
    code = main(['eval', '--checkpoint', str(tmp_path / 'w.safetensors'), '--data', 'digits'])
    assert code == 2
    one_line_error(capsys.readouterr().err, "class 0 is 'T-shirt/top' in the checkpoint but '0' in digits",
                   'trained on (fashion-mnist)')
    code = main(['eval', '--checkpoint', str(tmp_path / 'w.safetensors'), '--data', 'digits', '--json',
                 '--allow-class-mismatch'])
    assert code == 0 and json.loads(capsys.readouterr().out)['samples'] == 360


# --------------------------------------------------------------------------------------------- export


@needs_onnx
def test_export_carries_metadata_and_named_axes(setup, tmp_path, capsys):
    import onnx

    from plugattn.export import read_export_metadata

    onnx_path = tmp_path / 'model.onnx'
    code = main(['export', '--checkpoint', str(setup['run']), '--format', 'onnx', '--dynamic', '--exporter',
                 'legacy', '--output', str(onnx_path)])
    out = capsys.readouterr().out
    assert code == 0 and 'input (2, 3, 16, 16)' in out  # the training size is the default
    graph = onnx.load(str(onnx_path)).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == \
        ['batch', 3, 'height', 'width']
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ['batch', 3]
    _, meta = read_weights(setup['run'] / 'best.safetensors')
    got = read_export_metadata(onnx_path)
    assert got['classes'] == CLASSES and got['preprocessing'] == meta['preprocessing']
    assert got['model'] == 'resnet20' and got['model_kwargs'] == meta['model_kwargs']
    assert got['checkpoint_sha256'] == meta['sha256'] and got['weights'] == 'trained'

    ts_path = tmp_path / 'model.pt'
    assert main(['export', '--checkpoint', str(setup['run']), '--format', 'torchscript', '--output',
                 str(ts_path)]) == 0
    extra = {'classes': '', 'preprocessing': ''}
    torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra['classes']) == CLASSES and json.loads(extra['preprocessing']) == meta['preprocessing']
    assert read_export_metadata(ts_path) == {k: v for k, v in got.items()}


def test_export_defaults_to_native_training_size(tmp_path, capsys):
    """A run trained at the data set's native size (digits, 8x8) exports at 8x8, new and older checkpoints."""
    from plugattn.data import get_dataset_info
    from plugattn.export import read_export_metadata
    from plugattn.models import create_model

    model = create_model('resnet20', num_classes=10, in_chans=1)
    prep = Preprocessing.for_dataset(get_dataset_info('digits'), None).to_dict()
    new = {'model': 'resnet20', 'model_kwargs': {'num_classes': 10, 'in_chans': 1}, 'classes': list('0123456789'),
           'preprocessing': prep, 'data': {'name': 'digits', 'image_size': None, 'input_size': [1, 8, 8]}}
    old = {k: v for k, v in new.items() if k not in ('classes', 'preprocessing')}
    for name, meta in (('new', new), ('old', old)):
        save_weights(tmp_path / f'{name}.safetensors', model.state_dict(), meta)
        out_file = tmp_path / f'{name}.pt'
        assert main(['export', '--checkpoint', str(tmp_path / f'{name}.safetensors'), '--format', 'torchscript',
                     '--output', str(out_file)]) == 0
        out = capsys.readouterr().out
        assert 'input (2, 1, 8, 8)' in out and 'input (3, 1, 16, 16)' in out, out
        got = read_export_metadata(out_file)
        assert got['classes'] == list('0123456789') and got['preprocessing']['input_size'] == [1, 8, 8]
        assert got['preprocessing']['mean'] == [0.3054] and got['preprocessing']['resize_mode'] == 'stretch'


def _readme_onnx_example() -> str:
    text = EXPORT_DOC.read_text(encoding='utf-8')
    start = text.index('## Running the ONNX file without plugattn')
    block = text[text.index('```python', start) + len('```python'):]
    return textwrap.dedent(block[:block.index('```')])


@needs_onnx
def test_readme_onnx_example_matches_predict(setup, tmp_path, monkeypatch, capsys):
    from plugattn.engine.evaluation import load_checkpoint_model

    assert main(['export', '--checkpoint', str(setup['run']), '--format', 'onnx', '--dynamic', '--exporter',
                 'legacy', '--output', str(tmp_path / 'model.onnx')]) == 0
    (tmp_path / 'photo.jpg').write_bytes(setup['photo'].read_bytes())  # 45x30: resize and centre crop both act
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_onnx_example(), 'docs/export.md', 'exec'), scope)  # the page's own code
    printed = capsys.readouterr().out.strip().splitlines()
    (result,) = list(predict(setup['run'], [tmp_path / 'photo.jpg'], topk=3))
    assert printed == [f'{t["class"]}: {t["prob"]:.3f}' for t in result.topk]
    for t in result.topk:
        assert scope['probs'][t['index']] == pytest.approx(t['prob'], abs=1e-5)
    model, meta, _ = load_checkpoint_model(setup['run'])
    x = Preprocessing.from_dict(meta['preprocessing']).load(tmp_path / 'photo.jpg')
    np.testing.assert_allclose(scope['x'], x.numpy(), rtol=0, atol=1e-5)  # the example's input is predict's
    with torch.no_grad():
        np.testing.assert_allclose(scope['logits'], model.eval()(x[None])[0].numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- cam


def test_cam_writes_a_labelled_composite(setup, tmp_path, capsys):
    pytest.importorskip('pytorch_grad_cam')
    pytest.importorskip('matplotlib')
    from PIL import Image

    from plugattn.analysis.gradcam import COMPOSITE_LAYOUT, COMPOSITE_SIZE

    code = main(['cam', '--checkpoint', str(setup['run']), '--image', str(setup['photo']), '--class', '0',
                 '--output', str(tmp_path), '--json'])
    assert code == 0
    (res,) = json.loads(capsys.readouterr().out)['results']
    assert res['pred_name'] in CLASSES and res['target_class'] == 0 and res['target_name'] == 'astronaut'
    img = Image.open(res['output'])
    assert img.size == COMPOSITE_SIZE and Path(res['output']).name == 'photo_gradcam.png'
    arr = np.asarray(img.convert('RGB'), dtype=np.float32)
    width, height = COMPOSITE_SIZE

    def panel(name: str) -> np.ndarray:
        left, bottom, w, h = COMPOSITE_LAYOUT[name]
        return arr[round((1 - bottom - h) * height):round((1 - bottom) * height),
                   round(left * width):round((left + w) * width)]

    for name in COMPOSITE_LAYOUT:
        assert panel(name).std() > 20.0, name  # image, overlay and colour bar are drawn, not blank
    top = min(1 - bottom - h for _, bottom, _, h in COMPOSITE_LAYOUT.values())
    header = arr[:round(top * height)]
    assert header.min() < 80 and (header < 128).mean() > 0.005  # the title text
    overlay, source = panel('overlay'), panel('image')
    assert np.abs(overlay - source).mean() > 10.0  # the overlay is not a copy of the input
