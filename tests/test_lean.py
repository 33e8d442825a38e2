"""Lean gating: the fused gate + residual merge gives the numbers of the plain formulation and keeps less for backward.

Every block family and attention level is run twice from the same weights: once as is, once with the blocks and the
attention modules patched back to the straightforward formulation (``x * a_h * a_w``, CBAM's two multiplies with
``amax``, ``relu(branch + shortcut)``, the DIA stage loop); outputs, every parameter gradient, the input gradient
and the BatchNorm running statistics must agree. A second set of tests counts the bytes autograd keeps.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import plugattn
from plugattn.layers import CBAM, BlockAttention, CoordAttention, EfficientLocalAttention, GateAttention, create_attn
from plugattn.layers.fused import (
    batch_norm_for_gating,
    gated_residual,
    mean_hw,
    relu_mean_hw,
    scaled_channel_pool,
    spatial_amax,
    strip_means,
)
from plugattn.models import create_model
from plugattn.models._base import AttnStage, gated_norm
from plugattn.models.mobilenetv2 import InvertedResidual, MobileNetV2
from plugattn.models.preact_resnet import PreActBottleneck, PreActResNet, WideBasic
from plugattn.models.regnet import RegNet, RegNetBottleneck, RegNetCfg
from plugattn.models.resnet import BasicBlock, Bottleneck, ResNet

# --------------------------------------------------------------------------------------------- reference forwards


def _ref_gate_forward(m: GateAttention, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, CBAM):
        mlp = m.channel_gate.mlp
        a_c = (mlp(x.mean((2, 3))) + mlp(x.amax((2, 3)))).sigmoid()[:, :, None, None]
        x1 = x * a_c
        z = torch.cat([x1.amax(1, keepdim=True), x1.mean(1, keepdim=True)], dim=1)
        sg = m.spatial_gate
        return x1 * sg.bn(sg.conv(z)).sigmoid()
    if isinstance(m, (CoordAttention, EfficientLocalAttention)):
        a_h, a_w = m.gate_hw(x)
        return x * a_h * a_w
    return x * m.gate(x)


def _ref_mbv2(block: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    bridge = block.attn_level == 'block'
    inner, h = [], x
    if block.expand:
        h = block.conv[0](h)
        if bridge:
            inner.append(h.mean((2, 3)))
    dw, proj, bn = block.conv[-3], block.conv[-2], block.conv[-1]
    hidden = block.attn_position == 'hidden'
    if hidden and bridge:
        h = dw[2](block.attn(inner, dw[1](dw[0](h))))
    else:
        h = dw(h)
        if hidden and block.attn is not None:
            h = block.attn(h)
        elif bridge:
            inner.append(h.mean((2, 3)))
    h = bn(proj(h))
    if not hidden and block.attn is not None:
        h = block.attn(inner, h) if bridge else block.attn(h)
    return x + h if block.use_res_connect else h


def _ref_branch(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The block's body, then its gated norm as a module call: the branch output before gating, the shortcut and the
    pooled inner features."""
    z, shortcut, inner = block.body(x)
    norm = gated_norm(block)
    return (z if norm is None else norm(z)), shortcut, inner


def _ref_stage(stage: AttnStage, x: torch.Tensor) -> torch.Tensor:
    state = None
    for block in stage:
        branch, shortcut, _ = _ref_branch(block, x)
        a, state = stage.attn.gate(branch, state)
        x = _ref_merge(block, branch * a, shortcut)
    return x


def _ref_merge(block: nn.Module, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    out = branch + shortcut
    return out if isinstance(block, (PreActBottleneck, WideBasic)) else F.relu(out)


def _ref_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # a gate before RegNet-Y's conv3 runs inside the body; the reference copy's gate modules then take the plain
    # path (their patched forward counts as a hook)
    branch, shortcut, inner = _ref_branch(block, x)
    if block.attn_level == 'block':
        branch = block.attn(inner, branch)
    elif block.attn is not None and not isinstance(block, RegNetBottleneck):
        branch = block.attn(branch)
    return _ref_merge(block, branch, shortcut)


def reference_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose blocks and attention modules run the plain formulation."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, GateAttention):
            m.forward = functools.partial(_ref_gate_forward, m)
        elif isinstance(m, (BasicBlock, Bottleneck, RegNetBottleneck, PreActBottleneck, WideBasic)):
            m.forward = functools.partial(_ref_block, m)
        elif isinstance(m, InvertedResidual):
            m.forward = functools.partial(_ref_mbv2, m)
        elif isinstance(m, AttnStage):
            m.forward = functools.partial(_ref_stage, m)
    return ref


def _run(model: nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # WRN dropout draws the same mask in both runs
    out = model(x)
    # a loss that weighs every output differently, so no gradient cancels by symmetry
    w = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, x.grad.clone()


def assert_same_numbers(model: nn.Module, x: torch.Tensor, *, train: bool = True, rtol: float = 1e-6) -> None:
    model = model.double()
    x = x.double()
    ref = reference_copy(model)
    model.train(train)
    ref.train(train)
    out, grads, gx = _run(model, x)
    out_r, grads_r, gx_r = _run(ref, x)
    torch.testing.assert_close(out, out_r, rtol=rtol, atol=1e-9)
    assert grads.keys() == grads_r.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads[name], grads_r[name], rtol=rtol, atol=1e-9, msg=lambda m, n=name: f'{n}: {m}')
    torch.testing.assert_close(gx, gx_r, rtol=rtol, atol=1e-9)
    buffers_r = dict(ref.named_buffers())
    for name, buf in model.named_buffers():  # running statistics updated identically (train mode)
        torch.testing.assert_close(buf, buffers_r[name], rtol=rtol, atol=1e-12, msg=lambda m, n=name: f'{n}: {m}')


ATTNS = ['none', 'se', 'eca', 'cbam', 'ca', 'ela_b', 'bav1', 'bav2', 'dia']


def _attn(a: str) -> str | None:
    return None if a == 'none' else a


# --------------------------------------------------------------------------------------------- families


@pytest.mark.parametrize('attn', ATTNS)
def test_cifar_basic_resnet_same_numbers(attn: str):
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (2, 2), widths=(16, 32), num_classes=5, stem='cifar', attn=_attn(attn))
    assert_same_numbers(model, torch.randn(3, 3, 12, 12))


@pytest.mark.parametrize('attn', ATTNS)
def test_bottleneck_resnet_same_numbers(attn: str):
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (2, 1), widths=(16, 32), num_classes=5, attn=_attn(attn),
                   attn_kwargs={'reduction': 4} if attn == 'dia' else None)
    assert_same_numbers(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize('attn', ['none', 'se', 'cbam', 'ca', 'bav2', 'dia'])
def test_resnext_same_numbers(attn: str):
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (2, 1), widths=(16, 32), num_classes=5, groups=4, width_per_group=8, attn=_attn(attn))
    assert_same_numbers(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize('block', [PreActBottleneck, WideBasic])
@pytest.mark.parametrize('attn', ['none', 'se', 'cbam', 'ca', 'bav1', 'dia'])
def test_preact_and_wide_same_numbers(block: type, attn: str):
    torch.manual_seed(0)
    model = PreActResNet(block, (2, 2), (16, 32), num_classes=5, attn=_attn(attn),
                         drop_rate=0.3 if block is WideBasic else 0.0)
    assert_same_numbers(model, torch.randn(2, 3, 12, 12))


@pytest.mark.parametrize('attn', ['none', 'eca', 'cbam', 'ca', 'bav2'])
def test_mobilenetv2_same_numbers(attn: str):
    torch.manual_seed(0)
    model = create_model('mobilenetv2', attn=_attn(attn), num_classes=5)
    # 64 px: at 32 px the last stages are 1x1 and BatchNorm over two values amplifies rounding chaotically
    assert_same_numbers(model, torch.randn(2, 3, 64, 64))


def test_mobilenetv2_output_position_bridge_same_numbers():
    torch.manual_seed(0)
    model = create_model('mobilenetv2', attn='bav2', attn_position='output', num_classes=5)
    assert_same_numbers(model, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize('attn', ['none', 'ca', 'bav1', 'dia'])
def test_regnety_same_numbers(attn: str):
    torch.manual_seed(0)
    model = create_model('regnety_400mf', attn=_attn(attn), num_classes=5)
    assert_same_numbers(model, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize('attn', ['se', 'cbam', 'ca', 'bav2', 'dia'])
def test_eval_mode_with_gradients_same_numbers(attn: str):
    """Grad-CAM runs backward in eval mode: the lean path then recomputes from the running statistics."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (2, 1), widths=(16, 32), num_classes=5, attn=attn)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # non-trivial running statistics
    assert_same_numbers(model, torch.randn(2, 3, 32, 32), train=False)


def test_transformer_blocks_unchanged_numbers():
    torch.manual_seed(0)
    model = create_model('bav2_deit_tiny', img_size=32, num_classes=5)
    assert_same_numbers(model, torch.randn(2, 3, 32, 32))


def _scripting_case(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == 'mbv2_output_bridge':  # the bridge on the projection BN (an output-position merge)
        return MobileNetV2(width_mult=0.25, attn='bav2', attn_position='output', num_classes=5)
    if name == 'mbv2_hidden_bridge':  # the depthwise BN gated before its ReLU6
        return MobileNetV2(width_mult=0.25, attn='bav1', num_classes=5)
    if name == 'regnet_gate_before_conv3':  # the gate applied inside conv3's conv call (consumer)
        return RegNet(RegNetCfg((1, 2, 1, 1), (16, 32, 48, 64), 8), attn='ca', keep_se=True, num_classes=5)
    if name == 'preact_dia_no_extra_bn':  # a stage unit gating the last conv's output itself
        return PreActResNet(PreActBottleneck, (2, 2), (16, 32), num_classes=5, attn='dia', extra_bn=False)
    if name == 'frozen_norms':  # plugattn.freeze_bn's FrozenBatchNorm2d as the gated norm
        return plugattn.freeze_bn(ResNet(BasicBlock, (1, 1), widths=(16, 32), num_classes=5, attn='se', stem='cifar'))
    return ResNet(Bottleneck, (2, 1), widths=(16, 32), num_classes=5, attn='cbam', stem='cifar')


@pytest.mark.filterwarnings('ignore::FutureWarning')  # torch.jit.script's deprecation notice
@pytest.mark.parametrize('name', ['mbv2_output_bridge', 'mbv2_hidden_bridge', 'regnet_gate_before_conv3',
                                  'preact_dia_no_extra_bn', 'frozen_norms', 'resnet_cbam'])
def test_torchscript_runs_the_gating_place_plain_path(name: str):
    """Scripted models take gated_merge's one TorchScript branch (and the stage runner's module calls), with the
    eager outputs; under a hook-free eager run the same models take the fused path, so the two paths are compared."""
    model = _scripting_case(name).eval()
    for m in model.modules():  # non-trivial running statistics, so the norms are not the identity
        if isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- the building blocks


@pytest.mark.parametrize('layout', ['nchw', 'nhwc', 'nhwc-inplace'])
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('shape', [(3, 8, 1, 1), ((3, 8, 5, 1), (3, 8, 1, 6)), ((3, 8, 1, 1), (3, 1, 5, 6))])
def test_gated_residual_matches_plain_ops(shape, relu: bool, layout: str):
    """Every backward formulation (one factor, CA/ELA strips, CBAM's channel x spatial gate in NHWC) and the
    in-place forward give the plain ops' numbers."""
    torch.manual_seed(0)
    fmt = torch.contiguous_format if layout == 'nchw' else torch.channels_last
    bn = nn.BatchNorm2d(8).double().train()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    ref_bn = copy.deepcopy(bn)
    z = (torch.randn(3, 8, 5, 6, dtype=torch.double) * 3 + 1).contiguous(memory_format=fmt).requires_grad_(True)
    s = torch.randn(3, 8, 5, 6, dtype=torch.double, requires_grad=True)
    shapes = shape if isinstance(shape[0], tuple) else (shape,)
    gates = [torch.rand(sh, dtype=torch.double).contiguous(memory_format=fmt).requires_grad_(True) for sh in shapes]

    y, rec = batch_norm_for_gating(bn, z)
    out = gated_residual(y, gates, s, relu=relu, recompute=rec, inplace=layout == 'nhwc-inplace')
    assert (out.data_ptr() == y.data_ptr()) == (layout == 'nhwc-inplace')
    y_ref = ref_bn(z)
    ref = y_ref
    for a in gates:
        ref = ref * a
    ref = ref + s
    ref = F.relu(ref) if relu else ref
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [z, s, *gates, bn.weight, bn.bias], g)
    want = torch.autograd.grad(ref, [z, s, *gates, ref_bn.weight, ref_bn.bias], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=0, atol=0)
    assert bn.num_batches_tracked == ref_bn.num_batches_tracked == 1


@pytest.mark.parametrize('channels_last', [False, True])
def test_pooling_helpers_match_the_plain_reductions(channels_last: bool):
    """mean_hw is bitwise the mean; the NHWC strip sums, the indexed maxima and their gradients match the plain ops."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 16, 7, 9).contiguous(memory_format=fmt)
    assert torch.equal(mean_hw(x), x.mean((2, 3)))
    x64 = x.double().requires_grad_(True)
    ref = x64.detach().clone().requires_grad_(True)
    w_h, w_w, w_c = torch.randn(2, 16, 7, dtype=torch.double), torch.randn(2, 16, 9, dtype=torch.double), \
        torch.randn(2, 16, dtype=torch.double)
    x_h, x_w = strip_means(x64)
    torch.testing.assert_close(strip_means(x)[0], x.mean(3), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(strip_means(x)[1], x.mean(2), rtol=1e-6, atol=1e-7)
    loss = (x_h * w_h).sum() + (x_w * w_w).sum() + (spatial_amax(x64) * w_c).sum() + (mean_hw(x64) * w_c).sum()
    loss_ref = (ref.mean(3) * w_h).sum() + (ref.mean(2) * w_w).sum() + (ref.amax((2, 3)) * w_c).sum() \
        + (ref.mean((2, 3)) * w_c).sum()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    loss.backward()
    loss_ref.backward()
    torch.testing.assert_close(x64.grad, ref.grad, rtol=1e-12, atol=1e-12)
    assert x64.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('with_recompute', [False, True])
def test_scaled_channel_pool_matches_plain_ops(channels_last: bool, with_recompute: bool):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bn = nn.BatchNorm2d(8).double().train()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    z = (torch.randn(3, 8, 5, 6, dtype=torch.double) * 2 + 1).contiguous(memory_format=fmt).requires_grad_(True)
    a = torch.rand(3, 8, 1, 1, dtype=torch.double, requires_grad=True)
    y, rec = batch_norm_for_gating(bn, z)
    out = scaled_channel_pool(y, a, rec if with_recompute else None)
    x1 = bn(z) * a  # the same batch statistics: the reference norm runs on the same input
    ref = torch.cat([x1.amax(1, keepdim=True), x1.mean(1, keepdim=True)], dim=1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [z, a, bn.weight], g)
    want = torch.autograd.grad(ref, [z, a, bn.weight], g)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('attn', ['se', 'cbam', 'ca', 'ela_b', 'bav2', 'dia'])
def test_inference_in_place_merge_same_numbers(attn: str):
    """Without autograd the gate runs in the BatchNorm output's memory (CBAM reusing x * a_c): the same outputs,
    and the input is not touched."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (1, 1), widths=(16, 32), num_classes=3, stem='cifar', attn=attn).eval().double()
    for m in model.modules():  # non-trivial running statistics, so the norm is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ref = reference_copy(model)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 3, 10, 10, dtype=torch.double).contiguous(memory_format=fmt)
        x0 = x.clone()
        with torch.inference_mode():
            out, out_r = model.to(memory_format=fmt)(x), ref(x)
        torch.testing.assert_close(out, out_r, rtol=1e-10, atol=1e-12)
        assert torch.equal(x, x0)


@pytest.mark.parametrize(('attn', 'position'), [('ca', 'hidden'), ('ela_b', 'hidden'), ('eca', 'output'),
                                             ('cbam', 'output')])
def test_mobilenetv2_inference_in_place_same_numbers(attn: str, position: str):
    """MobileNetV2's gates run in the ReLU6 output's (hidden) or the projection BN output's memory at inference."""
    torch.manual_seed(0)
    model = create_model('mobilenetv2', attn=attn, attn_position=position, num_classes=5).eval().double()
    ref = reference_copy(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.double).contiguous(memory_format=torch.channels_last)
    x0 = x.clone()
    with torch.inference_mode():
        out, out_r = model.to(memory_format=torch.channels_last)(x), ref(x)
    torch.testing.assert_close(out, out_r, rtol=1e-10, atol=1e-12)
    assert torch.equal(x, x0)


class _ConvGate(GateAttention):
    """A gate that convolves its input (its autograd node keeps it): merge_in_place stays False."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).sigmoid()


def test_gate_that_keeps_its_input_is_not_overwritten():
    assert not _ConvGate.merge_in_place and CBAM.merge_in_place
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (1, 1), widths=(16, 32), num_classes=3, stem='cifar', attn=_ConvGate)
    assert_same_numbers(model, torch.randn(2, 3, 8, 8))


def test_batch_norm_for_gating_cumulative_momentum_and_no_tracking():
    for kwargs in ({'momentum': None}, {'track_running_stats': False}, {'affine': False}):
        bn = nn.BatchNorm2d(4, **kwargs).train()
        ref = copy.deepcopy(bn)
        for _ in range(2):
            z = torch.randn(2, 4, 3, 3, requires_grad=True)
            y, _ = batch_norm_for_gating(bn, z)
            torch.testing.assert_close(y, ref(z), rtol=1e-6, atol=1e-6)
        for (n, b), (_, b_ref) in zip(bn.named_buffers(), ref.named_buffers()):
            torch.testing.assert_close(b, b_ref, rtol=1e-6, atol=1e-7, msg=n)


def test_plain_path_without_grad_builds_no_autograd_node():
    m = create_attn('ca', 16).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 16, 5, 7))
    assert out.grad_fn is None


# --------------------------------------------------------------------------------------------- memory


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one training forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def _tiny(attn: str | None, family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == 'bottleneck':
        return ResNet(Bottleneck, (2, 2), widths=(16, 32), num_classes=5, stem='cifar', attn=attn)
    if family == 'basic':
        return ResNet(BasicBlock, (2, 2), widths=(32, 64), num_classes=5, stem='cifar', attn=attn)
    return create_model('mobilenetv2', attn=attn, num_classes=5)


@pytest.mark.parametrize(('family', 'attn', 'limit'), [
    ('bottleneck', 'se', 1.05), ('bottleneck', 'eca', 1.05), ('bottleneck', 'bav1', 1.05),
    ('bottleneck', 'bav2', 1.05), ('bottleneck', 'dia', 1.05), ('bottleneck', 'cbam', 1.10),
    ('bottleneck', 'ca', 1.10), ('bottleneck', 'ela_b', 1.10), ('basic', 'se', 1.05), ('basic', 'cbam', 1.10),
    ('mbv2', 'ca', 1.10),
])
def test_training_keeps_no_extra_full_size_tensor(family: str, attn: str, limit: float):
    # MobileNetV2 at 96 px: at 32 px its last stages are 2x2 and CA's strip maps are as large as the maps themselves
    px = 96 if family == 'mbv2' else 32
    x = torch.randn(2, 3, px, px)
    plain = _saved_bytes(_tiny(None, family), x)
    lean = _saved_bytes(_tiny(attn, family), x)
    # the plain formulation keeps about a quarter (channel gates) to a half (CA, ELA, CBAM) more
    assert lean <= limit * plain, (lean / plain)


def test_reference_formulation_does_keep_more():
    """The measurement above can fail: the plain formulation of the same SE model keeps far more."""
    x = torch.randn(2, 3, 32, 32)
    plain = _saved_bytes(_tiny(None, 'bottleneck'), x)
    ref = _saved_bytes(reference_copy(_tiny('se', 'bottleneck')), x)
    assert ref > 1.15 * plain


def _full_size_allocations_in_backward(attn: str | None) -> int:
    """How many tensors of the block's output size the backward of one channels_last layer1-like block allocates."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    block = Bottleneck(64, 16, attn=attn).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = block(x)
    grad = torch.ones_like(out)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out.backward(grad)
    return sum(1 for e in prof.profiler.kineto_results.events()
               if e.name() == '[memory]' and e.nbytes() == x.numel() * x.element_size())


@pytest.mark.parametrize(('attn', 'extra'), [('se', 1), ('eca', 1), ('bav2', 1), ('ca', 2), ('ela_b', 2), ('cbam', 3)])
def test_backward_allocates_few_full_size_buffers(attn: str, extra: int):
    """Beyond the plain block's: channel gates one (``g * z``, which then takes ``grad_y``; no recomputed ``y``), CA /
    ELA two (``g * y`` and ``g * y * a_h``, the second taking ``grad_y``), CBAM three (``g * y``, the channel pool's
    gradient, the spatial max's scattered gradient). Each new full-size tensor is a pass plus fresh pages."""
    assert _full_size_allocations_in_backward(attn) - _full_size_allocations_in_backward(None) == extra


def _gate_grads(dtype: torch.dtype, lean: bool, offset: float, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a gate and of the BatchNorm input ``z`` (mean ``offset``, std 1) through a gated merge."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(32).train()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    bn = bn.to(dtype)
    z = (torch.randn(4, 32, 8, 8) + offset).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    a = torch.rand(4, 32, 1, 1).to(dtype).requires_grad_()
    shortcut, weight = torch.randn(2, 4, 32, 8, 8).to(dtype)
    y, rec = batch_norm_for_gating(bn, z)
    if op == 'merge':
        out = gated_residual(y, a, shortcut, relu=True, recompute=rec) if lean else torch.relu(y * a + shortcut)
    else:  # CBAM's channel pool of y * a
        out = scaled_channel_pool(y, a, rec) if lean else torch.cat(
            [(y * a).amax(1, keepdim=True), (y * a).mean(1, keepdim=True)], dim=1)
        weight = weight[:, :2]
    grad_a, grad_z = torch.autograd.grad((out * weight).sum(), [a, z])
    return grad_a.double(), grad_z.double()


@pytest.mark.parametrize('op', ['merge', 'channel_pool'])
@pytest.mark.parametrize('offset', [0.0, 5.0, 50.0, 500.0])
def test_float32_gate_gradient_from_sums_is_as_accurate_as_plain_ops(op: str, offset: float):
    """The channel gates' gradient from sums of ``g * z`` and ``g`` instead of ``g * y`` cancels by about
    ``mean / std`` of ``z``; so does the BatchNorm's own ``z - mean`` in float32. Against float64, the lean
    gradients stay within twice the plain formulation's float32 error, also with ``z`` far from zero mean."""
    want_a, want_z = _gate_grads(torch.float64, False, offset, op)
    lean_a, lean_z = _gate_grads(torch.float32, True, offset, op)
    plain_a, plain_z = _gate_grads(torch.float32, False, offset, op)

    def err(got: torch.Tensor, want: torch.Tensor) -> float:
        return ((got - want).norm() / want.norm()).item()

    assert err(lean_a, want_a) <= 2 * err(plain_a, want_a) + 1e-7, (err(lean_a, want_a), err(plain_a, want_a))
    assert err(lean_z, want_z) <= 2 * err(plain_z, want_z) + 1e-7, (err(lean_z, want_z), err(plain_z, want_z))


# --------------------------------------------------------------------------------------------- compile, layouts


@pytest.mark.parametrize('attn', ['se', 'cbam', 'ca', 'bav2', 'dia'])
def test_compile_fullgraph_training_step_same_numbers(attn: str):
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (1, 1), widths=(8, 16), num_classes=3, stem='cifar', attn=attn).train()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    out, grads, _ = _run(compiled, x)
    out_r, grads_r, _ = _run(ref, x)
    torch.testing.assert_close(out, out_r, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_r[name.replace('_orig_mod.', '')], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('attn', ['se', 'eca', 'cbam', 'ca', 'ela_b', 'bav2', 'dia'])
def test_channels_last_training_same_numbers(attn: str):
    """The lean path on channels_last tensors against the plain formulation on contiguous ones (float64: float32
    rounding of a 2-image BatchNorm would hide the comparison)."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (1, 1), widths=(16, 32), num_classes=3, stem='cifar', attn=attn).train().double()
    ref = reference_copy(model)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 10, 10, dtype=torch.double)
    out, grads, gx = _run(ref, x)
    out_c, grads_c, gx_c = _run(cl, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, out_c, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gx, gx_c, rtol=1e-6, atol=1e-9)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_c[name], rtol=1e-6, atol=1e-9)


def test_bridge_attention_still_refuses_batch_one_in_training():
    model = ResNet(BasicBlock, (1, 1), widths=(8, 16), num_classes=3, stem='cifar', attn='bav2').train()
    with pytest.raises(ValueError, match='batch size 1'):
        model(torch.randn(1, 3, 8, 8))


def test_block_level_public_interface_unchanged():
    m = create_attn('bav2', 16, inner_channels=(8,)).train()
    assert isinstance(m, BlockAttention)
    inner, x = [torch.randn(2, 8)], torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(m(inner, x), x * m.gate(inner, x))


@pytest.mark.parametrize('attn', ['se', 'ca', 'dia'])
def test_hooked_attention_is_called_and_numbers_unchanged(attn: str):
    """A forward hook on an attention module (gate recording, #attn-corr) makes the block call it, in training too."""
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (2, 1), widths=(8, 16), num_classes=3, stem='cifar', attn=attn).train().double()
    lean = copy.deepcopy(model)
    calls = []
    for m in model.attention_modules().values():
        m.register_forward_hook(lambda mod, args, out: calls.append(type(mod).__name__))
    x = torch.randn(2, 3, 8, 8, dtype=torch.double)
    out, grads, _ = _run(model, x)
    out_l, grads_l, _ = _run(lean, x)
    assert len(calls) == 3  # one call per block (DIA: per block of its stage)
    torch.testing.assert_close(out, out_l, rtol=1e-6, atol=1e-9)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_l[name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('attn', ['se', 'cbam', 'bav2'])
def test_hooked_gated_norm_is_called_and_numbers_unchanged(attn: str):
    """The norm before the gate keeps its hooks in training (feature recorders, observers): the fused merge then calls
    the module and keeps its output instead of recomputing it."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (1, 1), widths=(8, 16), num_classes=3, stem='cifar', attn=attn).train().double()
    lean = copy.deepcopy(model)
    seen, grads_seen = [], []
    for block in (model.layer1[0], model.layer2[0]):
        block.bn3.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        block.bn3.register_full_backward_hook(lambda mod, gin, gout: grads_seen.append(gout[0].shape))
    x = torch.randn(2, 3, 8, 8, dtype=torch.double)
    out, grads, gx = _run(model, x)
    out_l, grads_l, gx_l = _run(lean, x)
    assert seen == [(2, 32, 8, 8), (2, 64, 4, 4)] and sorted(grads_seen) == sorted(seen)
    torch.testing.assert_close(out, out_l, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gx_l, rtol=1e-10, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_l[name], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------- attached models
# An attached torchvision block computes its attention where the host's BatchNorm runs: it must give the numbers of
# the hook formulation (the attention module called on the norm's output, which runs whenever that module is hooked)
# and keep no more for backward than the host.

ATTACH_ATTNS = ATTNS[1:]


def _tv_host(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, num_classes=5)


def _hooked_copy(model: nn.Module) -> nn.Module:
    """A copy whose attention modules carry a no-op forward hook: attach then calls them on the norm's output."""
    ref = copy.deepcopy(model)
    for m in ref.attention_modules().values():
        m.register_forward_hook(lambda mod, args, out: None)
    return ref


def _attached_step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(0)  # the same dropout mask (MobileNetV2's classifier) in both runs
    out = model(x)
    w = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * w).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad.clone()


@pytest.mark.parametrize(('arch', 'attn'), [
    *[('resnet18', a) for a in ATTACH_ATTNS], *[('resnet50', a) for a in ATTACH_ATTNS],
    *[('mobilenet_v2', a) for a in ('eca', 'cbam', 'ca', 'ela_b', 'bav2')],
])
def test_attached_lean_path_gives_the_hook_formulation_numbers(arch: str, attn: str):
    model = plugattn.attach(_tv_host(arch), attn).double().train()
    ref = _hooked_copy(model)
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    out, grads, gx = _attached_step(model, x)
    out_r, grads_r, gx_r = _attached_step(ref, x)
    torch.testing.assert_close(out, out_r, rtol=1e-7, atol=1e-10)
    assert grads.keys() == grads_r.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_r[name], rtol=1e-6, atol=1e-9, msg=lambda m, n=name: f'{n}: {m}')
    torch.testing.assert_close(gx, gx_r, rtol=1e-6, atol=1e-9)
    buffers_r = dict(ref.named_buffers())
    for name, buf in model.named_buffers():  # running statistics updated identically
        torch.testing.assert_close(buf, buffers_r[name], rtol=1e-7, atol=1e-12, msg=lambda m, n=name: f'{n}: {m}')


@pytest.mark.parametrize('attn', ['se', 'cbam', 'ca', 'bav2', 'dia'])
def test_attached_lean_path_in_eval_and_without_grad(attn: str):
    model = plugattn.attach(_tv_host('resnet18'), attn).eval()
    ref = _hooked_copy(model).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)
    out, _, gx = _attached_step(model, x)  # eval mode with gradients (Grad-CAM)
    out_r, _, gx_r = _attached_step(ref, x)
    torch.testing.assert_close(out, out_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('attn', ATTACH_ATTNS)
def test_attached_resnet50_keeps_what_plugattns_own_keeps(attn: str):
    # at 64 px the attention's own weights (saved by its linear layers) weigh more than at 224 px, so the ratio to
    # the host is not the 224-px cost; the attached model must keep exactly what plugattn's own model keeps
    x = torch.randn(2, 3, 64, 64)
    own = _saved_bytes(create_model(f'{attn}_resnet50', num_classes=5), x)
    attached = _saved_bytes(plugattn.attach(_tv_host('resnet50'), attn), x)
    assert attached <= own, attached / own


@pytest.mark.parametrize('attn', ['ca', 'ela_b', 'eca'])
def test_attached_mobilenetv2_keeps_what_plugattns_own_keeps(attn: str):
    x = torch.randn(2, 3, 96, 96)
    own = _saved_bytes(create_model(f'{attn}_mobilenetv2', num_classes=5), x)
    attached = _saved_bytes(plugattn.attach(_tv_host('mobilenet_v2'), attn), x)
    assert attached <= own, attached / own


def test_attached_hook_formulation_does_keep_more():
    """The measurement above can fail: the hooked (plain) formulation of the same attached model keeps far more."""
    x = torch.randn(2, 3, 64, 64)
    own = _saved_bytes(create_model('bav2_resnet50', num_classes=5), x)
    hooked = _saved_bytes(_hooked_copy(plugattn.attach(_tv_host('resnet50'), 'bav2')), x)
    assert hooked > 1.02 * own, hooked / own  # one full-size map more per block (weights dominate at 64 px)


@pytest.mark.parametrize('relu_in_place', [False, True])
def test_relu_mean_hw_gradient_survives_the_hosts_relu(relu_in_place: bool):
    z = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    y = z * 1.5 - 0.2  # a non-leaf, as a BatchNorm output
    pooled = relu_mean_hw(y)
    out = F.relu(y, inplace=relu_in_place)
    ((pooled * torch.arange(6.0, dtype=torch.float64).view(2, 3)).sum() + (out ** 2).sum()).backward()
    z_ref = z.detach().clone().requires_grad_(True)
    y_ref = z_ref * 1.5 - 0.2
    ((F.relu(y_ref).mean((2, 3)) * torch.arange(6.0, dtype=torch.float64).view(2, 3)).sum()
     + (F.relu(y_ref) ** 2).sum()).backward()
    torch.testing.assert_close(pooled, F.relu(y_ref).mean((2, 3)))
    torch.testing.assert_close(z.grad, z_ref.grad)
