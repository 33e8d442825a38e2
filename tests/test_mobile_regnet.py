"""MobileNetV2 and RegNet-Y: parameter counts against the spec and timm, attention placement, torchvision / timm
weight compatibility, registry names and the timm model API."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import plugattn
from plugattn.layers import CoordAttention, DIAUnit, EfficientChannelAttention
from plugattn.layers.base import pooled
from plugattn.models import AttnStage, MobileNetV2, RegNet
from plugattn.models.regnet import RegNetBottleneck, RegNetSE


def count(name: str, **kw) -> tuple[int, int]:
    """(total, attention) parameters, built on the meta device."""
    with torch.device('meta'):
        m = plugattn.create_model(name, **kw)
    attn = sum(p.numel() for mod in m.attention_modules().values() for p in mod.parameters())
    return sum(p.numel() for p in m.parameters()), attn


# specs §13.2 (MBv2 plain, CA, ECA, ELA-B/S/L: measured on the official code); SE, CBAM, BAv1/BAv2 are our
# placements (module docstring), pinned here as regression values.
MBV2_COUNTS = {
    'mobilenetv2': (3_504_872, 0),
    'ca_mobilenetv2': (3_950_648, 445_776),
    'eca_mobilenetv2': (3_504_903, 31),
    'ela_b_mobilenetv2': (3_568_808, 63_936),
    'ela_s_mobilenetv2': (3_803_240, 298_368),
    'ela_l_mobilenetv2': (3_916_904, 412_032),
    'se_mobilenetv2': (4_068_776, 563_904),
    'cbam_mobilenetv2': (4_077_924, 573_052),
    'bav1_mobilenetv2': (5_765_224, 2_260_352),
    'bav2_mobilenetv2': (5_762_904, 2_258_032),
}
# Plain models: timm's regnety_004 / _008 / _016 / _040 (attention = the native SE); variants are ours, pinned.
REGNET_COUNTS = {
    'bav1_regnety_1_6gf': (10_579_610, 894_930),
    'bav1_regnety_400mf': (4_035_766, 359_646),
    'bav1_regnety_4_0gf': (19_604_168, 1_445_440),
    'bav1_regnety_800mf': (5_954_224, 514_728),
    'bav2_regnety_1_6gf': (10_577_658, 892_978),
    'bav2_regnety_400mf': (4_034_786, 358_666),
    'bav2_regnety_4_0gf': (19_601_824, 1_443_096),
    'bav2_regnety_800mf': (5_953_144, 513_648),
    'ca_regnety_1_6gf': (10_036_952, 352_272),
    'ca_regnety_400mf': (3_826_642, 150_522),
    'ca_regnety_4_0gf': (18_729_812, 571_084),
    'ca_regnety_800mf': (5_647_208, 207_712),
    'cbam_regnety_1_6gf': (10_142_119, 457_439),
    'cbam_regnety_400mf': (3_861_269, 185_149),
    'cbam_regnety_4_0gf': (18_892_160, 733_432),
    'cbam_regnety_800mf': (5_702_236, 262_740),
    'dia_regnety_1_6gf': (10_264_788, 580_108),
    'dia_regnety_400mf': (3_836_138, 160_018),
    'dia_regnety_4_0gf': (19_111_288, 952_560),
    'dia_regnety_800mf': (5_895_336, 455_840),
    'eca_regnety_1_6gf': (9_684_799, 119),
    'eca_regnety_400mf': (3_676_192, 72),
    'eca_regnety_4_0gf': (18_158_838, 110),
    'eca_regnety_800mf': (5_439_564, 68),
    'ela_b_regnety_4_0gf': (18_246_280, 87_552),
    'ela_b_regnety_800mf': (5_480_392, 40_896),
    'ela_l_regnety_4_0gf': (18_722_952, 564_224),
    'ela_l_regnety_800mf': (5_703_048, 263_552),
    'ela_s_regnety_4_0gf': (18_567_304, 408_576),
    'ela_s_regnety_800mf': (5_630_344, 190_848),
    'ela_t_regnety_4_0gf': (18_226_824, 68_096),
    'ela_t_regnety_800mf': (5_471_304, 31_808),
    'regnety_1_6gf': (11_202_430, 1_517_750),
    'regnety_400mf': (4_344_144, 668_024),
    'regnety_4_0gf': (20_646_656, 2_487_928),
    'regnety_800mf': (6_263_168, 823_672),
}
TIMM_NAMES = {'regnety_400mf': 'regnety_004', 'regnety_800mf': 'regnety_008', 'regnety_1_6gf': 'regnety_016',
              'regnety_4_0gf': 'regnety_040'}


@pytest.mark.parametrize('name', [*MBV2_COUNTS, *REGNET_COUNTS])
def test_param_counts(name):
    assert count(name) == {**MBV2_COUNTS, **REGNET_COUNTS}[name]


@pytest.mark.parametrize('name', list(TIMM_NAMES))
def test_regnet_param_count_equals_timm(name):
    timm = pytest.importorskip('timm')
    with torch.device('meta'):
        ref = timm.create_model(TIMM_NAMES[name], pretrained=False)
    assert count(name)[0] == sum(p.numel() for p in ref.parameters())


def test_registered_names():
    assert plugattn.list_models('*mobilenetv2') == sorted(MBV2_COUNTS)
    regnets = plugattn.list_models('*regnety*')
    assert regnets == sorted(REGNET_COUNTS)  # 36 names
    assert not [n for n in regnets if n.startswith('se_')]  # RegNet-Y has its native SE
    # GroupNorm(16 or 32) cannot take 104 (400MF) or 120 (1.6GF) channels; 800MF and 4.0GF take every ELA.
    assert [n for n in regnets if n.startswith('ela_') and ('400mf' in n or '1_6gf' in n)] == []
    assert {f'ela_{v}_regnety_{s}' for v in 'tbsl' for s in ('800mf', '4_0gf')} <= set(regnets)


@pytest.mark.parametrize('build', [
    lambda: plugattn.create_model('ela_t_mobilenetv2'),
    lambda: plugattn.create_model('mobilenetv2', attn='ela_t'),
])
def test_ela_t_mobilenetv2_fails_on_144_channels(build):
    with pytest.raises(ValueError, match=r'ELA-T needs channels divisible by its 32 GroupNorm groups, got 144'):
        build()


def test_unsupported_combinations():
    with pytest.raises(ValueError, match=r'DIA .* not supported on MobileNetV2'):
        plugattn.create_model('dia_mobilenetv2')
    with pytest.raises(ValueError, match="attn_position must be 'hidden' or 'output'"):
        plugattn.create_model('ca_mobilenetv2', attn_position='end')


def test_features_only_from_create_model():
    m = plugattn.create_model('ca_mobilenetv2', features_only=True)
    assert m.feature_info.channels() == [16, 24, 32, 96, 320]
    assert [tuple(o.shape[1:]) for o in m(torch.randn(1, 3, 64, 64))][-1] == (320, 2, 2)
    for name in ('ca_mobilenetv2', 'regnety_400mf', 'bav2_regnety_400mf'):  # forward at every level: test_models
        assert plugattn.create_model(name).feature_info.reduction() == [2, 4, 8, 16, 32]
    r = plugattn.create_model('bav2_regnety_400mf', features_only=True, out_indices=(1, 4))
    assert r.feature_info.channels() == [48, 440] and r.feature_info.reduction() == [4, 32]


def test_mobilenetv2_torchvision_keys_and_outputs():
    tv = torchvision.models.mobilenet_v2()
    plain = plugattn.create_model('mobilenetv2')
    plain.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), tv.eval()(x))
    ca = plugattn.create_model('ca_mobilenetv2')
    result = ca.load_state_dict(tv.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('.attn.' in k for k in result.missing_keys)
    assert isinstance(plain.classifier[0], nn.Dropout) and plain.classifier[0].p == 0.2


def _record(module: nn.Module, store: dict, key: str) -> None:
    module.register_forward_hook(lambda m, args, out: store.__setitem__(key, (args, out)))


def test_ca_sits_after_depthwise_on_hidden_width():
    model = plugattn.create_model('ca_mobilenetv2').eval()
    blocks = list(model.features)[1:18]
    assert blocks[0].attn is None  # the t=1 block has no CA (official mbv2_ca.py)
    hidden = [b.conv[0][0].out_channels for b in blocks[1:]]
    assert [b.attn.channels for b in blocks[1:]] == hidden
    assert all(isinstance(b.attn, CoordAttention) for b in blocks[1:])
    seen = {}
    block = model.features[5]
    _record(block.conv[1], seen, 'dw')
    _record(block.attn, seen, 'attn')
    _record(block.conv[2], seen, 'proj')
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert seen['attn'][0][0] is seen['dw'][1] and seen['proj'][0][0] is seen['attn'][1]


def test_eca_sits_at_block_end_with_official_kernels():
    model = plugattn.create_model('eca_mobilenetv2').eval()
    blocks = list(model.features)[1:18]
    assert all(isinstance(b.attn, EfficientChannelAttention) for b in blocks)
    assert [b.attn.kernel_size for b in blocks] == [1] * 10 + [3] * 7  # k=1 if c < 96 else 3
    assert [b.attn.channels for b in blocks] == [b.conv[-1].num_features for b in blocks]
    seen = {}
    block = model.features[6]  # 32 -> 32, residual
    _record(block.conv[-1], seen, 'bn')
    _record(block.attn, seen, 'attn')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    assert seen['attn'][0][0] is seen['bn'][1]


def test_mobilenetv2_bridge_attention_gates_depthwise_before_activation():
    model = plugattn.create_model('bav2_mobilenetv2').eval()
    block = model.features[4]
    assert block.attn.inner_channels == (144,) and block.attn.hidden == 144 // 6
    seen = {}
    _record(block.conv[0], seen, 'expand')
    _record(block.conv[1][1], seen, 'dw_bn')
    _record(block.attn, seen, 'attn')
    _record(block.conv[1][2], seen, 'act')
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    (inner, x), gated = seen['attn']
    torch.testing.assert_close(inner[0], pooled(seen['expand'][1]))
    assert x is seen['dw_bn'][1] and seen['act'][0][0] is gated


def test_regnet_matches_timm_outputs():
    timm = pytest.importorskip('timm')
    ref = timm.create_model('regnety_004', pretrained=False).eval()
    ours = plugattn.create_model('regnety_400mf').eval()
    plugattn.load_official(ours, ref.state_dict(), source='timm')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_regnet_bav2_bridges_conv1_conv2_and_gates_conv3():
    model = plugattn.create_model('bav2_regnety_400mf').eval()
    block = model.s2.b1
    assert block.se is None and block.attn.inner_channels == (104, 104) and block.attn.channels == 104
    seen = {}
    for key in ('conv1', 'conv2', 'conv3.bn', 'attn'):
        _record(block.get_submodule(key), seen, key)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    (inner, x), _ = seen['attn']
    torch.testing.assert_close(inner[0], pooled(seen['conv1'][1]))
    torch.testing.assert_close(inner[1], pooled(seen['conv2'][1]))
    assert x is seen['conv3.bn'][1]
    # keep_se: the native SE stays after conv2, the bridge still gates conv3
    kept = plugattn.create_model('bav2_regnety_400mf', keep_se=True)
    se_params = sum(p.numel() for m in kept.modules() if isinstance(m, RegNetSE) for p in m.parameters())
    assert se_params == REGNET_COUNTS['regnety_400mf'][1]
    assert count('bav2_regnety_400mf', keep_se=True)[0] == REGNET_COUNTS['bav2_regnety_400mf'][0] + se_params


def test_regnet_gate_attention_replaces_se():
    model = plugattn.create_model('eca_regnety_400mf').eval()
    blocks = [m for m in model.modules() if isinstance(m, RegNetBottleneck)]
    assert len(blocks) == 16 and all(b.se is None and isinstance(b.attn, EfficientChannelAttention) for b in blocks)
    block, seen = model.s3.b2, {}
    for key in ('conv2', 'attn', 'conv3.conv'):
        _record(block.get_submodule(key), seen, key)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert seen['attn'][0][0] is seen['conv2'][1] and seen['conv3.conv'][0][0] is seen['attn'][1]


def test_regnet_dia_one_unit_per_stage():
    model = plugattn.create_model('dia_regnety_400mf')
    stages = model.stages()
    assert all(isinstance(s, AttnStage) for s in stages) and [len(s) for s in stages] == [1, 3, 6, 6]
    units = [m for m in model.modules() if isinstance(m, DIAUnit)]
    assert len(units) == 4 and [u.channels for u in units] == [48, 104, 208, 440] and units[0].reduction == 16
    assert all(b.se is None and b.attn is None for s in stages for b in s)


def test_classes_and_options():
    assert isinstance(plugattn.create_model('mobilenetv2'), MobileNetV2)
    assert isinstance(plugattn.create_model('regnety_800mf'), RegNet)
    assert plugattn.create_model('ca_mobilenetv2', drop_rate=0.1).classifier[0].p == 0.1
    m = plugattn.create_model('regnety_400mf')
    assert all(not b.conv3.bn.weight.any() for b in m.modules() if isinstance(b, RegNetBottleneck))
    with pytest.raises(ValueError, match='in_chans'):
        plugattn.create_model('regnety_400mf', in_chans=0)


def test_macs_match_spec():
    """MACs at 224x224 (FlopCounterMode / 2): specs §13.2 MBv2 0.3008 G and MBv2+CA 0.3067 G; RegNetY-400MF 0.40 G."""
    from plugattn.engine import count_macs

    assert count_macs(plugattn.create_model('mobilenetv2'), (3, 224, 224)) == 300_774_272
    assert count_macs(plugattn.create_model('ca_mobilenetv2'), (3, 224, 224)) == 306_666_368
    assert count_macs(plugattn.create_model('regnety_400mf'), (3, 224, 224)) == 401_842_848
