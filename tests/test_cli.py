"""Command-line tests: help, list-models, train/eval round trip, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from plugattn.cli import SUBCOMMANDS, build_parser, main

pytest.importorskip('sklearn')  # the digits dataset comes from scikit-learn

TINY = ['--data', 'digits', '--model', 'resnet20', '--epochs', '1', '--batch-size', '64', '--threads', '1',
        '--set', 'train.eval_batch_size=360', '--no-progress']


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith('plugattn: error: '), line
    assert '; ' in line, f'no "<problem>; <fix>" in {line!r}'
    assert 'Traceback' not in err
    for fragment in fragments:
        assert fragment in line, (fragment, line)


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory) -> Path:
    """One tiny finished run (digits, ResNet-20, one epoch)."""
    out = tmp_path_factory.mktemp('runs')
    assert main(['train', *TINY, '--output', str(out), '--name', 'tiny']) == 0
    return out / 'tiny'


# --------------------------------------------------------------------------------------------- happy paths


def test_help_of_every_subcommand_shows_defaults(capsys):
    parser = build_parser()
    names = list(parser._subparsers._group_actions[0].choices)
    assert names[:3] == ['train', 'eval', 'list-models'] and len(SUBCOMMANDS) == len(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, '--help'])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f'usage: plugattn {name}') and '--debug' in out
        if name in ('train', 'eval', 'list-models'):
            assert '(default' in out
    out = subprocess.run([sys.executable, '-m', 'plugattn', 'train', '--help'], capture_output=True, text=True,
                         check=True).stdout
    assert 'bav2_resnet20' in out and 'optim.lr = ' in out and 'bav2-imagenet-300ep' in out


def test_list_models(capsys):
    code, out, _ = run_cli(capsys, 'list-models', '*resnet20')
    names = out.split()
    assert code == 0 and 'bav2_resnet20' in names and 'resnet20' in names and 'resnet50' not in names
    code, out, _ = run_cli(capsys, 'list-models', 'resnet20', '--params')
    assert code == 0 and out.split()[0] == 'resnet20' and int(out.split()[1].replace(',', '')) > 200_000


def test_train_then_eval(trained_run, capsys):
    assert (trained_run / 'best.safetensors').is_file()
    code, out, _ = run_cli(capsys, 'eval', '--checkpoint', str(trained_run), '--json')
    assert code == 0
    result = json.loads(out)
    summary = (trained_run / 'summary.csv').read_text().splitlines()[1].split(',')
    assert result['model'] == 'resnet20' and result['data'] == 'digits' and result['samples'] == 360
    assert result['top1'] == pytest.approx(float(summary[3]), abs=1e-3)
    assert 0 <= result['top5'] <= 100 and result['test_loss'] > 0
    code, out, _ = run_cli(capsys, 'eval', '--checkpoint', str(trained_run / 'last.safetensors'))
    assert code == 0 and 'top-1' in out and 'top-5' in out and 'loss' in out


def test_print_config_and_overrides(capsys):
    import yaml

    code, out, _ = run_cli(capsys, 'train', '--print-config', '--lr', '0.05', '--set', 'schedule.milestones=[1,2]',
                           '--set', 'optim.weight_decay=1e-4')
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg['optim']['lr'] == 0.05 and cfg['optim']['weight_decay'] == 1e-4
    assert cfg['schedule']['milestones'] == [1, 2] and cfg['model']['name'] == 'bav2_resnet20'


def test_default_run_summary_format(trained_run, capsys):
    config = (trained_run / 'config.yaml').read_text()
    assert 'name: resnet20' in config
    code, out, _ = run_cli(capsys, 'train', *TINY, '--output', str(trained_run.parent), '--name', 'again')
    assert code == 0
    summary = out[out.index('plugattn train: finished'):]
    for text in ('final top-1', 'best top-1', 'params', 'MACs (conv/linear/matmul only)', 'wall time', 'run dir'):
        assert text in summary, text
    assert str(trained_run.parent / 'again') in summary


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(('argv', 'fragments'), [
    (['train', '--data', 'mnistt'], ["unknown dataset 'mnistt'"]),
    (['train', '--data', 'digits', '--model', 'resnet_nope'], ["unknown model 'resnet_nope'", 'list-models']),
    (['train', '--recipe', 'imagenet-9000ep'], ["unknown recipe 'imagenet-9000ep'", 'fashion-mnist']),
    (['train', '--epochs', 'ten'], ["argument --epochs: invalid int value: 'ten'", 'plugattn train --help']),
    (['train', '--set', 'train.epochs=ten'], ['train.epochs must be an integer', '--epochs']),
    (['train', '--lr', '-0.1'], ['optim.lr must be > 0', '--lr']),
    (['train', '--batch-size', '0'], ['train.batch_size must be >= 1', '--batch-size']),
    (['train', '--set', 'optim.momentun=0.9'], ["unknown config key 'optim.momentun'", 'optim.momentum']),
    (['train', '--set', 'lr'], ['has no "="']),
    (['train', '--bogus-flag'], ['unrecognized arguments: --bogus-flag', 'plugattn train --help']),
    (['frobnicate'], ["invalid choice: 'frobnicate'"]),
    (['list-models', 'zzz*'], ["no model matches 'zzz*'"]),
])
def test_bad_input_gives_one_line_and_exit_2(capsys, tmp_path, argv, fragments):
    extra = ['--output', str(tmp_path)] if argv[0] == 'train' else []
    code, _, err = run_cli(capsys, *argv, *extra)
    assert_one_line_error(code, err, *fragments)
    assert not list(tmp_path.rglob('run.json')), 'a failed start must not leave a run behind'


def test_missing_data_is_a_clear_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, 'train', '--data', 'cifar10', '--data-dir', str(tmp_path / 'nowhere'),
                           '--set', 'data.download=false', '--output', str(tmp_path))
    assert_one_line_error(code, err, 'CIFAR-10 not found', '--data-dir')
    assert not list(tmp_path.rglob('run.json'))


def test_missing_files_one_wording_and_print_config_checks_paths(trained_run, capsys, tmp_path):
    missing = tmp_path / 'missing.png'
    code, _, err = run_cli(capsys, 'cam', '--model', 'resnet20', '--image', str(missing), '--output',
                           str(tmp_path / 'cam'))
    assert_one_line_error(code, err)
    assert err.strip() == f'plugattn: error: cannot read image {missing} (no such file); check the path'
    code, out, err = run_cli(capsys, 'predict', '--checkpoint', str(trained_run), str(missing))
    assert code == 2 and err.strip() == f'plugattn: error: cannot read image {missing} (no such file); check the path'

    weights = tmp_path / 'missing.pth'
    code, out, err = run_cli(capsys, 'train', *TINY, '--init-checkpoint', str(weights), '--print-config')
    assert_one_line_error(code, err)
    assert not out and err.strip() == (
        f'plugattn: error: weights file {weights} does not exist; pass a .safetensors, .pth or .bin state_dict file')
    code, _, train_err = run_cli(capsys, 'train', *TINY, '--init-checkpoint', str(weights), '--output',
                                 str(tmp_path / 'runs'))
    assert code == 2 and train_err == err and not (tmp_path / 'runs').exists()  # what training says
    code, out, err = run_cli(capsys, 'train', '--data', 'imagefolder', '--data-dir', str(tmp_path / 'nowhere'),
                             '--print-config')
    assert_one_line_error(code, err, f'imagefolder --data-dir {tmp_path / "nowhere"} does not exist')
    assert not out
    code, out, _ = run_cli(capsys, 'train', *TINY, '--init-checkpoint', str(trained_run / 'best.safetensors'),
                           '--print-config')
    assert code == 0 and f'init_checkpoint: {trained_run / "best.safetensors"}' in out


def test_run_files_follow_the_umask(trained_run, tmp_path):
    """Run files get 0o666 less the umask, as tb/ and every other file (not tempfile.mkstemp's private 0o600)."""
    import os
    import stat

    from plugattn.engine.checkpoint import atomic_write_text, write_run_info

    umask = os.umask(0o022)
    os.umask(umask)
    files = [p for p in trained_run.rglob('*') if p.is_file()]
    names = {p.name for p in files}
    assert {'run.json', 'config.yaml', 'best.safetensors', 'last_state.pt', 'summary.csv'} <= names, names
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}, sorted(
        (p.name, oct(stat.S_IMODE(p.stat().st_mode))) for p in files)
    for mask in (0o022, 0o027, 0o077):
        old = os.umask(mask)
        try:
            atomic_write_text(tmp_path / f'{mask:o}.yaml', 'a: 1\n')
            write_run_info(tmp_path, {'status': 'running'})
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f'{mask:o}.yaml').stat().st_mode) == 0o666 & ~mask
        assert stat.S_IMODE((tmp_path / 'run.json').stat().st_mode) == 0o666 & ~mask
    assert not list(tmp_path.glob('.*.tmp'))


def test_checkpoint_errors(trained_run, capsys, tmp_path):
    ckpt = trained_run / 'last.safetensors'
    code, _, err = run_cli(capsys, 'eval', '--checkpoint', str(ckpt), '--model', 'se_resnet20')
    assert_one_line_error(code, err, 'holds resnet20 weights, not se_resnet20')
    code, _, err = run_cli(capsys, 'train', *TINY, '--model', 'se_resnet20', '--init-checkpoint', str(ckpt),
                           '--output', str(tmp_path))
    assert_one_line_error(code, err, 'holds resnet20 weights, not se_resnet20')
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(ckpt.read_bytes()[:-5000])
    code, _, err = run_cli(capsys, 'eval', '--checkpoint', str(broken))
    assert_one_line_error(code, err, 'truncated or corrupted')
    code, _, err = run_cli(capsys, 'eval', '--checkpoint', str(tmp_path / 'missing.safetensors'))
    assert_one_line_error(code, err, 'does not exist')
    code, _, err = run_cli(capsys, 'eval', '--checkpoint', str(tmp_path))
    assert_one_line_error(code, err, 'not a plugattn run directory')


def test_resume_errors(trained_run, capsys, tmp_path):
    code, _, err = run_cli(capsys, 'train', '--resume', str(tmp_path))
    assert_one_line_error(code, err, 'is not a plugattn run directory', 'run.json')
    code, _, err = run_cli(capsys, 'train', '--resume', str(tmp_path / 'missing'))
    assert_one_line_error(code, err, 'does not exist')
    code, _, err = run_cli(capsys, 'train', '--resume', str(trained_run), '--lr', '0.5')
    assert_one_line_error(code, err, 'optim.lr cannot change when resuming')
    code, _, err = run_cli(capsys, 'train', '--resume', str(trained_run))
    assert_one_line_error(code, err, 'already finished 1 of 1 epochs', '--epochs')
    code, _, err = run_cli(capsys, 'train', '--recipe', 'dia-cifar', '--resume', str(trained_run))
    assert_one_line_error(code, err, '--recipe cannot be combined with --resume')
    fresh = tmp_path / 'fresh'
    fresh.mkdir()
    (fresh / 'run.json').write_text((trained_run / 'run.json').read_text())
    (fresh / 'config.yaml').write_text((trained_run / 'config.yaml').read_text())
    code, _, err = run_cli(capsys, 'train', '--resume', str(fresh), '--epochs', '3')
    assert_one_line_error(code, err, 'resume state', 'does not exist')
    (fresh / 'last_state.pt').write_bytes((trained_run / 'last_state.pt').read_bytes()[:4000])
    code, _, err = run_cli(capsys, 'train', '--resume', str(fresh), '--epochs', '3')
    assert_one_line_error(code, err, 'truncated or corrupted')


def test_debug_shows_traceback_and_subprocess_exit_code(capsys):
    code, _, err = run_cli(capsys, 'train', '--debug', '--lr', '-1', '--print-config')
    assert code == 2 and 'Traceback' in err and err.strip().splitlines()[-1].startswith('plugattn: error: ')
    proc = subprocess.run([sys.executable, '-m', 'plugattn', 'train', '--data', 'nope'], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.startswith("plugattn: error: unknown dataset 'nope'") and proc.stderr.count('\n') == 1
