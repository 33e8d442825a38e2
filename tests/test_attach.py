"""plugattn.attach: exactness against plugattn's own models, BAv1 counts, every family, weights, errors, CLI."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugattn
from plugattn.attach import attach, attachable

tv = pytest.importorskip('torchvision')
timm = pytest.importorskip('timm')
tvm = tv.models

ALL = ['se', 'eca', 'cbam', 'ca', 'ela_b', 'bav1', 'bav2', 'dia']


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def same_model(attached: nn.Module, ours: nn.Module, x: torch.Tensor, map_key=lambda k: k) -> float:
    """Load plugattn's weights into the attached model (keys mapped) and return the max |output difference|, in
    eval and in train mode (the same dropout draws)."""
    state = {map_key(k): v for k, v in ours.state_dict().items()}
    attached.load_state_dict(state, strict=True)
    diffs = []
    for training in (False, True):
        attached.train(training)
        ours.train(training)
        with torch.no_grad():
            torch.manual_seed(1)
            ref = ours(x)
            torch.manual_seed(1)
            diffs.append((attached(x) - ref).abs().max().item())
    return max(diffs)


def assert_exports_with_dynamic_sizes(model: nn.Module) -> None:
    """``torch.export`` with dynamic batch and H/W runs like the eager model at two input sizes."""
    batch, size = torch.export.Dim('batch', min=1, max=8), torch.export.Dim('size', min=64, max=256)
    ep = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch, 2: size, 3: size},))
    for shape in ((2, 3, 64, 64), (3, 3, 96, 96)):
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.allclose(ep.module()(x), model(x), atol=1e-5)

# ------------------------------------------------------------------ exactness where plugattn builds the same network


@pytest.mark.parametrize('attn', ALL)
def test_torchvision_resnet18_is_plugattn_model(attn):
    torch.manual_seed(0)
    attached = attach(tvm.resnet18(num_classes=10), attn)
    ours = plugattn.create_model(f'{attn}_resnet18', num_classes=10)
    assert n_params(attached) == n_params(ours)
    assert list(attached.state_dict()) == list(ours.state_dict())
    assert same_model(attached, ours, torch.randn(2, 3, 32, 32)) == 0.0


@pytest.mark.parametrize('arch', ['resnet50', 'resnext50_32x4d'])
@pytest.mark.parametrize('attn', ALL)
def test_bottleneck_counts_and_keys(arch, attn):
    with torch.device('meta'):
        attached = attach(tvm.get_model(arch), attn)
        ours = plugattn.create_model(f'{attn}_{arch}')
    assert n_params(attached) == n_params(ours)
    assert list(attached.state_dict()) == list(ours.state_dict())


def test_published_counts():
    with torch.device('meta'):
        assert n_params(attach(tvm.resnet50(), 'bav2')) == 28_702_664
        assert n_params(attach(tvm.resnet50(), 'bav1')) == 28_706_376
        assert n_params(attach(tvm.resnet50(), 'se')) == 28_071_976
        assert n_params(attach(tvm.mobilenet_v2(), 'ca')) == 3_950_648


@pytest.mark.parametrize('arch,attn', [('resnet50', 'bav2'), ('resnet50', 'dia'), ('resnext50_32x4d', 'bav2')])
def test_bottleneck_outputs(arch, attn):
    torch.manual_seed(0)
    attached = attach(tvm.get_model(arch, num_classes=10), attn)
    ours = plugattn.create_model(f'{attn}_{arch}', num_classes=10)
    assert same_model(attached, ours, torch.randn(2, 3, 32, 32)) == 0.0


@pytest.mark.parametrize('attn', ['ca', 'eca', 'se', 'bav2'])
def test_mobilenetv2_is_plugattn_model(attn):
    torch.manual_seed(0)
    attached = attach(tvm.mobilenet_v2(num_classes=10), attn)
    ours = plugattn.create_model(f'{attn}_mobilenetv2', num_classes=10)
    assert n_params(attached) == n_params(ours)
    assert list(attached.state_dict()) == list(ours.state_dict())
    assert same_model(attached, ours, torch.randn(2, 3, 32, 32)) == 0.0
    if attn == 'eca':  # official per-block kernels: k=1 below 96 channels, else 3 (31 parameters)
        assert sum(n_params(m) for m in attached.attention_modules().values()) == 31


def test_regnety_400mf_bav2_is_plugattn_model():
    torch.manual_seed(0)
    ours = plugattn.create_model('bav2_regnety_400mf', num_classes=10)
    attached = attach(timm.create_model('regnety_004', num_classes=10), 'bav2')
    assert n_params(attached) == n_params(ours) == 4_034_786 - 441 * 990
    keys = ['head.fc' + k[2:] if k.startswith('fc.') else k for k in ours.state_dict()]
    assert sorted(attached.state_dict()) == sorted(keys)
    diff = same_model(attached, ours, torch.randn(2, 3, 32, 32),
                      lambda k: 'head.fc' + k[2:] if k.startswith('fc.') else k)
    assert diff == 0.0
    # torchvision's RegNet-Y-400MF: the same network under other keys
    assert n_params(attach(tvm.regnet_y_400mf(), 'bav2')) == 4_034_786


def test_plugattn_resnet20_attach_is_create_model():
    plain = plugattn.create_model('resnet20')
    attached = attach(plain, 'bav2')
    ours = plugattn.create_model('bav2_resnet20')
    assert attached is plain and list(attached.state_dict()) == list(ours.state_dict())
    assert same_model(attached, ours, torch.randn(2, 3, 32, 32)) == 0.0
    dia = attach(plugattn.create_model('resnet20'), 'dia')
    assert n_params(dia) == n_params(plugattn.create_model('dia_resnet20')) == 286_866


@pytest.mark.parametrize(('backbone', 'attn', 'px'), [
    ('preresnet164', 'dia', 32), ('wrn52_4', 'cbam', 32), ('resnet18', 'ela_b', 64), ('mobilenetv2', 'ca', 64),
    ('mobilenetv2', 'eca', 64), ('regnety_400mf', 'bav2', 64), ('regnety_400mf', 'dia', 64),
    ('pvt_v1_tiny', 'bav2', 64), ('deit_tiny', 'dia', 64), ('swin_t', 'bav2', 224),
])
def test_attach_to_every_plugattn_family_is_create_model(backbone: str, attn: str, px: int):
    import warnings

    torch.manual_seed(0)
    plain = plugattn.create_model(backbone, num_classes=7)
    plain_state = {k: v.clone() for k, v in plain.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        attached = attach(plain, attn)
    ours = plugattn.create_model(f'{attn}_{backbone}', num_classes=7)
    assert attached is plain and list(attached.state_dict()) == list(ours.state_dict())
    assert attached.model_name == f'{attn}_{backbone}'
    replaced = [str(w.message) for w in caught if 'plugattn.attach' in str(w.message)]
    assert len(replaced) == (backbone.startswith('regnety')), replaced  # RegNet-Y's native SE goes, with a warning
    # the plain weights are kept under their keys (RegNet's DIA stages key their blocks 0, 1, ... instead of b1, ...)
    import re

    state = attached.state_dict()
    if backbone.startswith('regnety') and attn == 'dia':
        renamed = (re.sub(r'\.b(\d+)\.', lambda m: f'.{int(m.group(1)) - 1}.', k) for k in plain_state)
        plain_state = dict(zip(renamed, plain_state.values()))
    kept = [k for k in plain_state if '.se.' not in k]
    assert all(torch.equal(state[k], plain_state[k]) for k in kept)
    assert same_model(attached, ours, torch.randn(2, 3, px, px)) == 0.0


def test_attach_to_plugattn_models_options():
    plain = plugattn.create_model('resnet20', num_classes=7)
    partial = attach(plain, 'se', stages=[0])
    assert sorted({n.split('.')[0] for n in partial.attention_modules()}) == ['layer1']
    assert all(block.attn is None for block in partial.layer2)
    warm = attach(plugattn.create_model('regnety_400mf', num_classes=7), 'ca', warm_start=True)  # keeps the SE
    torch.manual_seed(0)
    original = plugattn.create_model('regnety_400mf', num_classes=7).eval()
    warm.load_state_dict(original.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(warm.eval()(x), original(x))
    feats = attach(plugattn.create_model('resnet20', features_only=True, out_indices=(1, 3)), 'bav2')
    assert [f.shape[1] for f in feats(torch.randn(2, 3, 32, 32))] == [16, 64]
    with pytest.raises(ValueError, match='built by its constructor'):
        from plugattn.models.resnet import BasicBlock, ResNet

        attach(ResNet(BasicBlock, (1, 1, 1), widths=(16, 32, 64), stem='cifar'), 'se')
    with pytest.raises(ValueError, match='already has attention'):
        attach(plugattn.create_model('se_resnet20'), 'ca')
    assert 'dia' not in plugattn.attachable(plugattn.create_model('mobilenetv2'))
    assert {'ca', 'eca', 'bav2'} <= set(plugattn.attachable(plugattn.create_model('mobilenetv2')))


@pytest.mark.parametrize('arch,count', [('mobilenet_v3_large', 5_478_832), ('mobilenet_v3_small', 2_536_040),
                                        ('efficientnet_b0', 8_418_640)])
def test_bav1_mobile_counts(arch, count):
    """specs §13.2: the BAv1 repository's BA-MobileNetV3 and BA-EfficientNet-B0."""
    with torch.device('meta'):
        assert n_params(attach(tvm.get_model(arch), 'bav1')) == count


@pytest.mark.parametrize('make,attn,act,gate', [
    (lambda: tvm.mobilenet_v3_small(num_classes=10), 'bav1', torch.relu, F.hardsigmoid),
    (lambda: tvm.efficientnet_b0(num_classes=10), 'bav1', F.silu, torch.sigmoid),
    (lambda: timm.create_model('mobilenetv3_small_050', num_classes=10), 'bav2', torch.relu, F.hardsigmoid),
    (lambda: timm.create_model('efficientnet_b0', num_classes=10), 'bav1', F.silu, torch.sigmoid),
])
def test_ba_mobile_activations(make, attn, act, gate):
    """specs §8: BA on MobileNetV3 gates with h-sigmoid, on EfficientNet it has a swish hidden activation."""
    torch.manual_seed(0)
    modules = attach(make(), attn).eval().attention_modules()
    assert len(modules) >= 8
    for ba in modules.values():
        with torch.no_grad():
            for p in ba.parameters():  # BN affine of both signs: hidden values of both signs
                if p.ndim == 1:
                    p.normal_(0, 1)
            inner = [torch.randn(3, c) for c in ba.inner_channels]
            x = torch.randn(3, ba.channels, 4, 4)
            feats = [*inner, x.mean((2, 3))]
            if attn == 'bav1':
                z = sum(m[1](m[0](s)) for m, s in zip(ba.fusions, feats, strict=True))
            else:
                v = torch.stack([m[0](s) for m, s in zip(ba.fusions, feats, strict=True)], -1)
                z = ba.generation[0]((v * ba.proj.weight).sum(-1) + ba.proj.bias)
            w_g = ba.generation[-2].weight * 4  # pre-gate values beyond h-sigmoid's linear range
            ba.generation[-2].weight.copy_(w_g)
            want = gate(act(z) @ w_g.t())
            got = ba.gate(inner, x).flatten(1)
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, torch.sigmoid(torch.relu(z) @ w_g.t()), atol=1e-3)  # the default differs
    with pytest.raises(ValueError, match="unknown bridge-attention gate_layer 'tanh'"):
        plugattn.layers.BridgeAttentionV1(8, inner_channels=(8,), gate_layer='tanh')


# ------------------------------------------------------------------ every family


def _swin_tv():
    return tvm.swin_transformer.SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=10)


FAMILIES = {
    'tv_resnet18': (lambda: tvm.resnet18(num_classes=10), 16),
    'tv_wide_resnet': (lambda: tvm.resnet.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10,
                                                 width_per_group=128), 8),
    'tv_mobilenet_v2': (lambda: tvm.mobilenet_v2(num_classes=10), 32),
    'tv_mobilenet_v3': (lambda: tvm.mobilenet_v3_small(num_classes=10), 32),
    'tv_efficientnet': (lambda: tvm.efficientnet_b0(num_classes=10), 32),
    'tv_regnet_y': (lambda: tvm.regnet_y_400mf(num_classes=10), 32),
    'tv_convnext': (lambda: tvm.convnext.ConvNeXt([tvm.convnext.CNBlockConfig(16, 32, 1),
                                                   tvm.convnext.CNBlockConfig(32, None, 2)], num_classes=10), 32),
    'tv_swin': (_swin_tv, 32),
    'tv_vit': (lambda: tvm.vision_transformer.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10), 32),
    'timm_resnet': (lambda: timm.create_model('resnet18', num_classes=10), 16),
    'timm_seresnet': (lambda: timm.create_model('seresnet18', num_classes=10), 16),
    'timm_resnetd': (lambda: timm.create_model('resnet26d', num_classes=10), 16),
    'timm_regnety': (lambda: timm.create_model('regnety_002', num_classes=10), 32),
    'timm_efficientnet': (lambda: timm.create_model('efficientnet_b0', num_classes=10), 32),
    'timm_mobilenetv3': (lambda: timm.create_model('mobilenetv3_small_050', num_classes=10), 32),
    'timm_convnext': (lambda: timm.create_model('convnext_atto', num_classes=10), 32),
    'timm_vit': (lambda: timm.create_model('vit_tiny_patch16_224', img_size=32, depth=2, num_classes=10), 32),
    'timm_swin': (lambda: timm.create_model('swin_tiny_patch4_window7_224', img_size=32, window_size=2,
                                            embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                                            num_classes=10), 32),
}
# attentions that each family takes, and how many modules each one adds
EXPECTED = {
    'tv_resnet18': {'se': 8, 'ca': 8, 'bav2': 8, 'dia': 4},
    'tv_wide_resnet': {'eca': 4, 'bav1': 4, 'dia': 4},
    'tv_mobilenet_v2': {'ca': 16, 'eca': 17, 'bav2': 16},
    'tv_mobilenet_v3': {'se': 9, 'cbam': 9, 'bav1': 8},
    'tv_efficientnet': {'se': 16, 'eca': 16, 'bav2': 15},
    'tv_regnet_y': {'eca': 16, 'bav2': 16, 'dia': 4},
    'tv_convnext': {'se': 3, 'ela_b': 3, 'bav2': 3, 'dia': 2},
    'tv_swin': {'bav2': 4, 'dia': 2},
    'tv_vit': {'bav1': 2, 'dia': 1},
    'timm_resnet': {'cbam': 8, 'bav2': 8, 'dia': 4},
    'timm_seresnet': {'ca': 8, 'bav2': 8},
    'timm_resnetd': {'se': 8, 'bav1': 8, 'dia': 4},
    'timm_regnety': {'ca': 13, 'bav2': 13, 'dia': 4},
    'timm_efficientnet': {'eca': 16, 'bav1': 15},
    'timm_mobilenetv3': {'se': 9, 'bav2': 8},
    'timm_convnext': {'ca': 12, 'bav2': 12, 'dia': 4},
    'timm_vit': {'bav2': 2, 'dia': 1},
    'timm_swin': {'bav2': 4, 'dia': 4},
}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_family_attach(family):
    make, px = FAMILIES[family]
    torch.manual_seed(0)
    x = torch.randn(2, 3, px, px)
    takes = attachable(make())
    for attn, count in EXPECTED[family].items():
        assert attn in takes
        model = make().eval()
        original = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            y0 = model(x)
        attach(model, attn, warm_start=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            assert (model(x) - y0).abs().max().item() <= 1e-6, f'{attn}: warm start changed the function'
        assert len(model.attention_modules()) == count, attn
        for k, v in original.items():  # warm start keeps every original key, bit for bit
            assert torch.equal(state[k], v), k
        model.train()
        model(x).sum().backward()
        blends = [m.blend.grad for m in model.attention_modules().values()]
        assert all(g is not None for g in blends)  # (zero where the host zero-initialises the branch or head)
        if family in ('tv_resnet18', 'tv_convnext', 'tv_mobilenet_v3', 'timm_convnext'):
            assert any(g.abs().sum() > 0 for g in blends), attn
    if 'se' in takes or 'ca' in takes:
        assert 'dia' in takes or family in ('tv_mobilenet_v2', 'tv_mobilenet_v3', 'tv_efficientnet',
                                            'timm_efficientnet', 'timm_mobilenetv3')
    if family.endswith(('vit', 'swin')):
        assert not {'se', 'eca', 'cbam', 'ca'} & set(takes)
        with pytest.raises(ValueError, match='takes no gate-level'):
            attach(make(), 'se')


def test_native_se_replaced_or_kept():
    model = timm.create_model('seresnet18', num_classes=10)
    keys = set(model.state_dict())
    attach(model, 'eca')
    se_keys = {k for k in keys if '.se.' in k}
    assert se_keys and set(model.state_dict()) >= keys - se_keys and not se_keys & set(model.state_dict())
    kept = attach(timm.create_model('seresnet18', num_classes=10), 'eca', keep_se=True)
    assert set(kept.state_dict()) >= keys
    assert n_params(attach(tvm.regnet_y_400mf(), 'eca')) == 3_676_192  # plugattn's eca_regnety_400mf


# ------------------------------------------------------------------ weights


def test_warm_start_false_is_the_paper_module():
    model = tvm.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y0 = model(x)
    attach(model, 'se')
    assert not any(hasattr(m, 'blend') for m in model.attention_modules().values())
    with torch.no_grad():
        assert (model(x) - y0).abs().max().item() > 1e-3


def test_original_weights_and_strict_reload(tmp_path):
    from safetensors.torch import load_file, save_file

    from plugattn.attach import load_weights

    original = tvm.resnet18(num_classes=10)
    attached = attach(tvm.resnet18(num_classes=10), 'bav2')
    result = attached.load_state_dict(original.state_dict(), strict=False)
    assert not result.unexpected_keys and result.missing_keys
    assert all('.attn.' in k for k in result.missing_keys)
    info = load_weights(attached, original.state_dict())
    assert set(result.missing_keys) <= set(info['missing']) and all('.attn.' in k for k in info['missing'])
    path = tmp_path / 'attached.safetensors'
    save_file(attached.state_dict(), str(path))
    fresh = attach(tvm.resnet18(num_classes=10), 'bav2')
    fresh.load_state_dict(load_file(str(path)), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), attached.eval()(x))
    with pytest.raises(ValueError, match='non-attention keys'):
        load_weights(attached, {k: v for k, v in original.state_dict().items() if not k.startswith('layer4')})


def test_deepcopy_and_export_dynamic():
    import copy

    model = attach(tvm.resnet18(num_classes=10), 'bav2').eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.layer1[0].attn.parameters():  # the copy's hooks must use the copy's modules
            p.add_(1.0)
        x = torch.randn(2, 3, 32, 32)
        assert not torch.equal(clone(x), model(x))
    assert_exports_with_dynamic_sizes(attach(tvm.resnet18(num_classes=10), 'dia', warm_start=True).eval())


_LOAD_PICKLED = """
import sys, torch, plugattn
for path in sys.argv[1:]:
    model = torch.load(path, weights_only=False)
    x, expected = torch.load(path + '.io')
    out = model(x)
    print(type(model).__name__, sorted(model.attention_modules())[:1], float((out - expected).abs().max()))
"""


def test_attached_models_pickle_and_load_in_a_fresh_process(tmp_path):
    import copy
    import subprocess
    import sys

    paths = []
    hosts = [('tv_se', tvm.resnet18(num_classes=5), 'se', {}), ('tv_dia_warm', tvm.resnet18(num_classes=5), 'dia',
             {'warm_start': True}), ('timm_bav2', timm.create_model('resnet18', num_classes=5), 'bav2', {}),
             ('tv_mbv2_ca', tvm.mobilenet_v2(num_classes=5), 'ca', {})]
    for name, host, attn, kw in hosts:
        model = attach(host, attn, **kw).eval()
        with torch.no_grad():
            for p in model.attention_modules().values():  # non-trivial attention weights (warm start: blend 0.5)
                for t in p.parameters():
                    t.add_(0.5)
            x = torch.randn(2, 3, 32, 32)
            torch.save((x, model(x)), tmp_path / f'{name}.pt.io')
        torch.save(model, tmp_path / f'{name}.pt')
        paths.append(str(tmp_path / f'{name}.pt'))
        assert torch.equal(copy.deepcopy(model)(x), model(x))
    with torch.no_grad():
        proc = subprocess.run([sys.executable, '-c', _LOAD_PICKLED, *paths], capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split('\n')[:4]
    assert [ln.split()[0] for ln in lines] == ['ResNet', 'ResNet', 'ResNet', 'MobileNetV2']
    assert [ln.split(']')[0].split('[')[1] for ln in lines] == \
        ["'layer1.0.attn'", "'layer1.attn'", "'layer1.0.attn'", "'features.10.attn'"]
    assert all(float(ln.split()[-1]) < 1e-5 for ln in lines), lines  # other thread counts: other sum orders


def test_ddp_single_process(tmp_path):
    import torch.distributed as dist

    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29533')
    dist.init_process_group('gloo', rank=0, world_size=1, init_method=f'file://{tmp_path / "pg"}')
    try:
        model = nn.parallel.DistributedDataParallel(attach(tvm.resnet18(num_classes=10), 'bav2', warm_start=True))
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ errors


def test_unsupported_model_error():
    with pytest.raises(ValueError, match=r'supported families are .*torchvision resnet.*register_family'):
        attach(nn.Sequential(nn.Conv2d(3, 8, 3)), 'se')
    with pytest.raises(ValueError, match='already has attention'):
        attach(attach(tvm.resnet18(), 'se'), 'eca')
    with pytest.raises(ValueError, match='takes no stage-level'):
        attach(tvm.mobilenet_v2(), 'dia')


def test_pretrained_offline_error(monkeypatch):
    from urllib.error import URLError

    from plugattn.hub import create_model

    def offline(*args, **kwargs):
        raise URLError('no network')

    import timm.models._builder as timm_builder
    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, 'load_state_dict_from_url', offline)  # what an offline machine raises
    with pytest.raises(ValueError, match=r'cannot download the pretrained weights of tv:resnet18.*--init-checkpoint'):
        create_model('tv:resnet18', pretrained=True, attn='bav2')
    monkeypatch.setattr(timm_builder, 'load_state_dict_from_hf', offline)
    monkeypatch.setattr(timm_builder, 'download_cached_file', offline)
    with pytest.raises(ValueError, match='cannot download the pretrained weights of timm:resnet18'):
        create_model('timm:resnet18', pretrained=True)


_OFFLINE_PROBE = """
import json, os, sys, time
from pathlib import Path
import timm, torch
from safetensors.torch import save_file
import plugattn

# weights in the Hugging Face cache, as a machine that downloaded them once before going offline has them
repo = Path(os.environ['HF_HOME'], 'hub', 'models--timm--test_resnet.r160_in1k')
rev = 'a' * 40
(repo / 'snapshots' / rev).mkdir(parents=True)
(repo / 'refs').mkdir()
(repo / 'refs' / 'main').write_text(rev)
torch.manual_seed(0)
ref = timm.create_model('test_resnet')
save_file(ref.state_dict(), str(repo / 'snapshots' / rev / 'model.safetensors'))
out = {}
t = time.perf_counter()
cached = plugattn.create_model('timm:test_resnet', pretrained=True)
out['cached_s'] = time.perf_counter() - t
out['cached_equal'] = all(torch.equal(a, b) for a, b in zip(cached.state_dict().values(), ref.state_dict().values()))
for name in ('timm:test_vit', 'timm:test_convnext+se'):
    t = time.perf_counter()
    try:
        plugattn.create_model(name, pretrained=True)
    except plugattn.errors.PlugattnError as e:
        out[name] = [str(e), time.perf_counter() - t]
print(json.dumps(out))
"""


def test_offline_timm_pretrained_fails_fast(tmp_path):
    """Offline (the Hub endpoint refuses connections), timm: pretrained fails at once with the tv: line, instead of
    in huggingface_hub's ~45 s of retries; weights already in the cache still load."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if 'proxy' not in k.lower() and not k.startswith('HF_')}
    env.update(HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT='http://127.0.0.1:9', TORCH_HOME=str(tmp_path / 'torch'))
    proc = subprocess.run([sys.executable, '-c', _OFFLINE_PROBE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['cached_equal'] and out['cached_s'] < 5
    for name in ('timm:test_vit', 'timm:test_convnext+se'):
        message, seconds = out[name]
        assert seconds < 5, (name, seconds)
        assert message == (
            f'cannot download the pretrained weights of {name.split("+")[0]} (no connection to 127.0.0.1:9: '
            f'Connection refused); download the weights file where you are online and pass it: plugattn train '
            f'--model {name.split("+")[0]} --init-checkpoint FILE, or build with pretrained=False and '
            'model.load_state_dict(torch.load(FILE, weights_only=True))')
    assert 'Retrying' not in proc.stderr


def test_create_model_names():
    m = plugattn.create_model('tv:resnet18', num_classes=10, in_chans=1, attn='bav2', warm_start=True)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10 and m.model_name == 'tv:resnet18'
    assert len(m.attention_modules()) == 8
    w = plugattn.create_model('resnet20', attn='bav2', warm_start=True)
    assert n_params(w) == 275_567 + 9


# ------------------------------------------------------------------ CLI


def test_cli_foreign_model(tmp_path, capsys):
    from safetensors.torch import save_file

    from plugattn.cli import main
    from plugattn.engine.evaluation import load_checkpoint_model

    plain = plugattn.create_model('tv:resnet18', num_classes=10, in_chans=1)
    weights = tmp_path / 'resnet18.safetensors'
    save_file(plain.state_dict(), str(weights))  # a plain torchvision state_dict, as downloaded weights are
    code = main(['train', '--data', 'digits', '--model', 'tv:resnet18', '--attn', 'bav2', '--warm-start',
                 '--init-checkpoint', str(weights), '--epochs', '1', '--batch-size', '64', '--threads', '1',
                 '--set', 'train.eval_batch_size=360', '--no-progress', '--output', str(tmp_path), '--name', 'run'])
    assert code == 0, capsys.readouterr().err
    net, meta, _ = load_checkpoint_model(tmp_path / 'run')
    assert meta['model'] == 'tv:resnet18' and len(net.attention_modules()) == 8
    assert meta['model_kwargs']['attn'] == 'bav2'


def test_analysis_tools_see_attached_modules():
    from plugattn.analysis.attn_corr import GateRecorder
    from plugattn.analysis.gradcam import default_target_layer

    for attn, target in (('bav2', 'layer4.1'), ('dia', 'layer4')):
        model = attach(tvm.resnet18(num_classes=10), attn).eval()
        with GateRecorder(model) as rec, torch.no_grad():
            model(torch.randn(4, 3, 32, 32))
        assert len(rec.layers) == 8 and 'layer1.0' in rec.layers  # a DIA unit gives one gate per block
        assert default_target_layer(model)[0] == target


# ------------------------------------------------------------------ analysis, features, export, compile, DDP


def _vit_tv():
    model = tvm.vision_transformer.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision zero-initialises the head: zero gradients
    return model


CAM_MODELS = {
    'tv_vit': (_vit_tv, 'bav2', 'encoder.layers.encoder_layer_1.ln_1'),
    'tv_swin': (_swin_tv, 'dia', 'norm'),
    'timm_vit': (lambda: timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2,
                                           num_classes=10), 'bav2', 'blocks.1.norm1'),
    'timm_deit': (lambda: timm.create_model('deit_tiny_distilled_patch16_224', img_size=32, patch_size=8, depth=2,
                                            num_classes=10), 'dia', 'blocks.1.norm1'),  # two prefix tokens
    'timm_swin': (lambda: timm.create_model('swin_tiny_patch4_window7_224', img_size=32, window_size=2,
                                            embed_dim=24, depths=(1, 1), num_heads=(1, 1), num_classes=10),
                  'bav2', 'norm'),
}


@pytest.mark.parametrize('family', sorted(CAM_MODELS))
def test_cam_attached_transformers(family):
    pytest.importorskip('pytorch_grad_cam')
    from plugattn.analysis.gradcam import compute_cam, default_target_layer

    make, attn, layer = CAM_MODELS[family]
    torch.manual_seed(0)
    model = attach(make(), attn).eval()
    name, target = default_target_layer(model)
    assert name == layer
    maps, probs = compute_cam(model, torch.randn(2, 3, 32, 32), target)
    assert maps.shape == (2, 32, 32) and probs.shape == (2, 10)
    assert np.isfinite(maps).all() and maps.std() > 0.05  # not constant (a wrong token reshape raises)


def test_attn_corr_and_cam_on_convnext():
    from plugattn.analysis.attn_corr import GateRecorder, gate_correlation
    from plugattn.analysis.gradcam import default_target_layer

    timm_cnx = attach(timm.create_model('convnext_atto', num_classes=10), 'bav2').eval()  # has a `stages` module
    tv_cnx = attach(FAMILIES['tv_convnext'][0](), 'dia').eval()
    for model, layers, stages in ((timm_cnx, 12, {'stages.0.blocks': 2, 'stages.2.blocks': 6}),
                                  (tv_cnx, 3, {'features.1': 1, 'features.3': 2})):
        with GateRecorder(model) as rec, torch.no_grad():
            model(torch.randn(6, 3, 64, 64))
        report = gate_correlation(rec.layers)
        assert len(rec.layers) == layers
        for stage, n in stages.items():
            assert len(report.stages[stage]['matrix']) == n
    assert default_target_layer(timm_cnx)[0] == 'stages.3.blocks.1'
    assert default_target_layer(tv_cnx)[0] == 'features.3'  # a DIA stage: the stage itself
    from plugattn.analysis import AnalysisError

    with pytest.raises(AnalysisError, match='no stages to group its gates by'):
        GateRecorder(attach(tvm.mobilenet_v3_small(num_classes=10), 'se'))


def test_features_only():
    # zero_init_last=False: timm zero-initialises the gated BN, which would hide any gate
    plain = plugattn.create_model('timm:resnet18', features_only=True, zero_init_last=False).eval()  # timm's own
    warm = plugattn.create_model('timm:resnet18+dia', features_only=True, warm_start=True, zero_init_last=False).eval()
    assert set(warm.state_dict()) >= {f'model.{k}' for k in plain.state_dict()}
    warm.load_state_dict({f'model.{k}': v for k, v in plain.state_dict().items()}, strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, got = plain(x), warm(x)
        assert [tuple(f.shape) for f in got] == [tuple(f.shape) for f in ref] == [
            (2, 64, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
        assert all((a - b).abs().max() <= 1e-6 for a, b in zip(got, ref, strict=True))  # warm start: the same
        for m in warm.model.attention_modules().values():
            m.blend.fill_(1.0)
        assert (warm(x)[-1] - ref[-1]).abs().max() > 1e-3  # the attention runs inside the extractor
    cnx = plugattn.create_model('timm:convnext_atto+bav2', features_only=True, out_indices=(1, 3))
    assert [f.shape[1] for f in cnx(x)] == [80, 320]
    assert isinstance(cnx.model.head.fc, nn.Identity) and len(cnx.model.attention_modules()) == 12



@pytest.mark.parametrize('name, shapes', [
    ('tv:resnet18+dia', [(64, 16), (128, 8), (256, 4), (512, 2)]),
    # the gated BN sits inside torchvision's Conv2dNormActivation, a leaf of torchvision's FX tracer
    ('tv:mobilenet_v3_small+bav1', [(16, 32), (16, 16), (24, 8), (48, 4), (576, 2)]),
])
def test_torchvision_features_only(name, shapes):
    torch.manual_seed(0)
    full = plugattn.create_model(name).eval()
    feats = plugattn.create_model(name, features_only=True).eval()
    assert not feats.graph.load_state_dict(full.state_dict(), strict=False).missing_keys  # only the head is gone
    x = torch.randn(2, 3, 64, 64)
    stage_outputs = {}
    hooks = [full.get_submodule(d['module']).register_forward_hook(
        lambda m, a, out, n=d['module']: stage_outputs.__setitem__(n, out)) for d in feats.feature_info]
    with torch.no_grad():
        full(x)
        got = feats(x)
    for h in hooks:
        h.remove()
    assert [(f.shape[1], f.shape[2]) for f in got] == shapes
    assert [(d['num_chs'], 64 // d['reduction']) for d in feats.feature_info] == shapes
    for f, d in zip(got, feats.feature_info):
        torch.testing.assert_close(f, stage_outputs[d['module']])  # the traced graph runs the attention
    assert len(plugattn.create_model(name, features_only=True, out_indices=(1, -1))(x)) == 2
    with pytest.raises(ValueError, match=r'out_indices \(7,\) of tv:.*feature levels'):
        plugattn.create_model(name, features_only=True, out_indices=(7,))


def test_onnx_export_attached(tmp_path):
    pytest.importorskip('onnxruntime')
    import onnx

    from plugattn.export import export_model

    model = attach(timm.create_model('mobilenetv3_small_050', num_classes=10), 'bav1')  # h-sigmoid BA gates
    result = export_model(model, tmp_path / 'm.onnx', fmt='onnx', input_size=(3, 32, 32), exporter='legacy')
    assert [s for s, _ in result.checks] == [(2, 3, 32, 32), (3, 3, 48, 40)]
    assert all(err < 1e-4 for _, err in result.checks)
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
    assert sum(n.op_type == 'HardSigmoid' for n in proto.graph.node) >= 8  # 8 BA gates (+ the network's own)


def test_export_dynamic_mobilenetv3_bav1():
    assert_exports_with_dynamic_sizes(attach(timm.create_model('mobilenetv3_small_050', num_classes=10), 'bav1').eval())


def test_torch_compile_attached():
    """torch.compile (aot_eager: no C++ build) gives the eager output. Not fullgraph: the blocks register their
    hooks at every call, which Dynamo traces around with graph breaks."""
    torch.manual_seed(0)
    plain = tvm.resnet.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    model = attach(tvm.resnet.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10), 'bav2').eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager')
    with torch.no_grad():
        got = compiled(x)
        assert torch.allclose(got, model(x), atol=1e-6)
        assert (got - plain(x)).abs().max() > 1e-3  # the attention is in the compiled graphs
    torch._dynamo.reset()


def _ddp_problem():
    torch.manual_seed(0)
    model = attach(tvm.resnet.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10), 'bav2').double()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.arange(8) % 10


def _ddp_worker(rank: int, port: int, queue) -> None:  # pragma: no cover - runs in a spawned process
    import torch.distributed as dist
    import torch.nn.functional as F

    from plugattn.engine.distributed import convert_sync_batchnorm

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, x, y = _ddp_problem()
    model = nn.parallel.DistributedDataParallel(convert_sync_batchnorm(model, torch.device('cpu')))
    F.cross_entropy(model(x[rank * 4:(rank + 1) * 4]), y[rank * 4:(rank + 1) * 4]).backward()
    names = [n for n, _ in model.module.named_parameters()]
    flat = torch.cat([p.grad.flatten() for p in model.module.parameters()]).numpy().copy()
    queue.put((rank, names, flat))  # numpy: sent by value (a tensor would be shared memory gone at exit)
    dist.destroy_process_group()


def test_ddp_two_processes_attached(run_two_processes):
    """2 gloo processes x 4 images with all-reduce BatchNorm (also the BAv2 BatchNorm1d) give the float64 gradients
    of one process on the 8 images, on both ranks."""
    import torch.nn.functional as F

    results = run_two_processes(_ddp_worker, 2)
    model, x, y = _ddp_problem()
    F.cross_entropy(model(x), y).backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    got = {rank: torch.from_numpy(flat) for rank, _, flat in results}
    names = results[0][1]
    assert names == [n for n, _ in model.named_parameters()] and sum('.attn.' in n for n in names) == 4 * 7
    for rank in (0, 1):
        assert float((got[rank] - ref).abs().max()) <= 1e-10 * float(ref.abs().max()), rank


@pytest.mark.parametrize(('build', 'attn', 'count'), [
    (lambda: tvm.efficientnet_b0(), 'eca', 16), (lambda: tvm.efficientnet_b0(), 'ca', 16),
    (lambda: tvm.mobilenet_v3_small(), 'bav1', 8), (lambda: tvm.regnet_y_400mf(), 'dia', 16),
    (lambda: timm.create_model('seresnet18'), 'cbam', 8),
])
def test_attach_warns_when_it_drops_host_modules(build, attn: str, count: int):
    with pytest.warns(UserWarning, match=rf'{attn} replaces {count} native modules .* keep_se=True or warm_start'):
        attach(build(), attn)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        attach(build(), attn, keep_se=True)
        attach(build(), attn, warm_start=True)
        attach(tvm.resnet18(), attn if attn != 'bav1' else 'bav2')  # nothing native to replace
