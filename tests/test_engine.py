"""Engine tests: training lowers the loss, bit-exact resume, recipes, schedules, EMA, weight decay, checkpoints.

Everything runs on the CPU on the 8x8 ``digits`` dataset with CIFAR ResNet-20 variants (fully convolutional with
global pooling, so 8x8 inputs work).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from plugattn.engine import (
    EngineError,
    LRSchedule,
    ModelEma,
    create_optimizer,
    list_recipes,
    load_model_weights,
    load_state,
    param_groups_weight_decay,
    read_weights,
    resolve_config,
    save_state,
    save_weights,
    train,
)
from plugattn.engine import checkpoint as ckpt
from plugattn.engine.config import parse_set

pytest.importorskip('sklearn')  # the digits dataset comes from scikit-learn


def tiny_cfg(tmp_path: Path, **overrides) -> dict:
    """The default recipe shrunk to digits + a ResNet-20 + one epoch."""
    base = {
        'data.name': 'digits',
        'model.name': 'resnet20',
        'train.batch_size': 64,
        'train.eval_batch_size': 360,
        'train.epochs': 1,
        'train.log_interval': 10_000,
        'train.threads': 1,
        'aug.random_crop_padding': 1,
        'output.dir': str(tmp_path),
    }
    base.update({k.replace('__', '.'): v for k, v in overrides.items()})
    return resolve_config('fashion-mnist', list(base.items()))


def quiet_train(cfg: dict, **kwargs):
    return train(cfg, progress=False, echo=lambda _line: None, **kwargs)


# --------------------------------------------------------------------------------------------- training


def test_few_steps_lower_the_loss():
    from plugattn.data import build_loader
    from plugattn.models import create_model

    torch.manual_seed(0)
    loader = build_loader('digits', 'train', batch_size=64, train=True, seed=0)
    model = create_model('resnet20', num_classes=10, in_chans=1)
    cfg = resolve_config('fashion-mnist', [('optim.lr', 0.05)])
    opt = create_optimizer(model, cfg['optim'])
    x0, y0 = next(iter(loader))

    def loss_on_first_batch() -> float:
        model.eval()
        with torch.no_grad():
            out = nn.functional.cross_entropy(model(x0), y0).item()
        model.train()
        return out

    before = loss_on_first_batch()
    model.train()
    for _ in range(2):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = loss_on_first_batch()
    assert before > 2.0  # ~ln(10) at initialisation
    assert after < 0.6, (before, after)


def test_train_end_to_end_writes_run_files(tmp_path):
    result = quiet_train(tiny_cfg(tmp_path, train__epochs=2))
    run = result.run_dir
    assert result.finished and len(result.history) == 2
    for name in ('run.json', 'config.yaml', 'last.safetensors', 'best.safetensors', 'last_state.pt',
                 'summary.csv', 'metrics.jsonl'):
        assert (run / name).is_file(), name
    header, *rows = (run / 'summary.csv').read_text().splitlines()
    assert header.split(',')[:7] == ['epoch', 'train_loss', 'test_loss', 'top1', 'top5', 'lr', 'seconds']
    assert len(rows) == 2
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in records] == [1, 2]
    assert records[1]['train_loss'] < records[0]['train_loss']
    assert records[1]['top1'] > 50.0  # digits: ~10 % at chance
    info = json.loads((run / 'run.json').read_text())
    assert info['status'] == 'finished' and info['epochs_done'] == 2
    _, meta = read_weights(run / 'last.safetensors')
    assert meta['model'] == 'resnet20' and meta['epoch'] == 2
    assert meta['model_kwargs'] == {'num_classes': 10, 'in_chans': 1}
    assert meta['recipe'] == 'fashion-mnist' and meta['plugattn_version']
    assert result.params == sum(p.numel() for p in __import__('plugattn').models.create_model(
        'resnet20', num_classes=10, in_chans=1).parameters())
    assert result.macs > 1_000_000
    pytest.importorskip('matplotlib')
    assert (run / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def _all_tensors(obj, prefix=''):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _all_tensors(v, f'{prefix}.{k}')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _all_tensors(v, f'{prefix}[{i}]')


def test_resume_is_bitwise_identical(tmp_path):
    # BAv2 (BatchNorm1d inside the attention), EMA, label smoothing, mixup/cutmix and augmentation all on.
    over = dict(model__name='bav2_resnet20', train__epochs=2, ema__enabled=True, ema__decay=0.9,
                loss__label_smoothing=0.1, mixup__mixup_alpha=0.2, mixup__cutmix_alpha=1.0, aug__hflip=True)
    straight = quiet_train(tiny_cfg(tmp_path, output__name='straight', **over))
    first = quiet_train(tiny_cfg(tmp_path, output__name='split', **over), stop_after=1)
    assert not first.finished and len(first.history) == 1
    assert json.loads((first.run_dir / 'run.json').read_text())['status'] == 'stopped'
    from plugattn.engine import load_resume_config

    resumed = quiet_train(load_resume_config(first.run_dir, []), resume_dir=first.run_dir)
    assert resumed.finished and len(resumed.history) == 2

    a, _ = read_weights(straight.run_dir / 'last.safetensors')
    b, _ = read_weights(resumed.run_dir / 'last.safetensors')
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = load_state(straight.run_dir / 'last_state.pt'), load_state(resumed.run_dir / 'last_state.pt')
    ta, tb = dict(_all_tensors(sa['optimizer'])), dict(_all_tensors(sb['optimizer']))
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    for key in sa['ema']:
        assert torch.equal(sa['ema'][key], sb['ema'][key]), key
    assert sa['step'] == sb['step'] == 2 * (1437 // 64)
    ra = [(r['epoch'], r['train_loss'], r['top1']) for r in straight.history]
    rb = [(r['epoch'], r['train_loss'], r['top1']) for r in resumed.history]
    assert ra == rb
    assert (resumed.run_dir / 'summary.csv').read_text().count('\n') == 3  # header + 2 epochs, no duplicate


def test_resume_rejects_non_run_and_changed_keys(tmp_path):
    from plugattn.engine import load_resume_config

    with pytest.raises(EngineError, match='not a plugattn run directory'):
        load_resume_config(tmp_path, [])
    run = quiet_train(tiny_cfg(tmp_path)).run_dir
    with pytest.raises(EngineError, match='cannot change when resuming'):
        load_resume_config(run, [('optim.lr', 0.5)])
    with pytest.raises(EngineError, match='already finished 1 of 1 epochs'):
        quiet_train(load_resume_config(run, []), resume_dir=run)


# --------------------------------------------------------------------------------------------- recipes & schedules


@pytest.mark.parametrize('name', list_recipes())
def test_recipe_parses_validates_and_builds(name):
    from plugattn.models import create_model

    cfg = resolve_config(name)
    assert cfg['version'] >= 1 and cfg['description'] and cfg['name'] == name
    with torch.device('meta'):
        if cfg['task'] == 'classification':
            model = create_model(cfg['model']['name'], num_classes=10, in_chans=3)
        else:  # detection and segmentation recipes: torchvision's model on its backbone, no weights fetched
            from plugattn.engine.tasks import build_task_model

            m = cfg['model']
            model = build_task_model(m['name'], {'num_classes': 11, 'backbone': m['backbone'],
                                                 'output_stride': m['output_stride'], **m['kwargs']},
                                     pretrained=False)
    opt = create_optimizer(model, cfg['optim'])
    assert isinstance(opt, torch.optim.AdamW if cfg['optim']['name'] == 'adamw' else torch.optim.SGD)
    spe = 10
    sched = LRSchedule.from_config(cfg['schedule'], cfg['optim']['lr'], cfg['train']['epochs'], spe)
    lr, total = cfg['optim']['lr'], cfg['train']['epochs'] * spe
    s = cfg['schedule']
    w = round(s['warmup_epochs'] * spe)
    if w:
        assert sched(0) == pytest.approx(s['warmup_lr'])
        assert sched(w // 2) == pytest.approx(s['warmup_lr'] + (lr - s['warmup_lr']) * (w // 2) / w)
        assert sched(w) == pytest.approx(lr)
    if s['name'] == 'cosine':
        mid = w + (total - w) // 2
        expected = s['min_lr'] + 0.5 * (lr - s['min_lr']) * (1 + math.cos(math.pi * (mid - w) / (total - w)))
        assert sched(mid) == pytest.approx(expected)
        assert sched(total) == pytest.approx(s['min_lr'])
    if s['name'] == 'step':
        for m in s['milestones']:
            before = sched(m * spe - 1)
            assert sched(m * spe) == pytest.approx(before * s['gamma'])


def test_recipe_values_match_the_papers():
    ba = resolve_config('ba-imagenet-100ep')
    assert (ba['optim']['name'], ba['optim']['lr'], ba['optim']['momentum'], ba['optim']['weight_decay']) == (
        'sgd', 0.1, 0.9, 1e-4)
    assert ba['schedule']['warmup_epochs'] == 5 and ba['train']['epochs'] == 100
    assert ba['loss']['label_smoothing'] == 0.1 and ba['aug']['random_resized_crop'] and ba['aug']['hflip']
    v2 = resolve_config('bav2-imagenet-300ep')
    assert v2['optim']['name'] == 'adamw'
    assert (v2['optim']['lr'], v2['optim']['weight_decay'], v2['optim']['betas'], v2['optim']['eps']) == (
        1e-3, 0.05, [0.9, 0.999], 1e-8)
    assert (v2['schedule']['warmup_epochs'], v2['schedule']['warmup_lr'], v2['schedule']['min_lr']) == (20, 1e-6, 1e-5)
    assert v2['train']['grad_clip'] == 5.0 and v2['train']['amp'] and v2['train']['epochs'] == 300
    assert v2['aug']['randaugment'] == 'rand-m9-mstd0.5-inc1' and v2['aug']['random_erasing'] == 0.25
    assert (v2['mixup']['mixup_alpha'], v2['mixup']['cutmix_alpha'], v2['mixup']['switch_prob']) == (0.8, 1.0, 0.5)
    dia = resolve_config('dia-cifar')
    assert dia['schedule']['name'] == 'step' and dia['schedule']['milestones'] == [60, 120]
    assert (dia['train']['epochs'], dia['train']['batch_size'], dia['optim']['weight_decay']) == (180, 128, 1e-4)


def test_warmup_cosine_formula_per_iteration_and_per_epoch():
    s = LRSchedule('cosine', 1.0, epochs=4, steps_per_epoch=5, warmup_epochs=1, warmup_lr=0.1, min_lr=0.0)
    assert [round(s(i), 6) for i in range(5)] == [0.1, 0.28, 0.46, 0.64, 0.82]
    assert s(5) == pytest.approx(1.0)
    assert s(5 + 15 // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert s(20) == pytest.approx(0.0)
    e = LRSchedule('cosine', 1.0, epochs=4, steps_per_epoch=5, per_iteration=False)
    assert e(0) == e(4) == 1.0 and e(5) == e(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 20)))
    st = LRSchedule('step', 0.1, epochs=10, steps_per_epoch=3, milestones=[2, 5], gamma=0.1)
    assert [st(i) for i in (0, 5, 6, 14, 15)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


# --------------------------------------------------------------------------------------------- EMA & weight decay


def test_ema_update_formula():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    new = model.state_dict()
    for key, value in ema.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * old[key] + 0.1 * new[key], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, new[key])
    assert not any(p.requires_grad for p in ema.module.parameters())
    warm = ModelEma(model, decay=0.9999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.update(model)
    assert warm.current_decay() == pytest.approx(2 / 11)


def test_no_weight_decay_on_1d_params():
    from plugattn.models import create_model

    model = create_model('bav2_resnet20', num_classes=10, in_chans=1)
    decay, no_decay = param_groups_weight_decay(model, 5e-4)
    assert decay['weight_decay'] == 5e-4 and no_decay['weight_decay'] == 0.0
    assert all(p.ndim > 1 for p in decay['params']) and all(p.ndim <= 1 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))
    # Functional check: with zero gradients only the decayed (>= 2-D) weights move.
    for name in ('sgd', 'adamw'):
        cfg = resolve_config('fashion-mnist', [('optim.name', name), ('optim.weight_decay', 0.5)])['optim']
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        opt = create_optimizer(net, cfg)
        before = [p.detach().clone() for p in net.parameters()]
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for p, b in zip(net.parameters(), before):
            assert torch.equal(p, b) == (p.ndim <= 1), (name, p.shape)
    all_wd = resolve_config('dia-cifar')['optim']
    assert len(create_optimizer(model, all_wd).param_groups) == 1


# --------------------------------------------------------------------------------------------- checkpoints


def _small_checkpoint(path: Path, name: str = 'resnet20') -> nn.Module:
    from plugattn.models import create_model

    model = create_model(name, num_classes=10, in_chans=1)
    save_weights(path, model.state_dict(), {'model': name, 'model_kwargs': {'num_classes': 10, 'in_chans': 1}})
    return model


def test_corrupted_or_truncated_checkpoint_is_refused(tmp_path):
    good = tmp_path / 'good.safetensors'
    model = _small_checkpoint(good)
    data = good.read_bytes()
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match='truncated or corrupted'):
        read_weights(truncated)
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF  # inside the tensor data: only the checksum notices
    bad = tmp_path / 'flipped.safetensors'
    bad.write_bytes(bytes(flipped))
    with pytest.raises(EngineError, match='checksum mismatch'):
        read_weights(bad)
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(EngineError, match='truncated or corrupted'):
        read_weights(garbage)
    state = tmp_path / 'state.pt'
    save_state(state, {'epoch': 1, 'model': model.state_dict()})
    raw = state.read_bytes()
    state.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(EngineError, match='truncated or corrupted'):
        load_state(state)
    assert read_weights(good)[1]['model'] == 'resnet20'


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    from plugattn.models import create_model

    path = tmp_path / 'r20.safetensors'
    _small_checkpoint(path)
    other = create_model('se_resnet20', num_classes=10, in_chans=1)
    with pytest.raises(EngineError, match='holds resnet20 weights, not se_resnet20'):
        load_model_weights(other, path, 'se_resnet20')
    with pytest.raises(EngineError, match='do not fit'):  # same name claimed, different tensors
        load_model_weights(other, path)
    wrong_classes = create_model('resnet20', num_classes=100, in_chans=1)
    with pytest.raises(EngineError, match='shape mismatch'):
        load_model_weights(wrong_classes, path, 'resnet20')


def test_checkpoint_model_is_rebuilt_from_its_metadata(tmp_path):
    from plugattn.engine.evaluation import load_checkpoint_model

    path = tmp_path / 'r20.safetensors'
    model = _small_checkpoint(path)
    rebuilt, meta, file = load_checkpoint_model(path)
    x = torch.randn(2, 1, 8, 8)
    assert file == path and meta['model'] == 'resnet20'
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    # older metadata without model_kwargs: the data entry gives the classes and channels
    save_weights(path, model.state_dict(), {'model': 'resnet20', 'data': {'num_classes': 10, 'input_size': [1, 8, 8]}})
    assert load_checkpoint_model(path)[0].in_chans == 1
    save_weights(path, model.state_dict(), {'model': 'resnet20'})
    with pytest.raises(EngineError, match='does not record its number of classes'):
        load_checkpoint_model(path)


def test_killed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'last.safetensors'
    model = _small_checkpoint(path)
    before = path.read_bytes()

    def dies_halfway(f):
        f.write(b'\x00' * 1000)
        raise KeyboardInterrupt('killed during save')

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(path, dies_halfway)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob('.*.tmp')), 'temp file left behind'

    # A crash after the data is written but before the rename (os.replace) also leaves the old file.
    def boom(*_args, **_kwargs):
        raise OSError('simulated crash before rename')

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    monkeypatch.setattr(ckpt.os, 'replace', boom)
    with pytest.raises(OSError):
        save_weights(path, model.state_dict(), {'model': 'resnet20'})
    monkeypatch.undo()
    _, meta = read_weights(path)
    assert path.read_bytes() == before and meta['model'] == 'resnet20'
    assert not list(tmp_path.glob('.*.tmp'))


def test_training_state_round_trips_with_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    rng = ckpt.capture_rng_state()
    path = tmp_path / 's.pt'
    save_state(path, {'rng': [rng]})
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    ckpt.restore_rng_state(load_state(path)['rng'][0])
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (expected[0].tolist(), *expected[1:])


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(('override', 'message'), [
    (('optim.lr', -0.1), 'optim.lr must be > 0'),
    (('train.batch_size', 0), 'train.batch_size must be >= 1'),
    (('train.epochs', 'ten'), 'train.epochs must be an integer'),
    (('train.epochs', 2.5), 'train.epochs must be an integer'),
    (('train.amp', 'yes please'), 'train.amp must be true or false'),
    (('optim.name', 'lamb'), 'optim.name must be one of sgd, adamw'),
    (('optim.lrr', 0.1), "unknown config key 'optim.lrr' (did you mean optim.lr"),
    (('schedule.milestones', [120, 60]), 'strictly increasing'),
])
def test_bad_config_values_are_rejected(override, message):
    with pytest.raises(EngineError, match=message.replace('(', r'\(').replace('.', r'\.')):
        resolve_config('fashion-mnist', [override])


def test_set_parses_yaml_types():
    assert parse_set('optim.lr=1e-3') == ('optim.lr', '1e-3')  # YAML 1.1 keeps it a string ...
    assert resolve_config(None, [parse_set('optim.lr=1e-3')])['optim']['lr'] == 1e-3  # ... the schema converts
    assert parse_set('schedule.milestones=[60, 120]') == ('schedule.milestones', [60, 120])
    assert parse_set('train.grad_clip=null') == ('train.grad_clip', None)
    cfg = resolve_config(None, [parse_set('model.kwargs.zero_init_residual=true')])
    assert cfg['model']['kwargs'] == {'zero_init_residual': True}
    with pytest.raises(EngineError, match='has no "="'):
        parse_set('optim.lr')


def test_unknown_recipe_and_atomic_run_marker(tmp_path):
    with pytest.raises(EngineError, match="unknown recipe 'fashion-mnst' \\(did you mean fashion-mnist"):
        resolve_config('fashion-mnst')
    ckpt.write_run_info(tmp_path, {'status': 'running'})
    assert ckpt.is_run_dir(tmp_path) and not ckpt.is_run_dir(tmp_path / 'nope')
    (tmp_path / 'run.json').write_text('{"format": "something-else"}')
    assert not ckpt.is_run_dir(tmp_path)
    assert os.listdir(tmp_path) == ['run.json']


def test_engine_modules_import_each_other_without_a_cycle():
    # Every import between engine modules counts, function-local ones included: a cycle hidden behind a local import
    # is still a cycle.
    import ast
    import graphlib

    import plugattn.engine as engine_pkg

    graph = {}
    for file in Path(engine_pkg.__file__).parent.glob('*.py'):
        deps = set()
        for node in ast.walk(ast.parse(file.read_text(encoding='utf-8'))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split('.')[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update(alias.name for alias in node.names)
        graph[file.stem] = deps
    assert {'trainer', 'evaluation', 'inference', 'preprocess', 'rundir', 'summary'} <= graph.keys()
    assert 'trainer' not in graph['evaluation'] | graph['inference'] and 'inference' not in graph['evaluation']
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index('evaluation') < order.index('inference') and order.index('evaluation') < order.index('trainer')


def test_a_run_without_threads_leaves_cores_busy_elsewhere_to_their_processes(tmp_path, monkeypatch):
    from plugattn.engine import threads as threads_mod
    from plugattn.engine import trainer as trainer_mod

    busy = threads_mod.busy_cores(0.1)  # a real measurement: a number of cores (the machine may be busy)
    assert busy is not None and 0.0 <= busy <= threads_mod.usable_cores() + 0.5
    monkeypatch.setattr(threads_mod, 'usable_cores', lambda: 4)
    assert threads_mod.choose_threads(4, 0.2) == (4, None)  # a little background work: torch's default
    assert threads_mod.choose_threads(4, 1.0)[0] == 3
    assert threads_mod.choose_threads(4, 2.6)[0] == 1 and threads_mod.choose_threads(4, 9.0)[0] == 1
    assert threads_mod.choose_threads(2, 3.0)[0] == 1 and threads_mod.choose_threads(1, 3.0) == (1, None)
    assert threads_mod.choose_threads(4, None) == (4, None)

    # One of 2 cores busy: the run takes 1 thread, says why, and a resume keeps it whatever the load is then.
    monkeypatch.setattr(threads_mod, 'usable_cores', lambda: 2)
    monkeypatch.setattr(trainer_mod, 'busy_cores', lambda: 1.0)
    torch.set_num_threads(2)
    lines: list[str] = []
    result = train(tiny_cfg(tmp_path, train__threads=None, train__epochs=2), stop_after=1, progress=False,
                   echo=lines.append)
    assert torch.get_num_threads() == 2  # restored after the run
    note = ('  note: other processes keep 1.0 of 2 cores busy, so this run uses 1 CPU thread instead of 2 (threads '
            'that wait for a taken core slow down every step); --threads N sets the count')
    assert note in lines and ', 1 threads, batch 64' in lines[1]
    assert json.loads((result.run_dir / 'run.json').read_text())['threads'] == 1
    monkeypatch.setattr(trainer_mod, 'busy_cores', lambda: 0.0)
    lines.clear()
    train(load_resume_config_for(result.run_dir), resume_dir=result.run_dir, progress=False, echo=lines.append)
    assert '  note: 1 CPU thread, as the run trained with (so it continues bit for bit); --threads N sets the count' \
        in lines
    torch.set_num_threads(1)


def load_resume_config_for(run_dir: Path) -> dict:
    from plugattn.engine import load_resume_config

    return load_resume_config(run_dir, [])
