"""Convolutional Block Attention Module (CBAM): a channel gate followed by a spatial gate.

Paper: "CBAM: Convolutional Block Attention Module", Woo, Park, Lee, Kweon, ECCV 2018, arXiv:1807.06521.
Official code: https://github.com/Jongchan/attention-module (``MODELS/cbam.py``).

Differences from the reference: none in structure or initialisation. As the official code: the channel MLP has
biases and is shared by the average- and max-pooled vectors (summed before the sigmoid); the spatial gate pools
[max, mean] over channels in that order, runs a bias-free 7x7 conv and a BatchNorm2d(1) (momentum 0.01) whose
weight starts at 0, so the spatial gate starts at sigmoid(0) = 0.5 (specs D4). Module names differ
(``channel_gate.mlp``, ``spatial_gate.conv`` / ``.bn``); the official-checkpoint loader maps them.

In training (whenever a gradient is needed) the two max-pools keep their argmax indices instead of their inputs,
and ``(x * a_c) * a_s`` runs as one node that keeps only ``x`` (in a residual block: the BatchNorm input), so CBAM
adds no full-size tensor to training memory. Outputs are unchanged; the gradients too, except on exact ties of a
maximum, where ``amax`` splits the gradient evenly and the indices give it to one element.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import GateAttention, as_channel_gate, pooled
from .fused import BNRecompute, gated_residual, scaled_channel_pool, spatial_amax, use_fused_path
from .registry import register_attn

__all__ = ['CBAM', 'ChannelGate', 'SpatialGate']


class ChannelGate(nn.Module):
    """Shared MLP on GAP and GMP, summed, then sigmoid -> ``(B, C, 1, 1)``."""

    def __init__(self, channels: int, reduction: int = 16, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, **dd), nn.ReLU(inplace=True), nn.Linear(hidden, channels, **dd),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(pooled(x))
        mx = self.mlp(spatial_amax(x))  # amax; in training its backward keeps indices, not x
        return as_channel_gate((avg + mx).sigmoid())


class SpatialGate(nn.Module):
    """[max, mean] over channels -> 7x7 conv -> BN -> sigmoid -> ``(B, 1, H, W)``."""

    def __init__(self, kernel_size: int = 7, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, **dd)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return self.gate_from_pooled(z)

    def gate_from_pooled(self, z: Tensor) -> Tensor:
        """The gate from the ``(B, 2, H, W)`` [max, mean] descriptor."""
        return self.bn(self.conv(z)).sigmoid()


@register_attn('cbam', label='CBAM', color='#009e73', paper='CBAM: Convolutional Block Attention Module',
               arxiv='1807.06521', repo='https://github.com/Jongchan/attention-module')
class CBAM(GateAttention):
    """CBAM gate: ``x1 = x * a_c(x)``, ``y = x1 * a_s(x1)``.

    Args:
        channels: input (and output) channels C.
        reduction: reduction ratio of the channel MLP (hidden width ``max(1, C // r)``).
        kernel_size: kernel of the spatial gate's conv.
    """

    merge_in_place = True  # the gate only pools its input

    def __init__(
            self,
            channels: int,
            *,
            reduction: int = 16,
            kernel_size: int = 7,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.channel_gate = ChannelGate(channels, reduction, device=device, dtype=dtype)
        self.spatial_gate = SpatialGate(kernel_size, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: MLP biases 0, Kaiming fan-out spatial conv, spatial BN weight 0 (gate starts at 0.5)."""
        for m in self.channel_gate.mlp:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.spatial_gate.conv.weight, mode='fan_out', nonlinearity='relu')
        nn.init.zeros_(self.spatial_gate.bn.weight)
        nn.init.zeros_(self.spatial_gate.bn.bias)

    def gate(self, x: Tensor) -> Tensor:
        a_c = self.channel_gate(x)
        return a_c * self.spatial_gate(x * a_c)

    def gate_factors(self, x: Tensor, recompute: BNRecompute | None = None) -> tuple[Tensor, ...]:
        """``(a_c, a_s)`` with ``a_s`` computed from ``x * a_c`` without keeping that product for backward."""
        a_c = self.channel_gate(x)
        return a_c, self.spatial_gate.gate_from_pooled(scaled_channel_pool(x, a_c, recompute))

    def forward_inplace(self, x: Tensor) -> Tensor:
        """Inference in ``x``'s memory: ``x * a_c`` is computed once, pooled for the spatial gate and gated again."""
        x = x.mul_(self.channel_gate(x))
        return x.mul_(self.spatial_gate(x))

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript cannot compile the lean node
            return self._forward_by_calls(x)
        return self._forward_lean(x)

    def _forward_by_calls(self, x: Tensor) -> Tensor:
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)

    @torch.jit.unused
    def _forward_lean(self, x: Tensor) -> Tensor:
        if not use_fused_path(self.channel_gate, self.spatial_gate):  # the submodule calls, e.g. for their hooks
            return self._forward_by_calls(x)
        # (x * a_c) * a_s in one lean node: neither x * a_c nor the pooled maps' inputs are kept for backward
        return gated_residual(x, self.gate_factors(x))
