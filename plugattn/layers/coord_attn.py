"""Coordinate Attention (CA).

Paper: "Coordinate Attention for Efficient Mobile Network Design", Hou, Zhou, Feng, CVPR 2021, arXiv:2103.02907.
Official code: https://github.com/houqb/CoordAttention (``coordatt.py``; ``mbv2_ca.py`` is the MobileNetV2 model).

Differences from the reference:
    * Strip pooling is written as means over W and H instead of ``AdaptiveAvgPool2d((None, 1))``, which breaks
      ONNX export at dynamic sizes; the numbers are identical.
    * The two directions are concatenated and sliced back by the input's own H (no ``torch.split`` with a size
      list, which ONNX bakes in as constants); the shared conv + BN still see both directions together, as the
      official code, so BatchNorm statistics in train mode are unchanged.
    * Only ``inp == oup`` is supported (every placement in the papers gates its own input).
    * The ResNet placement (residual-branch output, before the addition) is our choice: the official code has no
      ResNet variant (specs D5). ``mbv2_ca.py`` names the direction convs conv2/conv3; we keep ``coordatt.py``'s
      conv_h/conv_w and the official-checkpoint loader maps them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import StripGateAttention
from .fused import nhwc_gates, strip_means
from .registry import register_attn

__all__ = ['CoordAttention']


@register_attn('ca', label='CA', color='#e69f00', paper='Coordinate Attention for Efficient Mobile Network Design',
               arxiv='2103.02907', repo='https://github.com/houqb/CoordAttention')
class CoordAttention(StripGateAttention):
    """CA gate: ``x * sigmoid(conv_h(f_h)) * sigmoid(conv_w(f_w))`` from a shared 1x1 conv + BN + h-swish.

    Args:
        channels: input (and output) channels C.
        reduction: r of the hidden width ``mip = max(min_hidden, C // r)``.
        min_hidden: the floor of the hidden width (8 in the official code).
    """

    def __init__(
            self,
            channels: int,
            *,
            reduction: int = 32,
            min_hidden: int = 8,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        mip = max(min_hidden, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1, **dd)
        self.bn1 = nn.BatchNorm2d(mip, **dd)
        self.act = nn.Hardswish()  # x * relu6(x + 3) / 6, the official h_swish
        self.conv_h = nn.Conv2d(mip, channels, 1, **dd)
        self.conv_w = nn.Conv2d(mip, channels, 1, **dd)

    def gate_hw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two directional gates, ``(B, C, H, 1)`` and ``(B, C, 1, W)``."""
        h = x.shape[2]
        x_h, x_w = strip_means(x)                          # (B, C, H), (B, C, W)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2).unsqueeze(3))))
        a_h = self.conv_h(y[:, :, :h]).sigmoid()
        a_w = self.conv_w(y[:, :, h:].transpose(2, 3)).sigmoid()
        return nhwc_gates(x, a_h, a_w)
