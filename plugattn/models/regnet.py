"""RegNet-Y (400MF, 800MF, 1.6GF, 4.0GF) with its native SE and a plug-in attention slot.

Paper: "Designing Network Design Spaces", Radosavovic, Kosaraju, Girshick, He, Dollar, CVPR 2020, arXiv:2003.13678.
Reference code: facebookresearch/pycls ``pycls/models/regnet.py`` / ``anynet.py`` and timm ``models/regnet.py``
(``regnety_004``, ``regnety_008``, ``regnety_016``, ``regnety_040``), whose state_dict keys we keep.

A RegNet-Y block is conv1 (1x1) -> conv2 (3x3, grouped by the group width) -> SE -> conv3 (1x1, BN, no activation),
plus the shortcut, then ReLU; bottleneck ratio 1 and an SE whose hidden width is 0.25 x the *block input* width
(1x1 convs with bias). The stage tables below are the pycls/timm configurations.

Attention placement (BAv2's RegNet-Y code is not published, specs D12 / §9 proposal; every choice here is ours):
    * Block level (``bav2``, ``bav1``): bridges the post-activation conv1 (1x1) and conv2 (grouped 3x3) outputs and
      gates conv3's BN output before the residual addition, in place of SE (the ResNet bottleneck semantics,
      specs §11). ``keep_se=True`` keeps the native SE after conv2 as well; the bridged conv2 feature is then taken
      before the SE.
    * Gate level (ECA, CBAM, CA, ELA): replaces the native SE at its place (after conv2's activation, on the
      bottleneck width); ``keep_se=True`` puts it after the SE.
    * Stage level (DIA): one unit per stage shared by its blocks, gating conv3's BN output before the addition, in
      place of SE (``keep_se=True`` keeps it); stage blocks are then keyed ``sN.{i}`` instead of ``sN.b{i+1}``.
    * ``se`` is not registered as a variant (RegNet-Y already has SE); ``attn='se'`` swaps the native SE for
      plugattn's bias-free SE (r=16 of the gated width).

Differences from the reference:
    * Keys equal timm's (``stem.conv``, ``s1.b1.conv1.conv``, ``s1.b1.se.fc1``, ``s1.b1.downsample.conv``, ...)
      except the classifier, ``fc`` here and ``head.fc`` in timm; plug-in attention lives under ``sN.bM.attn``.
      ``plugattn.load_official(model, path, source='timm')`` loads timm RegNet-Y weights.
    * Only the standard configurations (ReLU, BatchNorm, 1x1-conv downsampling) are built; ``output_stride`` 8 or
      16 dilates the last stages' 3x3 convs instead of striding (timm's convention, same parameters).
    * ``zero_init_last=True`` (timm's default, pycls' ZERO_INIT_FINAL_GAMMA) zeroes every conv3 BN weight at init.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PlugattnError
from ..layers import GateAttention, attn_level, create_attn
from ..layers.base import pooled
from ..layers.gating import gated_merge
from ..layers.registry import AttnSpec
from ._base import (
    AttnNet,
    AttnStage,
    FeatureInfo,
    GatedBlock,
    block_attn,
    init_attn_modules,
    stage_attn_kwargs,
)
from ._registry import register_model, register_model_family

__all__ = ['RegNet', 'RegNetBottleneck', 'RegNetCfg', 'RegNetSE']


@dataclass(frozen=True)
class RegNetCfg:
    """Per-stage configuration of a RegNet (stem width 32, bottleneck ratio 1, four stride-2 stages).

    Attributes:
        depths: blocks per stage.
        widths: output channels per stage.
        group_width: channels per group of the 3x3 convs.
        se_ratio: SE hidden width as a fraction of the block input width (0: RegNet-X).
    """

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    group_width: int
    se_ratio: float = 0.25


# pycls / timm RegNet-Y configurations (timm regnety_004 / _008 / _016 / _040).
REGNETY_CFGS: dict[str, RegNetCfg] = {
    'regnety_400mf': RegNetCfg((1, 3, 6, 6), (48, 104, 208, 440), 8),
    'regnety_800mf': RegNetCfg((1, 3, 8, 2), (64, 128, 320, 768), 16),
    'regnety_1_6gf': RegNetCfg((2, 6, 17, 2), (48, 120, 336, 888), 24),
    'regnety_4_0gf': RegNetCfg((2, 6, 12, 2), (128, 192, 512, 1088), 64),
}


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BN -> optional ReLU; keys ``conv`` and ``bn`` as timm's ``ConvNormAct``."""

    def __init__(
            self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True,
            dilation: int = 1,
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class RegNetSE(GateAttention):
    """RegNet-Y's native SE: GAP -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid; keys ``fc1``/``fc2``.

    Args:
        channels: gated channels (the bottleneck width).
        hidden_channels: hidden width, ``round(se_ratio * block input width)`` in RegNet-Y.
    """

    def __init__(self, channels: int, *, hidden_channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Conv2d(channels, hidden_channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden_channels, channels, 1)

    def gate(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


class RegNetBottleneck(GatedBlock):
    """RegNet-Y block (bottleneck ratio 1): conv1 1x1 -> conv2 grouped 3x3 (stride) -> [SE] -> conv3 1x1 -> + shortcut.

    Args:
        cin: input channels.
        cout: output channels, also the width of the inner convs (bottleneck ratio 1).
        stride: stride of conv2 and of the shortcut projection.
        group_width: channels per group of conv2.
        se_ratio: native SE hidden width / ``cin`` (0: no native SE).
        attn: plug-in attention spec, gate or block level (see the module docstring for where each goes).
        attn_kwargs: options of the attention module.
        dilation: dilation of conv2 (output stride below 32).
        project: keep the shortcut projection even at stride 1 and equal widths (a dilated stage's first block).
    """

    gate_norm = 'conv3.bn'

    def __init__(
            self,
            cin: int,
            cout: int,
            stride: int = 1,
            group_width: int = 1,
            se_ratio: float = 0.25,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            dilation: int = 1,
            project: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 1)
        self.conv2 = ConvBNAct(cout, cout, 3, stride, groups=cout // group_width, dilation=dilation)
        self.se = RegNetSE(cout, hidden_channels=round(cin * se_ratio)) if se_ratio > 0 else None
        self.conv3 = ConvBNAct(cout, cout, 1, act=False)
        self.downsample = ConvBNAct(cin, cout, 1, stride, act=False) if stride != 1 or project or cin != cout else None
        self.attn, self.attn_level = block_attn(attn, cout, (cout, cout), attn_kwargs)
        self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.bn.weight)

    def body(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """conv3's conv output (its BN's input), shortcut and the pooled inner features (bridge attention).

        A gate-level attention sits at SE's place, before conv3: it is applied inside conv3's conv call.
        """
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x)
        inner = [pooled(out)] if self.bridge else []
        out = self.conv2(out)
        if self.bridge:
            inner.append(pooled(out))
        if self.se is not None:
            out = self.se(out)
        if self.bridge:
            return self.conv3.conv(out), shortcut, inner
        return gated_merge(None, out, attn=self.attn, consumer=self.conv3.conv), shortcut, inner

    def forward(self, x: Tensor) -> Tensor:
        z, shortcut, inner = self.body(x)
        return gated_merge(self.conv3.bn, z, shortcut, bridge=self.attn if self.bridge else None, inner=inner,
                           relu=True)


class RegNet(AttnNet):
    """RegNet-Y: 3x3/2 stem (32 channels), four stages of :class:`RegNetBottleneck`, global pool, ``fc``.

    Args:
        cfg: stage configuration (:data:`REGNETY_CFGS`).
        num_classes: classifier outputs (0: no classifier).
        in_chans: input image channels.
        attn: plug-in attention key, class or partial; ``None`` for RegNet-Y with its native SE.
        attn_kwargs: attention options, one dict for all stages or one per stage.
        keep_se: keep the native SE next to the plug-in attention.
        drop_rate: dropout before the classifier.
        zero_init_last: zero the last BN weight of every block (timm / pycls default).
        global_pool: ``'avg'`` or ``''`` (no pooling, with ``num_classes=0``: ``forward`` returns the maps).
        output_stride: 8, 16 or 32 (None: 32): the stages that would stride below it keep stride 1 and dilate
            their 3x3 convs instead (timm's convention; same parameters and keys, ``feature_info`` follows).
    """

    first_conv_key = 'stem.conv'

    def __init__(
            self,
            cfg: RegNetCfg,
            num_classes: int = 1000,
            in_chans: int = 3,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
            keep_se: bool = False,
            drop_rate: float = 0.0,
            zero_init_last: bool = True,
            global_pool: str = 'avg',
            output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 0 or in_chans < 1:
            raise PlugattnError(f'num_classes must be >= 0 and in_chans >= 1, got {num_classes} and {in_chans}')
        if output_stride not in (None, 8, 16, 32):
            raise PlugattnError(f'output_stride must be 8, 16, 32 or None, got {output_stride!r}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.keep_se = keep_se
        stem_width = 32
        self.stem = ConvBNAct(in_chans, stem_width, 3, 2)
        self.stage_names = tuple(f's{i + 1}' for i in range(len(cfg.depths)))
        info = [dict(num_chs=stem_width, reduction=2, module='stem')]
        cin, reduction, dilation = stem_width, 2, 1
        shared = attn_level(attn) == 'stage'
        se_ratio = cfg.se_ratio if attn is None or keep_se else 0.0
        for name, depth, cout, kwargs in zip(
                self.stage_names, cfg.depths, cfg.widths, stage_attn_kwargs(attn_kwargs, len(cfg.depths))):
            stride, first_dilation = 2, dilation
            if reduction >= (output_stride or 32):  # dilate instead of striding past the output stride
                dilation *= stride
                stride = 1
            reduction *= stride
            blocks = [
                RegNetBottleneck(
                    cin if i == 0 else cout, cout, stride if i == 0 else 1, cfg.group_width, se_ratio,
                    attn=None if shared else attn, attn_kwargs=kwargs,
                    dilation=first_dilation if i == 0 else dilation, project=i == 0,
                )
                for i in range(depth)
            ]
            if shared:
                stage = AttnStage(blocks, create_attn(attn, cout, **kwargs))
            else:
                stage = nn.Sequential(OrderedDict((f'b{i + 1}', b) for i, b in enumerate(blocks)))
            setattr(self, name, stage)
            info.append(dict(num_chs=cout, reduction=reduction, module=name))
            cin = cout
        self.feature_info = FeatureInfo(info)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self.set_global_pool(global_pool)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # pycls / timm init: conv N(0, sqrt(2 / fan_out)) with fan_out divided by the groups, classifier N(0, 0.01).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.fc, nn.Linear):
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
            nn.init.zeros_(self.fc.bias)
        init_attn_modules(self)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, RegNetBottleneck):
                    m.zero_init_last()

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.stem(x)

    def _script_stages(self, x: Tensor) -> Tensor:
        # TorchScript needs literal attribute names (hasattr is resolved at compile time)
        if hasattr(self, 's1'):
            x = self.s1(x)
        if hasattr(self, 's2'):
            x = self.s2(x)
        if hasattr(self, 's3'):
            x = self.s3(x)
        if hasattr(self, 's4'):
            x = self.s4(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


def _regnet(name: str, **kwargs: Any) -> RegNet:
    return RegNet(REGNETY_CFGS[name], **kwargs)


register_model_family(
    'regnety', first_conv='stem.conv', classifier='fc', reduction=32, crop_pct=0.875, interpolation='bicubic',
    paper_ids=('arXiv:2003.13678',), paper_name='Designing Network Design Spaces',
)


def _register(name: str) -> Callable[[Callable[..., RegNet]], Callable[..., RegNet]]:
    cfg = REGNETY_CFGS[name]
    return register_model(
        attn_widths=cfg.widths, input_size=(3, 224, 224), family='regnety',
        exclude_attns=('se',), attn_defaults={'dia': {'reduction': 16}},
    )


@_register('regnety_400mf')
def regnety_400mf(**kwargs: Any) -> RegNet:
    """RegNetY-400MF (timm ``regnety_004``): depths 1/3/6/6, widths 48/104/208/440, group width 8."""
    return _regnet('regnety_400mf', **kwargs)


@_register('regnety_800mf')
def regnety_800mf(**kwargs: Any) -> RegNet:
    """RegNetY-800MF (timm ``regnety_008``): depths 1/3/8/2, widths 64/128/320/768, group width 16."""
    return _regnet('regnety_800mf', **kwargs)


@_register('regnety_1_6gf')
def regnety_1_6gf(**kwargs: Any) -> RegNet:
    """RegNetY-1.6GF (timm ``regnety_016``): depths 2/6/17/2, widths 48/120/336/888, group width 24."""
    return _regnet('regnety_1_6gf', **kwargs)


@_register('regnety_4_0gf')
def regnety_4_0gf(**kwargs: Any) -> RegNet:
    """RegNetY-4.0GF (timm ``regnety_040``): depths 2/6/12/2, widths 128/192/512/1088, group width 64."""
    return _regnet('regnety_4_0gf', **kwargs)
