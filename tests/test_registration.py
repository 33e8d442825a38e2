"""Facts registered once: an attention module's paper, arXiv id, repository, label, colour and defaults come from its
own registration, and a model family's cfg from its own file, so a new attention or family touches no other file."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import plugattn
from plugattn.analysis.plots import attn_color, attn_label
from plugattn.layers import ATTN_REGISTRY, GateAttention, attn_info, create_attn, register_attn
from plugattn.layers.base import as_channel_gate, pooled
from plugattn.models import _registry, pretrained_cfg, register_model, register_model_family


class ToyGate(GateAttention):
    """A channel gate with one weight per channel: ``x * sigmoid(w * GAP(x))``; ``multiple_of`` restricts widths."""

    def __init__(self, channels: int, *, multiple_of: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        if channels % multiple_of:
            raise ValueError(f'toy gate needs channels divisible by {multiple_of}, got {channels}')
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))

    def gate(self, x: Tensor) -> Tensor:
        return as_channel_gate((pooled(x) * self.weight).sigmoid())


@pytest.fixture
def registries():
    """Registrations made by a test are undone after it (attention variants follow the attention registry)."""
    saved = dict(ATTN_REGISTRY), dict(_registry._BACKBONES), dict(_registry._FAMILIES)
    yield
    for live, old in zip((ATTN_REGISTRY, _registry._BACKBONES, _registry._FAMILIES), saved):
        live.clear()
        live.update(old)
    assert plugattn.list_models('toy*') == [] and plugattn.list_models('*toynet*') == []


def test_builtin_facts_complete():
    for name, info in ATTN_REGISTRY.items():
        assert info.name == name and info.label and info.color.startswith('#') and len(info.color) == 7
        assert info.paper and info.arxiv.count('.') == 1 and not info.arxiv.startswith('arXiv')
    assert len({info.color for info in ATTN_REGISTRY.values()}) == len(ATTN_REGISTRY)  # one colour each
    assert attn_info('ela_t').defaults == {'kernel_size': 5, 'group_channels': 1, 'num_groups': 32, 'variant': 't'}
    assert attn_info('ela-b').defaults == {} and attn_info('ELA_B').label == 'ELA-B'
    assert attn_info('ela_b').repo == '' and attn_info('dia').repo == 'https://github.com/gbup-group/DIANet'
    cfg = pretrained_cfg('ela_b_resnet50')
    assert cfg['paper_ids'] == ('arXiv:1512.03385', 'arXiv:2403.01123') and 'origin_url' not in cfg
    cfg = pretrained_cfg('bav2_resnext50_32x4d')
    assert cfg['paper_ids'] == ('arXiv:1512.03385', 'arXiv:1611.05431', 'arXiv:2410.07860')
    assert cfg['origin_url'] == 'https://github.com/ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks'
    assert pretrained_cfg('resnet50')['origin_url'] == 'https://github.com/pytorch/vision'
    assert (attn_label('bav2_resnet50'), attn_color('bav2_resnet50')) == ('BAv2', '#6a3d9a')
    assert (attn_label('resnet50'), attn_label('tv:resnet50+eca'), attn_label('none')) == ('plain', 'ECA', 'plain')


def test_new_gate_attention_is_one_registration(registries):
    with pytest.raises(ValueError, match="unknown model 'toy_resnet20'"):
        plugattn.create_model('toy_resnet20')
    register_attn('toy', label='Toy', color='#123456', paper='A toy gate', arxiv='arXiv:2401.00001',
                  repo='https://example.org/toy')(ToyGate)
    register_attn('toy64', label='Toy-64', defaults={'multiple_of': 64})(ToyGate)
    names = plugattn.list_models('toy*')
    # every CNN backbone takes a new gate; the transformers take only the attention they list (BAv2, DIA)
    assert {'toy_resnet20', 'toy_resnet50', 'toy_preresnet164', 'toy_mobilenetv2', 'toy_regnety_400mf'} <= set(names)
    assert not any(n.endswith(('swin_t', 'deit_tiny', 'pvt_v1_tiny')) for n in names)
    # toy64 cannot take resnet20's 16 channels, as ELA-T cannot; the width check runs for late registrations too
    assert 'toy64_resnet20' not in names and 'toy64_resnet50' in names
    assert create_attn('toy64', 128).weight.numel() == 128

    model = plugattn.create_model('toy_resnet20')
    plain = plugattn.create_model('resnet20')
    assert model.model_name == 'toy_resnet20'
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * (16 + 32 + 64)  # one weight per channel, one gate in each of the 9 basic blocks
    assert sum(isinstance(m, ToyGate) for m in model.modules()) == 9
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    cfg = model.pretrained_cfg
    assert cfg['paper_ids'] == ('arXiv:1512.03385', 'arXiv:2401.00001')
    assert cfg['origin_url'] == 'https://example.org/toy' and cfg['architecture'] == 'toy_resnet20'
    assert plugattn.create_model('resnet20', attn='toy').state_dict().keys() == model.state_dict().keys()
    assert (attn_label('toy_resnet20'), attn_color('toy_resnet20')) == ('Toy', '#123456')
    assert (attn_label('toy64'), attn_color('toy64')) == ('Toy-64', '#9da5b4')  # no colour registered
    assert 'toy' in plugattn.attachable(plain)


def _toynet(**kwargs: Any) -> nn.Module:
    return plugattn.models.ResNet(plugattn.models.resnet.BasicBlock, (1, 1), widths=(8, 16), stem='cifar', **kwargs)


def test_new_family_is_one_file(registries):
    register_model_family('toyfam', first_conv='conv1', classifier='fc', reduction=2, crop_pct=1.0,
                          interpolation='bicubic', paper_ids=('arXiv:2401.00002',), paper_name='Toy networks',
                          min_input_size=(3, 16, 16))
    with pytest.raises(ValueError, match="model family 'toyfam' is already registered"):
        register_model_family('toyfam', first_conv='conv1', classifier='fc', reduction=2, crop_pct=1.0,
                              interpolation='bicubic', paper_ids=(), paper_name='')
    with pytest.raises(ValueError, match="unknown model family 'nofam'"):
        register_model(attn_widths=(8, 16), input_size=(3, 32, 32), family='nofam')

    def toynet(**kwargs: Any) -> nn.Module:
        return _toynet(**kwargs)

    register_model(attn_widths=(8, 16), input_size=(3, 32, 32), family='toyfam', exclude_attns=('dia',))(toynet)
    names = plugattn.list_models('*toynet')
    assert 'toynet' in names and 'se_toynet' in names and 'bav2_toynet' in names and 'dia_toynet' not in names
    assert 'ela_t_toynet' not in names  # GroupNorm(32) cannot take 8 channels
    model = plugattn.create_model('eca_toynet', num_classes=5)
    cfg = model.pretrained_cfg
    assert (cfg['interpolation'], cfg['pool_size'], cfg['min_input_size']) == ('bicubic', (16, 16), (3, 16, 16))
    assert cfg['paper_ids'] == ('arXiv:2401.00002', 'arXiv:1910.03151') and cfg['num_classes'] == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
