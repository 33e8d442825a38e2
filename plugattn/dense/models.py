"""torchvision's detection and segmentation models by short name, on any classification backbone, with attention.

:func:`build_dense_model` builds torchvision's own classes: ``fasterrcnn``, ``retinanet``, ``fcos``, ``maskrcnn``
and ``ssdlite320`` (detection), ``deeplabv3``, ``fcn`` and ``lraspp`` (segmentation). Without ``backbone`` the model
is torchvision's builder with its own backbone (``fcos`` is ``fcos_resnet50_fpn``) and ``attn`` is attached with
:func:`plugattn.attach`; torchvision's full builder names (``fasterrcnn_resnet50_fpn``, ``deeplabv3_resnet50``, ...)
work as well. With ``backbone`` (a plugattn, ``tv:NAME`` or ``timm:NAME`` classification name) the backbone comes
from :func:`~plugattn.dense.fpn_backbone` / :func:`~plugattn.dense.segmentation_backbone` and carries ``attn``::

    from plugattn.dense import build_dense_model

    ssd = build_dense_model('ssdlite320', 91, backbone='mobilenetv2', attn='ca')         # CA's COCO protocol
    seg = build_dense_model('deeplabv3', 21, backbone='mobilenetv2', attn='ca', output_stride=8)

No weights are downloaded unless ``pretrained_backbone`` asks for the host library's ImageNet weights (offline that
fails with one line); detection and segmentation weights are never fetched.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from ..errors import PlugattnError
from .backbones import FeatureDict, _backbone, fpn_backbone, segmentation_backbone

__all__ = ['DETECTION_MODELS', 'SEGMENTATION_MODELS', 'build_dense_model', 'dense_model_names', 'model_task']

DETECTION_MODELS = ('fasterrcnn', 'retinanet', 'fcos', 'maskrcnn', 'ssdlite320')
SEGMENTATION_MODELS = ('deeplabv3', 'fcn', 'lraspp')

# short name -> the torchvision builder used when no backbone is given
_DEFAULT_BUILDER = {
    'fasterrcnn': 'fasterrcnn_resnet50_fpn',
    'retinanet': 'retinanet_resnet50_fpn',
    'fcos': 'fcos_resnet50_fpn',
    'maskrcnn': 'maskrcnn_resnet50_fpn',
    'ssdlite320': 'ssdlite320_mobilenet_v3_large',
    'deeplabv3': 'deeplabv3_resnet50',
    'fcn': 'fcn_resnet50',
    'lraspp': 'lraspp_mobilenet_v3_large',
}
# torchvision builders: name -> (task, short name of its class)
_BUILDERS = {
    'fasterrcnn_resnet50_fpn': 'fasterrcnn', 'fasterrcnn_resnet50_fpn_v2': 'fasterrcnn',
    'fasterrcnn_mobilenet_v3_large_fpn': 'fasterrcnn', 'fasterrcnn_mobilenet_v3_large_320_fpn': 'fasterrcnn',
    'retinanet_resnet50_fpn': 'retinanet', 'retinanet_resnet50_fpn_v2': 'retinanet',
    'fcos_resnet50_fpn': 'fcos',
    'maskrcnn_resnet50_fpn': 'maskrcnn', 'maskrcnn_resnet50_fpn_v2': 'maskrcnn',
    'ssdlite320_mobilenet_v3_large': 'ssdlite320', 'ssd300_vgg16': 'ssd300',
    'deeplabv3_resnet50': 'deeplabv3', 'deeplabv3_resnet101': 'deeplabv3', 'deeplabv3_mobilenet_v3_large': 'deeplabv3',
    'fcn_resnet50': 'fcn', 'fcn_resnet101': 'fcn',
    'lraspp_mobilenet_v3_large': 'lraspp',
}


def dense_model_names() -> list[str]:
    """The short names and torchvision builder names :func:`build_dense_model` takes."""
    return [*DETECTION_MODELS, *SEGMENTATION_MODELS, *sorted(_BUILDERS)]


def _kind(name: str) -> str:
    """The short model name of ``name`` (a short name or a torchvision builder name)."""
    if name in _DEFAULT_BUILDER:
        return name
    if name in _BUILDERS:
        return _BUILDERS[name]
    import difflib

    close = difflib.get_close_matches(name, dense_model_names(), n=2, cutoff=0.5)
    hint = f' (did you mean {" or ".join(close)}?)' if close else ''
    raise PlugattnError(f'unknown detection/segmentation model {name!r}{hint}',
                        f'use one of {", ".join((*DETECTION_MODELS, *SEGMENTATION_MODELS))} or a torchvision '
                        'builder name such as fasterrcnn_resnet50_fpn')


def model_task(name: str) -> str:
    """``'detection'`` or ``'segmentation'``: the task of a dense model name.

    Raises:
        PlugattnError: Not a detection or segmentation model name.
    """
    return 'segmentation' if _kind(name) in SEGMENTATION_MODELS else 'detection'


def _offline_hint(e: BaseException, what: str) -> PlugattnError:
    return PlugattnError(f'cannot download the {what} ({type(e).__name__}: {" ".join(str(e).split())[:160]})',
                         'train without --pretrained, or start from a local file with --init-checkpoint FILE')


def _torchvision_model(builder: str, num_classes: int, pretrained_backbone: bool, options: dict[str, Any]) -> nn.Module:
    """torchvision's own builder, with no weights (or its ImageNet backbone weights when asked)."""
    import torchvision

    module = (torchvision.models.segmentation if _BUILDERS[builder] in SEGMENTATION_MODELS
              else torchvision.models.detection)
    fn = getattr(module, builder)
    try:
        return fn(weights=None, weights_backbone='DEFAULT' if pretrained_backbone else None, num_classes=num_classes,
                  **options)
    except TypeError as e:
        raise PlugattnError(f'cannot build {builder}: {" ".join(str(e).split())}',
                            'check the model options (model.kwargs)') from None
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        if pretrained_backbone:
            raise _offline_hint(e, f'ImageNet weights of the {builder} backbone') from None
        raise


def _dilation(backbone: str, output_stride: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword that gives ``backbone`` output stride 8 or 16: torchvision ResNets dilate their last stages
    (``replace_stride_with_dilation``), plugattn's ImageNet CNNs and timm models take ``output_stride``."""
    if output_stride is None or output_stride == 32:
        return kwargs
    if output_stride not in (8, 16):
        raise PlugattnError(f'output_stride must be 8, 16 or 32, got {output_stride}',
                            'use --set model.output_stride=8 or 16')
    if backbone.startswith('tv:'):
        return {**kwargs, 'replace_stride_with_dilation': [False, output_stride == 8, True]}
    return {**kwargs, 'output_stride': output_stride}


class _DepthwiseBlock(nn.Sequential):
    """SSDLite's extra feature layer: 1x1 reduce, 3x3 depthwise stride 2, 1x1 expand (each BN + ReLU6), as the
    SSDLite paper describes it (torchvision's builds the same from its own private helper)."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: Any) -> None:
        mid = out_channels // 2
        super().__init__(
            nn.Conv2d(in_channels, mid, 1, bias=False), norm_layer(mid), nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False), norm_layer(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), norm_layer(out_channels), nn.ReLU6(inplace=True),
        )


class SSDLiteFeatures(nn.Module):
    """The six SSDLite feature maps of a classification backbone: its stride-16 and stride-32 levels and four extra
    depthwise blocks (512, 256, 256, 128 channels), as ``torchvision.models.detection.SSD`` takes them (a list).

    Args:
        features: a ``features_only`` model with ``feature_info``.
        indices: the positions of its stride-16 and stride-32 levels.
        channels: their channels.
        norm_layer: normalisation of the extra blocks.
    """

    def __init__(self, features: nn.Module, indices: Sequence[int], channels: Sequence[int], norm_layer: Any) -> None:
        super().__init__()
        self.body = FeatureDict(features, indices, ['c4', 'c5'])
        widths = [channels[-1], 512, 256, 256, 128]
        self.extra = nn.ModuleList(_DepthwiseBlock(a, b, norm_layer) for a, b in itertools.pairwise(widths))
        self.out_channels = [*channels, *widths[1:]]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.body(x)
        out = [maps['c4'], maps['c5']]
        for block in self.extra:
            out.append(block(out[-1]))
        return {str(i): t for i, t in enumerate(out)}


def _ssdlite(backbone: str, attn: str | None, num_classes: int, pretrained: bool, trainable: int | None,
             create: dict[str, Any], options: dict[str, Any]) -> nn.Module:
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    features, levels, channels, _ = _backbone(backbone, attn, pretrained, False, False, create)
    info = features.feature_info
    dicts = info.get_dicts() if hasattr(info, 'get_dicts') else list(info)
    by_stride = {int(dicts[i]['reduction']): (i, c) for i, c in zip(levels, channels)}
    if 16 not in by_stride or 32 not in by_stride:
        raise PlugattnError(f'{backbone} has no stride-16 and stride-32 feature levels for SSDLite',
                            'use a CNN backbone such as mobilenetv2')
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    body = SSDLiteFeatures(features, [by_stride[16][0], by_stride[32][0]], [by_stride[16][1], by_stride[32][1]], norm)
    size = int(options.pop('size', 320))
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(body.out_channels, anchors.num_anchors_per_location(), num_classes, norm)
    defaults = {'score_thresh': 0.001, 'nms_thresh': 0.55, 'detections_per_img': 300, 'topk_candidates': 300,
                'image_mean': [0.485, 0.456, 0.406], 'image_std': [0.229, 0.224, 0.225]}
    return SSD(body, anchors, (size, size), num_classes, head=head, **{**defaults, **options})


def _lraspp(backbone: str, attn: str | None, num_classes: int, pretrained: bool, create: dict[str, Any],
            options: dict[str, Any]) -> nn.Module:
    from torchvision.models.segmentation.lraspp import LRASPP

    features, levels, channels, _ = _backbone(backbone, attn, pretrained, False, False, create)
    if len(levels) < 3:
        raise PlugattnError(f'{backbone} has fewer than three feature levels for LR-ASPP', 'use a CNN backbone')
    body = FeatureDict(features, [levels[1], levels[-1]], ['low', 'high'])
    return LRASPP(body, channels[1], channels[-1], num_classes, **options)


def build_dense_model(
        name: str,
        num_classes: int,
        *,
        backbone: str | None = None,
        attn: str | None = None,
        warm_start: bool = False,
        attn_kwargs: Mapping[str, Any] | None = None,
        pretrained_backbone: bool = False,
        output_stride: int | None = None,
        trainable_layers: int | None = None,
        fpn_channels: int = 256,
        aux_loss: bool = False,
        backbone_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
) -> nn.Module:
    """A torchvision detection or segmentation model with attention.

    Args:
        name: ``fasterrcnn``, ``retinanet``, ``fcos``, ``maskrcnn``, ``ssdlite320``, ``deeplabv3``, ``fcn``,
            ``lraspp``, or a torchvision builder name (``fasterrcnn_resnet50_fpn``, ``deeplabv3_resnet50``, ...).
        num_classes: classes including the background (torchvision's convention for both tasks).
        backbone: a plugattn, ``tv:NAME`` or ``timm:NAME`` classification name; default the torchvision model's
            own backbone (and a builder name always uses its own).
        attn: the attention (``None``: plain).
        warm_start: attach ``attn`` so that the model starts as exactly the plain one.
        attn_kwargs: options of the attention.
        pretrained_backbone: the host library's ImageNet weights for the backbone (downloaded).
        output_stride: 8 or 16 for the segmentation models' dilated backbones (``backbone`` needed).
        trainable_layers: FPN detectors: stages of the backbone that train, counted from the last (default all
            of them without pretrained weights, 3 with them, as torchvision).
        fpn_channels: channels of the FPN (with ``backbone``).
        aux_loss: DeepLabV3 / FCN: the auxiliary FCN head on the stage before the last.
        backbone_kwargs: further options of the backbone's ``create_model``.
        **options: options of the torchvision model class (``min_size``, ``max_size``, ``box_detections_per_img``,
            ``size`` of SSDLite, ...).

    Raises:
        PlugattnError: Unknown name, an option the model does not take, or an attention the backbone cannot hold.
    """
    kind = _kind(name)
    builder = name if name in _BUILDERS else None
    options = dict(options)
    if num_classes < 2:
        raise PlugattnError(f'{name} needs at least 2 classes (background included), got {num_classes}',
                            'check the data set')
    if backbone is None or builder is not None:
        if output_stride is not None and output_stride != 32 and kind in SEGMENTATION_MODELS:
            raise PlugattnError(f'output_stride applies to a --backbone of {name}, not to torchvision\'s own',
                                'pass --backbone NAME (e.g. mobilenetv2) or drop model.output_stride')
        if builder is None and backbone is not None:
            raise PlugattnError(f'{name} is a torchvision builder with its own backbone; --backbone does not apply',
                                f'use --model {kind} --backbone {backbone}')
        if kind in SEGMENTATION_MODELS and kind != 'lraspp':
            options.setdefault('aux_loss', aux_loss)
        model = _torchvision_model(builder or _DEFAULT_BUILDER[kind], num_classes, pretrained_backbone, options)
        if attn:
            from ..attach import attach

            attach(model, attn, attn_kwargs=dict(attn_kwargs or {}), warm_start=warm_start)
        return model

    create = dict(backbone_kwargs or {})
    if warm_start:
        create['warm_start'] = True
    if attn_kwargs:
        create['attn_kwargs'] = dict(attn_kwargs)
    try:
        if kind in ('fasterrcnn', 'maskrcnn', 'retinanet', 'fcos'):
            from torchvision.models import detection
            from torchvision.ops.feature_pyramid_network import LastLevelP6P7

            tl = trainable_layers if trainable_layers is not None else (3 if pretrained_backbone else None)
            one_stage = kind in ('retinanet', 'fcos')
            extra = {'returned_layers': [2, 3, 4], 'extra_blocks': LastLevelP6P7(fpn_channels, fpn_channels)} \
                if one_stage else {}
            body = fpn_backbone(backbone, attn, pretrained=pretrained_backbone, trainable_layers=tl,
                                out_channels=fpn_channels, **extra, **create)
            cls = {'fasterrcnn': detection.FasterRCNN, 'maskrcnn': detection.MaskRCNN,
                   'retinanet': detection.RetinaNet, 'fcos': detection.FCOS}[kind]
            return cls(body, num_classes=num_classes, **options)
        if kind == 'ssdlite320':
            return _ssdlite(backbone, attn, num_classes, pretrained_backbone, trainable_layers, create, options)
        create = _dilation(backbone, output_stride, create)
        if kind == 'lraspp':
            return _lraspp(backbone, attn, num_classes, pretrained_backbone, create, options)
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
        from torchvision.models.segmentation.fcn import FCN, FCNHead

        body = segmentation_backbone(backbone, attn, pretrained=pretrained_backbone, aux=aux_loss, **create)
        aux = FCNHead(body.aux_channels, num_classes) if aux_loss else None
        if kind == 'deeplabv3':
            return DeepLabV3(body, DeepLabHead(body.out_channels, num_classes), aux, **options)
        return FCN(body, FCNHead(body.out_channels, num_classes), aux, **options)
    except TypeError as e:
        raise PlugattnError(f'cannot build {name} on {backbone}: {" ".join(str(e).split())}',
                            'check the model options (model.kwargs)') from None
    except (OSError, RuntimeError) as e:
        if pretrained_backbone and not isinstance(e, PlugattnError):
            raise _offline_hint(e, f'ImageNet weights of {backbone}') from None
        raise

