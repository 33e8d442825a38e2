"""Analysis tools: bench counts against hand-computed values, Grad-CAM output, gate correlations, compare/resume."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import plugattn
from plugattn.analysis import (
    AnalysisError,
    GateRecorder,
    benchmark,
    collect_gates,
    default_target_layer,
    format_records,
    gate_correlation,
    pearson_matrix,
)
from plugattn.analysis import complexity as complexity_mod
from plugattn.analysis._common import require
from plugattn.analysis.complexity import median_interval

# --------------------------------------------------------------------------------------------- bench


def _conv_macs(cin: int, cout: int, k: int, hw: int) -> int:
    return cout * hw * hw * cin * k * k


def _resnet20_by_hand(num_classes: int = 10) -> tuple[int, int]:
    """Parameters and MACs of the CIFAR ResNet-20 (option-B shortcuts) at 32x32, from its layer shapes."""
    params = 16 * 3 * 9 + 2 * 16                          # stem conv + BN
    macs = _conv_macs(3, 16, 3, 32)
    cin, hw = 16, 32
    for width, stride in ((16, 1), (32, 2), (64, 2)):
        hw //= stride
        for block in range(3):
            c_in = cin if block == 0 else width
            params += c_in * width * 9 + 2 * width + width * width * 9 + 2 * width
            macs += _conv_macs(c_in, width, 3, hw) + _conv_macs(width, width, 3, hw)
            if block == 0 and (stride != 1 or c_in != width):  # 1x1 conv + BN projection
                params += c_in * width + 2 * width
                macs += _conv_macs(c_in, width, 1, hw)
        cin = width
    params += 64 * num_classes + num_classes                # fc
    macs += 64 * num_classes
    return params, macs


def test_bench_params_and_macs_match_hand_count():
    recs = benchmark(['resnet20', 'se_resnet20'], timing=False, memory=False)
    plain, se = recs
    params, macs = _resnet20_by_hand()
    assert (plain.params, plain.attn_params, plain.macs) == (params, 0, macs)
    # SE, bias-free, reduction 16: two C x max(1, C // 16) linears per block, three blocks per width.
    se_params = 3 * sum(2 * c * max(1, c // 16) for c in (16, 32, 64))
    assert se.attn_params == se_params == 2016
    assert se.params == params + se_params == 274_490       # specs §13.3: BA-repo SE-ResNet20
    assert se.macs == macs + se_params                      # each linear weight is one multiply-add per image
    assert se.macs_ratio == pytest.approx((macs + se_params) / macs)


def test_bench_macs_resnet50_spec():
    """specs §13.1: SE-ResNet-50 (bias-free) 28,071,976 params (2,514,944 in SE), 4.0917 GMACs at 224."""
    (rec,) = benchmark(['se_resnet50'], timing=False, memory=False)
    assert (rec.params, rec.attn_params, rec.img_size) == (28_071_976, 2_514_944, 224)
    assert rec.macs / 1e9 == pytest.approx(4.0917, abs=5e-5)


def test_bench_timing_is_interleaved_and_reported(monkeypatch):
    calls: list[str] = []
    real = complexity_mod.create_model

    def logged(name, **kw):
        model = real(name, **kw)
        model.register_forward_pre_hook(lambda m, a: calls.append(name))
        return model

    monkeypatch.setattr(complexity_mod, 'create_model', logged)
    recs = benchmark(['bav2_resnet20', 'resnet20'], img_size=8, batch_size=2, reps=3, warmup=1, min_time=0.0,
                     train=True, memory=True)
    by = {r.model: r for r in recs}
    assert [r.model for r in recs] == ['bav2_resnet20', 'resnet20']  # order as requested
    a, b = 'resnet20', 'bav2_resnet20'  # the backbone is measured first, then the variants
    assert calls[:6] == [a, b, a, a, b, b]  # MAC counts, then warm-up/calibration (inference, training step)
    assert calls[6:18] == [a, b] * 6        # 3 reps x (inference A B, training step A B): interleaved
    assert calls[18:] == [a] * 3 + [b] * 3  # memory: inference, then a training step before the measured one
    assert by['resnet20'].infer_ratio == 1.0 and by['resnet20'].train_ratio == 1.0
    bav2 = by['bav2_resnet20']
    for kind in ('infer', 'train'):  # a paired median inside its interval; 3 rounds: the range, 75 % coverage
        lo, ratio, hi = (getattr(bav2, f'{kind}_ratio{s}') for s in ('_lo', '', '_hi'))
        assert 0 < lo <= ratio <= hi and getattr(by['resnet20'], f'{kind}_ratio_lo') == 1.0
    assert bav2.ratio_confidence == pytest.approx(0.75)
    assert bav2.infer_ratio_lo <= bav2.infer_ms_max / by['resnet20'].infer_ms_min
    assert by['bav2_resnet20'].train_batch_size == 2 and by['bav2_resnet20'].train_ms > 0
    assert by['bav2_resnet20'].train_mem_mb > 0 and by['bav2_resnet20'].infer_mem_mb > 0
    rows = json.loads(format_records(recs, 'json'))
    for key in ('model', 'params', 'attn_params', 'macs', 'infer_ms', 'infer_ratio', 'train_ms', 'train_ratio'):
        assert key in rows[0] and rows[0][key] is not None
    table = format_records(recs, 'markdown')
    assert 'MACs' in table and 'not counted' in table and 'bav2_resnet20' in table
    narrow = format_records(recs, 'table')  # the terminal's: one short line per model, no Markdown pipes
    assert 'bav2_resnet20' in narrow and '|' not in narrow and 'min-max (ms)' not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 100


def test_median_interval_order_statistics():
    median, lo, hi, cover = median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (median, lo, hi) == (3.0, 1.0, 5.0) and cover == pytest.approx(1 - 2 / 32)  # too few for 95 %: the range
    median, lo, hi, cover = median_interval([float(v) for v in range(1, 11)])
    assert (median, lo, hi) == (5.5, 2.0, 9.0) and cover == pytest.approx(1 - 2 * 11 / 1024)  # k = 2 of 10
    median, lo, hi, cover = median_interval([float(v) for v in range(1, 21)])
    assert (lo, hi) == (6.0, 15.0) and cover >= 0.95  # k = 6 of 20 (95.9 %); k = 7 would cover 88.5 %
    with pytest.raises(ValueError):
        median_interval([])


def test_bench_reports_spread_load_layout_and_torchvision():
    recs = benchmark(['torchvision:resnet18', 'resnet18'], img_size=16, batch_size=2, reps=2, warmup=1, min_time=0.0,
                     memory=True)
    tv, ours = recs
    assert (tv.backbone, tv.attn, tv.params) == ('resnet18', 'none', ours.params)  # same architecture, same count
    for r in recs:
        assert r.infer_ms_min <= r.infer_ms <= r.infer_ms_max and r.train_ms_min <= r.train_ms <= r.train_ms_max
        assert r.threads == 1 and r.channels_last and r.clock == 'process CPU time' and r.reps == 2
    assert ours.train_mem_ratio == 1.0 and tv.train_mem_ratio == pytest.approx(tv.train_mem_mb / ours.train_mem_mb)
    table = format_records(recs, 'markdown')
    assert 'min-max' in table and 'channels_last' in table and '1 thread,' in table
    assert ('Load average' in table) == (recs[0].load_before is not None)


# --------------------------------------------------------------------------------------------- cam


def test_require_names_the_extra():
    with pytest.raises(AnalysisError, match=r"pip install 'plugattn\[viz\]'"):
        require('plugattn_no_such_module', 'plugattn cam')


@pytest.mark.parametrize('name', ['se_resnet20', 'dia_resnet20'])
def test_cam_writes_overlay_of_image_size(tmp_path: Path, name: str):
    pytest.importorskip('pytorch_grad_cam', reason='grad-cam is not installed (pip install plugattn[viz])')
    from PIL import Image

    from plugattn.analysis.gradcam import compute_cam, preprocess, run_cam

    rng = np.random.default_rng(0)
    img = np.zeros((45, 61, 3), np.uint8)
    img[10:30, 20:50] = rng.integers(100, 255, (20, 30, 3))
    path = tmp_path / 'blob.png'
    Image.fromarray(img).save(path)
    torch.manual_seed(0)
    model = plugattn.create_model(name).eval()
    results = run_cam(model, [path], method='gradcam', output=tmp_path / 'out', overlay_only=True)
    out = Image.open(results[0].output)
    assert Path(results[0].output).name == 'blob_gradcam.png'
    assert out.size == (61, 45)
    assert 0 <= results[0].pred_class < 10 and 0.0 < results[0].pred_prob <= 1.0
    layer_name, layer = default_target_layer(model)
    assert results[0].target_layer == layer_name
    _, x = preprocess(path, (32, 32), 3)
    maps, _ = compute_cam(model, x, layer, 'gradcam')
    assert maps.shape == (1, 32, 32) and maps.std() > 1e-3  # the heatmap is not constant
    overlay = np.asarray(out, dtype=np.float32)
    assert overlay[..., 0].std() > 1.0
    pytest.importorskip('matplotlib')
    from plugattn.analysis.gradcam import COMPOSITE_SIZE

    composite = run_cam(model, [path], output=tmp_path / 'composite')[0]
    assert Image.open(composite.output).size == COMPOSITE_SIZE and composite.pred_class == results[0].pred_class
    with pytest.raises(AnalysisError, match=r'missing\.png'):  # a bad image among good ones: nothing is written
        run_cam(model, [path, tmp_path / 'missing.png'], output=tmp_path / 'none')
    assert not (tmp_path / 'none').exists()


def test_cam_rejects_a_layer_forward_never_calls():
    pytest.importorskip('pytorch_grad_cam')
    from plugattn.analysis.gradcam import compute_cam

    model = plugattn.create_model('dia_resnet20').eval()
    with pytest.raises(AnalysisError, match='never called'):
        compute_cam(model, torch.zeros(1, 3, 32, 32), model.layer3[2], 'gradcam')


@pytest.mark.parametrize(('name', 'kwargs', 'layer'), [
    ('deit_tiny', {'img_size': 32}, 'blocks.11.norm1'),
    ('swin_t', {'img_size': 64, 'window_size': 2}, 'norm'),
])
def test_cam_on_token_models(name: str, kwargs: dict, layer: str):
    """Transformers name their own target layer and token -> NCHW transform; the map is not constant."""
    pytest.importorskip('pytorch_grad_cam')
    from plugattn.analysis.gradcam import compute_cam

    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=4, **kwargs).eval()
    target_name, target = default_target_layer(model)
    assert target_name == layer
    size = kwargs['img_size']
    maps, probs = compute_cam(model, torch.randn(2, 3, size, size), target)
    assert maps.shape == (2, size, size) and probs.shape == (2, 4)
    assert float(maps.std()) > 1e-3 and float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


# --------------------------------------------------------------------------------------------- attn-corr


def _calibrated(name: str, loader) -> nn.Module:
    """A model whose BatchNorm statistics come from real images (at random init, the BN1d of bridge attention
    with running stats (0, 1) often leaves every hidden unit dead, so its gate is a constant 0.5)."""
    torch.manual_seed(0)
    model = plugattn.create_model(name, in_chans=1)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i == 2:
                break
            model(x)
    return model.eval()


@pytest.fixture(scope='module')
def digits_loader():
    from plugattn.data import build_loader

    return build_loader('digits', 'test', batch_size=60, train=False)


@pytest.mark.parametrize('attn', ['se', 'cbam', 'ca', 'ela_b', 'bav2', 'dia'])
def test_attn_corr_matrix(attn: str, digits_loader):
    model = _calibrated(f'{attn}_resnet20', digits_loader)
    layers = collect_gates(model, digits_loader, max_batches=2)
    assert list(layers) == [f'layer{s}.{b}' for s in (1, 2, 3) for b in range(3)]  # DIA: one layer per block call
    for layer in layers.values():
        assert layer.matrix().shape == (120, {'1': 16, '2': 32, '3': 64}[layer.stage[-1]])
    report = gate_correlation(layers, model.model_name, 'digits')
    assert set(report.stages) == {'layer1', 'layer2', 'layer3'}
    for st in report.stages.values():
        r = np.array(st['matrix'], dtype=float)
        assert r.shape == (3, 3) and not np.isnan(r).any() and st['constant'] == []
        assert np.allclose(r, r.T) and np.allclose(np.diag(r), 1.0)
        assert (r >= -1.0).all() and (r <= 1.0).all()
        assert st['mean_offdiag'] == pytest.approx(r[np.triu_indices(3, 1)].mean())
    for ly in report.layers:
        assert 0.0 < ly['mean'] < 1.0 and ly['std'] >= 0.0 and 0.0 <= ly['saturated'] <= 1.0
    if attn == 'dia':
        assert report.mean_offdiag > 0.5  # one shared LSTM unit per stage: strongly correlated gates


@pytest.mark.parametrize('attn', ['se', 'eca', 'cbam', 'ca', 'ela_s', 'bav1', 'bav2', 'dia'])
def test_recomputed_gate_is_the_applied_gate(attn: str):
    """The recorder recomputes ``gate`` on the forward's arguments; in eval mode that is what forward applied."""
    torch.manual_seed(0)
    model = plugattn.create_model(f'{attn}_resnet20').eval()
    seen = []
    handles = [m.register_forward_hook(lambda m, a, o: seen.append((m, a, o)))
               for m in model.attention_modules().values()]
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
        for h in handles:
            h.remove()
        assert len(seen) == 9
        for m, args, out in seen:
            gate = m.gate(*args)
            gated, x = (out[0], args[0]) if isinstance(gate, tuple) else (out, args[-1])
            gate = gate[0] if isinstance(gate, tuple) else gate
            torch.testing.assert_close(gated, x * gate, rtol=1e-5, atol=1e-6)


def test_gate_recorder_leaves_no_hooks():
    model = plugattn.create_model('dia_resnet20').eval()
    with GateRecorder(model):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(AnalysisError, match='no attention'):
        GateRecorder(plugattn.create_model('resnet20'))


def test_pearson_matrix_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    b = 0.7 * a + 0.3 * rng.normal(size=(50, 8))
    c = rng.normal(size=(50, 8))
    r = pearson_matrix([a, b, c])
    np.testing.assert_allclose(r, np.corrcoef(np.stack([a.ravel(), b.ravel(), c.ravel()])), atol=1e-12)
    r = pearson_matrix([a, np.full((50, 8), 0.5)])  # constant gate: undefined, not 0 or 1
    assert np.isnan(r[0, 1]) and r[1, 1] == 1.0


def test_attn_corr_writes_heatmaps(tmp_path: Path):
    pytest.importorskip('matplotlib')
    from plugattn.analysis import attn_correlation

    torch.manual_seed(0)
    model = plugattn.create_model('dia_resnet20', in_chans=1)
    report = attn_correlation(model, 'digits', batches=1, batch_size=50, output=tmp_path)
    assert sorted(Path(p).name for p in report.figures.values()) == [
        f'dia_resnet20_layer{s}_corr.png' for s in (1, 2, 3)]
    assert all(Path(p).stat().st_size > 1000 for p in report.figures.values())
    data = json.loads((tmp_path / 'dia_resnet20_attn_corr.json').read_text())
    assert data['images'] == 50 and data['mean_offdiag'] == pytest.approx(report.mean_offdiag)


def test_analysis_loads_a_training_checkpoint_in_eval_mode(tmp_path: Path):
    from plugattn.analysis._common import load_model
    from plugattn.engine import save_weights

    torch.manual_seed(0)
    model = plugattn.create_model('bav2_resnet20', num_classes=10, in_chans=1).eval()
    meta = {'model': 'bav2_resnet20', 'model_kwargs': {'num_classes': 10, 'in_chans': 1}, 'data': {'name': 'digits'}}
    save_weights(tmp_path / 'best.safetensors', model.state_dict(), meta)
    loaded, info = load_model(checkpoint=tmp_path / 'best.safetensors')
    x = torch.randn(3, 1, 8, 8)
    assert not loaded.training and info['data']['name'] == 'digits'
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(AnalysisError, match='exactly one'):
        load_model('bav2_resnet20', checkpoint=tmp_path / 'best.safetensors')


# --------------------------------------------------------------------------------------------- compare


def test_compare_trains_once_then_skips_and_resumes(tmp_path: Path):
    from plugattn.engine import resolve_config, train
    from plugattn.experiments.compare import compare

    out = tmp_path / 'cmp'
    common = dict(epochs=2, batch_size=128, output=out, device='cpu', threads=1, bench_reps=1, echo=lambda s: None,
                  bench_min_time=0.01, progress=False)
    # An interrupted run: se_resnet20 stopped after epoch 1 of 2, as a killed job would leave it.
    cfg = resolve_config(None, [('data.name', 'digits'), ('model.name', 'se_resnet20'), ('train.seed', 0),
                                ('train.epochs', 2), ('train.batch_size', 128), ('train.device', 'cpu'),
                                ('train.threads', 1), ('output.dir', str(out / 'se_resnet20')),
                                ('output.name', 'seed0')])
    train(cfg, stop_after=1, echo=lambda s: None, progress=False)

    first = compare(['resnet20', 'se_resnet20'], 'digits', 1, **common)
    assert first.trained == 2
    assert {r['model']: r['action'] for r in first.runs} == {'resnet20': 'trained', 'se_resnet20': 'resumed'}
    assert all(r['epochs'] == 2 and r['top1'] is not None for r in first.runs)
    table = Path(first.files['markdown']).read_text()
    assert '| resnet20 | none | 1 |' in table and '| se_resnet20 | se | 1 |' in table
    assert Path(first.files['csv']).read_text().count('\n') == 3
    assert Path(first.files['figure']).stat().st_size > 1000
    rows = {r['model']: r for r in first.rows}
    assert rows['se_resnet20']['attn_params'] == 2016 and rows['resnet20']['infer_ratio'] == 1.0

    stamps = {p: os.stat(p).st_mtime_ns for p in out.glob('*/seed0/*.safetensors')}
    second = compare(['resnet20', 'se_resnet20'], 'digits', 1, **common)
    assert second.trained == 0 and all(r['action'] == 'skipped' for r in second.runs)
    assert stamps == {p: os.stat(p).st_mtime_ns for p in out.glob('*/seed0/*.safetensors')}
    assert [r['top1_mean'] for r in second.rows] == [r['top1_mean'] for r in first.rows]

    with pytest.raises(AnalysisError, match=r'optim\.lr'):  # a finished run trained differently is not reused
        compare(['resnet20'], 'digits', 1, **common, overrides=[('optim.lr', 0.01)])


def test_compare_chart_adds_the_difference_panel_only_with_a_backbone(tmp_path: Path):
    pytest.importorskip('matplotlib')
    from PIL import Image

    from plugattn.analysis.plots import plot_compare

    rows = [dict(model='resnet20', attn='none', seeds=3, top1_mean=91.99, top1_std=0.19),
            dict(model='se_resnet20', attn='se', seeds=3, top1_mean=91.45, top1_std=0.13)]
    with_base = Image.open(plot_compare(rows, tmp_path / 'a.png', 'two models'))
    without = Image.open(plot_compare(rows[1:], tmp_path / 'b.png', 'one model'))
    assert with_base.size[1] == 660 and without.size[1] == 420  # 6.6 in vs 4.2 in at 100 dpi
