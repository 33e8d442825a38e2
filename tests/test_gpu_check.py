"""``benchmarks/gpu_check.py`` on the CPU: every part at tiny sizes (``--quick``), what it skips, and its re-runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_amp import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_quick_cpu_run_of_every_part(tmp_path):
    pytest.importorskip('sklearn')  # part a's engine run trains on the digits dataset
    from plugattn.data.sources import load_fashion_mnist

    try:
        load_fashion_mnist('test', download=False)
        fashion = True
    except Exception:  # part c then skips with one line naming where to put the files
        fashion = False
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'gpu_check.py'), '--device', 'cpu', '--quick',
                           '--budget', 'a=600,b=600,c=600', '--out', str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    # what truly needs CUDA is skipped, each with one line saying so
    assert 'part a: skipped the engine run in float16 with a GradScaler: needs CUDA' in proc.stderr
    assert 'part b: skipped largest batch that fits: needs CUDA' in proc.stderr

    a = report['a']
    assert a['failed'] == 0
    checked = {(r['family'], r['check']) for r in a['rows'] if r['check'] != 'not offered'}
    for fam in gpu_check.FAMILIES:
        for check in ('float32', 'channels_last float32', 'bfloat16 AMP', 'float16 AMP'):
            assert (fam.name, check) in checked
    assert ('ResNet (basic, CIFAR)', 'compile aot_eager float32') in checked
    assert ('torchvision resnet18 (attached)', 'bfloat16 AMP') in checked
    engine = next(r for r in a['rows'] if r['family'] == 'engine')
    assert engine['ok'] and 'resumed run identical: True' in engine['note']
    for r in a['rows']:
        if 'lean' in r:  # every float32 comparison is tight, and reported errors are real numbers
            assert 0.0 <= max(r['lean'].values()) < (1e-4 if 'float32' in r['check'] else 1.0), r

    b = report['b']
    groups = {r['group'] for r in b['records']}
    assert len(groups) == 3, groups  # plugattn eager, attached eager, compiled
    for r in b['records']:
        assert r['step_ms'] > 0 and r['peak_mb'] > 0 and r['rounds'] == 3
        if r['model'] == r['baseline']:
            assert r['ratio'] == 1.0 and r['peak_ratio'] == 1.0
    assert {r['model'] for r in b['records']} >= {'se_resnet20', 'torchvision:resnet18 + attach se'}

    c = report['c']
    if fashion:
        assert [s['model'] for s in c['summary']] == ['resnet20', 'se_resnet20']
        for s in c['summary']:
            assert s['finished'] and s['epochs'] == 2 and len(s['mean_curve']) == 2
            assert 0.0 <= s['mean'] <= 100.0
    else:
        assert 'Fashion-MNIST not found' in c['skipped'][0]
    md = (tmp_path / 'gpu_check.md').read_text()
    assert '## a. Correctness' in md and '## b. Cost' in md and '## c. Accuracy' in md


def test_rerun_of_one_part_keeps_the_others(tmp_path, monkeypatch):
    earlier = {'meta': {'device_type': 'cpu'},
               'a': {'rows': [dict(family='engine', attn='bav2', check='train', ok=True, note='earlier run')],
                     'skipped': [], 'failed': 0, 'seconds': 1.0,
                     'tolerance': {'factor': 2.0, 'floor': {'float32': 1e-6, 'bfloat16': 1e-3},
                                   'lean_vs_plain_float32': 1e-4}}}
    (tmp_path / 'gpu_check.json').write_text(json.dumps(earlier))
    stub = {'records': [], 'largest_batch': {}, 'skipped': ['stub'], 'batch': 4, 'px': 32, 'amp': 'bfloat16',
            'channels_last': True, 'reps': 3, 'seconds': 0.0, 'machine': 'test', 'load': ''}
    monkeypatch.setattr(gpu_check, 'part_b', lambda *args: stub)
    assert gpu_check.main(['--device', 'cpu', '--quick', '--parts', 'b', '--out', str(tmp_path)]) == 0
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert report['a'] == earlier['a'] and report['b'] == stub and 'c' not in report
    md = (tmp_path / 'gpu_check.md').read_text()
    assert 'earlier run' in md and '* Skipped: stub' in md


def test_bad_arguments_and_missing_cuda_give_one_line(capsys):
    assert gpu_check.main(['--parts', 'a,x']) == 2
    assert capsys.readouterr().err.strip().count('\n') == 0
    with pytest.raises(SystemExit, match='--budget takes PART=SECONDS'):
        gpu_check.main(['--device', 'cpu', '--budget', 'a=fast'])
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 2
        err = capsys.readouterr().err
        assert 'no CUDA device here' in err and '--device cpu --quick' in err and err.strip().count('\n') == 0


def test_largest_batch_search_brackets_the_limit():
    tried = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= 1000

    assert gpu_check.bracket_largest(fits, 128, gpu_check.Budget(60)) == (992, 1008)
    assert tried == [128, 256, 512, 1024, 768, 896, 960, 992, 1008]
    assert gpu_check.bracket_largest(lambda b: False, 128, gpu_check.Budget(60)) == (0, 128)
    assert gpu_check.bracket_largest(fits, 128, gpu_check.Budget(0)) == (0, 128)  # no time: nothing claimed


def test_accuracy_runs_crop_and_flip_on_the_device():
    """Part c's augmentation: every output is a 28x28 window of the zero-padded image, mirrored or not, both happen."""
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28).repeat(32, 1, 1, 1)
    out = gpu_check._crop_flip(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    kinds, offsets = set(), set()
    for i in range(x.shape[0]):
        windows = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                   if torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28].flip(2) if flip else
                                  padded[i, :, dy:dy + 28, dx:dx + 28])]
        assert windows, i
        kinds.add(windows[0][2])
        offsets.add(windows[0][:2])
    assert kinds == {False, True} and len(offsets) > 10
