"""Initialisation as the official code where parameter counts cannot tell: DIA WRN Linear biases, CBAM classifier."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import plugattn
from plugattn.models.preact_resnet import PreActBottleneck, PreActResNet, WideBasic


def _linear_biases(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.bias.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is not None}


def test_dia_wrn_starts_every_linear_bias_at_zero():
    """Official dia_wrn.py: ``elif isinstance(m, nn.Linear): m.bias.data.zero_()`` (LSTM gate maps and classifier)."""
    torch.manual_seed(0)
    wrn = PreActResNet(WideBasic, (2, 1, 1), (16, 32, 64), num_classes=100, attn='dia')
    biases = _linear_biases(wrn)
    assert {n.split('.')[0] for n in biases} == {'layer1', 'layer2', 'layer3', 'fc'}
    assert len(biases) == 3 * 4 + 1  # two bottleneck maps (w_ih, w_hh) of two Linears per unit, plus fc
    assert all(float(b.abs().max()) == 0.0 for b in biases.values())
    w = wrn.layer1.attn.w_ih[0].weight.detach()  # weights keep PyTorch's default: U(-1/sqrt(fan_in), ...)
    bound = 1 / math.sqrt(w.shape[1])
    assert float(w.abs().max()) <= bound and float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    with torch.device('meta'):
        assert plugattn.create_model('dia_wrn52_4').zero_linear_bias
        assert plugattn.create_model('wrn52_4').zero_linear_bias
        assert not plugattn.create_model('dia_preresnet164').zero_linear_bias


def test_dia_preresnet_keeps_default_linear_init():
    """Official dia_preresnet.py initialises only convs and BNs: the Linear biases keep PyTorch's uniform init."""
    torch.manual_seed(0)
    pre = PreActResNet(PreActBottleneck, (1, 1, 1), (16, 32, 64), num_classes=100, attn='dia')
    fc = pre.fc.bias.detach()
    assert float(fc.abs().min()) > 0 and float(fc.abs().max()) <= 1 / math.sqrt(pre.fc.in_features)
    off = PreActResNet(WideBasic, (1, 1, 1), (16, 32, 64), num_classes=10, zero_linear_bias=False)
    assert float(off.fc.bias.detach().abs().max()) > 0


def test_cbam_resnet_classifier_is_kaiming_normal_with_zero_bias():
    """Official model_resnet.py: ``init.kaiming_normal(self.fc.weight)`` (fan-in, gain sqrt 2), every bias zeroed."""
    torch.manual_seed(0)
    cbam = plugattn.create_model('cbam_resnet18', num_classes=1000)
    w, b = cbam.fc.weight.detach().double(), cbam.fc.bias.detach()
    std = math.sqrt(2.0 / 512)
    assert float(w.mean()) == pytest.approx(0.0, abs=std * 0.01)
    assert float(w.std()) == pytest.approx(std, rel=0.01)
    kurtosis = float(((w - w.mean()) ** 4).mean() / w.var() ** 2)
    assert kurtosis == pytest.approx(3.0, abs=0.05)  # normal (a uniform init has 1.8)
    assert float(b.abs().max()) == 0.0
    assert all(float(v.abs().max()) == 0.0 for v in _linear_biases(cbam).values())  # the channel MLPs too
    assert cbam.head_init == 'kaiming'


def test_other_resnets_keep_torchvisions_classifier_init():
    torch.manual_seed(0)
    se = plugattn.create_model('se_resnet18', num_classes=1000)
    w = se.fc.weight.detach().double()
    bound = 1 / math.sqrt(512)
    assert se.head_init == 'default' and float(w.abs().max()) <= bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert float(se.fc.bias.detach().abs().max()) > 0
    forced = plugattn.create_model('resnet20', head_init='kaiming')
    assert float(forced.fc.bias.detach().abs().max()) == 0.0
    with pytest.raises(ValueError, match="head_init must be 'kaiming', 'default' or None"):
        plugattn.create_model('resnet20', head_init='xavier')
