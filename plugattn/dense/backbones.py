"""Backbones with attention for detection and segmentation heads (torchvision's detection and segmentation models).

:func:`fpn_backbone` turns any classification name that :func:`plugattn.create_model` builds (plugattn names,
``tv:NAME``, ``timm:NAME``) plus an attention into a torchvision ``BackboneWithFPN``, as torchvision's own
``resnet_fpn_backbone`` does for its ResNets (``returned_layers``, ``trainable_layers``, ``out_channels``, frozen
BatchNorm), for ``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet`` and ``FCOS``::

    from torchvision.models.detection import FasterRCNN
    from plugattn.dense import fpn_backbone

    backbone = fpn_backbone('tv:resnet50', 'ca', pretrained=True, trainable_layers=3)
    model = FasterRCNN(backbone, num_classes=91)

:func:`segmentation_backbone` gives the ``{'out': ..., 'aux': ...}`` features that torchvision's ``DeepLabV3`` and
``FCN`` heads take::

    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from plugattn.dense import segmentation_backbone

    backbone = segmentation_backbone('resnet50', 'bav2')
    model = DeepLabV3(backbone, DeepLabHead(backbone.out_channels, 21))

To put attention into a torchvision detector or segmenter you already have (with its COCO weights), attach to it
directly: ``plugattn.attach(fasterrcnn_resnet50_fpn(weights=...), 'ca')`` finds the backbone's blocks and keeps
every original key. The feature levels used are the stages of stride 4, 8, 16 and 32 (torchvision's ``layer1`` ..
``layer4``); output stride 8 / 16 (dilated stages): ``output_stride=8`` or ``16`` for plugattn's ImageNet CNNs and
timm models, ``replace_stride_with_dilation`` for torchvision ResNets.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import PlugattnError
from ..hub import create_model
from ..layers.base import BlockAttention, GateAttention, StageAttention
from ..layers.norms import freeze_bn

__all__ = ['FeatureDict', 'fpn_backbone', 'segmentation_backbone']


class FeatureDict(nn.Module):
    """A ``features_only`` model's chosen levels as the ``OrderedDict`` torchvision heads take.

    Args:
        features: a feature extractor returning a list of maps (``create_model(..., features_only=True)``).
        indices: positions in that list to return.
        names: their keys.
    """

    def __init__(self, features: nn.Module, indices: Sequence[int], names: Sequence[str]) -> None:
        super().__init__()
        self.features = features
        self.indices = tuple(indices)
        self.names = tuple(names)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.features(x)
        return OrderedDict((name, maps[i]) for i, name in zip(self.indices, self.names))


def _stages(features: nn.Module) -> tuple[list[int], list[int], list[str]]:
    """``(indices, channels, modules)`` of the feature levels of stride 4 and more (the stages ``layer1`` ...)."""
    info = features.feature_info
    dicts = info.get_dicts() if hasattr(info, 'get_dicts') else list(info)
    levels = [i for i, d in enumerate(dicts) if d['reduction'] >= 4]
    return levels, [int(dicts[i]['num_chs']) for i in levels], [dicts[i]['module'] for i in levels]


def _qualified(features: nn.Module, module: str) -> str:
    """The qualified name in ``features`` of the host model's submodule ``module`` (wrappers add a prefix)."""
    for name, _ in features.named_modules():
        if name == module or name.endswith('.' + module):
            return name
    raise PlugattnError(f'cannot find the feature module {module!r} in this {type(features).__name__}')


def _freeze_layers(features: nn.Module, modules: list[str], trainable_layers: int | None) -> None:
    """Freeze all but the last ``trainable_layers`` of [stem, stage 1, ..., stage N] (torchvision's rule, with the
    stages found by the parameters' registration order: a stage ends at its feature module's last parameter);
    ``None`` trains all of them."""
    num = len(modules) + 1
    trainable_layers = num if trainable_layers is None else trainable_layers
    if not 0 <= trainable_layers <= num:
        raise PlugattnError(f'trainable_layers must be in 0..{num} for this backbone, got {trainable_layers}')
    params = [p for _, p in features.named_parameters()]
    index = {id(p): i for i, p in enumerate(params)}
    ends, first = [], []
    for name in modules:
        own = [index[id(p)] for p in features.get_submodule(_qualified(features, name)).parameters()]
        first = first if ends else own
        ends.append(max(own) if own else (ends[-1] if ends else -1))
    # the stem is everything up to the first stage's parameters; stage k ends at its module's last parameter
    stem_end = (min(first) - 1) if first else -1
    bounds = [stem_end, *ends]
    for i, p in enumerate(params):
        layer = next((k for k, end in enumerate(bounds) if i <= end), num - 1)
        p.requires_grad_(layer >= num - trainable_layers)


def _backbone(name: str, attn: str | None, pretrained: bool, frozen_bn: bool, freeze_attention_bn: bool,
              kwargs: dict[str, Any]) -> tuple[nn.Module, list[int], list[int], list[str]]:
    features = create_model(name, pretrained, attn=attn, features_only=True, **kwargs)
    if frozen_bn:
        freeze_bn(features, attention=freeze_attention_bn)
    return (features, *_stages(features))


def fpn_backbone(
        name: str,
        attn: str | None = None,
        *,
        pretrained: bool = False,
        returned_layers: Sequence[int] | None = None,
        trainable_layers: int | None = 3,
        out_channels: int = 256,
        extra_blocks: nn.Module | None = None,
        frozen_bn: bool = True,
        freeze_attention_bn: bool = True,
        **kwargs: Any,
) -> nn.Module:
    """A torchvision ``BackboneWithFPN`` on the classification model ``name`` with attention ``attn``.

    Args:
        name: a plugattn name, ``tv:NAME`` or ``timm:NAME`` (see :func:`plugattn.create_model`).
        attn: the attention (``None``: the plain model).
        pretrained: the host library's ImageNet weights for foreign names (attention keys start fresh).
        returned_layers: stages fed to the FPN, 1-based over the stages of stride 4, 8, 16, 32 (torchvision's
            ``layer1..4``); default all of them.
        trainable_layers: how many of [stem, stage 1, ..., stage N] of the host train, counted from the last
            (torchvision's rule: 3 trains the last three stages, 0 freezes the host backbone, ``None`` trains all);
            the attention modules always train (they start from scratch, also inside frozen stages).
        out_channels: channels of the FPN outputs.
        extra_blocks: torchvision's FPN extra block (default ``LastLevelMaxPool``, the ``'pool'`` level).
        frozen_bn: freeze every BatchNorm of the backbone (:func:`plugattn.freeze_bn`), as torchvision does for
            detection.
        freeze_attention_bn: also freeze the attention's norms (needed for bridge attention at one image per
            device); ``False`` keeps them training with batch statistics.
        **kwargs: options of :func:`plugattn.create_model` (``attn_kwargs``, ``warm_start``, the model's own).

    Returns:
        ``BackboneWithFPN`` whose ``body`` is a :class:`FeatureDict` and whose ``out_channels`` is set.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    features, levels, channels, modules = _backbone(name, attn, pretrained, frozen_bn, freeze_attention_bn, kwargs)
    chosen = list(returned_layers) if returned_layers is not None else list(range(1, len(levels) + 1))
    if not chosen or any(not 1 <= k <= len(levels) for k in chosen):
        raise PlugattnError(f'returned_layers {chosen} of {name}: choose among 1..{len(levels)} (its stages)')
    _freeze_layers(features, modules, trainable_layers)
    for m in features.modules():  # new modules: a frozen random gate would scale its stage for good
        if isinstance(m, (GateAttention, BlockAttention, StageAttention)):
            m.requires_grad_(True)
    body = FeatureDict(features, [levels[k - 1] for k in chosen], [str(i) for i in range(len(chosen))])
    out = BackboneWithFPN.__new__(BackboneWithFPN)
    nn.Module.__init__(out)  # BackboneWithFPN.__init__ would wrap the model in an IntermediateLayerGetter
    out.body = body
    out.fpn = FeaturePyramidNetwork([channels[k - 1] for k in chosen], out_channels,
                                    extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool())
    out.out_channels = out_channels
    return out


def segmentation_backbone(
        name: str,
        attn: str | None = None,
        *,
        pretrained: bool = False,
        aux: bool = False,
        frozen_bn: bool = False,
        freeze_attention_bn: bool = True,
        **kwargs: Any,
) -> FeatureDict:
    """The features torchvision's ``DeepLabV3`` / ``FCN`` take: ``{'out': last stage}`` (and ``'aux'``: the stage
    before, for their auxiliary head) from the classification model ``name`` with attention ``attn``.

    Args:
        name: a plugattn name, ``tv:NAME`` or ``timm:NAME``; plugattn's ImageNet CNNs and timm models take
            ``output_stride=8`` or ``16`` (DeepLabV3), torchvision ResNets
            ``replace_stride_with_dilation=[False, True, True]`` for output stride 8, as torchvision's segmenters.
        attn: the attention (``None``: the plain model).
        pretrained: the host library's ImageNet weights for foreign names.
        aux: also return the stage before the last as ``'aux'``.
        frozen_bn: freeze every BatchNorm (:func:`plugattn.freeze_bn`); segmentation usually trains them.
        freeze_attention_bn: with ``frozen_bn``, also freeze the attention's norms.
        **kwargs: options of :func:`plugattn.create_model`.

    Returns:
        a :class:`FeatureDict` with ``out_channels`` (and ``aux_channels``) set.
    """
    features, levels, channels, _ = _backbone(name, attn, pretrained, frozen_bn, freeze_attention_bn, kwargs)
    if aux and len(levels) < 2:
        raise PlugattnError(f'{name} has one stage only: no auxiliary features; pass aux=False')
    indices, names = ([levels[-2], levels[-1]], ['aux', 'out']) if aux else ([levels[-1]], ['out'])
    body = FeatureDict(features, indices, names)
    body.out_channels = channels[-1]
    if aux:
        body.aux_channels = channels[-2]
    return body
