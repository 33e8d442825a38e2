"""Backbones: parameter counts against the spec tables, the timm model API on every model, DIA/BA structure,
torchvision key compatibility, errors and torch.export."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import plugattn
from plugattn.errors import PlugattnError
from plugattn.layers import DIAUnit
from plugattn.models import AttnStage, PreActResNet, ResNet
from plugattn.models._base import run_stage
from plugattn.models.preact_resnet import PreActBottleneck, WideBasic
from plugattn.models.resnet import BasicBlock, Bottleneck

ALL_MODELS = plugattn.list_models()


def count(name: str, **kw) -> tuple[int, int]:
    """(total, attention) parameters, built on the meta device (no memory, no init cost)."""
    with torch.device('meta'):
        m = plugattn.create_model(name, **kw)
    attn = sum(p.numel() for mod in m.attention_modules().values() for p in mod.parameters())
    return sum(p.numel() for p in m.parameters()), attn


# specs §13.1 (ImageNet, 1000 classes) and §13.3 / CIFAR references: (total, attention) parameters.
SPEC_IMAGENET = {
    'resnet18': (11_689_512, 0), 'resnet34': (21_797_672, 0), 'resnet50': (25_557_032, 0),
    'resnet101': (44_549_160, 0), 'resnet152': (60_192_808, 0), 'resnext50_32x4d': (25_028_904, 0),
    'se_resnet18': (11_776_552, 87_040), 'se_resnet34': (21_954_856, 157_184),
    'se_resnet50': (28_071_976, 2_514_944), 'se_resnet101': (49_292_328, 4_743_168),
    'se_resnet152': (66_770_984, 6_578_176),
    'cbam_resnet18': (11_779_392, 89_880), 'cbam_resnet34': (21_960_468, 162_796),
    'cbam_resnet50': (28_089_624, 2_532_592), 'cbam_resnet101': (49_330_172, 4_781_012),
    'bav1_resnet18': (11_820_552, 131_040), 'bav1_resnet34': (22_034_392, 236_720),
    'bav1_resnet50': (28_706_376, 3_149_344), 'bav1_resnet101': (50_490_312, 5_941_152),
    'bav1_resnet152': (68_433_480, 8_240_672),
    'bav2_resnet18': (11_820_336, 130_824), 'bav2_resnet34': (22_033_968, 236_296),
    'bav2_resnet50': (28_702_664, 3_145_632), 'bav2_resnet101': (50_482_316, 5_933_156),
    # BAv1-ResNeXt50: the spec's 28,850,504 / 3,821,600 include 43,520 unused gate parameters we do not create.
    'bav1_resnext50_32x4d': (28_850_504 - 43_520, 3_821_600 - 43_520),
}
SPEC_TOTAL_ONLY = {
    'ca_resnet18': 11_764_248, 'ca_resnet50': 27_474_864, 'ca_resnet101': 48_174_608,
    'ela_t_resnet18': 11_702_952, 'ela_t_resnet34': 21_824_104, 'ela_t_resnet50': 25_662_760,
    'ela_t_resnet101': 44_776_744,
    'ela_b_resnet18': 11_706_792, 'ela_b_resnet34': 21_831_656, 'ela_b_resnet50': 25_692_968,
    'ela_b_resnet101': 44_841_768,
    'ela_s_resnet18': 11_770_152, 'ela_s_resnet34': 21_956_264, 'ela_s_resnet50': 26_191_400,
    'ela_s_resnet101': 45_914_664,
    'ela_l_resnet18': 11_800_872, 'ela_l_resnet34': 22_016_680, 'ela_l_resnet50': 26_433_064,
    'ela_l_resnet101': 46_434_856,
}
# ECA with the released per-stage kernels (specs §13.1).
SPEC_ECA = {
    'eca_resnet18': ((3, 5, 7, 7), 11_689_556, 44), 'eca_resnet34': ((3, 3, 5, 7), 21_797_744, 72),
    'eca_resnet50': ((3, 5, 5, 7), 25_557_112, 80), 'eca_resnet101': ((3, 3, 5, 7), 44_549_317, 157),
    'eca_resnet152': ((3, 3, 5, 7), 60_193_042, 234),
}
# (name, num_classes): (total, attention); PreResNet/WRN DIA also add the extra BN (16,128 / 7,168), outside attn.
SPEC_CIFAR = {
    ('resnet164', 100): (1_727_284, 0), ('dia_resnet164', 100): (1_946_132, 218_848),
    ('resnet164', 10): (1_704_154, 0), ('dia_resnet164', 10): (1_923_002, 218_848),
    ('preresnet164', 100): (1_726_388, 0), ('dia_preresnet164', 100): (1_961_364, 218_848),
    ('wrn52_4', 100): (12_072_500, 0), ('dia_wrn52_4', 100): (12_298_516, 218_848),
    ('se_resnet20', 10): (274_490, 2_016), ('se_resnet56', 10): (861_818, 6_048),
    ('bav2_resnet50', 100): (26_858_564, 3_145_632), ('bav1_resnet50', 100): (26_862_276, 3_149_344),
}


@pytest.mark.parametrize('name', sorted(SPEC_IMAGENET))
def test_imagenet_param_counts(name):
    assert count(name) == SPEC_IMAGENET[name]


@pytest.mark.parametrize('name', sorted(SPEC_TOTAL_ONLY))
def test_ca_ela_param_counts(name):
    assert count(name)[0] == SPEC_TOTAL_ONLY[name]


@pytest.mark.parametrize('name', sorted(SPEC_ECA))
def test_eca_released_kernels_param_counts(name):
    kernels, total, attn = SPEC_ECA[name]
    assert count(name, attn_kwargs=[{'kernel_size': k} for k in kernels]) == (total, attn)


@pytest.mark.parametrize(('name', 'num_classes'), sorted(SPEC_CIFAR))
def test_cifar_param_counts(name, num_classes):
    assert count(name, num_classes=num_classes) == SPEC_CIFAR[(name, num_classes)]


def test_se_bias_resnet50_param_count():
    assert count('se_resnet50', attn_kwargs={'bias': True})[0] == 28_088_024


def test_v1_stride_placement():
    m = plugattn.create_model('resnet50', stride_in_1x1=True)
    assert m.layer2[0].conv1.stride == (2, 2) and m.layer2[0].conv2.stride == (1, 1)
    m = plugattn.create_model('resnet50')
    assert m.layer2[0].conv1.stride == (1, 1) and m.layer2[0].conv2.stride == (2, 2)


def test_model_listing():
    resnet_family = {'resnet', 'resnet_cifar', 'preresnet', 'wrn'}
    names = [n for n in ALL_MODELS if plugattn.models.get_model_entry(n).cfg['family'] in resnet_family]
    backbones = [n for n in names if plugattn.models.get_model_entry(n).attn is None]
    assert len(backbones) == 15
    bav2 = plugattn.list_models('bav2*')
    assert 'bav2_resnet50' in bav2 and 'bav2_resnet20' in bav2 and all(n.startswith('bav2_') for n in bav2)
    assert {f'bav2_{b}' for b in backbones} <= set(bav2)
    assert 'ela_t_resnet20' not in ALL_MODELS  # GroupNorm(32) cannot take 16 channels
    assert 'ela_t_resnet50' in ALL_MODELS
    variants = {f'{a}_resnet50' for a in plugattn.list_attn()}
    assert set(plugattn.list_models(backbone='resnet50')) == {'resnet50'} | variants
    assert plugattn.list_models(['se_resnet2*', 'dia_wrn*']) == ['dia_wrn52_4', 'se_resnet20']
    assert len(names) == 15 * 12 - 5  # ELA-T is not buildable on the five 16-wide CIFAR ResNets


# CSWin-B/L are CSWin-T's code at other widths (tests/test_cswin.py counts them on the meta device); building their
# 77-173 M parameters for each attention would cost this test a third of its time
API_MODELS = [n for n in ALL_MODELS if not n.endswith(('cswin_b', 'cswin_l'))]


@pytest.mark.parametrize('name', API_MODELS)
def test_model_api(name):
    """Forward/backward, features match feature_info, reset_classifier, features_only."""
    torch.manual_seed(0)
    model = plugattn.create_model(name, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:3]}'
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)

    model.eval()  # dropout (WRN) off, so the feature paths below can be compared exactly
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        assert [f.shape[1] for f in feats] == model.feature_info.channels()
        assert [32 // f.shape[-1] for f in feats] == model.feature_info.reduction()
        for info in model.feature_info:  # feature_info names real modules
            model.get_submodule(info['module'])
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        model.set_features_only((1, -1))
        outs = model(x)
        assert [o.shape[1] for o in outs] == model.feature_info.channels() == [feats[1].shape[1], feats[-1].shape[1]]
        torch.testing.assert_close(outs[1], feats[-1])


def test_features_only_from_create_model():
    m = plugattn.create_model('bav2_resnet50', features_only=True, out_indices=(2, 4))
    outs = m(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 512, 8, 8), (2, 2048, 2, 2)]
    assert m.feature_info.reduction() == [8, 32]
    assert not isinstance(m.fc, nn.Linear)
    with pytest.raises(ValueError, match='out of range'):
        plugattn.create_model('resnet20', features_only=True, out_indices=(5,))


def test_attn_kwarg_equals_prefixed_name():
    torch.manual_seed(0)
    a = plugattn.create_model('resnet50', attn='bav2')
    torch.manual_seed(0)
    b = plugattn.create_model('bav2_resnet50')
    assert a.model_name == b.model_name == 'bav2_resnet50'
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    dia = plugattn.create_model('resnet50', attn='dia')
    assert dia.layer1.attn.reduction == 16  # the ImageNet default applies through attn= too


@pytest.mark.parametrize('name', ['bav2_resnet50', 'dia_resnet18', 'cbam_resnext50_32x4d', 'ca_resnet34'])
def test_torchvision_weights_load(name):
    """Backbone keys equal torchvision's: only attention keys are missing, outputs equal for the backbone part."""
    backbone = name.split('_', 1)[1]
    tv = getattr(torchvision.models, backbone)()
    ours = plugattn.create_model(name)
    result = ours.load_state_dict(tv.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('.attn.' in k for k in result.missing_keys)
    plain = plugattn.create_model(backbone)
    assert plain.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), tv.eval()(x))


def test_dia_one_unit_per_stage_and_state_reset():
    model = plugattn.create_model('dia_resnet20')
    units = [m for m in model.modules() if isinstance(m, DIAUnit)]
    assert len(units) == 3
    assert [u.channels for u in units] == [16, 32, 64]
    assert all(isinstance(s, AttnStage) and s.attn is u for s, u in zip(model.stages(), units))
    assert all(b.attn is None for s in model.stages() for b in s)
    assert sum(p.numel() for u in units for p in u.parameters()) == sum(
        2 * (c * (c // 4) + c // 4 + (c // 4) * 4 * c + 4 * c) for c in (16, 32, 64))

    calls = []
    for i, u in enumerate(units):
        u.register_forward_pre_hook(lambda mod, args, i=i: calls.append((i, args[1] is None)))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(x)
        second = model(x)
    # three blocks per stage: a fresh state at each stage's first block, a carried one afterwards; twice
    assert calls == [(s, b == 0) for s in range(3) for b in range(3)] * 2
    torch.testing.assert_close(first, second)


def test_checkpointed_stage_reruns_each_block_with_its_original_state():
    """Gradient checkpointing re-runs every block in backward with the state it received in the forward pass, and
    gives the plain stage's output and gradients."""
    torch.manual_seed(0)
    stage = plugattn.create_model('dia_resnet20').stages()[0]
    seen = []
    stage.attn.register_forward_pre_hook(lambda mod, args: seen.append(args[1]))
    x = torch.randn(2, 16, 8, 8)
    runs = {}
    for ckpt in (False, True):
        xi = x.clone().requires_grad_(True)
        out = run_stage(list(stage), stage.attn, xi, checkpointing=ckpt)
        out.square().sum().backward()
        runs[ckpt] = (out.detach(), xi.grad, [p.grad.clone() for p in stage.parameters()])
        stage.zero_grad()
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=0)
    # three plain calls, three checkpointed calls, then the three re-runs in backward (last block first)
    assert len(seen) == 9
    reruns = seen[6:][::-1]
    assert seen[3] is None and reruns[0] is None
    torch.testing.assert_close(reruns[1:], seen[4:6], rtol=0, atol=0)
    assert not torch.equal(seen[4][0], seen[5][0])  # the state changes from block to block


def test_dia_state_carries_within_stage():
    """The output depends on the carried state: resetting it before every block changes the result."""
    torch.manual_seed(0)
    model = plugattn.create_model('dia_resnet20').eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        stage = model.layer2
        original = stage.attn.forward
        stage.attn.forward = lambda branch, state: original(branch, None)
        leaked = model(x)
    assert not torch.allclose(ref, leaked)


def test_bridge_blocks_feed_every_conv():
    model = plugattn.create_model('bav2_resnet50').eval()
    block = model.layer1[0]
    seen = {}
    block.attn.register_forward_pre_hook(lambda mod, args: seen.update(inner=args[0], x=args[1]))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert [t.shape[1] for t in seen['inner']] == [64, 64] and seen['x'].shape[1] == 256
    assert all((t >= 0).all() for t in seen['inner'])  # post-ReLU features
    assert block.attn.inner_channels == (64, 64)
    basic = plugattn.create_model('bav1_resnet18')
    assert basic.layer3[1].attn.inner_channels == (256,)
    rx = plugattn.create_model('bav1_resnext50_32x4d')
    assert rx.layer1[0].attn.inner_channels == (128, 128)


@pytest.mark.parametrize(
    ('name', 'message'),
    [
        ('resnet500', "unknown model 'resnet500': did you mean"),
        ('ela_t_resnet20', 'ELA-T needs channels divisible by its 32 GroupNorm groups, got 16'),
    ],
)
def test_create_model_errors(name, message):
    with pytest.raises(ValueError, match=message):
        plugattn.create_model(name)


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match='ELA-T needs channels'):
        plugattn.create_model('resnet20', attn='ela_t')
    with pytest.raises(ValueError, match=r'does not take option|unexpected keyword'):
        plugattn.create_model('resnet20', wings=2)
    with pytest.raises(ValueError, match='already has attention'):
        plugattn.create_model('se_resnet20', attn='bav2')
    with pytest.raises(ValueError, match='no pretrained weights'):
        plugattn.create_model('bav2_resnet50', pretrained=True)
    with pytest.raises(ValueError, match='one per stage'):
        plugattn.create_model('eca_resnet50', attn_kwargs=[{'kernel_size': 3}])
    model = plugattn.create_model('bav2_resnet20', in_chans=1)
    with pytest.raises(ValueError, match='built for 1 input channels, got 3'):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match='batch size 1'):
        model(torch.randn(1, 1, 28, 28))
    assert model.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_cifar_stem_and_options():
    m = plugattn.create_model('bav2_resnet18', stem='cifar', num_classes=100)
    assert isinstance(m.maxpool, nn.Identity) and m.conv1.kernel_size == (3, 3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert m.feature_info.reduction() == [1, 1, 2, 4, 8]
    pad = plugattn.create_model('resnet20', shortcut='pad')
    assert sum(p.numel() for p in pad.parameters()) == 272_474 - 2_752  # option A drops the projection convs + BNs
    assert pad(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert plugattn.create_model('wrn52_4').layer1[0].drop_rate == 0.3


def _tiny(block: type, attn: str | None) -> nn.Module:
    if block in (BasicBlock, Bottleneck):
        groups = dict(groups=4, width_per_group=8) if block is Bottleneck else {}
        return ResNet(block, (2, 1), widths=(16, 32), stem='cifar', num_classes=5, attn=attn, **groups)
    return PreActResNet(block, (2, 1), (16, 32), num_classes=5, attn=attn)


EXPORT_CASES = [(b, a) for b in (BasicBlock, Bottleneck) for a in [None, *plugattn.list_attn()]
                if not (a == 'ela_t' and b is BasicBlock)]
EXPORT_CASES += [(b, a) for b in (PreActBottleneck, WideBasic) for a in (None, 'bav2', 'dia', 'ca')]


@pytest.mark.parametrize(('block', 'attn'), EXPORT_CASES, ids=lambda v: getattr(v, '__name__', str(v)))
def test_torch_export_dynamic(block, attn):
    """torch.export with dynamic batch and spatial size reproduces eager outputs at two sizes."""
    torch.manual_seed(0)
    model = _tiny(block, attn).eval()
    batch, size = torch.export.Dim('batch', min=1, max=64), torch.export.Dim('size', min=4, max=64)
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch, 2: size, 3: size},))
    exported = program.module()
    with torch.no_grad():
        for shape in ((2, 3, 16, 16), (3, 3, 24, 24)):
            x = torch.randn(*shape)
            torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-5)


def test_timm_integration():
    timm = pytest.importorskip('timm')
    names = plugattn.register_timm()
    assert len(names) == len(ALL_MODELS) and 'plugattn_resnet50' in names and 'bav2_resnet50' in names
    model = timm.create_model('bav2_resnet50', num_classes=10)
    assert type(model) is ResNet and model.num_classes == 10
    assert 'dia_resnet164' in timm.list_models('dia_*')
    assert timm.create_model('resnet50').__class__.__module__.startswith('timm')  # timm's own names untouched
    assert type(timm.create_model('plugattn_resnet50')) is ResNet  # ours under a name that does not clash
    feats = timm.create_model('bav2_resnet20', features_only=True)
    assert feats.feature_info.channels() == [16, 16, 32, 64]


# ------------------------------------------------------------------------------------------------ output stride

OUTPUT_STRIDE_CASES = [('resnet18', 'ca'), ('resnet50', 'cbam'), ('mobilenetv2', 'ela_s'), ('regnety_400mf', 'bav2')]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name,attn', OUTPUT_STRIDE_CASES, ids=[f'{n}-{a}' for n, a in OUTPUT_STRIDE_CASES])
def test_output_stride_dilates_last_stages(name: str, attn: str) -> None:
    torch.manual_seed(0)
    reference = plugattn.create_model(name, attn=attn, num_classes=4, output_stride=32)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    for output_stride, expected in ((16, [2, 4, 8, 16, 16]), (8, [2, 4, 8, 8, 8])):
        model = plugattn.create_model(name, attn=attn, num_classes=4, output_stride=output_stride)
        assert {k: v.shape for k, v in model.state_dict().items()} == shapes  # same keys, same parameters
        assert _params(model) == _params(reference)
        assert model.feature_info.reduction() == expected
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [m.shape[-1] for m in maps] == [64 // r for r in expected]
        assert model.forward_features(x).shape[-1] == 64 // output_stride
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    features = plugattn.create_model(name, attn=attn, features_only=True, output_stride=8)
    assert features.feature_info.reduction() == [2, 4, 8, 8, 8]
    assert [f.shape[-1] for f in features(x)] == [32, 16, 8, 8, 8]


@pytest.mark.filterwarnings('ignore::FutureWarning')  # torch.jit.script's deprecation notice
def test_output_stride_dilation_pattern_and_torchscript() -> None:
    model = plugattn.create_model('resnet50', output_stride=8).eval()
    # the first block of a dilated stage keeps the previous dilation (timm and torchvision)
    dilations = [(b.conv2.stride[0], b.conv2.dilation[0]) for b in (*model.layer3[:2], *model.layer4[:2])]
    assert dilations == [(1, 1), (1, 2), (1, 2), (1, 4)]
    assert [b.downsample is not None for b in (model.layer3[0], model.layer4[0])] == [True, True]
    mbv2 = plugattn.create_model('mobilenetv2', attn='ca', output_stride=16)
    assert [mbv2.features[i].conv[-3][0].dilation[0] for i in (13, 14, 15, 17)] == [1, 1, 2, 2]
    attached = plugattn.attach(plugattn.create_model('resnet18', output_stride=8, features_only=True), 'se')
    assert attached.feature_info.reduction() == [2, 4, 8, 8, 8]  # attach rebuilds with the same output stride
    assert attached.layer4[1].conv2.dilation == (4, 4)
    small = plugattn.create_model('resnet18', attn='se', num_classes=3, output_stride=8).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(small)(x), small(x))


def test_output_stride_refused_where_not_available() -> None:
    for name in ('resnet20', 'preresnet164'):
        with pytest.raises(PlugattnError, match='already 4; leave output_stride unset'):
            plugattn.create_model(name, output_stride=8)
    assert plugattn.create_model('resnet20', output_stride=4).feature_info.reduction() == [1, 1, 2, 4]
    for name in ('resnet18', 'mobilenetv2', 'regnety_400mf'):
        with pytest.raises(PlugattnError, match='output_stride must be 8, 16, 32 or None, got 4'):
            plugattn.create_model(name, output_stride=4)


def test_output_stride_deeplabv3_and_timm_features() -> None:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    from plugattn.dense import segmentation_backbone

    backbone = segmentation_backbone('resnet18', 'ca', output_stride=8)
    head = DeepLabHead(backbone.out_channels, 3)
    deeplab = DeepLabV3(backbone, head).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert backbone(x)['out'].shape == (2, 512, 8, 8)
        assert deeplab(x)['out'].shape == (2, 3, 64, 64)
    timm = pytest.importorskip('timm')
    plugattn.register_timm()
    features = timm.create_model('ca_mobilenetv2', features_only=True, output_stride=16)
    assert features.feature_info.reduction() == [2, 4, 8, 16, 16]
    assert [f.shape[-1] for f in features(x)] == [32, 16, 8, 4, 4]
