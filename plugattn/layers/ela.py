"""Efficient Local Attention (ELA), variants T, B, S and L.

Paper: "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", Xu, Wan, arXiv:2403.01123.
Official code: none (no official repository exists). The structure follows the paper's description and the
widely circulated implementation (``ELA(in_channels, phi)``, attributes ``con1``/``GN``).

Differences from the reference:
    * One shared 1-D conv and one shared GroupNorm serve both directions, as the circulated code (the paper's text
      draws separate F_h / F_w). timm's ``EfficientLocalAttn`` instead uses separate convs and norms, GroupNorm
      with one group and an extra SiLU; we do not.
    * A GroupNorm group count that does not divide the channels, or ELA-S/L on channels not divisible by 8, raises
      ``ValueError`` naming the channels and the variant (the circulated code crashes in GroupNorm or silently
      works only for some widths; specs D6).
    * Placement (residual-branch output in ResNet, after the depthwise conv in MobileNetV2) is our assumption,
      as for CA: the paper's figure could not be verified.
    * Parameter names are ours (``conv``, ``norm``).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import PlugattnError
from .base import StripGateAttention
from .fused import nhwc_gates, strip_means
from .registry import register_attn

__all__ = ['ELA_VARIANTS', 'EfficientLocalAttention']

# variant: (kernel size, channels per conv group (1 = depthwise), GroupNorm groups)
ELA_VARIANTS: dict[str, tuple[int, int, int]] = {
    't': (5, 1, 32),
    'b': (7, 1, 16),
    's': (5, 8, 16),
    'l': (7, 8, 16),
}


class EfficientLocalAttention(StripGateAttention):
    """ELA gate: strip-pool each direction, shared grouped Conv1d + GroupNorm + sigmoid, ``x * a_h * a_w``.

    The registered names ``ela_t``, ``ela_b``, ``ela_s`` and ``ela_l`` preset the paper's variants:

    ======= ====== ======================= ========= ================
    variant kernel conv groups             GN groups params/module
    ======= ====== ======================= ========= ================
    T       5      C (depthwise)           32        7C
    B       7      C (depthwise)           16        9C
    S       5      C / 8 (8 ch per group)  16        42C
    L       7      C / 8                   16        58C
    ======= ====== ======================= ========= ================

    Args:
        channels: input (and output) channels C.
        kernel_size: 1-D kernel size (odd).
        group_channels: input channels per conv group (1 = depthwise).
        num_groups: GroupNorm groups.
        variant: label used in error messages.
    """

    def __init__(
            self,
            channels: int,
            *,
            kernel_size: int = 7,
            group_channels: int = 1,
            num_groups: int = 16,
            variant: str = 'b',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        name = f'ELA-{variant.upper()}'
        if channels % group_channels:
            raise PlugattnError(
                f'{name} needs channels divisible by {group_channels} (conv groups of {group_channels} channels), '
                f'got {channels}: choose another ELA variant or width'
            )
        if channels % num_groups:
            raise PlugattnError(
                f'{name} needs channels divisible by its {num_groups} GroupNorm groups, got {channels} '
                f'({channels} % {num_groups} = {channels % num_groups}): choose another ELA variant (e.g. ela_b '
                'with 16 groups) or a width that is a multiple of the group count'
            )
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        self.variant = variant
        self.conv = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels // group_channels, bias=False,
            **dd,
        )
        self.norm = nn.GroupNorm(num_groups, channels, **dd)

    def gate_hw(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two directional gates, ``(B, C, H, 1)`` and ``(B, C, 1, W)``."""
        x_h, x_w = strip_means(x)
        # laid out before the sigmoid, which keeps its output for backward anyway: no second copy is kept
        n_h, n_w = nhwc_gates(x, self.norm(self.conv(x_h)).unsqueeze(3), self.norm(self.conv(x_w)).unsqueeze(2))
        return n_h.sigmoid(), n_w.sigmoid()


# One hue for the ELA family, light (T) to dark (L), in figures.
_ELA_COLORS = {'t': '#fdd49e', 'b': '#fc8d59', 's': '#d7301f', 'l': '#7f0000'}

for _variant, (_k, _gc, _ng) in ELA_VARIANTS.items():
    # ela_b presets the constructor's own defaults; the other variants are partials of the class
    _presets = {} if _variant == 'b' else dict(kernel_size=_k, group_channels=_gc, num_groups=_ng, variant=_variant)
    register_attn(f'ela_{_variant}', label=f'ELA-{_variant.upper()}', color=_ELA_COLORS[_variant],
                  paper='ELA: Efficient Local Attention for Deep Convolutional Neural Networks', arxiv='2403.01123',
                  defaults=_presets)(EfficientLocalAttention)
