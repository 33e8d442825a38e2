"""plugattn.load_official: checkpoints written in each official repository's key layout and wrapper dict load back
into plugattn models with identical weights, buffers and outputs; bad checkpoints fail with one clear ValueError."""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

import plugattn
from plugattn.models import PreActResNet, ResNet
from plugattn.models.preact_resnet import PreActBottleneck, WideBasic
from plugattn.models.resnet import BasicBlock, Bottleneck

StateDict = dict[str, torch.Tensor]


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BN buffers at a scale that keeps the outputs O(1), so a wrongly mapped key shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('num_batches_tracked'):
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name.endswith('.weight') else 0.0))
    return model.eval()


# ----------------------------------------------------------------------------- official layouts (written out here)

def sub(sd: StateDict, *rules: tuple[str, str]) -> StateDict:
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def bav1_official(model: nn.Module) -> StateDict:
    """BA_resnet.py: ba.pre_fusions.{i} for the inner features, ba.cur_fusion for the current one."""
    n_inner = {name.removesuffix('.attn'): len(m.inner_channels) for name, m in model.attention_modules().items()}
    out = {}
    for key, value in model.state_dict().items():
        if m := re.match(r'(.*)\.attn\.fusions\.(\d+)\.(.*)', key):
            i = int(m[2])
            key = f'{m[1]}.ba.pre_fusions.{i}.{m[3]}' if i < n_inner[m[1]] else f'{m[1]}.ba.cur_fusion.{m[3]}'
        out[key.replace('.attn.', '.ba.')] = value
    return out


def eca_mbv2_official(model: nn.Module) -> StateDict:
    """eca_mobilenetv2.py: the ECA layer is the last entry of each block's conv Sequential."""
    out = {}
    for key, value in model.state_dict().items():
        if m := re.match(r'features\.(\d+)\.attn\.conv\.weight', key):
            key = f'features.{m[1]}.conv.{len(model.features[int(m[1])].conv)}.conv.weight'
        out[key] = value
    return out


def mbv2_ca_official(model: nn.Module) -> StateDict:
    """mbv2_ca.py: flat conv Sequential (pw, BN, ReLU6, dw, BN, ReLU6, CoordAtt, pw-linear, BN), last conv `conv`."""
    expand = {'conv.0.0': 'conv.0', 'conv.0.1': 'conv.1', 'conv.1.0': 'conv.3', 'conv.1.1': 'conv.4',
              'conv.2': 'conv.7', 'conv.3': 'conv.8'}
    first = {'conv.0.0': 'conv.0', 'conv.0.1': 'conv.1', 'conv.1': 'conv.3', 'conv.2': 'conv.4'}
    ca = {'conv1': 'conv1', 'bn1': 'bn1', 'conv_h': 'conv2', 'conv_w': 'conv3'}
    out = {}
    for key, value in model.state_dict().items():
        if m := re.match(r'features\.(\d+)\.attn\.(\w+)\.(\w+)$', key):
            key = f'features.{m[1]}.conv.6.{ca[m[2]]}.{m[3]}'
        elif m := re.match(r'features\.18\.(.*)', key):
            key = f'conv.{m[1]}'
        elif m := re.match(r'features\.(\d+)\.(conv\.\d(?:\.\d)?)\.(\w+)$', key):
            table = first if m[1] == '1' else expand
            key = f'features.{m[1]}.{table[m[2]]}.{m[3]}'
        out[key] = value
    return out


def dia_official(model: nn.Module, stage: str = 'layer') -> StateDict:
    """dia_resnet.py / dia_preresnet.py (stage='layer') and dia_wrn.py (stage='block', convShortcut, final bn1)."""
    rules = [(r'^layer(\d)\.attn\.(w_ih|w_hh)\.(\d)\.', rf'{stage}\1.lstm.\2.0.seq.\3.'),
             (r'^layer(\d)\.(\d+)\.', rf'{stage}\1.ModuleList.\2.')]
    if stage == 'block':
        rules += [(r'\.conv_shortcut\.', '.convShortcut.'), (r'^bn\.', 'bn1.')]
    return sub(model.state_dict(), *rules)


def training_ckpt(sd: StateDict, arch: str) -> dict:
    """BAv1 / ECA / CBAM / DIANet main.py: DataParallel `module.` keys inside a training dict."""
    return {'epoch': 100, 'arch': arch, 'state_dict': {f'module.{k}': v for k, v in sd.items()},
            'best_prec1': torch.tensor(77.4), 'acc': 76.1,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'params': [0, 1]}]}}


def bav2_ckpt(sd: StateDict, arch: str) -> dict:
    """BAv2 main.py (Swin-style): unwrapped model under 'model'."""
    return {'model': dict(sd), 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {'last_epoch': 299},
            'max_accuracy': 80.49, 'scaler': {'scale': 65536.0, 'growth_factor': 2.0}, 'epoch': 299}


def tiny(block: type, attn: str, **kw) -> ResNet:
    return ResNet(block, (1, 1), widths=(16, 32), stem='cifar', attn=attn, num_classes=10, **kw)


CASES: dict[str, tuple[str, Callable[[], nn.Module], Callable[[nn.Module], StateDict], Callable]] = {
    # id: (source, model factory, plugattn model -> official state dict, wrapper)
    'se_resnet20': ('se', lambda: plugattn.create_model('se_resnet20'),
                    lambda m: sub(m.state_dict(), (r'\.attn\.', '.se.')), training_ckpt),
    'eca_resnet': ('eca', lambda: tiny(Bottleneck, 'eca'), lambda m: sub(m.state_dict(), (r'\.attn\.', '.eca.')),
                   training_ckpt),
    'eca_mobilenetv2': ('eca', lambda: plugattn.create_model('eca_mobilenetv2', num_classes=10), eca_mbv2_official,
                        training_ckpt),
    'cbam_resnet': ('cbam', lambda: tiny(Bottleneck, 'cbam'), lambda m: sub(
        m.state_dict(), (r'\.attn\.channel_gate\.mlp\.0\.', '.cbam.ChannelGate.mlp.1.'),
        (r'\.attn\.channel_gate\.mlp\.2\.', '.cbam.ChannelGate.mlp.3.'),
        (r'\.attn\.spatial_gate\.', '.cbam.SpatialGate.spatial.')), training_ckpt),
    'mbv2_ca': ('ca', lambda: plugattn.create_model('ca_mobilenetv2', num_classes=10), mbv2_ca_official,
                lambda sd, arch: dict(sd)),
    'bav1_bottleneck': ('bav1', lambda: tiny(Bottleneck, 'bav1'), bav1_official, training_ckpt),
    'bav1_basic': ('bav1', lambda: tiny(BasicBlock, 'bav1'), bav1_official, training_ckpt),
    'bav1_from_bav2_repo': ('bav1', lambda: tiny(Bottleneck, 'bav1'),
                            lambda m: sub(m.state_dict(), (r'\.attn\.', '.ba.')), bav2_ckpt),
    'bav2_bottleneck': ('bav2', lambda: tiny(Bottleneck, 'bav2'),
                        lambda m: sub(m.state_dict(), (r'\.attn\.', '.ba.')), bav2_ckpt),
    'dia_resnet': ('dia', lambda: ResNet(Bottleneck, (2, 2, 2), (16, 32, 64), 10, stem='cifar', attn='dia'),
                   dia_official, training_ckpt),
    'dia_preresnet': ('dia', lambda: PreActResNet(PreActBottleneck, (2, 2, 2), (16, 32, 64), attn='dia'),
                      dia_official, training_ckpt),
    'dia_wrn': ('dia', lambda: PreActResNet(WideBasic, (2, 2, 2), (16, 32, 64), attn='dia'),
                lambda m: dia_official(m, 'block'), training_ckpt),
}


def _state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f'not loaded: {different[:4]}'


@pytest.mark.parametrize('case', list(CASES))
def test_official_layout_round_trip(case, tmp_path):
    source, build, to_official, wrap = CASES[case]
    torch.manual_seed(1)
    ref = randomize_(build())
    official = to_official(ref)
    assert not any('.attn.' in k for k in official)  # really another layout
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save(wrap(official, case), path)
    torch.manual_seed(2)
    model = build().eval()
    result = plugattn.load_official(model, path, source=source)
    assert not result.missing_keys and not result.unexpected_keys
    _state_equal(model, ref)  # parameters and buffers (BN running stats, BN1d of BAv1/BAv2, counters)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)
        assert expected.std() > 1e-2  # outputs carry signal, so a mis-loaded weight would show
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_bav1_current_feature_goes_last(tmp_path):
    """BAv1's cur_fusion is the last entry of plugattn's fusions list (index = number of inner features)."""
    ref = randomize_(tiny(Bottleneck, 'bav1'))
    official = bav1_official(ref)
    assert 'layer1.0.ba.cur_fusion.0.weight' in official and 'layer1.0.ba.pre_fusions.1.1.running_mean' in official
    path = tmp_path / 'model_best.pth.tar'
    torch.save(training_ckpt(official, 'ba_resnet50'), path)
    model = tiny(Bottleneck, 'bav1')
    plugattn.load_official(model, path, source='bav1')
    torch.testing.assert_close(model.layer1[0].attn.fusions[2][0].weight, official['layer1.0.ba.cur_fusion.0.weight'])


def test_old_checkpoints_without_num_batches_tracked(tmp_path):
    ref = randomize_(tiny(BasicBlock, 'bav2'))
    official = {k: v for k, v in sub(ref.state_dict(), (r'\.attn\.', '.ba.')).items()
                if not k.endswith('num_batches_tracked')}
    torch.save(bav2_ckpt(official, 'ba_resnet18_v2_1'), tmp_path / 'ckpt.pth')
    model = tiny(BasicBlock, 'bav2')
    plugattn.load_official(model, tmp_path / 'ckpt.pth', source='bav2')
    bn1d = model.layer2[0].attn.generation[0]
    torch.testing.assert_close(bn1d.running_var, ref.layer2[0].attn.generation[0].running_var)


def test_torchvision_and_timm_sources(tmp_path):
    tv = torchvision.models.mobilenet_v2().eval()
    torch.save(tv.state_dict(), tmp_path / 'mobilenet_v2.pth')
    plain = plugattn.create_model('mobilenetv2').eval()
    plugattn.load_official(plain, tmp_path / 'mobilenet_v2.pth', source='torchvision')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), tv(x))
    ca = plugattn.create_model('ca_mobilenetv2')
    with pytest.raises(ValueError, match='160 model keys have no match in the checkpoint'):
        plugattn.load_official(ca, tmp_path / 'mobilenet_v2.pth', source='torchvision')
    result = plugattn.load_official(ca, tmp_path / 'mobilenet_v2.pth', source='torchvision', strict=False)
    assert len(result.missing_keys) == 16 * 10 and all('.attn.' in k for k in result.missing_keys)

    timm = pytest.importorskip('timm')
    ref = timm.create_model('regnety_004').eval()
    torch.save(ref.state_dict(), tmp_path / 'regnety_004.pth')
    ours = plugattn.create_model('regnety_400mf').eval()
    plugattn.load_official(ours, tmp_path / 'regnety_004.pth', source='timm')
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_wrong_source_lists_unmatched_keys(tmp_path):
    ref = tiny(Bottleneck, 'bav2')
    torch.save(bav2_ckpt(sub(ref.state_dict(), (r'\.attn\.', '.ba.')), 'x'), tmp_path / 'ckpt.pth')
    with pytest.raises(ValueError) as info:
        plugattn.load_official(tiny(Bottleneck, 'bav2'), tmp_path / 'ckpt.pth', source='se')
    msg = str(info.value)
    assert "source 'se'" in msg and '20 model keys have no match' in msg and 'layer1.0.attn.proj.bias' in msg
    assert '22 checkpoint keys match nothing' in msg and 'layer1.0.ba.proj.weight' in msg
    assert '\n' not in msg


def test_shape_mismatch_is_reported(tmp_path):
    ref = tiny(BasicBlock, 'se')
    torch.save(training_ckpt(sub(ref.state_dict(), (r'\.attn\.', '.se.')), 'se'), tmp_path / 'ckpt.pth')
    model = ResNet(BasicBlock, (1, 1), widths=(16, 32), stem='cifar', attn='se', num_classes=100)
    with pytest.raises(ValueError, match=r'2 shape mismatches, checkpoint vs model \(fc\.weight: \(10, 32\) vs '
                                         r'\(100, 32\), fc\.bias: \(10,\) vs \(100,\)\)'):
        plugattn.load_official(model, tmp_path / 'ckpt.pth', source='se')
    with pytest.raises(ValueError, match='shape mismatches'):  # strict=False never loads a mis-shaped tensor
        plugattn.load_official(model, tmp_path / 'ckpt.pth', source='se', strict=False)


class _Opaque:
    pass


def test_unreadable_and_malformed_checkpoints(tmp_path):
    model = tiny(BasicBlock, 'eca')
    torch.save({'state_dict': model.state_dict(), 'args': _Opaque()}, tmp_path / 'pickled.pth')
    with pytest.raises(ValueError, match=r'cannot be read with torch\.load\(weights_only=True\)'):
        plugattn.load_official(model, tmp_path / 'pickled.pth', source='eca')
    torch.save({'epoch': 3, 'best_prec1': 1.0}, tmp_path / 'empty.pth')
    with pytest.raises(ValueError, match=r'holds no state dict \(top-level keys: epoch, best_prec1\)'):
        plugattn.load_official(model, tmp_path / 'empty.pth', source='eca')
    with pytest.raises(ValueError, match=r"unknown checkpoint source 'bav3': did you mean bav[12], bav[12]\?"):
        plugattn.load_official(model, {'fc.weight': torch.zeros(1)}, source='bav3')
    with pytest.raises(FileNotFoundError):
        plugattn.load_official(model, tmp_path / 'missing.pth', source='eca')
