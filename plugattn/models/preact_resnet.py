"""Pre-activation CIFAR networks of the DIA paper: PreResNet-164 and Wide ResNet WRN-52-4.

Papers: "Identity Mappings in Deep Residual Networks", He, Zhang, Ren, Sun, ECCV 2016, arXiv:1603.05027;
"Wide Residual Networks", Zagoruyko, Komodakis, BMVC 2016, arXiv:1605.07146. DIA baselines from
"DIANet: Dense-and-Implicit Attention Network", AAAI 2020, arXiv:1905.10671.
Reference code: https://github.com/gbup-group/DIANet (``models/cifar/dia_preresnet.py``, ``dia_wrn.py``, built on
bearpaw/pytorch-classification).

The residual branch ends with a conv (no BN); attention gates that conv output before the addition, and no ReLU
follows the addition. Bridge attention bridges the post-activation inputs of the later convs (what each conv sees).

Differences from the reference:
    * DIA variants add an extra BatchNorm at the end of the residual branch (``bn_additional``), as the official
      DIA-PreResNet and DIA-WRN; ``extra_bn`` turns it on or off for any attention (default: on for DIA only).
    * WRN stages are named ``layer1..3`` (official ``block1..3.layer``), the final norm ``bn`` (official ``bn1``)
      and the DIA unit ``layerS.attn``; the official-checkpoint loader maps them.
    * Initialisation as the official code: Kaiming fan-out convs, unit BN; WRN starts every Linear bias at zero
      (the classifier and the DIA gate maps, ``zero_linear_bias``), PreResNet keeps PyTorch's default Linear init.
    * Gate-level, bridge and DIA placements on pre-activation blocks other than the official DIA one are ours.
"""

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PlugattnError
from ..layers import attn_level, create_attn
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

__all__ = ['PreActBottleneck', 'PreActResNet', 'WideBasic']


class _PreActBlock(GatedBlock):
    """The merge of the pre-activation blocks: optional extra BN, the block's attention, plain addition (no ReLU).

    Subclasses set ``attn`` (module or None), ``attn_level``, ``bridge`` and ``bn_additional`` (module or None);
    not annotated here, as TorchScript would read the annotations as attribute types.
    """

    gate_norm = 'bn_additional'  # None without the extra BN: the last conv's output is gated
    merge_relu = False  # pre-activation: the sum is not activated

    def forward(self, x: Tensor) -> Tensor:
        z, shortcut, inner = self.body(x)
        return gated_merge(self.bn_additional, z, shortcut, attn=None if self.bridge else self.attn,
                           bridge=self.attn if self.bridge else None, inner=inner)


class PreActBottleneck(_PreActBlock):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (x4); shortcut conv on the raw input.

    Args:
        inplanes: input channels.
        planes: base width (output ``4 * planes``).
        stride: stride of the 3x3 conv.
        attn: attention spec (gate or block level).
        attn_kwargs: options of the attention module.
        extra_bn: BatchNorm on the branch output before the attention (official DIA variant).
        drop_rate: unused (WRN only), accepted for a uniform signature.
    """

    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            extra_bn: bool = False,
            drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.bn_additional = nn.BatchNorm2d(outplanes) if extra_bn else None
        self.downsample = None
        if stride != 1 or inplanes != outplanes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False))
        self.attn, self.attn_level = block_attn(attn, outplanes, (planes, planes), attn_kwargs)
        self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken

    def body(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """conv3 output, shortcut and the pooled inner features (bridge attention)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.relu(self.bn2(out))
        inner = [pooled(out)] if self.bridge else []
        out = self.relu(self.bn3(self.conv2(out)))
        if self.bridge:
            inner.append(pooled(out))
        return self.conv3(out), shortcut, inner


class WideBasic(_PreActBlock):
    """WRN block: BN-ReLU-conv3x3 (stride), BN-ReLU-dropout-conv3x3; the projection sees the activated input.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first conv.
        attn: attention spec (gate or block level).
        attn_kwargs: options of the attention module.
        extra_bn: BatchNorm on the branch output before the attention (official DIA variant).
        drop_rate: dropout between the convs.
    """

    expansion = 1

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            extra_bn: bool = False,
            drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.drop_rate = drop_rate
        self.equal_in_out = inplanes == planes and stride == 1
        self.conv_shortcut = None if self.equal_in_out else nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn_additional = nn.BatchNorm2d(planes) if extra_bn else None
        self.attn, self.attn_level = block_attn(attn, planes, (planes,), attn_kwargs)
        self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken

    def body(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """conv2 output, shortcut and the pooled inner features (bridge attention)."""
        act = self.relu(self.bn1(x))
        # As the reference: a projecting block's shortcut takes the activated input, an identity one the raw input.
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(act)
        out = self.relu(self.bn2(self.conv1(act)))
        inner = [pooled(out)] if self.bridge else []
        if self.drop_rate > 0.0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out), shortcut, inner


class PreActResNet(AttnNet):
    """Pre-activation CIFAR network: 3x3 stem, three stages, final BN-ReLU, global pool, fc.

    Args:
        block: :class:`PreActBottleneck` or :class:`WideBasic`.
        layers: blocks per stage.
        widths: base widths of the stages (``planes``).
        num_classes: classifier outputs (0: no classifier).
        in_chans: input image channels.
        stem_width: channels of the stem conv.
        attn: attention key, class or partial; ``None`` for the plain network.
        attn_kwargs: attention options, one dict or one per stage.
        extra_bn: extra BN at the end of every residual branch; ``None`` = on for stage-level attention (DIA).
        drop_rate: dropout inside WRN blocks.
        zero_linear_bias: start every Linear bias at zero (classifier and attention maps), as the official WRN
            (``dia_wrn.py``, bearpaw's ``wrn.py``); None = on for WRN, off for PreResNet (whose official code keeps
            PyTorch's default Linear init).
        global_pool: ``'avg'`` or ``''`` (no pooling, with ``num_classes=0``: ``forward`` returns the maps).
        output_stride: only None or the network's own stride (4 for three stages): a CIFAR network is already that
            fine, so it has no dilated variant.
    """

    def __init__(
            self,
            block: type[PreActBottleneck] | type[WideBasic],
            layers: Sequence[int],
            widths: Sequence[int],
            num_classes: int = 10,
            in_chans: int = 3,
            *,
            stem_width: int = 16,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
            extra_bn: bool | None = None,
            drop_rate: float = 0.0,
            zero_linear_bias: bool | None = None,
            global_pool: str = 'avg',
            output_stride: int | None = None,
    ) -> None:
        super().__init__()
        native_stride = 2 ** (len(layers) - 1)
        if output_stride not in (None, native_stride):
            raise PlugattnError(
                f'output_stride={output_stride} is not available for a CIFAR network: its output stride is already '
                f'{native_stride}; leave output_stride unset or use an ImageNet model (e.g. resnet50)'
            )
        self.zero_linear_bias = block is WideBasic if zero_linear_bias is None else bool(zero_linear_bias)
        if num_classes < 0 or in_chans < 1:
            raise PlugattnError(f'num_classes must be >= 0 and in_chans >= 1, got {num_classes} and {in_chans}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)
        self.stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))
        info = [dict(num_chs=stem_width, reduction=1, module='conv1')]
        inplanes, reduction = stem_width, 1
        for i, (name, depth, planes, kwargs) in enumerate(
                zip(self.stage_names, layers, widths, stage_attn_kwargs(attn_kwargs, len(layers)))):
            stride = 1 if i == 0 else 2
            reduction *= stride
            outplanes = planes * block.expansion
            shared = attn_level(attn) == 'stage'
            block_kwargs = dict(
                attn=None if shared else attn, attn_kwargs=kwargs, drop_rate=drop_rate,
                extra_bn=shared if extra_bn is None else extra_bn,
            )
            blocks = [block(inplanes if j == 0 else outplanes, planes, stride if j == 0 else 1, **block_kwargs)
                      for j in range(depth)]
            inplanes = outplanes
            stage = AttnStage(blocks, create_attn(attn, outplanes, **kwargs)) if shared else nn.Sequential(*blocks)
            setattr(self, name, stage)
            info.append(dict(num_chs=outplanes, reduction=reduction, module=name))
        self.feature_info = FeatureInfo(info)
        self.num_features = inplanes
        self.bn = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self.set_global_pool(global_pool)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        init_attn_modules(self)
        if self.zero_linear_bias:
            for m in self.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.conv1(x)

    def forward_final(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(x))

    def norm_intermediate(self, x: Tensor) -> Tensor:
        return self.forward_final(x)  # the final BN-ReLU, as timm's pre-activation ResNetV2

    def _prune_final(self) -> None:
        self.bn = nn.Identity()

    def _script_stages(self, x: Tensor) -> Tensor:
        # TorchScript needs literal attribute names (hasattr is resolved at compile time)
        if hasattr(self, 'layer1'):
            x = self.layer1(x)
        if hasattr(self, 'layer2'):
            x = self.layer2(x)
        if hasattr(self, 'layer3'):
            x = self.layer3(x)
        if hasattr(self, 'layer4'):
            x = self.layer4(x)
        return x


register_model_family(
    'preresnet', first_conv='conv1', classifier='fc', reduction=4, crop_pct=1.0, interpolation='bilinear',
    paper_ids=('arXiv:1603.05027',), paper_name='Identity Mappings in Deep Residual Networks', feature_levels=4,
)
register_model_family(
    'wrn', first_conv='conv1', classifier='fc', reduction=4, crop_pct=1.0, interpolation='bilinear',
    paper_ids=('arXiv:1605.07146',), paper_name='Wide Residual Networks', feature_levels=4,
)

_CIFAR_PREACT = dict(input_size=(3, 32, 32), attn_widths=(64, 128, 256))


@register_model(family='preresnet', **_CIFAR_PREACT)
def preresnet164(**kwargs: Any) -> PreActResNet:
    """CIFAR PreResNet-164 (pre-activation bottleneck, 18 blocks per stage, widths 64/128/256)."""
    return PreActResNet(PreActBottleneck, (18, 18, 18), (16, 32, 64), **kwargs)


@register_model(family='wrn', **_CIFAR_PREACT)
def wrn52_4(**kwargs: Any) -> PreActResNet:
    """Wide ResNet WRN-52-4 (8 blocks per stage, widths 64/128/256, dropout 0.3 as the DIA paper)."""
    kwargs.setdefault('drop_rate', 0.3)
    return PreActResNet(WideBasic, (8, 8, 8), (64, 128, 256), **kwargs)
