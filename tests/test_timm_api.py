"""timm's model conventions on plugattn models (checked against timm 1.0.31): pretrained cfgs, registration,
global_pool / reset_classifier, head_hidden_size, forward_intermediates / prune_intermediate_layers,
set_grad_checkpointing, group_matcher, no_weight_decay and the optimizer, TorchScript, FX, timm's feature wrappers.

Every model family is represented by a small instance; the cheap checks (cfgs) run over every registered model."""
import copy
import sys

import pytest
import torch
from torch import nn

import plugattn
from plugattn.engine.optim import param_groups_weight_decay
from plugattn.models import pretrained_cfg
from plugattn.models.mobilenetv2 import MobileNetV2
from plugattn.models.preact_resnet import PreActBottleneck, PreActResNet
from plugattn.models.pvt import PyramidVisionTransformer
from plugattn.models.regnet import RegNet, RegNetCfg
from plugattn.models.resnet import BasicBlock, ResNet
from plugattn.models.swin import SwinTransformer
from plugattn.models.vit import VisionTransformer

ALL_MODELS = plugattn.list_models()
CFG_KEYS = {'input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier',
            'num_classes', 'fixed_input_size', 'license', 'paper_ids', 'architecture'}


def tiny(family: str, attn: str | None = None, **kw) -> nn.Module:
    """A few-block model of each family (32 px inputs), built directly from the family's class."""
    torch.manual_seed(0)
    kw.setdefault('num_classes', 5)
    if family == 'resnet':
        return ResNet(BasicBlock, (2, 1, 1), widths=(16, 32, 64), stem='cifar', attn=attn, **kw)
    if family == 'preresnet':
        return PreActResNet(PreActBottleneck, (2, 1, 1), (16, 16, 16), attn=attn, **kw)
    if family == 'regnet':
        cfg = RegNetCfg((1, 2, 1, 1), (16, 32, 48, 64), 8)
        return RegNet(cfg, attn=attn, **kw)
    if family == 'mobilenetv2':
        return MobileNetV2(width_mult=0.25, attn=attn, **kw)
    if family == 'swin':
        return SwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4),
                               window_size=4, attn=attn, **kw)
    if family == 'vit':
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                 attn=attn, **kw)
    if family == 'pvt':
        return PyramidVisionTransformer(img_size=64, embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2),
                                        depths=(1, 1, 1, 1), attn=attn, **kw)
    raise ValueError(family)


CNN = ['resnet', 'preresnet', 'regnet', 'mobilenetv2']
TRANSFORMERS = ['swin', 'vit', 'pvt']
# (family, attention) cases: the block-level (bridge) and stage-level (DIA) paths are the ones with special cases
CASES = [(f, a) for f in CNN for a in (None, 'se', 'bav2', 'dia') if not (f == 'mobilenetv2' and a == 'dia')]
CASES += [(f, a) for f in TRANSFORMERS for a in (None, 'bav2', 'dia')]
# the gates that multiply in their own forward (CBAM, CA, ELA) or pool through a lean helper (CBAM's max)
GATE_CASES = [(f, a) for f in ('resnet', 'mobilenetv2') for a in ('eca', 'cbam', 'ca', 'ela_b')]


def side(model: nn.Module) -> int:
    return 64 if isinstance(model, PyramidVisionTransformer) else 32


def ids(case):
    return f'{case[0]}-{case[1] or "plain"}'


# --------------------------------------------------------------------------------------------- cfgs, registration


@pytest.mark.parametrize('name', ALL_MODELS)
def test_pretrained_cfg_complete(name):
    cfg = pretrained_cfg(name)
    assert set(cfg) >= CFG_KEYS
    assert not {'url', 'hf_hub_id', 'file'} & set(cfg)  # no weights are published
    family = plugattn.models.get_model_entry(name).cfg['family']
    cifar = family in ('resnet_cifar', 'preresnet', 'wrn')
    assert cfg['input_size'] == ((3, 32, 32) if cifar else (3, 224, 224))
    assert cfg['mean'] == ((0.4914, 0.4822, 0.4465) if cifar else (0.485, 0.456, 0.406))
    assert cfg['num_classes'] == (10 if cifar else 1000)
    assert cfg['pool_size'] == ((8, 8) if cifar else None if family in ('vit', 'pvt') else (7, 7))
    assert all(p.startswith('arXiv:') for p in cfg['paper_ids']) and cfg['license'] == 'apache-2.0'
    entry = plugattn.models.get_model_entry(name)
    assert len(cfg['paper_ids']) == 1 + (family == 'vit') + (entry.attn is not None) + ('resnext' in name)


@pytest.mark.parametrize('name', ['resnet20', 'bav2_resnet50', 'ca_mobilenetv2', 'dia_regnety_400mf', 'bav2_swin_t'])
def test_pool_size_and_cfg_names_match_the_model(name):
    with torch.device('meta'):
        model = plugattn.create_model(name).eval()
    cfg = model.pretrained_cfg
    keys = model.state_dict().keys()
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in keys
    _, h, w = cfg['input_size']
    out = model.forward_features(torch.empty(1, 3, h, w, device='meta'))
    spatial = out.shape[1:3] if model.output_fmt == 'NHWC' else out.shape[2:]
    assert tuple(spatial) == cfg['pool_size']


def test_registration_is_explicit_and_touches_no_import_machinery():
    assert not any('plugattn' in type(f).__module__ for f in sys.meta_path)
    timm = pytest.importorskip('timm')
    names = plugattn.register_timm()
    assert plugattn.register_timm() == names  # idempotent
    assert set(plugattn.models.timm_names().values()) == set(ALL_MODELS)
    owned = {n for n in names if n.startswith('plugattn_')}
    assert owned == {f'plugattn_{n}' for n in ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
                                               'resnext50_32x4d', 'resnext101_32x8d')}
    assert timm.models.get_pretrained_cfg('plugattn_resnet50').architecture == 'plugattn_resnet50'
    assert 'bav2_resnet20' in timm.list_models('bav2_*', name_matches_cfg=True)


def test_timm_resolves_native_preprocessing():
    """resolve_data_config follows the cfg: CIFAR statistics at 32 px for the CIFAR networks, ImageNet at 224."""
    timm = pytest.importorskip('timm')
    plugattn.register_timm()
    cifar = timm.data.resolve_data_config(model=timm.create_model('bav2_resnet20'))
    assert cifar['input_size'] == (3, 32, 32) and cifar['crop_pct'] == 1.0
    assert cifar['mean'] == (0.4914, 0.4822, 0.4465) and cifar['std'] == (0.2470, 0.2435, 0.2616)
    imagenet = timm.data.resolve_data_config(model=timm.create_model('se_resnet18'))
    assert imagenet['input_size'] == (3, 224, 224) and imagenet['mean'] == (0.485, 0.456, 0.406)


def test_pretrained_true_raises_through_timm():
    timm = pytest.importorskip('timm')
    plugattn.register_timm()
    with pytest.raises(ValueError, match='no pretrained weights'):
        timm.create_model('dia_resnet20', pretrained=True)


# --------------------------------------------------------------------------------------------- head


@pytest.mark.parametrize('case', CASES, ids=ids)
def test_head_global_pool_and_reset_classifier(case):
    model = tiny(*case).eval()
    x = torch.randn(2, 3, side(model), side(model))
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) and model.head_hidden_size == model.num_features
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, '')
        torch.testing.assert_close(model(x), feats)  # unpooled features
        model.reset_classifier(3)  # pooling back with a classifier
        assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="global_pool='' gives unpooled features"):
        model.reset_classifier(3, '')
    with pytest.raises(ValueError, match='global_pool must be one of'):
        model.reset_classifier(0, 'max')


def test_global_pool_argument():
    model = plugattn.create_model('dia_resnet20', num_classes=0, global_pool='').eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
    swin = tiny('swin', num_classes=0, global_pool='')
    assert swin(torch.randn(1, 3, 32, 32)).shape == (1, 2, 2, 128)  # NHWC, as output_fmt says
    with pytest.raises(ValueError, match='use num_classes=0'):
        plugattn.create_model('resnet20', global_pool='')


# --------------------------------------------------------------------------------------------- intermediates


@pytest.mark.parametrize('case', CASES, ids=ids)
def test_forward_intermediates_timm_signature(case):
    model = tiny(*case).eval()
    n = len(model.feature_info)
    x = torch.randn(2, 3, side(model), side(model))
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [f.shape[1] for f in feats] == model.feature_info.channels()
        assert [side(model) // f.shape[-1] for f in feats] == model.feature_info.reduction()
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last2, feats[-2:])
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(picked, [feats[0], feats[-1]])
        early, first = model.forward_intermediates(x, indices=[1], stop_early=True)
        torch.testing.assert_close(first, [feats[1]])
        assert early.shape[0] == 2
    with pytest.raises(ValueError, match='out of range'):
        model.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(x, output_fmt='NCL')


def test_intermediates_norm_and_formats():
    swin = tiny('swin').eval()
    vit = tiny('vit').eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        nhwc = swin.forward_intermediates(x, indices=1, norm=True, output_fmt='NHWC', intermediates_only=True)[0]
        torch.testing.assert_close(nhwc, swin.forward_features(x))  # normed last stage = forward_features
        nlc = vit.forward_intermediates(x, indices=1, norm=True, output_fmt='NLC', intermediates_only=True)[0]
        torch.testing.assert_close(nlc, vit.forward_features(x)[:, 1:])
        pre = tiny('preresnet').eval()
        torch.testing.assert_close(pre.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0],
                                   pre.forward_features(x))


@pytest.mark.parametrize('case', [c for c in CASES if c[1] in (None, 'dia')], ids=ids)
def test_prune_intermediate_layers(case):
    model = tiny(*case).eval()
    x = torch.randn(1, 3, side(model), side(model))
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        params = sum(p.numel() for p in model.parameters())
        n = len(model.feature_info)
        assert model.prune_intermediate_layers([1, 2 - n]) == [1, 2]  # negative indices count from the end
        assert sum(p.numel() for p in model.parameters()) < params  # later stages and the head are gone
        assert model.num_classes == 0
        torch.testing.assert_close(model.forward_intermediates(x, indices=[1, 2], intermediates_only=True), ref)


# --------------------------------------------------------------------------------------------- training helpers


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps for backward during one forward (the activation memory), and the gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.square().mean().backward()
    return sum(saved), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize('case', [('resnet', 'dia'), ('regnet', 'bav2'), ('mobilenetv2', 'ca'), ('swin', 'dia'),
                                  ('vit', 'bav2'), ('vit', 'dia'), ('pvt', 'dia')], ids=ids)
def test_grad_checkpointing_same_gradients_less_memory(case):
    model = tiny(*case)
    model.eval()  # no dropout / BN statistics updates: both passes see the same function
    x = torch.randn(2, 3, side(model), side(model))
    plain_bytes, plain_grads = _saved_bytes(model, x)
    model.set_grad_checkpointing()
    ckpt_bytes, ckpt_grads = _saved_bytes(model, x)
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ckpt_bytes < 0.5 * plain_bytes
    model.set_grad_checkpointing(False)
    assert _saved_bytes(model, x)[0] == plain_bytes


@pytest.mark.parametrize('case', CASES, ids=ids)
def test_group_matcher_covers_every_parameter(case):
    timm = pytest.importorskip('timm')
    model = tiny(*case)
    head = {n for n, _ in model.get_classifier().named_parameters(prefix=model.classifier_key)}
    for coarse in (False, True):
        groups = timm.models.group_parameters(model, model.group_matcher(coarse=coarse))
        flat = [n for names in groups.values() for n in names]
        assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
        assert set(groups[max(groups)]) >= head  # unmatched head last
        assert f'{model.first_conv_key}.weight' in groups[min(groups)]  # the stem first
    fine = timm.models.group_parameters(model, model.group_matcher())
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    assert len(fine) >= len(coarse) >= 3
    if case[0] in ('resnet', 'regnet', 'swin'):  # stages of several blocks: one group per block when fine
        assert len(fine) > len(coarse)
    if case[1] == 'dia':  # the shared unit joins a group of its stage's blocks, not a group of its own
        unit = next(n for n, m in model.attention_modules().items())
        members = next(names for names in fine.values() if any(n.startswith(unit + '.') for n in names))
        assert any(not n.startswith(unit + '.') for n in members)


@pytest.mark.parametrize(('name', 'expected'), [
    ('swin_t', {f'layers.{s}.blocks.{b}.attn.relative_position_bias_table'
                for s, d in enumerate((2, 2, 6, 2)) for b in range(d)}),
    ('deit_tiny', {'pos_embed', 'cls_token'}),
    ('dia_pvt_v1_tiny', {'pos_embed1', 'pos_embed2', 'pos_embed3', 'pos_embed4', 'cls_token'}),
    ('bav2_resnet20', set()),
])
def test_no_weight_decay_and_optimizer_groups(name, expected):
    with torch.device('meta'):
        model = plugattn.create_model(name)
    assert model.no_weight_decay() == expected
    params = dict(model.named_parameters())
    assert all(params[n].ndim >= 2 for n in expected)  # 2-D+: decayed by the 1-D rule alone
    for no_wd_1d in (True, False):
        groups = param_groups_weight_decay(model, 0.05, no_wd_1d=no_wd_1d)
        no_decay = {id(p) for g in groups if g['weight_decay'] == 0.0 for p in g['params']}
        decay = {id(p) for g in groups if g['weight_decay'] == 0.05 for p in g['params']}
        assert {id(params[n]) for n in expected} <= no_decay and not {id(params[n]) for n in expected} & decay
        assert len(no_decay) + len(decay) == len(params)
        if no_wd_1d:
            assert no_decay == {id(p) for n, p in params.items() if p.ndim <= 1 or n in expected}


# --------------------------------------------------------------------------------------------- TorchScript, FX


@pytest.mark.filterwarnings('ignore::FutureWarning')
@pytest.mark.parametrize('case', CASES + GATE_CASES, ids=ids)
def test_torchscript_matches_eager(case):
    model = tiny(*case).eval()
    x = torch.randn(2, 3, side(model), side(model))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('case', CASES, ids=ids)
def test_fx_trace_forward_backward_and_input_check(case):
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = tiny(*case).eval()
    x = torch.randn(2, 3, side(model), side(model))
    _, nodes = get_graph_node_names(model)
    graph = create_feature_extractor(model, return_nodes={nodes[-1]: 'out'})
    with torch.no_grad():
        torch.testing.assert_close(graph(x)['out'], model(x))
    graph(x)['out'].sum().backward()
    assert all(p.grad is not None for p in graph.parameters())
    with pytest.raises(ValueError, match='was built for 3 input channels, got 1'):
        graph(torch.randn(2, 1, side(model), side(model)))  # the check is a call in the graph


def test_fx_graph_resizes_position_embeddings():
    """Size-dependent steps are wrapped calls, so a ViT/PVT graph traced at one size runs at another."""
    from torchvision.models.feature_extraction import create_feature_extractor

    for model, large in ((tiny('vit'), 48), (tiny('pvt'), 96)):  # built for 32 and 64 px
        model.eval()
        graph = create_feature_extractor(model, return_nodes={'head': 'out'})
        x = torch.randn(1, 3, large, large)
        with torch.no_grad():
            torch.testing.assert_close(graph(x)['out'], model(x))


@pytest.mark.parametrize('feature_cls', ['list', 'dict', 'hook', 'getter', 'fx'])
@pytest.mark.parametrize('name', ['dia_resnet20', 'ca_mobilenetv2', 'bav2_swin_t', 'dia_deit_tiny'])
def test_timm_feature_wrappers(name, feature_cls):
    timm = pytest.importorskip('timm')
    plugattn.register_timm()
    if feature_cls in ('list', 'dict', 'hook') and 'deit' in name:
        pytest.skip('ViT blocks are not children run in sequence; timm uses the getter for ViTs too')
    if feature_cls == 'fx' and 'deit' in name:
        pytest.skip('FX nodes of a ViT are raw block tokens (class token included), not forward_intermediates maps')
    kw = dict(img_size=64, window_size=4) if 'swin' in name else dict(img_size=32) if 'deit' in name else {}
    torch.manual_seed(0)
    ref = timm.create_model(name, **kw).eval()
    torch.manual_seed(0)  # the same weights: the wrappers rename the state_dict keys
    wrapped = timm.create_model(name, features_only=True, feature_cls=feature_cls, out_indices=(1, 2), **kw).eval()
    px = 64 if 'swin' in name or 'mobilenet' in name else 32
    x = torch.randn(1, 3, px, px)
    fmt = str(getattr(wrapped, 'output_fmt', 'NCHW').value if hasattr(wrapped, 'output_fmt') else 'NCHW')
    with torch.no_grad():
        outs = wrapped(x)
        outs = list(outs.values()) if isinstance(outs, dict) else outs
        expected = ref.forward_intermediates(x, indices=[1, 2], intermediates_only=True, output_fmt=fmt)
    assert wrapped.feature_info.channels() == [o.shape[3 if fmt == 'NHWC' else 1] for o in outs]
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e)


# --------------------------------------------------------------------------------------------- attached timm models

ATTACHED = [('resnet18', 'se'), ('resnet18', 'bav2'), ('resnet18', 'dia'), ('convnext_atto', 'ca'),
            ('convnext_atto', 'dia'), ('vit_tiny_patch16_224', 'dia')]


def timm_host(name: str) -> nn.Module:
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, depth=3) if name.startswith('vit') else {}
    model = timm.create_model(name, num_classes=5, **kw)
    # timm zero-inits the last norm of a ResNet block and starts ConvNeXt's layer scale at 1e-6: the gates would
    # get (almost) no gradient and change the output by (almost) nothing
    for name, p in model.named_parameters():
        if name.endswith('gamma') or (name.endswith('bn2.weight') and name.startswith('layer')):
            nn.init.uniform_(p, 0.5, 1.5)
    return model


@pytest.mark.filterwarnings('ignore::FutureWarning')
@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # timm's ViT checks its input size in Python
@pytest.mark.parametrize('host_name, attn', ATTACHED, ids=[f'{h}-{a}' for h, a in ATTACHED])
def test_attached_timm_model_keeps_timm_api(host_name, attn):
    from timm.models import create_feature_extractor

    host = timm_host(host_name)
    model = plugattn.attach(copy.deepcopy(host), attn)
    for attr in ('pretrained_cfg', 'default_cfg', 'feature_info', 'num_features', 'head_hidden_size'):
        assert getattr(model, attr) == getattr(host, attr), attr
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    host.eval()
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, host(x))  # the attention is applied (not warm-started)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)
        final, inter = model.forward_intermediates(x, indices=2)
        _, host_inter = host.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape for t in inter] == [t.shape for t in host_inter]
        graph = create_feature_extractor(model, return_nodes={get_graph_node_names_eval(model)[-1]: 'out'})
        torch.testing.assert_close(graph(x)['out'], out)
        torch.testing.assert_close(torch.jit.trace(model, x)(x), out)
    with pytest.raises(ValueError, match=r'cannot be scripted with TorchScript.*torch\.jit\.trace'):
        torch.jit.script(model)

    # gradient checkpointing: the host's checkpointed path gives the same outputs and gradients, attention included
    model.train()
    target = torch.randn(2, 5)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout / drop-path draws
        loss = (model(x) * target).sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    attn_keys = [n for n in grads[0] if any(n.startswith(a + '.') for a in model.attention_modules())]
    assert attn_keys and all(grads[0][n].abs().sum() > 0 for n in attn_keys)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)

    model.reset_classifier(0, '')
    host.reset_classifier(0, '')
    with torch.no_grad():
        unpooled = model.eval()(x)
        assert unpooled.shape == host(x).shape and unpooled.ndim > 2  # maps (NCHW) or tokens (NLC), not pooled


def get_graph_node_names_eval(model: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(model)[1]


@pytest.mark.parametrize('attn', ['cbam', 'bav1', 'dia'])
def test_fx_graph_of_attached_torchvision_model_keeps_the_attention(attn):
    from torchvision.models import resnet18
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = plugattn.attach(resnet18(num_classes=5), attn).eval()
    host = resnet18(num_classes=5).eval()
    host.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    graph = create_feature_extractor(model, return_nodes={'layer2': 'mid', 'fc': 'out'})
    with torch.no_grad():
        outs = graph(x)
        torch.testing.assert_close(outs['out'], model(x))
        assert not torch.allclose(outs['out'], host(x))
    assert any(n.startswith('layer1.0.attn') or n.startswith('layer1.attn') for n, _ in graph.named_parameters())
