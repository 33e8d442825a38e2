"""ResNet and ResNeXt (ImageNet and CIFAR post-activation networks) with a plug-in attention slot.

Papers: "Deep Residual Learning for Image Recognition", He, Zhang, Ren, Sun, CVPR 2016, arXiv:1512.03385;
"Aggregated Residual Transformations for Deep Neural Networks" (ResNeXt), Xie et al., CVPR 2017, arXiv:1611.05431.
Reference code: torchvision ``models/resnet.py`` (ImageNet, v1.5); the attention repositories' ResNets:
zhaoy376/Bridge-Attention ``models/BA_resnet.py`` (BAv1), ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks
``models/ba_resnet_v2_1.py`` (BAv2), BangguWu/ECANet ``models/eca_resnet.py``, Jongchan/attention-module
``MODELS/model_resnet.py`` (CBAM), gbup-group/DIANet ``models/cifar/dia_resnet.py`` (ResNet-164 + DIA).

Attention placement (specs §11): gate-level modules (SE, ECA, CBAM, CA, ELA) gate the residual-branch output (bn2 of a
basic block, bn3 of a bottleneck) before the addition; bridge attention receives the pooled post-ReLU outputs of
the inner convs and gates the last BN output; DIA is one unit per stage, shared by its blocks, state reset per stage.

Differences from the reference:
    * State_dict keys equal torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1.weight``, ..., ``fc``); attention
      parameters live under ``layerS.B.attn`` (``layerS.attn`` for DIA) instead of ``se``/``eca``/``cbam``/``ba``/
      ``lstm``. torchvision weights load with ``strict=False`` and only attention keys missing.
    * v1.5 stride placement (stride on the 3x3 conv) by default, as every PyTorch reference; ``stride_in_1x1=True``
      gives v1 (Caffe, the "3.86 GFLOPs" ResNet-50 of the SE/CBAM/ECA papers), specs D1.
    * The classifier of a CBAM ResNet starts as the official one (Kaiming-normal weight, zero bias; ``head_init``);
      the other ResNets keep torchvision's default Linear init.
    * CA and ELA have no official ResNet placement; we put them at the SE position (specs D5, D6).
    * DIA on ImageNet widths uses gate-map reduction 16 by default (ours, specs D9); CIFAR networks keep 4.
    * The CIFAR ResNet-20/32/44/56/110 use 1x1 conv + BN projection shortcuts (option B), which is what the BA
      repository's CIFAR SE-ResNets use (SE-ResNet-20: 274,490 parameters); ``shortcut='pad'`` gives the paper's
      parameter-free option A.
    * BAv1's ResNeXt builds the attention like the ResNet bottleneck (the released ResNeXt forward is broken and
      registers unused per-stage gates: 43,520 parameters on ResNeXt-50 that we do not create, specs §15.3).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PlugattnError
from ..layers import CBAM, attn_level, create_attn, get_attn
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

__all__ = ['BasicBlock', 'Bottleneck', 'ResNet']


def _is_cbam(attn: AttnSpec) -> bool:
    if attn is None:
        return False
    factory = get_attn(attn)
    return (factory.func if isinstance(factory, functools.partial) else factory) is CBAM


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Parameter-free option-A shortcut: subsample by the stride and zero-pad the new channels."""

    def __init__(self, cout: int, stride: int) -> None:
        super().__init__()
        self.cout = cout
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        extra = self.cout - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class BasicBlock(GatedBlock):
    """Two 3x3 convs. Bridged features: [post-ReLU conv1]; gated: bn2 output.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first conv.
        downsample: shortcut projection, or ``None`` for identity.
        attn: attention spec of the block (gate or block level; stage level is handled by the stage).
        attn_kwargs: options of the attention module.
        dilation: dilation of the second 3x3 conv (output stride below 32).
        first_dilation: dilation of the first 3x3 conv (default: ``dilation``); the first block of a dilated stage
            keeps the previous stage's dilation there, as timm.
    """

    expansion = 1
    gate_norm = 'bn2'

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: nn.Module | None = None,
            groups: int = 1,
            base_width: int = 64,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            stride_in_1x1: bool = False,
            dilation: int = 1,
            first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise PlugattnError('BasicBlock supports only groups=1 and base_width=64')
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.attn, self.attn_level = block_attn(attn, planes, (planes,), attn_kwargs)
        self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken

    def body(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """conv2 output (bn2's input), shortcut and the pooled inner features (bridge attention)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        inner = [pooled(out)] if self.bridge else []
        return self.conv2(out), shortcut, inner

    def forward(self, x: Tensor) -> Tensor:
        z, shortcut, inner = self.body(x)
        return gated_merge(self.bn2, z, shortcut, attn=None if self.bridge else self.attn,
                           bridge=self.attn if self.bridge else None, inner=inner, relu=True)


class Bottleneck(GatedBlock):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1 (x4). Bridged: [post-ReLU conv1, post-ReLU conv2]; gated: bn3 output.

    Args:
        inplanes: input channels.
        planes: base width; the output has ``4 * planes`` channels, the inner convs
            ``planes * base_width / 64 * groups``.
        stride: stride of the 3x3 conv (v1.5), or of the first 1x1 with ``stride_in_1x1``.
        downsample: shortcut projection, or ``None`` for identity.
        groups: groups of the 3x3 conv (ResNeXt cardinality).
        base_width: ResNeXt bottleneck width per group.
        attn: attention spec of the block (gate or block level).
        attn_kwargs: options of the attention module.
        stride_in_1x1: put the stride on the first 1x1 conv (ResNet v1).
        dilation: dilation of the 3x3 conv (output stride below 32).
        first_dilation: used instead of ``dilation`` when given (the first block of a dilated stage keeps the
            previous stage's dilation, as timm and torchvision).
    """

    expansion = 4
    gate_norm = 'bn3'

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: nn.Module | None = None,
            groups: int = 1,
            base_width: int = 64,
            *,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | None = None,
            stride_in_1x1: bool = False,
            dilation: int = 1,
            first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        outplanes = planes * self.expansion
        self.conv1 = conv1x1(inplanes, width, stride if stride_in_1x1 else 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, 1 if stride_in_1x1 else stride, groups, first_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, outplanes)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attn, self.attn_level = block_attn(attn, outplanes, (width, width), attn_kwargs)
        self.bridge = self.attn_level == 'block'  # a constant: TorchScript then compiles only the call taken

    def body(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """conv3 output (bn3's input), shortcut and the pooled inner features (bridge attention)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        inner = [pooled(out)] if self.bridge else []
        out = self.relu(self.bn2(self.conv2(out)))
        if self.bridge:
            inner.append(pooled(out))
        return self.conv3(out), shortcut, inner

    def forward(self, x: Tensor) -> Tensor:
        z, shortcut, inner = self.body(x)
        return gated_merge(self.bn3, z, shortcut, attn=None if self.bridge else self.attn,
                           bridge=self.attn if self.bridge else None, inner=inner, relu=True)


class ResNet(AttnNet):
    """ResNet / ResNeXt with an attention slot in every block (or every stage for DIA).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        widths: base width (``planes``) of each stage; ImageNet (64, 128, 256, 512), CIFAR (16, 32, 64).
        num_classes: classifier outputs (0: no classifier).
        in_chans: input image channels.
        stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool) or ``'cifar'`` (3x3/1 conv, no pool).
        stem_width: channels of the stem conv (default: ``widths[0]``).
        groups: ResNeXt cardinality.
        width_per_group: ResNeXt width per group.
        attn: attention key (``se``, ``bav2``, ``dia``, ...), class or partial; ``None`` for the plain network.
        attn_kwargs: attention options, one dict for all stages or one per stage (e.g. ECA's released
            ``[{'kernel_size': k} for k in (3, 5, 5, 7)]``).
        stride_in_1x1: ResNet v1 stride placement (bottleneck only).
        shortcut: ``'conv'`` (1x1 conv + BN projection, option B) or ``'pad'`` (option A, basic blocks).
        zero_init_residual: zero the last BN weight of every block (torchvision option, off as in the references).
        drop_rate: dropout before the classifier.
        head_init: classifier init, ``'kaiming'`` (Kaiming-normal weight, fan-in, zero bias: the official CBAM
            ResNet) or ``'default'`` (PyTorch's Linear init, as torchvision); None picks ``'kaiming'`` for CBAM and
            ``'default'`` otherwise.
        global_pool: ``'avg'`` or ``''`` (no pooling, with ``num_classes=0``: ``forward`` returns the maps).
        output_stride: 8, 16 or 32 (None: 32) for the ImageNet stem: the stages that would go below it keep
            stride 1 and dilate their 3x3 convs instead (timm's convention; same parameters and keys). The CIFAR
            stem accepts only None or the network's own stride (4 for three stages): it is already that fine.
    """

    def __init__(
            self,
            block: type[BasicBlock] | type[Bottleneck],
            layers: Sequence[int],
            widths: Sequence[int] = (64, 128, 256, 512),
            num_classes: int = 1000,
            in_chans: int = 3,
            *,
            stem: str = 'imagenet',
            stem_width: int | None = None,
            groups: int = 1,
            width_per_group: int = 64,
            attn: AttnSpec = None,
            attn_kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
            stride_in_1x1: bool = False,
            shortcut: str = 'conv',
            zero_init_residual: bool = False,
            drop_rate: float = 0.0,
            head_init: str | None = None,
            global_pool: str = 'avg',
            output_stride: int | None = None,
    ) -> None:
        super().__init__()
        if head_init not in (None, 'kaiming', 'default'):
            raise PlugattnError(f"head_init must be 'kaiming', 'default' or None, got {head_init!r}")
        self.head_init = head_init or ('kaiming' if _is_cbam(attn) else 'default')
        if len(layers) != len(widths):
            raise PlugattnError(f'layers {tuple(layers)} and widths {tuple(widths)} must have the same length')
        if stem not in ('imagenet', 'cifar'):
            raise PlugattnError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if shortcut not in ('conv', 'pad'):
            raise PlugattnError(f"shortcut must be 'conv' or 'pad', got {shortcut!r}")
        if num_classes < 0 or in_chans < 1:
            raise PlugattnError(f'num_classes must be >= 0 and in_chans >= 1, got {num_classes} and {in_chans}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.groups = groups
        self.base_width = width_per_group
        self.drop_rate = drop_rate
        self.stride_in_1x1 = stride_in_1x1
        self.shortcut = shortcut
        stem_width = stem_width or widths[0]
        self.inplanes = stem_width
        if stem == 'imagenet':
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            stem_reduction = 4
        else:
            self.conv1 = conv3x3(in_chans, stem_width)
            stem_reduction = 1
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        # registered after bn1/relu: timm's feature wrappers run the children in registration order
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == 'imagenet' else nn.Identity()

        self.stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))
        info = [dict(num_chs=stem_width, reduction=stem_reduction // (2 if stem == 'imagenet' else 1), module='relu')]
        native_stride = stem_reduction * 2 ** (len(layers) - 1)
        if stem == 'cifar' and output_stride not in (None, native_stride):
            raise PlugattnError(
                f'output_stride={output_stride} is not available for a CIFAR-stem ResNet: its output stride is '
                f'already {native_stride}; leave output_stride unset or use an ImageNet model (e.g. resnet50)'
            )
        if stem == 'imagenet' and output_stride not in (None, 8, 16, 32):
            raise PlugattnError(f'output_stride must be 8, 16, 32 or None, got {output_stride!r}')
        output_stride = output_stride or native_stride
        reduction, dilation = stem_reduction, 1
        for i, (name, depth, planes, kwargs) in enumerate(
                zip(self.stage_names, layers, widths, stage_attn_kwargs(attn_kwargs, len(layers)))):
            stride, prev_dilation = 1 if i == 0 else 2, dilation
            if reduction >= output_stride:  # dilate instead of striding past the output stride
                dilation *= stride
                stride = 1
            reduction *= stride
            setattr(self, name, self._make_stage(
                block, planes, depth, stride, attn, kwargs, dilation, prev_dilation, projected=i > 0))
            info.append(dict(num_chs=planes * block.expansion, reduction=reduction, module=name))
        self.feature_info = FeatureInfo(info)
        self.num_features = widths[-1] * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.set_global_pool(global_pool)
        self._init_weights(zero_init_residual)

    def _make_stage(
            self,
            block: type[BasicBlock] | type[Bottleneck],
            planes: int,
            depth: int,
            stride: int,
            attn: AttnSpec,
            attn_kwargs: dict[str, Any],
            dilation: int = 1,
            first_dilation: int = 1,
            projected: bool = False,
    ) -> nn.Module:
        outplanes = planes * block.expansion
        downsample = None
        # `projected`: a stage that strides without dilation keeps its shortcut (and its parameters) when dilated
        if stride != 1 or projected or self.inplanes != outplanes:
            if self.shortcut == 'pad':
                downsample = PadShortcut(outplanes, stride)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))
        shared = attn_level(attn) == 'stage'
        block_kwargs = dict(
            groups=self.groups, base_width=self.base_width, stride_in_1x1=self.stride_in_1x1,
            attn=None if shared else attn, attn_kwargs=attn_kwargs,
        )
        blocks = [block(self.inplanes, planes, stride, downsample, dilation=dilation, first_dilation=first_dilation,
                        **block_kwargs)]
        self.inplanes = outplanes
        blocks += [block(self.inplanes, planes, dilation=dilation, **block_kwargs) for _ in range(1, depth)]
        if shared:
            return AttnStage(blocks, create_attn(attn, outplanes, **attn_kwargs))
        return nn.Sequential(*blocks)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        init_attn_modules(self)
        if self.head_init == 'kaiming' and isinstance(self.fc, nn.Linear):
            nn.init.kaiming_normal_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stem_feature(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The stem feature is taken before the max-pool, as timm's ResNet ('act1' at stride 2).
        x = self.relu(self.bn1(self.conv1(x)))
        return x, self.maxpool(x)

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

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


def _resnet(block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], **kwargs: Any) -> ResNet:
    return ResNet(block, layers, **kwargs)


register_model_family(
    'resnet', first_conv='conv1', classifier='fc', reduction=32, crop_pct=0.875, interpolation='bilinear',
    paper_ids=('arXiv:1512.03385',), paper_name='Deep Residual Learning for Image Recognition',
    origin_url='https://github.com/pytorch/vision',
)
register_model_family(
    'resnet_cifar', first_conv='conv1', classifier='fc', reduction=4, crop_pct=1.0, interpolation='bilinear',
    paper_ids=('arXiv:1512.03385',), paper_name='Deep Residual Learning for Image Recognition', feature_levels=4,
)

_IMAGENET = dict(input_size=(3, 224, 224), family='resnet', attn_defaults={'dia': {'reduction': 16}})
_BASIC_WIDTHS = (64, 128, 256, 512)
_BOTTLENECK_WIDTHS = (256, 512, 1024, 2048)
_RESNEXT = ('arXiv:1611.05431',)


@register_model(attn_widths=_BASIC_WIDTHS, **_IMAGENET)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (ImageNet; ``stem='cifar'`` for 32x32 inputs)."""
    return _resnet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(attn_widths=_BASIC_WIDTHS, **_IMAGENET)
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34."""
    return _resnet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model(attn_widths=_BOTTLENECK_WIDTHS, **_IMAGENET)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (v1.5; ``stride_in_1x1=True`` for v1)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model(attn_widths=_BOTTLENECK_WIDTHS, **_IMAGENET)
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101."""
    return _resnet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model(attn_widths=_BOTTLENECK_WIDTHS, **_IMAGENET)
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152."""
    return _resnet(Bottleneck, (3, 8, 36, 3), **kwargs)


@register_model(attn_widths=_BOTTLENECK_WIDTHS, paper_ids=_RESNEXT, **_IMAGENET)
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d."""
    return _resnet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, **kwargs)


@register_model(attn_widths=_BOTTLENECK_WIDTHS, paper_ids=_RESNEXT, **_IMAGENET)
def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d."""
    return _resnet(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8, **kwargs)


_CIFAR = dict(input_size=(3, 32, 32), family='resnet_cifar')


def _cifar_resnet(depth: int, **kwargs: Any) -> ResNet:
    kwargs.setdefault('num_classes', 10)
    if depth % 6 != 2:
        raise PlugattnError(f'CIFAR basic-block ResNet depth must be 6n+2, got {depth}')
    n = (depth - 2) // 6
    return _resnet(BasicBlock, (n, n, n), widths=(16, 32, 64), stem='cifar', **kwargs)


@register_model(attn_widths=(16, 32, 64), **_CIFAR)
def resnet20(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-20 (3 stages of 3 basic blocks, widths 16/32/64)."""
    return _cifar_resnet(20, **kwargs)


@register_model(attn_widths=(16, 32, 64), **_CIFAR)
def resnet32(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-32."""
    return _cifar_resnet(32, **kwargs)


@register_model(attn_widths=(16, 32, 64), **_CIFAR)
def resnet44(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-44."""
    return _cifar_resnet(44, **kwargs)


@register_model(attn_widths=(16, 32, 64), **_CIFAR)
def resnet56(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-56."""
    return _cifar_resnet(56, **kwargs)


@register_model(attn_widths=(16, 32, 64), **_CIFAR)
def resnet110(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-110."""
    return _cifar_resnet(110, **kwargs)


@register_model(attn_widths=(64, 128, 256), **_CIFAR)
def resnet164(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-164 (bottleneck, 18 blocks per stage, widths 64/128/256), the DIANet baseline."""
    kwargs.setdefault('num_classes', 10)
    return _resnet(Bottleneck, (18, 18, 18), widths=(16, 32, 64), stem='cifar', **kwargs)
