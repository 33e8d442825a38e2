"""Transformers (Swin, PVT v1, ViT/DeiT) with BAv2 and DIA: parameter counts against timm and the PVT derivation,
timm weight/output parity, attention placement and state, features_only, torch.compile, Grad-CAM and attn-corr hooks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugattn
from plugattn.layers import BridgeAttentionV2, DIAUnit
from plugattn.layers.token import map_to_tokens, tokens_to_map
from plugattn.models import AttnStage
from plugattn.models.pvt import PyramidVisionTransformer
from plugattn.models.swin import SwinTransformer
from plugattn.models.vit import VisionTransformer

TRANSFORMERS = ['swin_t', 'swin_s', 'pvt_v1_tiny', 'pvt_v1_small', 'deit_tiny', 'deit_small']
SMALL = {  # (builder kwargs, input side) small enough for CPU tests
    'swin_t': (dict(img_size=64, window_size=4), 64),
    'pvt_v1_tiny': (dict(img_size=64), 64),
    'deit_tiny': (dict(img_size=64), 64),
}


def count(name: str, **kw) -> tuple[int, int]:
    with torch.device('meta'):
        m = plugattn.create_model(name, **kw)
    attn = sum(p.numel() for mod in m.attention_modules().values() for p in mod.parameters())
    return sum(p.numel() for p in m.parameters()), attn


def dia_params(c: int, r: int = 16) -> int:
    """DIA cell: two bottleneck gate maps C -> C/r -> 4C with biases."""
    m = c // r
    return 2 * (c * m + m + m * 4 * c + 4 * c)


def bav2_params(c: int, hidden: int, r: int = 16) -> int:
    """BAv2 over [attention out (C), MLP hidden, MLP out (C)]: fusions, selection (3 -> 1), BN1d, generation."""
    m = c // r
    return m * (c + hidden + c) + 4 + 2 * m + m * c


# --------------------------------------------------------------------------------------------- parameter counts

TIMM_EQUIV = [
    ('swin_t', 'swin_tiny_patch4_window7_224', 28_288_354),
    ('swin_s', 'swin_small_patch4_window7_224', 49_606_258),
    ('deit_tiny', 'deit_tiny_patch16_224', 5_717_416),
    ('deit_tiny', 'vit_tiny_patch16_224', 5_717_416),
    ('deit_small', 'deit_small_patch16_224', 22_050_664),
    ('deit_small', 'vit_small_patch16_224', 22_050_664),
]


@pytest.mark.parametrize(('name', 'timm_name', 'expected'), TIMM_EQUIV)
def test_param_counts_equal_timm(name, timm_name, expected):
    timm = pytest.importorskip('timm')
    with torch.device('meta'):
        ref = timm.create_model(timm_name)
    assert sum(p.numel() for p in ref.parameters()) == expected
    assert count(name) == (expected, 0)
    with torch.device('meta'):
        ours = plugattn.create_model(name)
    assert set(ours.state_dict()) == set(ref.state_dict())  # same backbone keys


def _pvt_by_hand(depths: tuple[int, ...], num_classes: int = 1000) -> int:
    """The official PVT v1 builders' count, derived per stage (see pvt.py)."""
    dims, ratios, srs, n = (64, 128, 320, 512), (8, 8, 4, 4), (8, 4, 2, 1), 0
    cin, patch, grid = 3, 4, 56
    for s, (c, d, r, sr) in enumerate(zip(dims, depths, ratios, srs)):
        n += cin * patch * patch * c + c + 2 * c  # patch-embedding conv + LayerNorm
        n += grid * grid * c + (c if s == 3 else 0)  # position embedding (+ class-token slot)
        block = 4 * c + 4 * c * c + 4 * c + 2 * r * c * c + (r + 1) * c
        block += sr * sr * c * c + 3 * c if sr > 1 else 0
        n += d * block
        cin, patch, grid = c, 2, grid // 2
    return n + 2 * 512 + 512 + 512 * num_classes + num_classes  # norm, cls token, head


@pytest.mark.parametrize(('name', 'depths', 'expected', 'published'), [
    ('pvt_v1_tiny', (2, 2, 2, 2), 13_229_288, 13.2),
    ('pvt_v1_small', (3, 4, 6, 3), 24_485_864, 24.5),
])
def test_pvt_param_counts(name, depths, expected, published):
    assert count(name) == (expected, 0)
    assert _pvt_by_hand(depths) == expected
    assert round(expected / 1e6, 1) == published


# (total, attention) at 1000 classes; the attention part is checked against the formulas below as well.
ATTN_COUNTS = {
    'bav2_swin_t': (28_288_354 + 944_088, 944_088), 'dia_swin_t': (28_288_354 + 501_300, 501_300),
    'bav2_swin_s': (49_606_258 + 1_718_856, 1_718_856), 'dia_swin_s': (49_606_258 + 501_300, 501_300),
    'bav2_pvt_v1_tiny': (13_229_288 + 347_424, 347_424), 'dia_pvt_v1_tiny': (13_229_288 + 248_960, 248_960),
    'bav2_pvt_v1_small': (24_485_864 + 666_952, 666_952), 'dia_pvt_v1_small': (24_485_864 + 248_960, 248_960),
    'bav2_deit_tiny': (5_717_416 + 193_872, 193_872), 'dia_deit_tiny': (5_717_416 + 24_600, 24_600),
    'bav2_deit_small': (22_050_664 + 774_768, 774_768), 'dia_deit_small': (22_050_664 + 95_280, 95_280),
}
WIDTHS = {  # (widths, depths, mlp ratios)
    'swin_t': ((96, 192, 384, 768), (2, 2, 6, 2), (4, 4, 4, 4)),
    'swin_s': ((96, 192, 384, 768), (2, 2, 18, 2), (4, 4, 4, 4)),
    'pvt_v1_tiny': ((64, 128, 320, 512), (2, 2, 2, 2), (8, 8, 4, 4)),
    'pvt_v1_small': ((64, 128, 320, 512), (3, 4, 6, 3), (8, 8, 4, 4)),
    'deit_tiny': ((192,), (12,), (4,)),
    'deit_small': ((384,), (12,), (4,)),
}


@pytest.mark.parametrize('name', sorted(ATTN_COUNTS))
def test_attention_param_counts(name):
    attn, backbone = name.split('_', 1)
    assert count(name) == ATTN_COUNTS[name]
    widths, depths, ratios = WIDTHS[backbone]
    if attn == 'dia':  # one unit per group of equal-width blocks, reduction 16
        expected = sum(dia_params(c) for c in widths)
    else:  # one BAv2 per block
        expected = sum(d * bav2_params(c, r * c) for c, d, r in zip(widths, depths, ratios))
    assert ATTN_COUNTS[name][1] == expected
    assert plugattn.models.get_model_entry(name).cfg['family'] in ('swin', 'pvt', 'vit')


def test_registered_names():
    names = set(plugattn.list_models(['swin*', '*_swin*', '*pvt*', '*deit*']))  # not CSWin (tests/test_cswin.py)
    assert names == {f'{a}{b}' for a in ('', 'bav2_', 'dia_') for b in TRANSFORMERS}
    assert plugattn.create_model('deit_tiny', attn='dia').blocks.attn.reduction == 16  # default through attn=


# --------------------------------------------------------------------------------------------- timm parity


@pytest.mark.parametrize(('name', 'timm_name', 'kwargs', 'side'), [
    ('swin_t', 'swin_tiny_patch4_window7_224', dict(img_size=64, window_size=4), 64),
    ('swin_t', 'swin_tiny_patch4_window7_224', dict(img_size=96), 96),  # padding 24 -> 28, shifts, clamped windows
    ('deit_tiny', 'deit_tiny_patch16_224', dict(img_size=64), 64),
])
def test_timm_weights_give_timm_outputs(name, timm_name, kwargs, side):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, **kwargs).eval()
    ours = plugattn.create_model(name, **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-4, atol=1e-5)
    variant = plugattn.create_model(name.replace('swin', 'bav2_swin').replace('deit', 'dia_deit'), **kwargs)
    result = variant.load_state_dict(ref.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('.ba.' in k or k.startswith('blocks.attn.') for k in result.missing_keys)


# --------------------------------------------------------------------------------------------- model API


@pytest.mark.parametrize('name', [f'{a}{b}' for b in SMALL for a in ('', 'bav2_', 'dia_')])
def test_small_forward_backward_features(name):
    backbone = name.split('_', 1)[1] if name.startswith(('bav2_', 'dia_')) else name
    kwargs, side = SMALL[backbone]
    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=5, **kwargs)
    x = torch.randn(2, 3, side, side)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert not [k for k, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    model.eval()
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        info = model.feature_info
        assert [f.shape[1] for f in feats] == info.channels()
        assert [side // f.shape[-1] for f in feats] == [side // f.shape[-2] for f in feats] == info.reduction()
        feature_model = plugattn.create_model(name, features_only=True, out_indices=(0, -1), **kwargs)
        feature_model.load_state_dict(model.state_dict(), strict=False)
        outs = feature_model.eval()(x)
        assert [o.shape[1] for o in outs] == feature_model.feature_info.channels()
        torch.testing.assert_close(outs[-1], feats[-1])
        torch.testing.assert_close(outs[0], feats[0])


def test_inputs_of_other_sizes():
    torch.manual_seed(0)
    swin = plugattn.create_model('dia_swin_t').eval()
    vit = plugattn.create_model('bav2_deit_tiny').eval()
    pvt = plugattn.create_model('pvt_v1_tiny').eval()
    with torch.no_grad():
        feats = swin.forward_intermediates(torch.randn(1, 3, 100, 76), intermediates_only=True)
        assert [tuple(f.shape[-2:]) for f in feats] == [(25, 19), (25, 19), (13, 10), (7, 5), (4, 3)]
        feat = vit.forward_intermediates(torch.randn(1, 3, 48, 80), [12], intermediates_only=True)[0]
        assert feat.shape == (1, 192, 3, 5)
        feat = pvt.forward_intermediates(torch.randn(1, 3, 64, 96), [4], intermediates_only=True)[0]
        assert feat.shape == (1, 512, 2, 3)
    # a ViT built for 48 px runs at 32 px with its 3x3 position grid resized bicubically to 2x2
    vit48 = plugattn.create_model('deit_tiny', img_size=48).eval()
    vit32 = plugattn.create_model('deit_tiny', img_size=32).eval()
    state = vit48.state_dict()
    pos = state['pos_embed']
    grid = F.interpolate(pos[:, 1:].reshape(1, 3, 3, 192).permute(0, 3, 1, 2), size=(2, 2), mode='bicubic',
                         align_corners=False)
    state['pos_embed'] = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 4, 192)], dim=1)
    vit32.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit48(x), vit32(x))


def test_errors():
    with pytest.raises(ValueError, match='gate-level module; transformer blocks take'):
        plugattn.create_model('swin_t', attn='se')
    with pytest.raises(ValueError, match='attn_kwargs must be one dict'):
        plugattn.create_model('dia_deit_tiny', attn_kwargs=[{}, {}])
    with pytest.raises(ValueError, match='out of range for 13 feature levels'):
        plugattn.create_model('deit_tiny', features_only=True, out_indices=(13,))
    with pytest.raises(ValueError, match='features_only model has no classifier'):
        plugattn.create_model('swin_t', features_only=True).reset_classifier(3)


def test_reset_classifier_names():
    swin, vit, pvt = (plugattn.create_model(n) for n in ('swin_t', 'deit_tiny', 'pvt_v1_tiny'))
    for model, key in ((swin, 'head.fc.weight'), (vit, 'head.weight'), (pvt, 'head.weight')):
        model.reset_classifier(3)
        assert model.state_dict()[key].shape == (3, model.num_features)
        assert model.get_classifier().out_features == 3
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


# --------------------------------------------------------------------------------------------- attention placement


def test_token_map_means_are_token_means():
    """The CNN DIA unit on the (B, C, N, 1) token view is the DIA cell on token means, gating every token."""
    torch.manual_seed(0)
    unit = DIAUnit(32, reduction=4)
    x = torch.randn(3, 10, 32)
    m = tokens_to_map(x)
    assert m.shape == (3, 32, 10, 1) and torch.equal(map_to_tokens(m), x)
    out, (_, c) = unit(m, None)
    gates = unit.w_ih(x.mean(1)) + unit.w_hh(torch.zeros(3, 32))
    i, _, g, o = gates.chunk(4, 1)
    c_ref = i.sigmoid() * g.tanh()
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(map_to_tokens(out), x * (o.sigmoid() * c_ref.sigmoid())[:, None, :])


def test_export_dynamic_batch():
    from torch.export import Dim

    torch.manual_seed(0)
    model = plugattn.create_model('dia_deit_tiny', num_classes=10).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),),
                                  dynamic_shapes=({0: Dim('batch', min=1, max=64)},))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(('name', 'stage_names', 'widths', 'calls'), [
    ('dia_swin_t', ['layers.0', 'layers.1', 'layers.2', 'layers.3'], [96, 192, 384, 768], [2, 2, 6, 2]),
    ('dia_pvt_v1_tiny', ['block1', 'block2', 'block3', 'block4'], [64, 128, 320, 512], [2, 2, 2, 2]),
    ('dia_deit_tiny', ['blocks'], [192], [12]),
])
def test_dia_one_unit_per_group_state_reset(name, stage_names, widths, calls):
    torch.manual_seed(0)
    model = plugattn.create_model(name).eval()
    units = [m for m in model.modules() if isinstance(m, DIAUnit)]
    assert [u.channels for u in units] == widths and all(u.reduction == 16 for u in units)
    assert list(model.attention_modules()) == [f'{s}.attn' for s in stage_names]
    assert all(s.attn is u for s, u in zip(model.stages(), units))
    assert all(getattr(b, 'ba', None) is None for s in model.stages() for b in s)
    seen = []
    for k, u in enumerate(units):
        u.register_forward_pre_hook(lambda mod, args, k=k: seen.append((k, args[1] is None, args[0].shape[1])))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(x)
        assert seen == [(k, b == 0, widths[k]) for k, n in enumerate(calls) for b in range(n)]
        torch.testing.assert_close(model(x), first)  # nothing leaks between forward passes
        stage = model.stages()[-1] if len(units) == 1 else model.stages()[1]
        unit_forward = stage.attn.forward
        stage.attn.forward = lambda branch, state: unit_forward(branch, None)
        assert not torch.allclose(model(x), first)  # the carried state matters


@pytest.mark.parametrize('name', ['bav2_swin_t', 'bav2_pvt_v1_tiny', 'bav2_deit_tiny'])
def test_bav2_bridges_attention_out_and_mlp_hidden(name):
    torch.manual_seed(0)
    model = plugattn.create_model(name).eval()
    blocks = [b for s in model.stages() for b in s]
    assert all(isinstance(b.ba, BridgeAttentionV2) for b in blocks)
    block = blocks[0]
    dim = block.norm1.normalized_shape[0]
    assert block.ba.inner_channels == (dim, block.mlp.fc1.out_features) and block.ba.channels == dim
    seen = {}
    residual = block.drop_path if 'pvt' in name else block.drop_path1  # identity here: its input is the attn output
    residual.register_forward_hook(lambda m, a, o: seen.setdefault('attn_out', a[0]))
    block.mlp.act.register_forward_hook(lambda m, a, o: seen.update(hidden=o))
    block.mlp.fc2.register_forward_hook(lambda m, a, o: seen.update(mlp_out=o))
    block.ba.register_forward_hook(lambda m, a, o: seen.update(inner=a[0], x=a[1], gated=o))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    tokens = tuple(range(1, seen['attn_out'].ndim - 1))  # (1,) for (B, N, C), (1, 2) for Swin's NHWC
    torch.testing.assert_close(seen['inner'][0], seen['attn_out'].mean(tokens))
    torch.testing.assert_close(seen['inner'][1], seen['hidden'].mean(tokens))
    mlp_map = seen['mlp_out'].permute(0, 3, 1, 2) if 'swin' in name else tokens_to_map(seen['mlp_out'])
    torch.testing.assert_close(seen['x'], mlp_map)
    gate = block.ba.gate(seen['inner'], seen['x'])
    assert gate.shape == (2, dim, 1, 1) and ((gate > 0) & (gate < 1)).all()
    torch.testing.assert_close(seen['gated'], mlp_map * gate)


@pytest.mark.parametrize('name', ['bav2_swin_t', 'dia_swin_t', 'bav2_pvt_v1_tiny', 'dia_pvt_v1_tiny',
                                  'bav2_deit_tiny', 'dia_deit_tiny'])
def test_compile_fullgraph_parity(name):
    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- analysis hooks


@pytest.mark.parametrize(('name', 'layer', 'side'), [
    ('bav2_swin_t', 'norm', 64), ('dia_deit_tiny', 'blocks.11.norm1', 64), ('dia_pvt_v1_tiny', 'block4.1.norm1', 64),
])
def test_grad_cam_with_reshape_transform(name, layer, side):
    pytest.importorskip('pytorch_grad_cam', reason='grad-cam is not installed (pip install plugattn[viz])')
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=4, img_size=side).eval()
    assert model.cam_target_layer() == layer
    target = model.get_submodule(layer)
    x = torch.randn(1, 3, side, side)
    x[..., : side // 2, :] += 2.0
    with GradCAM(model=model, target_layers=[target], reshape_transform=model.cam_reshape_transform()) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    assert maps.shape == (1, side, side) and maps.min() >= 0.0 and maps.max() <= 1.0 and maps.std() > 1e-3


def test_cam_reshape_transforms():
    from plugattn.models.vit import tokens_to_nchw

    t = torch.arange(2 * 17 * 3.0).reshape(2, 17, 3)  # class token + 4 x 4 grid
    m = tokens_to_nchw(t)
    assert m.shape == (2, 3, 4, 4) and torch.equal(m[:, :, 1, 2], t[:, 1 + 4 + 2])
    assert torch.equal(tokens_to_nchw(t[:, 1:]), m) and torch.equal(tokens_to_nchw(t, 1), m)
    with pytest.raises(ValueError, match='do not form a square grid'):
        tokens_to_nchw(t[:, :13])
    swin = plugattn.create_model('swin_t')
    nhwc = torch.randn(2, 5, 6, 768)
    assert torch.equal(swin.cam_reshape_transform()(nhwc), nhwc.permute(0, 3, 1, 2))


@pytest.mark.parametrize(('name', 'layers', 'width'), [
    ('dia_deit_tiny', [f'blocks.{i}' for i in range(12)], {'blocks': 192}),
    ('bav2_swin_t', [f'layers.{s}.{b}' for s, n in enumerate((2, 2, 6, 2)) for b in range(n)],
     {'layers.0': 96, 'layers.1': 192, 'layers.2': 384, 'layers.3': 768}),
    ('dia_pvt_v1_tiny', [f'block{s}.{b}' for s in range(1, 5) for b in range(2)],
     {'block1': 64, 'block2': 128, 'block3': 320, 'block4': 512}),
])
def test_attn_corr_records_transformer_gates(name, layers, width):
    from plugattn.analysis.attn_corr import collect_gates, gate_correlation

    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=4)
    images = [torch.randn(6, 3, 32, 32) for _ in range(2)]
    recorded = collect_gates(model, images)
    assert list(recorded) == layers
    for ly in recorded.values():
        assert ly.matrix().shape == (12, width[ly.stage])
    report = gate_correlation(recorded, name, 'noise')
    assert set(report.stages) == set(width)
    for st in report.stages.values():
        n = len(st['layers'])
        assert len(st['matrix']) == n and all(row[i] == 1.0 for i, row in enumerate(st['matrix']))
    assert all(0.0 < ly['mean'] < 1.0 for ly in report.layers)


def test_classes_exported():
    import plugattn.models as models

    assert models.PyramidVisionTransformer is PyramidVisionTransformer
    assert models.SwinTransformer is SwinTransformer and models.VisionTransformer is VisionTransformer
    assert isinstance(plugattn.create_model('dia_deit_tiny').blocks, AttnStage)
