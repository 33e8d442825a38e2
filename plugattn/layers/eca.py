"""Efficient Channel Attention (ECA).

Paper: "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks", Wang, Wu, Zhu, Li, Zuo, Hu,
CVPR 2020, arXiv:1910.03151. Official code: https://github.com/BangguWu/ECANet (``models/eca_module.py``).

Differences from the reference:
    * The kernel size defaults to the paper's adaptive rule k = psi(C) (gamma=2, b=1, nearest odd), which the
      official ResNet code does not compute: it takes a per-stage list (default [3, 3, 3, 3]) and the released
      checkpoints use k3577 (R18), k3357 (R34/101/152) and k3557 (R50). Pass ``kernel_size`` explicitly (per stage
      through a model's ``attn_kwargs``) to reproduce a checkpoint (specs D3).
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from ..errors import PlugattnError
from .base import GateAttention, as_channel_gate, pooled
from .registry import register_attn

__all__ = ['EfficientChannelAttention', 'eca_kernel_size']


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """The paper's adaptive kernel size: ``t = int(|(log2(C) + b) / gamma|)``, made odd by rounding up."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


@register_attn('eca', label='ECA', color='#56b4e9', arxiv='1910.03151', repo='https://github.com/BangguWu/ECANet',
               paper='ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks')
class EfficientChannelAttention(GateAttention):
    """ECA gate: a bias-free 1-D conv across the channels of ``GAP(x)``, then sigmoid.

    Args:
        channels: input (and output) channels C.
        kernel_size: odd 1-D kernel size; ``None`` uses the adaptive rule :func:`eca_kernel_size`.
        gamma: gamma of the adaptive rule.
        beta: b of the adaptive rule.
    """

    merge_in_place = True  # the gate only pools its input

    def __init__(
            self,
            channels: int,
            *,
            kernel_size: int | None = None,
            gamma: int = 2,
            beta: int = 1,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise PlugattnError(f'ECA kernel_size must be a positive odd number, got {kernel_size}')
        self.channels = channels
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False, device=device, dtype=dtype)

    def gate(self, x: Tensor) -> Tensor:
        s = pooled(x).unsqueeze(1)  # (B, 1, C): the channels are the 1-D signal
        return as_channel_gate(self.conv(s).squeeze(1).sigmoid())
