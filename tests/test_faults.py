"""Faults and odd inputs: signals and preemption, mid-epoch resume, early kills, disk full, bad images, wrongly typed
values, pickle payloads, and the compare/resume edge cases. Everything runs on the CPU with a CIFAR ResNet-20 on the
8x8 ``digits`` data set.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plugattn.cli import main
from plugattn.engine import EngineError, load_resume_config, load_state, read_weights, resolve_config, train
from plugattn.engine import trainer as trainer_mod

pytest.importorskip('sklearn')  # the digits dataset comes from scikit-learn

ROOT = Path(__file__).resolve().parents[1]
# 1437 // 64 = 22 steps per epoch; eval on the whole 360-image test split in one batch.
TINY = ['--data', 'digits', '--model', 'resnet20', '--batch-size', '64', '--threads', '1', '--no-progress',
        '--set', 'train.eval_batch_size=360', '--set', 'aug.random_crop_padding=1']


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('plugattn: error: ') and '; ' in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tiny_cfg(tmp_path: Path, **overrides) -> dict:
    base = {'data.name': 'digits', 'model.name': 'resnet20', 'train.batch_size': 64, 'train.eval_batch_size': 360,
            'train.epochs': 1, 'train.log_interval': 10_000, 'train.threads': 1, 'aug.random_crop_padding': 1,
            'output.dir': str(tmp_path)}
    base.update({k.replace('__', '.'): v for k, v in overrides.items()})
    return resolve_config('fashion-mnist', list(base.items()))


def quiet_train(cfg: dict, **kwargs):
    return train(cfg, progress=False, echo=lambda _line: None, **kwargs)


def signal_at_forward(monkeypatch, n: int, signum: int = signal.SIGTERM, action=None) -> None:
    """Send ``signum`` to this process during the n-th training forward pass of the next built model."""
    build = trainer_mod.build_model
    calls = {'n': 0}

    def hook(module, _inputs):
        if module.training:
            calls['n'] += 1
            if calls['n'] == n:
                if action is not None:
                    action()
                else:
                    os.kill(os.getpid(), signum)

    def patched(*args, **kwargs):
        model = build(*args, **kwargs)
        if not next(model.parameters()).is_meta:
            model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(trainer_mod, 'build_model', patched)


def assert_same_run(a: Path, b: Path) -> None:
    wa, _ = read_weights(a / 'last.safetensors')
    wb, _ = read_weights(b / 'last.safetensors')
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    sa, sb = load_state(a / 'last_state.pt'), load_state(b / 'last_state.pt')
    for k, v in sa['optimizer']['state'].items():
        assert torch.equal(v['momentum_buffer'], sb['optimizer']['state'][k]['momentum_buffer']), k
    assert sa['step'] == sb['step']
    ha = [(r['epoch'], r['train_loss'], r['top1'], r['test_loss']) for r in sa['history']]
    hb = [(r['epoch'], r['train_loss'], r['top1'], r['test_loss']) for r in sb['history']]
    assert ha == hb


# --------------------------------------------------------------------------------------------- signals, mid-epoch


def test_sigterm_mid_epoch_saves_and_resumes_bit_exactly(tmp_path, monkeypatch):
    # Mixup/CutMix (its own generator), EMA, label smoothing and dropout-free BAv2 with BatchNorm1d: all of the
    # state a mid-epoch resume must restore.
    over = dict(model__name='bav2_resnet20', train__epochs=2, ema__enabled=True, ema__decay=0.9,
                loss__label_smoothing=0.1, mixup__mixup_alpha=0.2, mixup__cutmix_alpha=1.0, aug__hflip=True)
    straight = quiet_train(tiny_cfg(tmp_path, output__name='straight', **over))
    signal_at_forward(monkeypatch, 22 + 10)  # the 10th step of epoch 2
    first = quiet_train(tiny_cfg(tmp_path, output__name='split', **over))
    monkeypatch.undo()
    assert first.stop_signal == signal.SIGTERM and first.exit_code == 143 and not first.finished
    assert first.resume_command == f'plugattn train --resume {first.run_dir}'
    info = json.loads((first.run_dir / 'run.json').read_text())
    assert info['status'] == 'stopped' and info['epochs_done'] == 1
    state = load_state(first.run_dir / 'last_state.pt')
    assert state['epoch'] == 1 and state['step'] == 32 and state['partial'][0]['batch'] == 10
    _, meta = read_weights(first.run_dir / 'last.safetensors')
    assert meta['epoch'] == 1  # the weights files keep the last finished epoch
    resumed = quiet_train(load_resume_config(first.run_dir, []), resume_dir=first.run_dir)
    assert resumed.finished and resumed.stop_signal is None and resumed.exit_code == 0
    assert_same_run(straight.run_dir, resumed.run_dir)
    sa, sb = load_state(straight.run_dir / 'last_state.pt'), load_state(resumed.run_dir / 'last_state.pt')
    for key in sa['ema']:
        assert torch.equal(sa['ema'][key], sb['ema'][key]), key


def test_save_every_steps_writes_mid_epoch_states(tmp_path, monkeypatch):
    saved = []
    real = trainer_mod.save_state
    monkeypatch.setattr(trainer_mod, 'save_state', lambda path, state: (saved.append(
        (state['step'], (state['partial'] or [{}])[0].get('batch'))), real(path, state)))
    result = quiet_train(tiny_cfg(tmp_path, train__save_every_steps=8, train__epochs=2))
    # steps 8, 16 (epoch 1), epoch end 22, steps 24, 32, 40 (epoch 2), epoch end 44
    assert saved == [(8, 8), (16, 16), (22, None), (24, 2), (32, 10), (40, 18), (44, None)]
    assert result.finished and load_state(result.run_dir / 'last_state.pt')['partial'] is None
    saved.clear()
    quiet_train(tiny_cfg(tmp_path, train__save_every_minutes=1e-9, output__name='timed'))
    assert saved == [(s, s) for s in range(1, 22)] + [(22, None)]  # interval always passed: after every step


def _wait_for(proc: subprocess.Popen, fragment: str, timeout: float = 120.0) -> list[str]:
    lines, t0 = [], time.monotonic()
    for line in proc.stdout:
        lines.append(line)
        if fragment in line:
            return lines
        assert time.monotonic() - t0 < timeout, ''.join(lines)
    raise AssertionError(f'{fragment!r} never printed: {"".join(lines)}')


@pytest.fixture(scope='module')
def stopped_run(tmp_path_factory) -> Path:
    """A run of 2 epochs stopped after the first (copy it before changing it)."""
    out = tmp_path_factory.mktemp('stopped')
    assert main(['train', *TINY, '--epochs', '2', '--stop-after', '1', '--output', str(out), '--name', 'r']) == 0
    return out / 'r'


def copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


@pytest.fixture(scope='module')
def straight_cli_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('straight')
    assert main(['train', *TINY, '--epochs', '1', '--output', str(out), '--name', 'ref']) == 0
    return out / 'ref'


@pytest.mark.parametrize(('signum', 'code'), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_cli_train_stops_cleanly_and_resumes_bit_exactly(straight_cli_run, tmp_path, signum, code):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    cmd = [sys.executable, '-m', 'plugattn', 'train', *TINY, '--epochs', '1', '--output', str(tmp_path),
           '--name', 'run', '--set', 'train.log_interval=1']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(proc, '[3/22]' if signum == signal.SIGTERM else '[9/22]')
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
    run = tmp_path / 'run'
    assert proc.returncode == code, err
    assert 'Traceback' not in err
    name = 'SIGTERM' if signum == signal.SIGTERM else 'SIGINT'
    assert err.strip().splitlines()[-1] == (
        f'plugattn: stopped by {name}; the resume state in {run} is saved and run.json says "stopped"; '
        f'continue with: plugattn train --resume {run}')
    assert 'stopping: saved the resume state at epoch' in out
    assert json.loads((run / 'run.json').read_text())['status'] == 'stopped'
    assert load_state(run / 'last_state.pt')['partial'][0]['batch'] > 0
    assert main(['train', '--resume', str(run), '--no-progress']) == 0
    assert json.loads((run / 'run.json').read_text())['status'] == 'finished'
    assert_same_run(straight_cli_run, run)


def test_run_killed_before_first_checkpoint_can_resume_or_restart(tmp_path, monkeypatch, capsys):
    def interrupt():
        raise KeyboardInterrupt

    signal_at_forward(monkeypatch, 3, action=interrupt)
    code = main(['train', *TINY, '--output', str(tmp_path), '--name', 'early'])
    monkeypatch.undo()
    run = tmp_path / 'early'
    assert code == 130 and not (run / 'last_state.pt').exists()
    assert json.loads((run / 'run.json').read_text())['status'] == 'interrupted'
    capsys.readouterr()
    assert main(['train', '--resume', str(run)]) == 0
    assert 'stopped before its first checkpoint: starting it from the beginning' in capsys.readouterr().out
    assert json.loads((run / 'run.json').read_text())['status'] == 'finished'
    # The same name again, without --resume: a run without a checkpoint is restarted in place ...
    (run / 'last_state.pt').unlink()
    (run / 'last.safetensors').unlink()
    (run / 'best.safetensors').unlink()
    info = json.loads((run / 'run.json').read_text())
    (run / 'run.json').write_text(json.dumps({**info, 'status': 'failed', 'epochs_done': 0}))
    assert main(['train', *TINY, '--output', str(tmp_path), '--name', 'early']) == 0
    # ... but a run with a checkpoint is never overwritten.
    code = main(['train', *TINY, '--output', str(tmp_path), '--name', 'early'])
    assert_one_line_error(code, capsys.readouterr().err, 'already exists', f'--resume {run}')


SIGNAL_AT = """
import os, signal, sys
from plugattn.engine import trainer
sig, where = getattr(signal, sys.argv[1]), sys.argv[2]
real, sent = getattr(trainer, where), []

def wrapped(*args, **kwargs):
    out = real(*args, **kwargs)
    if not sent:  # once, right after the first call returns
        sent.append(os.kill(os.getpid(), sig))
    return out

setattr(trainer, where, wrapped)
from plugattn.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(('name', 'where', 'created'), [
    ('SIGTERM', 'write_run_info', True),  # run.json was just written, nothing trained yet
    ('SIGHUP', 'write_run_info', True),  # the terminal closed
    ('SIGUSR1', 'seed_everything', False),  # during set-up, before the run directory exists
])
def test_a_signal_at_start_up_stops_cleanly_and_leaves_no_dead_end(tmp_path, capsys, name, where, created):
    signum = getattr(signal, name, None)
    if signum is None:
        pytest.skip(f'no {name} on this platform')
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    proc = subprocess.run([sys.executable, '-c', SIGNAL_AT, name, where, 'train', *TINY, '--epochs', '1',
                           '--output', str(tmp_path), '--name', 'run'],
                          capture_output=True, text=True, env=env, timeout=120)
    run = tmp_path / 'run'
    assert proc.returncode == 128 + signum, proc.stderr
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    if not created:
        assert not run.exists()
        assert last == f'plugattn: stopped by {name} before the run directory was created; nothing was written'
        return
    assert json.loads((run / 'run.json').read_text())['status'] == 'stopped'
    assert not (run / '.lock').exists() and not (run / 'last_state.pt').exists()
    assert last == (f'plugattn: stopped by {name} before the first checkpoint; run.json in {run} says "stopped"; '
                    f'continue with: plugattn train --resume {run} (it starts from the beginning)')
    if signum == signal.SIGTERM:
        capsys.readouterr()
        assert main(['train', '--resume', str(run), '--no-progress']) == 0
        assert 'starting it from the beginning (with its saved config)' in capsys.readouterr().out
        assert json.loads((run / 'run.json').read_text())['status'] == 'finished'


def test_a_folder_left_by_a_run_killed_while_it_was_created_is_continued(tmp_path, capsys):
    from plugattn.engine import dump_config

    finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True, timeout=60)
    dead_pid = finished.stdout.strip()  # a process that has ended
    run = tmp_path / 'run'
    run.mkdir()
    (run / '.lock').write_text(f'{dead_pid}\n')
    (run / '.config.yaml.x1y2.tmp').write_text('name: fash')  # a write cut short
    # no config yet: --resume cannot know the run's settings and says how to start it again
    code = main(['train', '--resume', str(run)])
    assert_one_line_error(code, capsys.readouterr().err, f'{run} holds no run to resume (no run.json or config.yaml',
                          f'start it again with the same command and --output {tmp_path} --name run')
    # the same command again takes the folder over
    assert main(['train', *TINY, '--epochs', '1', '--output', str(tmp_path), '--name', 'run']) == 0
    out = capsys.readouterr().out
    assert f'note: taking over {run / ".lock"}, left by pid {dead_pid}, which ended without releasing it' in out
    assert f'note: {run} holds a run stopped before its first checkpoint: the new run starts in it' in out
    assert json.loads((run / 'run.json').read_text())['status'] == 'finished'
    assert sorted(p.name for p in run.glob('.*')) == []
    # killed after config.yaml, before run.json: --resume starts it with that config
    other = tmp_path / 'other'
    other.mkdir()
    (other / '.lock').write_text(f'{dead_pid}\n')
    cfg = tiny_cfg(tmp_path, output__name='other', train__seed=7)
    (other / 'config.yaml').write_text(dump_config(cfg))
    assert main(['train', '--resume', str(other), '--no-progress']) == 0
    assert 'starting it from the beginning (with its saved config)' in capsys.readouterr().out
    assert load_state(other / 'last_state.pt')['epoch'] == 1
    assert 'seed: 7' in (other / 'config.yaml').read_text()


def test_resume_of_a_run_killed_after_its_last_epoch_writes_the_end_of_run_files(straight_cli_run, tmp_path,
                                                                                   capsys):
    run = copy_run(straight_cli_run, tmp_path)
    info = json.loads((run / 'run.json').read_text())
    (run / 'run.json').write_text(json.dumps({**info, 'status': 'running'}))  # killed while writing curves.png
    (run / 'curves.png').unlink()
    (run / 'summary.csv').unlink()
    before = (run / 'last_state.pt').read_bytes()
    capsys.readouterr()
    assert main(['train', '--resume', str(run), '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'all 1 epochs were trained before the run stopped: writing its end-of-run files' in out
    assert (run / 'curves.png').stat().st_size > 1000
    assert (run / 'summary.csv').read_text().splitlines()[1].startswith('1,')
    assert json.loads((run / 'run.json').read_text())['status'] == 'finished'
    assert (run / 'last_state.pt').read_bytes() == before  # nothing trained again
    # a complete run is still refused: there is nothing to do
    code = main(['train', '--resume', str(run)])
    assert_one_line_error(code, capsys.readouterr().err, 'already finished 1 of 1 epochs', '--epochs N')


def test_resume_with_other_epochs_needs_reschedule(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    capsys.readouterr()
    code = main(['train', '--resume', str(run), '--epochs', '3'])
    assert_one_line_error(code, capsys.readouterr().err,
                          '--epochs 3 re-times the cosine learning-rate schedule', 'planned for 2 epochs',
                          'pass --reschedule')
    # A step schedule keeps the learning rates of the coming steps: no flag needed.
    assert main(['train', *TINY, '--epochs', '2', '--stop-after', '1', '--output', str(tmp_path), '--name', 's',
                 '--set', 'schedule.name=step', '--set', 'schedule.milestones=[5]']) == 0
    assert main(['train', '--resume', str(tmp_path / 's'), '--epochs', '3', '--stop-after', '2']) == 0
    capsys.readouterr()
    assert main(['train', '--resume', str(run), '--epochs', '3', '--reschedule', '--stop-after', '2']) == 0
    assert 'note: --epochs 3 re-times the cosine' in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- types, print-config


def test_wrongly_typed_constructor_arguments_name_the_parameter():
    from plugattn.layers import create_attn
    from plugattn.models import create_model

    with pytest.raises(TypeError, match=r"SqueezeExcite: reduction must be an int, got '16' \(str\); "
                                        r"pass reduction=16"):
        create_attn('se', 64, reduction='16')
    with pytest.raises(TypeError, match=r"ResNet: num_classes must be an int, got '10' \(str\)"):
        create_model('resnet20', num_classes='10')
    with pytest.raises(TypeError, match=r'ResNet: num_classes must be an int, got 2.5 \(float\)'):
        create_model('resnet20', num_classes=2.5)
    with pytest.raises(TypeError, match=r'ResNet: num_classes must be an int, got True \(bool\)'):
        create_model('resnet20', num_classes=True)
    with pytest.raises(TypeError, match=r"BridgeAttentionV2: inner_channels must be a sequence of ints"):
        create_attn('bav2', 64, inner_channels='64')
    with pytest.raises(TypeError, match=r"SqueezeExcite: reduction must be an int, got '8'"):
        create_model('se_resnet20', attn_kwargs={'reduction': '8'})
    assert sum(p.numel() for p in create_attn('se', 64, reduction=8).parameters()) == 2 * 64 * 8  # still works
    assert create_model('resnet20', num_classes=7, drop_rate=0).num_classes == 7


def test_config_model_kwargs_checked_before_any_output(tmp_path, capsys):
    code = main(['train', *TINY, '--output', str(tmp_path), '--set', 'model.kwargs={"drop_rate": "0.5"}'])
    assert_one_line_error(code, capsys.readouterr().err, "drop_rate must be a number, got '0.5' (str)",
                          'pass drop_rate=0.5')
    assert not list(tmp_path.iterdir())
    code = main(['train', *TINY, '--output', str(tmp_path), '--set', 'model.kwargs={"bogus": 1}'])
    assert_one_line_error(code, capsys.readouterr().err, "unexpected keyword argument 'bogus'")


def test_print_config_validates_names_like_train(capsys):
    code = main(['train', '--model', 'resnet2O', '--print-config'])
    assert_one_line_error(code, capsys.readouterr().err, "unknown model 'resnet2O'", 'list-models')
    code = main(['train', '--data', 'cifar1O', '--print-config'])
    assert_one_line_error(code, capsys.readouterr().err, "unknown dataset 'cifar1O'")
    code = main(['train', '--print-config', '--set', 'model.kwargs={"drop_rate": "x"}'])
    assert_one_line_error(code, capsys.readouterr().err, 'drop_rate must be a number')
    assert main(['train', '--print-config', '--model', 'se_resnet20']) == 0
    assert 'name: se_resnet20' in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- disk, pickle


def test_file_size_limit_during_save_is_a_clear_line_and_keeps_the_checkpoint(stopped_run, tmp_path):
    run = copy_run(stopped_run, tmp_path)
    before = (run / 'last_state.pt').read_bytes()
    limit = len(before) // 2  # run.json and config.yaml fit, the resume state does not

    def limit_file_size():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    # --save-every-steps 1: the first save comes after one step of epoch 2
    proc = subprocess.run([sys.executable, '-m', 'plugattn', 'train', '--resume', str(run), '--no-progress',
                           '--save-every-steps', '1'],
                          capture_output=True, text=True, env=env, preexec_fn=limit_file_size, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, f'cannot save {run / "last_state.pt"}',
                          'more than the file-size limit', 'the previous last_state.pt is intact', '--resume')
    assert (run / 'last_state.pt').read_bytes() == before
    assert load_state(run / 'last_state.pt')['epoch'] == 1
    assert not list(run.glob('.*.tmp'))
    assert json.loads((run / 'run.json').read_text())['status'] == 'failed'


def test_write_error_efbig_and_enospc_become_one_line(tmp_path, monkeypatch):
    import errno
    import resource
    from shutil import _ntuple_diskusage as shutil_usage

    from plugattn.engine import checkpoint as ckpt

    path = tmp_path / 'last_state.pt'
    ckpt.save_state(path, {'x': torch.zeros(10)})
    before = path.read_bytes()
    # The write itself fails (no size hint): torch.save's RuntimeError is traced back to EFBIG.
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, old_limit[1]))
    try:
        with pytest.raises(EngineError, match='file-size limit') as exc:
            ckpt.atomic_write(path, lambda f: torch.save({'x': torch.zeros(100_000)}, f))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert '\n' not in str(exc.value) and 'inline_container' not in str(exc.value)
    assert path.read_bytes() == before and not list(tmp_path.glob('.*.tmp'))
    # A full disk is refused before writing when the size is known ...
    monkeypatch.setattr(ckpt.shutil, 'disk_usage', lambda _p: shutil_usage(total=10**9, used=10**9, free=1000))
    with pytest.raises(EngineError, match=r'it needs 0.4 MiB and .* has 0.0 MiB free \(nothing was replaced'):
        ckpt.save_state(path, {'x': torch.zeros(100_000)})
    monkeypatch.undo()
    # ... and ENOSPC during the write is named too.
    def full(_f):
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(EngineError, match=r'the disk is full \(nothing was replaced: the previous last_state\.pt'):
        ckpt.atomic_write(path, full)
    assert path.read_bytes() == before


def test_pickle_payload_in_resume_state_is_one_clear_line(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)

    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    torch.save({'format': 'plugattn-state', 'x': Payload()}, run / 'last_state.pt')
    capsys.readouterr()
    code = main(['train', '--resume', str(run)])
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, 'holds a pickled Python object (posix.system)', 'refused without running it',
                          'start a new run')
    assert 'pwned' not in out


def _flip_inside_largest_member(path: Path, n: int = 64) -> str:
    """Invert ``n`` bytes in the middle of the largest stored member of a zip file; return the member's name."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack('<HH', data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start:start + n] = bytes(255 - b for b in data[start:start + n])
    path.write_bytes(bytes(data))
    return info.filename


def test_a_damaged_or_truncated_resume_state_is_refused_in_one_line(stopped_run, tmp_path, capsys):
    import zipfile

    run = copy_run(stopped_run, tmp_path)
    state = run / 'last_state.pt'
    good = state.read_bytes()
    member = _flip_inside_largest_member(state)
    with zipfile.ZipFile(state) as z:
        assert z.testzip() == member  # the damage is real, and torch.load alone does not notice it
    capsys.readouterr()
    code = main(['train', '--resume', str(run), '--no-progress'])
    way_out = (f'its weights of the last finished epoch are intact in {run / "last.safetensors"}: start a new run '
               f'from them with --init-checkpoint {run / "last.safetensors"}')
    assert_one_line_error(code, capsys.readouterr().err,
                          f'resume state {state} is corrupted (checksum mismatch: its data changed after it was saved)',
                          way_out)
    assert json.loads((run / 'run.json').read_text())['epochs_done'] == 1  # nothing was trained on it
    for cut in (200, len(good) // 2):  # miniz's and the zip reader's failures, each summarised in a few words
        state.write_bytes(good[:cut])
        code = main(['train', '--resume', str(run), '--no-progress'])
        err = capsys.readouterr().err
        assert_one_line_error(code, err, f'resume state {state} is truncated or corrupted (its zip archive is cut '
                                         'short or garbled)', way_out)


def test_a_pickled_object_as_weights_is_refused_with_how_to_convert_it(tmp_path, capsys):
    from plugattn.attach import load_weights

    class Payload:
        def __reduce__(self):
            return (os.system, (f'touch {tmp_path / "pwned"}',))

    model_file, payload_file = tmp_path / 'model.pth', tmp_path / 'payload.pth'
    torch.save(torch.nn.Linear(2, 2), model_file)  # a whole model, as timm and torchvision users often save
    torch.save({'state_dict': Payload()}, payload_file)
    convert = 'weights_only=False), then torch.save(obj.state_dict(), "weights.pth") (or safetensors.torch.save_file)'
    with pytest.raises(ValueError) as exc:
        load_weights(torch.nn.Linear(2, 2), model_file)
    msg = str(exc.value)
    assert msg.startswith(f'weights file {model_file} holds a pickled Python object (torch.nn.modules.linear.Linear), '
                          'not a state_dict; loading it would run code, so it was refused; if you trust its source')
    assert convert in msg and 'Weights only load failed' not in msg
    code = main(['train', *TINY, '--output', str(tmp_path), '--init-checkpoint', str(payload_file)])
    assert_one_line_error(code, capsys.readouterr().err, f'weights file {payload_file} holds a pickled Python object '
                          '(posix.system)', f"obj = torch.load('{payload_file}', {convert}")
    assert not (tmp_path / 'pwned').exists()


# --------------------------------------------------------------------------------------------- inputs too small


def test_an_input_too_small_for_the_model_is_a_user_error_naming_its_smallest_size(tmp_path, capsys):
    import importlib.util

    pytest.importorskip('timm')
    # 8x8 digits through timm's ConvNeXt stem (stride 4) and three stride-2 downsamplings
    code = main(['train', '--model', 'timm:convnext_atto', '--data', 'digits', '--output', str(tmp_path)])
    assert_one_line_error(code, capsys.readouterr().err, 'timm:convnext_atto cannot take 8x8 inputs (the digits '
                          'images): the smallest input size it takes is 32x32; use --set aug.image_size=32')
    assert not list(tmp_path.iterdir())  # refused before anything was read or written
    code = main(['train', '--model', 'deit_tiny', '--data', 'digits', '--set', 'aug.image_size=12', '--print-config'])
    assert_one_line_error(code, capsys.readouterr().err, 'deit_tiny cannot take 12x12 inputs (aug.image_size): the '
                          'smallest input size it takes is 16x16; use --set aug.image_size=16')
    code = main(['bench', 'pvt_v1_tiny', '--img-size', '8', '--reps', '1', '--no-train', '--no-memory'])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after bench's load and progress lines
    assert code == 2 and last == ('plugattn: error: pvt_v1_tiny cannot take 8x8 inputs (--img-size 8): the smallest '
                                  'input size it takes is 32x32; use --img-size 32')
    code = main(['export', '--model', 'deit_tiny', '--img-size', '8', '--format', 'torchscript',
                 '--output', str(tmp_path / 'm.pt')])
    assert_one_line_error(code, capsys.readouterr().err, 'deit_tiny cannot take 8x8 inputs (--img-size 8)',
                          'use --img-size 16')
    if importlib.util.find_spec('pytorch_grad_cam') and importlib.util.find_spec('matplotlib'):
        code = main(['cam', '--model', 'deit_tiny', '--img-size', '8', '--image', str(tmp_path / 'any.png')])
        assert_one_line_error(code, capsys.readouterr().err, 'deit_tiny cannot take 8x8 inputs (--img-size 8)',
                              'use --img-size 16')
    assert main(['train', '--model', 'deit_tiny', '--data', 'digits', '--set', 'aug.image_size=16',
                 '--print-config']) == 0


# --------------------------------------------------------------------------------------------- compare


def test_compare_failed_after_last_epoch_counts_as_finished_and_other_epochs_are_refused(tmp_path):
    from plugattn.analysis import AnalysisError
    from plugattn.experiments.compare import compare

    common = dict(batch_size=128, output=tmp_path, device='cpu', threads=1, bench=False, echo=lambda s: None,
                  progress=False)
    first = compare(['resnet20'], 'digits', 1, epochs=1, **common)
    assert first.trained == 1 and first.runs[0]['epochs'] == 1
    run = tmp_path / 'resnet20' / 'seed0'
    info = json.loads((run / 'run.json').read_text())
    (run / 'run.json').write_text(json.dumps({**info, 'status': 'failed'}))  # died after its last save
    again = compare(['resnet20'], 'digits', 1, epochs=1, **common)
    assert again.trained == 0 and again.runs[0]['action'] == 'skipped'
    assert again.rows[0]['top1_mean'] == first.rows[0]['top1_mean']
    with pytest.raises(AnalysisError, match=r'planned for 1 epochs, but this comparison asks for 2 .*; use another '
                                            r'--output folder for 2 epochs, or --epochs 1'):
        compare(['resnet20'], 'digits', 1, epochs=2, **common)
    assert json.loads((run / 'run.json').read_text())['epochs_done'] == 1  # nothing was trained


def test_compare_stops_at_a_signal_and_continues_when_run_again(tmp_path, monkeypatch, capsys):
    common = ['compare', '--models', 'resnet20', '--data', 'digits', '--epochs', '1', '--batch-size', '128',
              '--threads', '1', '--no-bench', '--no-progress', '--output', str(tmp_path)]
    signal_at_forward(monkeypatch, 4)
    assert main(common) == 143
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('plugattn: compare stopped by SIGTERM; ') and 'same plugattn compare command' in err
    run = tmp_path / 'resnet20' / 'seed0'
    assert json.loads((run / 'run.json').read_text())['status'] == 'stopped'
    assert not (tmp_path / 'results.md').exists()
    assert main(common) == 0
    assert 'resuming' in capsys.readouterr().out and (tmp_path / 'results.md').is_file()


# --------------------------------------------------------------------------------------------- images


def make_folder(root: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in ('ant', 'bee'):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)).save(
                    root / split / c / f'{i}.png')
    return root


def test_image_modes_convert_to_8bit_rgb_without_clipping(tmp_path):
    import numpy as np
    from PIL import Image

    from plugattn.data.images import open_rgb

    def rgb(img, name):
        img.save(tmp_path / name)
        return np.asarray(open_rgb(tmp_path / name))

    grey16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    out = rgb(Image.fromarray(grey16), 'g16.png')
    assert Image.open(tmp_path / 'g16.png').mode == 'I;16'
    assert out.shape == (1, 4, 3) and out[0, :, 0].tolist() == [0, 1, 128, 255] and (out[..., 0] == out[..., 2]).all()
    assert np.asarray(Image.open(tmp_path / 'g16.png').convert('RGB'))[0, :, 0].tolist() == [0, 255, 255, 255]

    pal = Image.new('P', (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    assert rgb(pal, 'p.png').tolist() == [[[10, 20, 30], [200, 100, 50]]]
    pal.info['transparency'] = 0  # palette index 0 transparent: white background
    assert rgb(pal, 'pt.png').tolist() == [[[255, 255, 255], [200, 100, 50]]]

    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [100, 50, 0, 128]]], dtype=np.uint8), 'RGBA')
    assert rgb(rgba, 'a.png').tolist() == [[[255, 255, 255], [0, 0, 0], [177, 152, 127]]]
    la = Image.fromarray(np.array([[[40, 0], [40, 255]]], dtype=np.uint8), 'LA')
    assert rgb(la, 'la.png').tolist() == [[[255, 255, 255], [40, 40, 40]]]

    cmyk = Image.new('CMYK', (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 255, 255, 0))  # full magenta + yellow = red
    out = rgb(cmyk, 'c.tiff')
    assert out.tolist() == [[[255, 255, 255], [255, 0, 0]]]
    assert rgb(Image.fromarray(np.array([[7, 250]], dtype=np.uint8), 'L'), 'l.png').tolist() == [
        [[7, 7, 7], [250, 250, 250]]]


def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    from PIL import Image

    from plugattn.data import DataError
    from plugattn.data.images import open_rgb

    Image.new('L', (40, 40)).save(tmp_path / 'big.png')  # 1600 pixels
    for limit in (1000, 500):  # above the limit (Pillow warns) and above twice the limit (Pillow raises)
        monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', limit)
        with pytest.raises(DataError) as exc:
            open_rgb(tmp_path / 'big.png')
        assert str(exc.value) == (
            f"image {tmp_path / 'big.png'} is a decompression bomb (1,600 pixels, Pillow's limit is {limit:,}); "
            'remove the file, or raise PIL.Image.MAX_IMAGE_PIXELS if it is a genuine image')


def test_preflight_names_bad_files_and_is_cached_by_folder_state(tmp_path, monkeypatch):
    from plugattn.data import DataError
    from plugattn.data.images import preflight_imagefolder

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_folder(tmp_path / 'imgs')
    good = (root / 'train' / 'ant' / '0.png').read_bytes()
    (root / 'train' / 'bee' / 'notes.jpg').write_text('not an image')
    (root / 'val' / 'ant' / 'cut.png').write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as exc:
        preflight_imagefolder(root, threads=2)
    msg = str(exc.value)
    assert msg.startswith(f'imagefolder {root} has 2 unreadable images: {root}/train/bee/notes.jpg (not an image '
                          f'file Pillow can read), {root}/val/ant/cut.png (cannot be decoded')
    assert msg.endswith('; remove or replace them (or skip this check with --no-preflight)') and '\n' not in msg
    (root / 'train' / 'bee' / 'notes.jpg').unlink()
    (root / 'val' / 'ant' / 'cut.png').write_bytes(good)
    lines = []
    first = preflight_imagefolder(root, threads=2, echo=lines.append)
    assert (first.files, first.decoded) == (17, 17) and 'images decoded' in lines[0]
    second = preflight_imagefolder(root, echo=lines.append)
    assert second.decoded == 0 and lines[1].endswith('17 images unchanged since the last check')
    (root / 'train' / 'bee' / '1.png').write_text('changed')  # one folder changes: only it is decoded again
    with pytest.raises(DataError, match=r'has 1 unreadable image: .*/train/bee/1\.png'):
        preflight_imagefolder(root)
    (root / 'train' / 'bee' / '1.png').write_bytes(good)
    assert preflight_imagefolder(root).decoded == 4


def test_bad_image_stops_train_before_output_and_worker_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_folder(tmp_path / 'imgs')
    (root / 'train' / 'bee' / 'notes.jpg').write_text('not an image')
    argv = ['train', '--data', 'imagefolder', '--data-dir', str(root), '--model', 'resnet20', '--epochs', '1',
            '--batch-size', '3', '--threads', '1', '--no-progress', '--set', 'aug.image_size=8',
            '--output', str(tmp_path / 'runs')]
    code = main(argv)
    assert_one_line_error(code, capsys.readouterr().err, 'has 1 unreadable image', 'notes.jpg (not an image file',
                          '--no-preflight')
    assert not (tmp_path / 'runs').exists()
    code = main([*argv, '--no-preflight', '--workers', '2'])
    assert_one_line_error(code, capsys.readouterr().err,
                          f"image {root / 'train' / 'bee' / 'notes.jpg'}: not an image file Pillow can read; "
                          'remove or replace the file')


def test_auto_pipeline_is_saved_resolved_so_a_resume_keeps_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip('timm')
    import importlib.util

    import yaml

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    root = make_folder(tmp_path / 'imgs')
    run = tmp_path / 'runs' / 'run'
    argv = ['train', '--data', 'imagefolder', '--data-dir', str(root), '--model', 'resnet20', '--epochs', '2',
            '--batch-size', '4', '--threads', '1', '--no-progress', '--set', 'aug.image_size=8',
            '--set', 'aug.random_resized_crop=true', '--set', 'aug.random_crop_padding=0',
            '--output', str(tmp_path / 'runs'), '--name', 'run', '--stop-after', '1']
    assert main(argv) == 0
    assert yaml.safe_load((run / 'config.yaml').read_text())['aug']['pipeline'] == 'timm'  # 'auto', resolved
    capsys.readouterr()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'timm' else real_find_spec(
        name, *a))
    # timm gone: the run does not silently switch to the other pipeline halfway
    code = main(['train', '--resume', str(run), '--no-progress'])
    assert_one_line_error(code, capsys.readouterr().err, 'aug.pipeline=timm needs timm, which is not installed')


STORM_CHILD = """
import signal, sys, time
from plugattn.data import build_loader
caught = []
signal.signal(signal.SIGTERM, lambda *_: caught.append(1))
print('ready', flush=True)
while not caught:
    time.sleep(0.01)
for _ in range(4):  # every new loader forks its workers while the signals keep coming
    loader = build_loader('imagefolder', 'train', batch_size=4, train=True, data_dir=sys.argv[1], num_workers=2)
    n = sum(1 for _ in loader)
    loader.close()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('batches', n, 'signals', len(caught), flush=True)
"""


def test_loader_workers_survive_a_sigterm_storm_while_they_start(tmp_path):
    # A signal after the fork but before the worker ignores SIGTERM used to kill it ('DataLoader worker killed by
    # signal'), so a scheduler's SIGTERM at the start of an epoch or evaluation crashed the run instead of stopping it.
    root = make_folder(tmp_path / 'imgs', n=8)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'XDG_CACHE_HOME': str(tmp_path / 'c')}
    proc = subprocess.Popen([sys.executable, '-c', STORM_CHILD, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _wait_for(proc, 'ready')
        while proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    batches, signals = out.split()[1::2]
    assert batches == '4' and int(signals) > 10


def test_a_script_exits_with_a_loader_alive(tmp_path):
    # the persistent workers ignore SIGTERM, which multiprocessing's exit handler sends them before joining them
    root = make_folder(tmp_path / 'imgs', n=2)
    code = ('import sys; from plugattn.data import build_loader\n'
            'loader = build_loader("imagefolder", "train", batch_size=2, train=True, data_dir=sys.argv[1], '
            'num_workers=2)\nprint(sum(1 for _ in loader))')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'XDG_CACHE_HOME': str(tmp_path / 'c')}
    done = subprocess.run([sys.executable, '-c', code, str(root)], capture_output=True, text=True, env=env,
                          timeout=40)
    assert done.returncode == 0 and done.stdout.split() == ['2'], done.stderr


def test_sigterm_to_the_process_group_with_loader_workers_stops_cleanly(tmp_path, capsys):
    # Schedulers signal every process of the job: the DataLoader workers must leave the stop to the main process.
    # 100 steps an epoch, 20 epochs: on a loaded machine the refusal below can outlast a whole epoch, and the run
    # must still be going when the signal comes
    root = make_folder(tmp_path / 'imgs', n=200)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1', 'XDG_CACHE_HOME': str(tmp_path / 'c')}
    cmd = [sys.executable, '-m', 'plugattn', 'train', '--data', 'imagefolder', '--data-dir', str(root), '--model',
           'resnet20', '--epochs', '20', '--batch-size', '4', '--threads', '1', '--workers', '2', '--no-progress',
           '--set', 'aug.image_size=8', '--set', 'train.log_interval=1', '--output', str(tmp_path), '--name', 'run']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _wait_for(proc, '[3/100]')
        # while it runs, a second train in the same run directory is refused, and touches nothing
        code = main(['train', '--resume', str(tmp_path / 'run'), '--no-progress'])
        assert_one_line_error(code, capsys.readouterr().err, f'run directory {tmp_path / "run"} is in use by a '
                              f'running plugattn train (pid {proc.pid})', 'wait for that run to end or stop it')
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert not (tmp_path / 'run' / '.lock').exists()
    assert 'Traceback' not in err and 'DataLoader worker' not in err
    assert json.loads((tmp_path / 'run' / 'run.json').read_text())['status'] == 'stopped'
    state = load_state(tmp_path / 'run' / 'last_state.pt')
    assert state['step'] >= 3 and state['epoch'] < 20
