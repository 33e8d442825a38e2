"""Dense-and-Implicit Attention (DIA): one LSTM-like attention unit shared by all blocks of a stage.

Paper: "DIANet: Dense-and-Implicit Attention Network", Huang, Liang, Xie, Wang, Wang, AAAI 2020, arXiv:1905.10671;
generic version "Layer-wise shared attention network on dynamical system perspective", arXiv:2210.16101.
Official code: https://github.com/gbup-group/DIANet (``models/cifar/dia_resnet.py`` and siblings; CIFAR only).

The unit is a *stage-level* module (:class:`~plugattn.layers.base.StageAttention`). For each block t of a stage:
``s_t = GAP(branch_t)``, ``gates = G_ih(s_t) + G_hh(h_{t-1})`` with bottleneck maps
``G = FC(C -> C/r) -> ReLU -> FC(C/r -> 4C)``, split ``[i, f, g, o]``; ``c_t = f * c_{t-1} + i * g`` and
``h_t = o * sigmoid(c_t)``, which is the attention vector gating the branch output before the residual addition.
The state starts at zero at the first block of every stage.

Differences from the reference:
    * The gate-map reduction is a parameter: 4 (official, hard-coded) for the CIFAR networks, 16 by default for
      ImageNet-width stages (ours, specs D9: r=4 would add ~14 M parameters to ResNet-50).
    * Widths come from the channels argument instead of being hard-coded per stage index (64/128/256), so the
      BasicBlock networks work (the official BasicBlock path raises a shape error).
    * The state is created with the input's device and dtype (the official code hard-codes ``.cuda()``).
    * The inert Dropout(0.1) of the official single-layer cell is omitted (it only feeds a next LSTM layer).
    * Parameter names are flat (``w_ih.{0,2}``, ``w_hh.{0,2}``) instead of ``lstm.w_ih.0.seq.{0,2}``; the
      official-checkpoint loader maps them. ``zero_bias=True`` reproduces the WRN/ResNeXt init (all biases 0).
"""
from __future__ import annotations

from torch import Tensor, nn

from .base import AttnState, StageAttention, as_channel_gate, pooled, zeros_state
from .registry import register_attn

__all__ = ['DIAUnit']


def _gate_map(channels: int, reduction: int, dd: dict) -> nn.Sequential:
    hidden = max(1, channels // reduction)
    return nn.Sequential(
        nn.Linear(channels, hidden, **dd), nn.ReLU(inplace=True), nn.Linear(hidden, 4 * channels, **dd),
    )


@register_attn('dia', label='DIA', color='#000000', paper='DIANet: Dense-and-Implicit Attention Network',
               arxiv='1905.10671', repo='https://github.com/gbup-group/DIANet')
class DIAUnit(StageAttention):
    """DIA-LSTM cell with bottleneck gate maps; ``2 (C^2/r + C/r) + 2 (4C^2/r + 4C)`` parameters (C=256, r=4: 166,016).

    Args:
        channels: channels C of the stage's residual-branch outputs.
        reduction: reduction r of the bottleneck gate maps (official 4).
        zero_bias: set every bias to zero at init (official WRN / ResNeXt variants).
    """

    merge_in_place = True  # the gate only pools its input

    def __init__(
            self,
            channels: int,
            *,
            reduction: int = 4,
            zero_bias: bool = False,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        self.reduction = reduction
        self.w_ih = _gate_map(channels, reduction, dd)
        self.w_hh = _gate_map(channels, reduction, dd)
        self.zero_bias = zero_bias
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch default Linear init, then zero biases when ``zero_bias``."""
        for m in (*self.w_ih, *self.w_hh):
            if isinstance(m, nn.Linear):
                m.reset_parameters()
                if self.zero_bias:
                    nn.init.zeros_(m.bias)

    def gate(self, x: Tensor, state: AttnState | None) -> tuple[Tensor, AttnState]:
        h, c = zeros_state(x, self.channels) if state is None else state
        gates = self.w_ih(pooled(x)) + self.w_hh(h)
        i, f, g, o = gates.chunk(4, dim=1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.sigmoid()
        return as_channel_gate(h), (h, c)
