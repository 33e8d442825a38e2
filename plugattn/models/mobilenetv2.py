"""MobileNetV2 with a plug-in attention slot inside every inverted residual.

Paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler, Howard, Zhu, Zhmoginov, Chen, CVPR 2018,
arXiv:1801.04381. Reference code: torchvision ``models/mobilenetv2.py`` (backbone and key names); the attention
placements follow the official attention repositories: houqb/CoordAttention ``mbv2_ca.py`` (CA, CVPR 2021,
arXiv:2103.02907) and BangguWu/ECANet ``models/eca_mobilenetv2.py`` (ECA, CVPR 2020, arXiv:1910.03151).

Attention placement (``attn_position``):
    * ``'hidden'``, the CA position (official ``mbv2_ca.py``): inside every inverted residual with an expansion
      (t != 1), after the depthwise conv + BN + ReLU6 and before the pw-linear conv, on the hidden width. The first
      block (t = 1) has no attention. Default for every gate-level module except ECA (SE, CBAM, CA, ELA).
      Bridge attention (BAv1/BAv2) at this position follows BAv1's MobileNetV3 design (``BA_mobilenetv3.py``): it
      bridges the post-activation expansion output and gates the depthwise BN output *before* its ReLU6, with the
      hidden width reduced by 6 (``reduction=6``).
    * ``'output'``, the ECA position (official ``eca_mobilenetv2.py``): at the end of every inverted residual
      (including the first), after the pw-linear conv + BN and before the residual addition. Default for ECA, whose
      kernel size then follows the official rule k = 1 if the block's output channels < 96, else 3 (31 parameters
      in all). Bridge attention here bridges the post-activation expansion and depthwise outputs and gates the
      pw-linear BN output, as in a ResNet bottleneck.

Differences from the reference:
    * State_dict keys equal torchvision's (``features.{i}.conv...``, ``classifier.1``); attention parameters live
      under ``features.{i}.attn``, outside the ``conv`` Sequential, so torchvision weights load with
      ``strict=False`` and only attention keys missing. The official CA and ECA checkpoints use other layouts
      (CA: flat ``conv.{0..8}`` with ``conv.6`` the attention and a top-level last ``conv``; ECA: ``conv.{3|4}``);
      :func:`plugattn.load_official` maps them.
    * Classifier dropout is torchvision's 0.2 (``drop_rate``); the official MBv2+CA uses 0.1 and ECA-MBv2 0.25.
    * SE and CBAM at the CA position with plugattn's defaults (SE bias-free r=16, CBAM r=16) are our choice: the CA
      README compares against "MBv2 + SE / + CBAM" (3.89 M parameters) without releasing their configuration.
    * Bridge attention on MobileNetV2 is ours (no official code): BAv1's MobileNetV3 design transferred, with the
      sigmoid gate of plugattn's BA modules instead of MobileNetV3's h-sigmoid. BAv2 uses the same bridging.
    * DIA is not supported: MobileNetV2 has no stages of equal-width residual blocks to share a unit over (the
      first block of every group changes the width and has no residual), and no reference exists.
    * ELA-T cannot be built: its 32 GroupNorm groups do not divide the hidden width 144 (specs §7), so
      ``ela_t_mobilenetv2`` is not registered and building it raises the module's ``ValueError``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from ..errors import PlugattnError
from ..layers import EfficientChannelAttention, attn_level, get_attn
from ..layers.base import pooled
from ..layers.gating import gated_merge
from ..layers.registry import AttnSpec
from ._base import (
    AttnNet,
    FeatureInfo,
    block_attn,
    checkpoint_seq,
    feature_take_indices,
    init_attn_modules,
    stage_attn_kwargs,
)
from ._registry import register_model, register_model_family

__all__ = ['InvertedResidual', 'MobileNetV2']

# t (expansion), c (output channels), n (blocks), s (stride of the first block): the paper's Table 2.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
ATTN_POSITIONS = ('hidden', 'output')


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor``, never more than 10 % below ``v`` (torchvision / TF rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


ConvBNReLU = functools.partial(Conv2dNormActivation, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
"""Conv (no bias) -> BN -> ReLU6: torchvision's ``Conv2dNormActivation`` (keys ``0`` conv, ``1`` BN), as in its MBv2."""


def _is_eca(attn: AttnSpec) -> bool:
    factory = get_attn(attn)
    return (factory.func if isinstance(factory, functools.partial) else factory) is EfficientChannelAttention


class InvertedResidual(nn.Module):
    """[1x1 expansion] -> 3x3 depthwise -> 1x1 linear projection, residual when the shape is kept.

    ``conv`` holds torchvision's layers (``conv.0`` expansion, ``conv.1`` depthwise, ``conv.2`` projection conv,
    ``conv.3`` its BN; without expansion ``conv.0`` depthwise, ``conv.1``/``conv.2`` projection); the attention is
    ``attn`` (see the module docstring for the two positions).

    Args:
        inp: input channels.
        oup: output channels.
        stride: stride of the depthwise conv.
        expand_ratio: expansion t (hidden width ``round(inp * t)``).
        attn: attention spec (gate or block level).
        attn_kwargs: options of the attention module.
        attn_position: ``'hidden'`` (CA position) or ``'output'`` (ECA position).
        dilation: dilation of the depthwise conv (output stride below 32).
    """

    __constants__ = ['bridge', 'at_hidden']

    def __init__(
            self,
            inp: int,
            oup: int,
            stride: int,
            expand_ratio: int,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            attn_position: str = 'hidden',
            dilation: int = 1,
    ) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        self.expand = expand_ratio != 1
        layers: list[nn.Module] = [ConvBNReLU(inp, hidden, 1)] if self.expand else []
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.attn_position = attn_position
        self.at_hidden = attn_position == 'hidden'  # a constant for TorchScript, as `bridge`
        if attn_position == 'hidden':
            # The CA position exists only in blocks with an expansion (official mbv2_ca.py).
            inner = (hidden,) if self.expand else ()
            self.attn, self.attn_level = block_attn(attn if self.expand else None, hidden, inner, attn_kwargs)
            self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken
        else:
            inner = (hidden, hidden) if self.expand else (hidden,)
            self.attn, self.attn_level = block_attn(attn, oup, inner, attn_kwargs)
            self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken

    def forward(self, x: Tensor) -> Tensor:
        # conv[-3] depthwise ConvBNReLU, conv[-2] projection, conv[-1] its BN (indexed in place: TorchScript); the
        # nested tests on the constants `bridge` / `at_hidden` let TorchScript compile only the calls taken
        shortcut = x if self.use_res_connect else None
        inner: list[Tensor] = []
        h = x
        if self.expand:
            h = self.conv[0](h)
            if self.bridge:
                inner.append(pooled(h))
        if self.at_hidden:
            if self.bridge:  # BAv1's MobileNetV3 design: the depthwise BN output is gated before its ReLU6
                h = self.conv[-3][2](gated_merge(self.conv[-3][1], self.conv[-3][0](h), bridge=self.attn, inner=inner))
                z = self.conv[-2](h)
            else:  # the gate is applied inside the projection conv's call
                z = gated_merge(self.conv[-3], h, attn=self.attn, consumer=self.conv[-2])
            return gated_merge(self.conv[-1], z, shortcut)
        h = self.conv[-3](h)
        if self.bridge:
            inner.append(pooled(h))
        return gated_merge(self.conv[-1], self.conv[-2](h), shortcut, attn=None if self.bridge else self.attn,
                           bridge=self.attn if self.bridge else None, inner=inner)


class MobileNetV2(AttnNet):
    """MobileNetV2 (torchvision layout) with an attention slot in every inverted residual.

    Feature levels (``feature_info``): ``features.1`` (16 ch, stride 2), ``features.3`` (24, 4), ``features.6`` (32,
    8), ``features.13`` (96, 16), ``features.17`` (320, 32); ``forward_features`` ends with the 1x1 conv to 1280
    channels (``features.18``) as torchvision's ``features``. The stages are views of ``features`` slices, not
    attributes, so the state_dict keeps torchvision's flat keys.

    Args:
        num_classes: classifier outputs (0: no classifier).
        in_chans: input image channels.
        width_mult: channel multiplier (channels rounded to multiples of 8).
        attn: attention key, class or partial; ``None`` for the plain network.
        attn_kwargs: attention options, one dict for all blocks or one per row of the inverted-residual table (7).
        attn_position: ``'hidden'`` (CA position) or ``'output'`` (ECA position); default ``'output'`` for ECA and
            ``'hidden'`` for everything else.
        drop_rate: dropout before the classifier (torchvision 0.2; official CA 0.1, ECA 0.25).
        global_pool: ``'avg'`` or ``''`` (no pooling, with ``num_classes=0``: ``forward`` returns the maps).
        output_stride: 8, 16 or 32 (None: 32): the rows that would stride below it keep stride 1 and dilate their
            depthwise convs instead (timm's convention; same parameters and keys, ``feature_info`` follows).
    """

    first_conv_key = 'features.0.0'
    classifier_key = 'classifier.1'
    __jit_ignored_attributes__ = ['_stages']

    stage_names = ('stage1', 'stage2', 'stage3', 'stage4')
    # features indices: 0 stem conv, 1..17 inverted residuals, 18 last conv; (start, end) of each stage.
    _stage_slices = ((2, 4), (4, 7), (7, 14), (14, 18))

    def __init__(
            self,
            num_classes: int = 1000,
            in_chans: int = 3,
            *,
            width_mult: float = 1.0,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
            attn_position: str | None = None,
            drop_rate: float = 0.2,
            global_pool: str = 'avg',
            output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0 or in_chans < 1:
            raise PlugattnError(f'num_classes must be >= 0 and in_chans >= 1, got {num_classes} and {in_chans}')
        if output_stride not in (None, 8, 16, 32):
            raise PlugattnError(f'output_stride must be 8, 16, 32 or None, got {output_stride!r}')
        if attn_level(attn) == 'stage':
            raise PlugattnError(
                'DIA (stage-level attention) is not supported on MobileNetV2: it has no stages of equal-width '
                'residual blocks to share a unit over; use a ResNet or RegNet-Y backbone'
            )
        if attn_position is None:
            attn_position = 'output' if attn is not None and _is_eca(attn) else 'hidden'
        if attn_position not in ATTN_POSITIONS:
            raise PlugattnError(f"attn_position must be 'hidden' or 'output', got {attn_position!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.attn_position = attn_position
        stem_width = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))

        features: list[nn.Module] = [ConvBNReLU(in_chans, stem_width, stride=2)]
        cin = stem_width
        official_eca = attn_position == 'output' and attn is not None and _is_eca(attn)
        per_row = stage_attn_kwargs(attn_kwargs, len(INVERTED_RESIDUAL_SETTING))
        reduction, dilation, reductions = 2, 1, [2]  # reductions: after the stem, then after every block
        for (t, c, n, s), kwargs in zip(INVERTED_RESIDUAL_SETTING, per_row):
            cout = make_divisible(c * width_mult)
            if official_eca:
                kwargs.setdefault('kernel_size', 1 if c < 96 else 3)  # eca_mobilenetv2.py's rule
            first_dilation = dilation
            if reduction >= (output_stride or 32):  # dilate instead of striding past the output stride
                dilation *= s
                s = 1
            reduction *= s
            for i in range(n):
                features.append(InvertedResidual(
                    cin, cout, s if i == 0 else 1, t, attn=attn, attn_kwargs=kwargs, attn_position=attn_position,
                    dilation=first_dilation if i == 0 else dilation,
                ))
                reductions.append(reduction)
                cin = cout
        features.append(ConvBNReLU(cin, self.num_features, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity(),
        )
        self.set_global_pool(global_pool)
        # Views over `features` (a tuple is not registered, so the state_dict keeps torchvision's keys).
        self._stages = tuple(self.features[a:b] for a, b in self._stage_slices)
        ends = [1] + [b - 1 for _, b in self._stage_slices]
        self.feature_info = FeatureInfo(
            dict(num_chs=self.features[i].conv[-1].num_features, reduction=reductions[i], module=f'features.{i}')
            for i in ends
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init; Linear layers inside attention modules keep their own (PyTorch default) init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._init_classifier()
        init_attn_modules(self)

    def _init_classifier(self) -> None:
        fc = self.classifier[1]
        if isinstance(fc, nn.Linear):
            nn.init.normal_(fc.weight, 0, 0.01)
            nn.init.zeros_(fc.bias)

    def stages(self) -> list[nn.Module]:
        return list(self._stages)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.features[1](self.features[0](x))

    def forward_final(self, x: Tensor) -> Tensor:
        return self.features[-1](x)

    def forward_features(self, x: Tensor) -> Tensor:
        # runs `features` itself: the stage views are not submodules, which FX tracing needs
        if not torch.jit.is_scripting():
            x = self.check_input(x)
            if self.grad_checkpointing and torch.is_grad_enabled():
                return checkpoint_seq(self.features, x)
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.classifier[0](self.pool(x))
        return x if pre_logits else self.classifier[1](x)

    def _prune_final(self) -> None:
        self.features[-1] = nn.Identity()

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: int | Sequence[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take, last = feature_take_indices(len(self.feature_info), indices)
        start = self._stage_slices[last][0] if last < len(self._stage_slices) else len(self.features) - 1
        for i in range(start, len(self.features) - 1):
            self.features[i] = nn.Identity()
        self._stages = tuple(self.features[a:b] for a, b in self._stage_slices)
        if prune_norm or last < len(self._stage_slices):
            self._prune_final()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {'stem': r'^features\.0\.', 'blocks': r'^features\.(\d+)\.'}


register_model_family(
    'mobilenetv2', first_conv='features.0.0', classifier='classifier.1', reduction=32, crop_pct=0.875,
    interpolation='bilinear', paper_ids=('arXiv:1801.04381',),
    paper_name='MobileNetV2: Inverted Residuals and Linear Bottlenecks', origin_url='https://github.com/pytorch/vision',
    feature_cfg=dict(flatten_sequential=True),  # timm's feature wrapper runs the flattened Sequential in order
)

# Hidden widths of the expansion blocks (the CA position), for the registry's buildability check.
_HIDDEN_WIDTHS = (96, 144, 192, 384, 576, 960)


@register_model(
    attn_widths=_HIDDEN_WIDTHS, input_size=(3, 224, 224), family='mobilenetv2',
    exclude_attns=('dia',),  # DIA is not defined for MobileNetV2
    attn_defaults={'bav1': {'reduction': 6}, 'bav2': {'reduction': 6}},
)
def mobilenetv2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 1.0 (3,504,872 parameters, torchvision's); ``ca_mobilenetv2`` is the official MBv2+CA."""
    return MobileNetV2(**kwargs)
