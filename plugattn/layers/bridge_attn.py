"""Bridge attention (BA-Net): channel attention computed from the outputs of every conv in a block.

BAv1 paper: "BA-Net: Bridge Attention for Deep Convolutional Neural Networks", Zhao, Chen, Liu, Shen, Li, ECCV 2022,
arXiv:2112.04150. Official code: https://github.com/zhaoy376/Bridge-Attention (``models/BA_module.py``).

BAv2 paper: "BA-Net: Bridge Attention in Deep Neural Networks", Zhang, Zou, Zhao, et al., arXiv:2410.07860.
Official code: https://github.com/ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks
(``models/ba_resnet_v2_1.py``, the released BAv2, specs §15.2).

Both are *block-level* modules (:class:`~plugattn.layers.base.BlockAttention`): the block pools the outputs of its
inner convs (post-ReLU) and passes them with its last conv output (BN output, before the residual addition); the
gate multiplies only that last output.

Differences from the reference:
    * BAv1 keeps one ``fusions`` list (current feature last) instead of ``pre_fusions`` + ``cur_fusion``, as the BAv2
      repository's re-implementation ``ba_resnet_v1.py``; the maths and parameter count are identical and the
      official-checkpoint loader maps the keys.
    * The reduced width is ``max(1, C // reduction)``; the references use ``C // reduction`` (identical for C >= 16).
    * BatchNorm1d on pooled vectors cannot train at batch 1: both modules raise a clear ``ValueError`` in train mode
      at batch 1 instead of failing inside the norm (specs D10).
    * BAv2's selection operator is pluggable (specs D8): ``selection='linear'`` is the released code (a Linear(n->1)
      with bias over the layer axis); ``selection='softmax'`` is **ours**, not from the paper or code: the same
      parameters, with the layer weights softmax-normalised so they sum to one.
    * ``act_layer`` / ``gate_layer`` choose the hidden activation and the gate (default ReLU and sigmoid, the ResNet
      modules of both repositories). The BAv1 repository's other backbones use others (specs §8): MobileNetV3
      ``gate_layer='hardsigmoid'``, EfficientNet ``act_layer='silu'`` (swish); :func:`plugattn.attach` sets them
      on those families. Activations have no parameters, so counts and keys do not change.
    * ``norm_layer`` (**ours**, not from the papers or code) chooses the norm on the pooled vectors: ``'batchnorm'``
      (default, the papers' BatchNorm1d, which needs two or more samples per device in training), or the
      batch-size-free ``'layernorm'`` (LayerNorm over the hidden width, same parameter count, no running
      statistics) or ``'none'`` (no norm: ``2m`` parameters fewer per norm). For detection at one image per device
      the alternative is :func:`plugattn.freeze_bn`, which keeps the paper's module with frozen statistics.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import PlugattnError
from .base import BlockAttention, as_channel_gate, check_train_batch, pooled
from .registry import register_attn

__all__ = ['BridgeAttentionV1', 'BridgeAttentionV2']

LayerSpec = str | type[nn.Module]
_ACT_LAYERS: dict[str, type[nn.Module]] = {
    'relu': nn.ReLU, 'relu6': nn.ReLU6, 'silu': nn.SiLU, 'swish': nn.SiLU, 'gelu': nn.GELU, 'hardswish': nn.Hardswish,
}
_NORM_LAYERS = ('batchnorm', 'layernorm', 'none')
_GATE_LAYERS: dict[str, type[nn.Module]] = {
    'sigmoid': nn.Sigmoid, 'hardsigmoid': nn.Hardsigmoid, 'h_sigmoid': nn.Hardsigmoid,
}


def _layer(spec: LayerSpec, table: dict[str, type[nn.Module]], what: str) -> nn.Module:
    """An activation module from a name of ``table`` or a module class (ReLU in place, as the references)."""
    if isinstance(spec, str):
        if spec.lower() not in table:
            raise PlugattnError(f'unknown bridge-attention {what} {spec!r}: choose one of {", ".join(table)} or pass '
                                'a module class')
        spec = table[spec.lower()]
    if not (isinstance(spec, type) and issubclass(spec, nn.Module)):
        raise PlugattnError(f'bridge-attention {what} must be a name ({", ".join(table)}) or an nn.Module class, '
                            f'got {spec!r}')
    return spec(inplace=True) if spec in (nn.ReLU, nn.ReLU6) else spec()


def _norm(kind: str, width: int, dd: dict) -> nn.Module:
    """The norm on a pooled ``(B, width)`` vector: the papers' BatchNorm1d, or (ours) LayerNorm or none."""
    if kind == 'batchnorm':
        return nn.BatchNorm1d(width, **dd)
    if kind == 'layernorm':
        return nn.LayerNorm(width, **dd)
    if kind == 'none':
        return nn.Identity()
    raise PlugattnError(f'unknown bridge-attention norm_layer {kind!r}: choose one of {", ".join(_NORM_LAYERS)}')


class _BridgeAttention(BlockAttention):
    """Shared argument handling of the two bridge-attention versions."""

    merge_in_place = True  # the gate only pools its input

    def __init__(self, channels: int, inner_channels: Sequence[int], reduction: int) -> None:
        super().__init__()
        if not inner_channels:
            raise PlugattnError('bridge attention needs the channels of the inner conv outputs (inner_channels)')
        self.channels = channels
        self.inner_channels = tuple(int(c) for c in inner_channels)
        self.hidden = max(1, channels // reduction)

    def bridged(self, inner: list[Tensor], x: Tensor) -> list[Tensor]:
        """Validate the inputs and return every pooled feature, current one last."""
        if not torch.jit.is_scripting():  # the checks name the class, which TorchScript cannot
            if len(inner) != len(self.inner_channels):
                raise PlugattnError(
                    f'{type(self).__name__} was built for {len(self.inner_channels)} inner features '
                    f'{self.inner_channels}, got {len(inner)}'
                )
            check_train_batch(self, x.shape[0])
        return inner + [pooled(x)]  # noqa: RUF005  (TorchScript has no starred list)

    def fused(self, feats: list[Tensor]) -> list[Tensor]:
        """Each bridged feature through its own fusion layer (an indexed loop, which TorchScript compiles)."""
        out: list[Tensor] = []
        for i, fusion in enumerate(self.fusions):
            out.append(fusion(feats[i]))
        return out


@register_attn('bav1', label='BAv1', color='#cc79a7', arxiv='2112.04150',
               paper='BA-Net: Bridge Attention for Deep Convolutional Neural Networks',
               repo='https://github.com/zhaoy376/Bridge-Attention')
class BridgeAttentionV1(_BridgeAttention):
    """BAv1: ``a = sigmoid(W_g relu(sum_i BN_i(W_i s_i)))`` over the pooled bridged features ``s_i``.

    Parameters: ``m * sum(C_i) + 2 * n * m + m * C`` with ``m = C // r`` (bottleneck p=64: 10,336).

    Args:
        channels: channels C of the gated (last) conv output.
        inner_channels: channels of the inner conv outputs, in block order (e.g. ``(p, p)`` for a bottleneck).
        reduction: r of the hidden width ``m = max(1, C // r)``.
        act_layer: hidden activation, a name (``'relu'``, ``'silu'``, ...) or a module class.
        gate_layer: gate activation, ``'sigmoid'`` or ``'hardsigmoid'`` (or a module class).
        norm_layer: ``'batchnorm'`` (the paper's BatchNorm1d), or ours, batch-size-free: ``'layernorm'``, ``'none'``.
    """

    def __init__(
            self,
            channels: int,
            *,
            inner_channels: Sequence[int],
            reduction: int = 16,
            act_layer: LayerSpec = 'relu',
            gate_layer: LayerSpec = 'sigmoid',
            norm_layer: str = 'batchnorm',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(channels, inner_channels, reduction)
        dd = {'device': device, 'dtype': dtype}
        m = self.hidden
        self.fusions = nn.ModuleList(
            nn.Sequential(nn.Linear(c, m, bias=False, **dd), _norm(norm_layer, m, dd))
            for c in (*self.inner_channels, channels)
        )
        self.generation = nn.Sequential(
            _layer(act_layer, _ACT_LAYERS, 'act_layer'), nn.Linear(m, channels, bias=False, **dd),
            _layer(gate_layer, _GATE_LAYERS, 'gate_layer'),
        )

    def gate(self, inner: list[Tensor], x: Tensor) -> Tensor:
        feats = self.bridged(inner, x)
        z = torch.stack(self.fused(feats)).sum(0)
        return as_channel_gate(self.generation(z))


@register_attn('bav2', label='BAv2', color='#6a3d9a', arxiv='2410.07860',
               paper='BA-Net: Bridge Attention in Deep Neural Networks',
               repo='https://github.com/ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks')
class BridgeAttentionV2(_BridgeAttention):
    """BAv2: per-feature bias-free FC, adaptive selection over the layer axis, one BN1d, ReLU, FC, sigmoid.

    ``z = sum_i w_i W_i s_i + b`` (``selection='linear'``, the released code) and
    ``a = sigmoid(W_g relu(BN(z)))``. Parameters: ``m * sum(C_i) + (n + 1) + 2m + m * C`` (bottleneck p=64: 10,276).

    Args:
        channels: channels C of the gated (last) conv output.
        inner_channels: channels of the inner conv outputs, in block order.
        reduction: r of the hidden width ``m = max(1, C // r)``.
        selection: ``'linear'`` (released code) or ``'softmax'`` (ours: softmax-normalised layer weights).
        act_layer: hidden activation, a name (``'relu'``, ``'silu'``, ...) or a module class.
        gate_layer: gate activation, ``'sigmoid'`` or ``'hardsigmoid'`` (or a module class).
        norm_layer: ``'batchnorm'`` (the paper's BatchNorm1d), or ours, batch-size-free: ``'layernorm'``, ``'none'``.
    """

    def __init__(
            self,
            channels: int,
            *,
            inner_channels: Sequence[int],
            reduction: int = 16,
            selection: str = 'linear',
            act_layer: LayerSpec = 'relu',
            gate_layer: LayerSpec = 'sigmoid',
            norm_layer: str = 'batchnorm',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__(channels, inner_channels, reduction)
        if selection not in ('linear', 'softmax'):
            raise PlugattnError(f"BAv2 selection must be 'linear' or 'softmax', got {selection!r}")
        dd = {'device': device, 'dtype': dtype}
        m = self.hidden
        n = len(self.inner_channels) + 1
        self.selection = selection
        # Key names follow ba_resnet_v2_1.py: fusions.{i}.0, proj, generation.{0 (BN1d), 2 (Linear)}.
        self.fusions = nn.ModuleList(
            nn.Sequential(nn.Linear(c, m, bias=False, **dd)) for c in (*self.inner_channels, channels)
        )
        self.proj = nn.Linear(n, 1, **dd)
        self.generation = nn.Sequential(
            _norm(norm_layer, m, dd), _layer(act_layer, _ACT_LAYERS, 'act_layer'),
            nn.Linear(m, channels, bias=False, **dd), _layer(gate_layer, _GATE_LAYERS, 'gate_layer'),
        )

    def gate(self, inner: list[Tensor], x: Tensor) -> Tensor:
        feats = self.bridged(inner, x)
        v = torch.stack(self.fused(feats), dim=-1)  # (B, m, n)
        if self.selection == 'linear':
            z = self.proj(v).squeeze(-1)
        else:
            z = (v * self.proj.weight.softmax(-1)).sum(-1) + self.proj.bias
        return as_channel_gate(self.generation(z))
