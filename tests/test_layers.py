"""Attention modules: the module contract, parameter counts (specs §13.6), errors and reference parity."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugattn import create_attn, list_attn
from plugattn.layers import (
    ATTN_REGISTRY,
    BlockAttention,
    BridgeAttentionV2,
    GateAttention,
    StageAttention,
    attn_level,
    eca_kernel_size,
    register_attn,
)

ALL_ATTN = ['bav1', 'bav2', 'ca', 'cbam', 'dia', 'eca', 'ela_b', 'ela_l', 'ela_s', 'ela_t', 'se']

# specs §13.6: C = 256 (ResNet-50 stage-1 output), bridge inputs [64, 64] -> 256; ECA's k at C=256 is 5.
SPEC_PARAMS_256 = {
    'se': 8_192, 'eca': 5, 'cbam': 8_564, 'ca': 6_680, 'ela_t': 1_792, 'ela_b': 2_304, 'ela_s': 10_752,
    'ela_l': 14_848, 'bav1': 10_336, 'bav2': 10_276, 'dia': 166_016,
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build(name: str, channels: int = 32, **kw) -> nn.Module:
    if attn_level(name) == 'block':
        kw.setdefault('inner_channels', (channels // 2, channels // 2))
    return create_attn(name, channels, **kw)


def run(m: nn.Module, x: torch.Tensor, inner: list[torch.Tensor] | None = None) -> torch.Tensor:
    if isinstance(m, BlockAttention):
        return m(inner, x)
    if isinstance(m, StageAttention):
        out, state = m(x, None)
        return m(out, state)[0]  # two steps, so the recurrent path is exercised too
    return m(x)


def test_registry_names():
    assert list_attn() == ALL_ATTN
    assert set(ATTN_REGISTRY) == set(SPEC_PARAMS_256)


@pytest.mark.parametrize('name', ALL_ATTN)
def test_param_count_matches_spec(name):
    m = build(name, 256, inner_channels=(64, 64)) if attn_level(name) == 'block' else build(name, 256)
    assert n_params(m) == SPEC_PARAMS_256[name]


@pytest.mark.parametrize(('name', 'expected'), [('bav1', 784), ('bav2', 779)])
def test_bridge_basic_block_param_count(name, expected):
    assert n_params(create_attn(name, 64, inner_channels=(64,))) == expected


def test_se_bias_and_ca_hidden_width():
    c = 256
    assert n_params(create_attn('se', c, bias=True)) == 2 * c * c // 16 + c // 16 + c
    ca = create_attn('ca', 512)
    assert ca.conv1.out_channels == 16  # mip = max(8, 512 // 32)
    assert create_attn('ca', 64).conv1.out_channels == 8


@pytest.mark.parametrize(('channels', 'k'), [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel(channels, k):
    assert eca_kernel_size(channels) == k
    assert create_attn('eca', channels).conv.kernel_size == (k,)


@pytest.mark.parametrize('name', ALL_ATTN)
def test_module_contract(name):
    """Same shape, finite, gradients reach every parameter, NCHW == channels_last, gate exposed."""
    torch.manual_seed(0)
    c = 32
    m = build(name, c)
    with torch.no_grad():  # move off the init (CBAM's zero BN weight would zero some gradients)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(4, c, 7, 9, requires_grad=True)
    inner = [torch.randn(4, c // 2, requires_grad=True) for _ in range(2)]
    y = run(m, x, inner)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f'no gradient reached {pname}'
    if isinstance(m, BlockAttention):
        assert all(t.grad.abs().sum() > 0 for t in inner)

    m.eval()
    with torch.no_grad():
        ref = run(m, x, inner)
        out_cl = run(m, x.detach().to(memory_format=torch.channels_last), inner)
        torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-6)
        if isinstance(m, GateAttention):
            torch.testing.assert_close(x * m.gate(x), ref, rtol=1e-5, atol=1e-6)
            assert ((m.gate(x) > 0) & (m.gate(x) < 1)).all()


@pytest.mark.parametrize('name', ALL_ATTN)
def test_compile_fullgraph_parity(name):
    torch.manual_seed(0)
    m = build(name, 32).eval()
    x = torch.randn(2, 32, 6, 5)
    inner = [torch.randn(2, 16), torch.randn(2, 16)]
    if isinstance(m, BlockAttention):
        fn = lambda: m(inner, x)  # noqa: E731
        compiled = torch.compile(m, backend='eager', fullgraph=True)
        cfn = lambda: compiled(inner, x)  # noqa: E731
    else:
        compiled = torch.compile(m, backend='eager', fullgraph=True)
        fn, cfn = (lambda: m(x)), (lambda: compiled(x))
    with torch.no_grad():
        ref, out = fn(), cfn()
    if isinstance(ref, tuple):
        ref, out = ref[0], out[0]
    torch.testing.assert_close(out, ref)


def test_register_twice_raises():
    with pytest.raises(ValueError, match='already registered'):
        register_attn('se')(nn.Identity)


def test_unknown_attention_suggests():
    with pytest.raises(ValueError, match=r"unknown attention 'sse'.*did you mean se"):
        create_attn('sse', 64)


def test_create_attn_none():
    assert create_attn(None, 64) is None


@pytest.mark.parametrize(('name', 'channels', 'groups'), [('ela_t', 144, 32), ('ela_b', 24, 16), ('ela_s', 20, 8)])
def test_ela_divisibility_error(name, channels, groups):
    pattern = rf'ELA-{name[-1].upper()} needs channels divisible by (its )?{groups}.*{channels}'
    with pytest.raises(ValueError, match=pattern):
        create_attn(name, channels)


@pytest.mark.parametrize('name', ['bav1', 'bav2'])
def test_bridge_batch_one(name):
    m = create_attn(name, 32, inner_channels=(16,))
    x, inner = torch.randn(1, 32, 4, 4), [torch.randn(1, 16)]
    with pytest.raises(ValueError, match='batch size 1'):
        m(inner, x)
    m.eval()
    assert m(inner, x).shape == x.shape
    with pytest.raises(ValueError, match='built for 1 inner features'):
        m([*inner, inner[0]], x)


@pytest.mark.parametrize('name', ['bav1', 'bav2'])
def test_bridge_gate_depends_on_every_feature(name):
    torch.manual_seed(0)
    m = create_attn(name, 32, inner_channels=(16, 24)).eval()
    x = torch.randn(3, 32, 5, 5)
    inner = [torch.randn(3, 16), torch.randn(3, 24)]
    base = m.gate(inner, x)
    for i in range(2):
        changed = list(inner)
        changed[i] = inner[i] + 1.0
        assert not torch.allclose(m.gate(changed, x), base), f'gate ignores bridged feature {i}'
    assert not torch.allclose(m.gate(inner, x + 1.0), base), 'gate ignores the current feature'


def test_bav2_softmax_selection_is_an_option():
    torch.manual_seed(0)
    lin = BridgeAttentionV2(256, inner_channels=(64,))
    soft = BridgeAttentionV2(256, inner_channels=(64,), selection='softmax')
    soft.load_state_dict(lin.state_dict())
    lin.eval(), soft.eval()
    x, inner = torch.randn(2, 256, 3, 3), [torch.randn(2, 64)]
    assert n_params(lin) == n_params(soft)
    assert not torch.allclose(lin.gate(inner, x), soft.gate(inner, x))
    with pytest.raises(ValueError, match='selection'):
        BridgeAttentionV2(32, inner_channels=(16,), selection='attention')


def test_dia_zero_state_and_recurrence():
    torch.manual_seed(0)
    m = create_attn('dia', 16)
    x = torch.randn(2, 16, 4, 4)
    a0, s0 = m.gate(x, None)
    a0_explicit, _ = m.gate(x, (torch.zeros(2, 16), torch.zeros(2, 16)))
    torch.testing.assert_close(a0, a0_explicit)
    a1, _ = m.gate(x, s0)
    assert not torch.allclose(a0, a1), 'the carried state must change the next gate'
    assert ((a0 > 0) & (a0 < 1)).all()
    zero = create_attn('dia', 16, zero_bias=True)
    assert all(float(mod.bias.detach().abs().sum()) == 0 for mod in zero.modules() if isinstance(mod, nn.Linear))


# --- reference parity: the official formulations, written independently here -------------------------------------

def ref_ca(m, x):
    """coordatt.py: AdaptiveAvgPool2d strips, cat, conv1/bn1/h-swish, torch.split, conv_h/conv_w."""
    h, w = x.shape[2:]
    x_h = nn.AdaptiveAvgPool2d((None, 1))(x)
    x_w = nn.AdaptiveAvgPool2d((1, None))(x).permute(0, 1, 3, 2)
    y = m.bn1(m.conv1(torch.cat([x_h, x_w], dim=2)))
    y = y * F.relu6(y + 3) / 6
    y_h, y_w = torch.split(y, [h, w], dim=2)
    return x * torch.sigmoid(m.conv_h(y_h)) * torch.sigmoid(m.conv_w(y_w.permute(0, 1, 3, 2)))


def ref_ela(m, x):
    b, c, h, w = x.shape
    x_h = torch.mean(x, dim=3, keepdim=True).view(b, c, h)
    x_w = torch.mean(x, dim=2, keepdim=True).view(b, c, w)
    a_h = torch.sigmoid(m.norm(m.conv(x_h))).view(b, c, h, 1)
    a_w = torch.sigmoid(m.norm(m.conv(x_w))).view(b, c, 1, w)
    return x * a_h * a_w


def ref_bav1(m, inner, x):
    """BA_module.py: pre_fusions on the inner features summed with cur_fusion on the current one."""
    cur = F.adaptive_avg_pool2d(x, 1).flatten(1)
    z = m.fusions[-1](cur)
    for fusion, s in zip(m.fusions[:-1], inner):
        z = z + fusion(s)
    return x * m.generation(z)[:, :, None, None]


def ref_bav2(m, inner, x):
    feats = [*inner, F.adaptive_avg_pool2d(x, 1).flatten(1)]
    v = [fusion(s) for fusion, s in zip(m.fusions, feats)]
    z = sum(w * vi for w, vi in zip(m.proj.weight[0], v)) + m.proj.bias
    return x * m.generation(z)[:, :, None, None]


def ref_dia(m, x, steps=3):
    """The official cell: LSTM gates from bottleneck maps, h = o * sigmoid(c); zero state at the first block."""
    h = c = torch.zeros(x.shape[0], x.shape[1])
    outs = []
    for _ in range(steps):
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        i, f, g, o = (m.w_ih(s) + m.w_hh(h)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.sigmoid(c)
        x = x * h[:, :, None, None]
        outs.append(x)
    return outs


def ref_cbam(m, x):
    cg = m.channel_gate
    att = cg.mlp(F.avg_pool2d(x, x.shape[2:]).flatten(1)) + cg.mlp(F.max_pool2d(x, x.shape[2:]).flatten(1))
    x = x * torch.sigmoid(att)[:, :, None, None]
    comp = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    return x * torch.sigmoid(m.spatial_gate.bn(m.spatial_gate.conv(comp)))


def ref_se(m, x):
    return x * m.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)).sigmoid()[:, :, None, None]


def ref_eca(m, x):
    y = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1) -> (B, 1, C) as eca_module.py
    y = m.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    return x * y.sigmoid()


@pytest.mark.parametrize('name', ALL_ATTN)
def test_reference_parity(name):
    torch.manual_seed(0)
    m = build(name, 64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    m.train()  # BatchNorm in train mode: the statistics must be computed over the same elements as the reference
    x = torch.randn(4, 64, 6, 7)
    inner = [torch.randn(4, 32), torch.randn(4, 32)]
    with torch.no_grad():
        if name == 'dia':
            state, outs = None, []
            y = x
            for _ in range(3):
                y, state = m(x if not outs else outs[-1], state)
                outs.append(y)
            for got, want in zip(outs, ref_dia(m, x)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            return
        refs = {'ca': ref_ca, 'cbam': ref_cbam, 'se': ref_se, 'eca': ref_eca}
        if name in ('bav1', 'bav2'):
            want = (ref_bav1 if name == 'bav1' else ref_bav2)(m, inner, x)
            got = m(inner, x)
        else:
            want = (refs.get(name) or ref_ela)(m, x)
            got = m(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cbam_init_quirk():
    m = create_attn('cbam', 64)
    assert float(m.spatial_gate.bn.weight.detach()) == 0.0
    assert m.spatial_gate.bn.momentum == 0.01
    assert all(float(lin.bias.detach().abs().sum()) == 0 for lin in m.channel_gate.mlp if isinstance(lin, nn.Linear))
    x = torch.randn(2, 64, 5, 5)
    m.eval().requires_grad_(False)
    spatial = m.spatial_gate(x)
    torch.testing.assert_close(spatial, torch.full_like(spatial, 0.5))  # sigmoid(0) at init
    assert math.isclose(float(m.gate(x).mean() / m.channel_gate(x).mean()), 0.5, rel_tol=1e-5)
