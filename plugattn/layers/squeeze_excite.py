"""Squeeze-and-Excitation (SE), the channel-attention baseline of the BA and DIA papers.

Paper: "Squeeze-and-Excitation Networks", Hu, Shen, Albanie, Sun, Wu, CVPR 2018, arXiv:1709.01507.
Official code: https://github.com/hujie-frank/SENet (Caffe). The PyTorch port used as the SE baseline by the
bridge-attention papers (moskomule/senet.pytorch, ``models/se_module.py`` of zhaoy376/Bridge-Attention) is the
structure reproduced here.

Differences from the reference:
    * The FCs are bias-free by default, as the SE baseline of the BA papers (specs D2); ``bias=True`` gives the
      official Caffe SE (1x1 convs with bias, +C/r + C parameters per module).
    * The reduced width is ``channels // reduction`` with a floor of 1, so the module also builds on narrow CIFAR
      stages (16 channels, r=16 -> 1 hidden unit), as the BA repository's CIFAR SE-ResNets do.
"""
from __future__ import annotations

from torch import Tensor, nn

from .base import GateAttention, as_channel_gate, pooled
from .registry import register_attn

__all__ = ['SqueezeExcite']


@register_attn('se', label='SE', color='#0072b2', paper='Squeeze-and-Excitation Networks', arxiv='1709.01507',
               repo='https://github.com/hujie-frank/SENet')
class SqueezeExcite(GateAttention):
    """SE gate: ``x * sigmoid(fc2(relu(fc1(GAP(x)))))``.

    Args:
        channels: input (and output) channels C.
        reduction: reduction ratio r; the hidden width is ``max(1, C // r)``.
        bias: give both FCs a bias (official Caffe SE) instead of the bias-free PyTorch baseline.
        act_layer: activation between the FCs.
    """

    merge_in_place = True  # the gate only pools its input

    def __init__(
            self,
            channels: int,
            *,
            reduction: int = 16,
            bias: bool = False,
            act_layer: type[nn.Module] = nn.ReLU,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        hidden = max(1, channels // reduction)
        # Key names fc.0 / fc.2 follow the PyTorch SE baseline (layerS.B.se.fc.{0,2}.weight).
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=bias, **dd),
            act_layer(inplace=True) if act_layer is nn.ReLU else act_layer(),
            nn.Linear(hidden, channels, bias=bias, **dd),
        )

    def gate(self, x: Tensor) -> Tensor:
        return as_channel_gate(self.fc(pooled(x)).sigmoid())
