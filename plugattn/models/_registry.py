"""Model registry: backbone builders, their attention variants, ``create_model`` and ``list_models``.

A backbone builder is registered once with :func:`register_model`; every attention module that can be built at
the backbone's widths is registered with it as ``{attn}_{backbone}`` (``bav2_resnet50``, ``ela_b_resnet20``, ...,
specs D13). ``create_model('resnet50', attn='bav2')`` and ``create_model('bav2_resnet50')`` build the same model.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import attn_level, create_attn, list_attn

__all__ = ['ModelEntry', 'create_model', 'get_model_entry', 'list_models', 'pretrained_cfg', 'register_model']


@dataclass(frozen=True)
class ModelEntry:
    """One registered model name.

    Attributes:
        name: registered name.
        builder: backbone builder, called with ``attn=`` and the user's keyword arguments.
        backbone: name of the plain backbone.
        attn: attention key, or ``None`` for the plain backbone.
        attn_kwargs: default options of the attention on this backbone (e.g. DIA's reduction).
        cfg: default configuration (input size, family, paper provenance).
    """

    name: str
    builder: Callable[..., nn.Module]
    backbone: str
    attn: str | None
    attn_kwargs: dict[str, Any] = field(default_factory=dict)
    cfg: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}


def _attn_buildable(attn: str, widths: Iterable[int]) -> bool:
    """Whether a gate-level module accepts every width (ELA's group constraints); built on the meta device."""
    if attn_level(attn) != 'gate':
        return True
    try:
        for width in widths:
            create_attn(attn, width, device=torch.device('meta'))
    except ValueError:
        return False
    return True


def register_model(
        *,
        attn_widths: Sequence[int],
        input_size: tuple[int, int, int],
        family: str,
        attns: Sequence[str] | None = None,
        attn_defaults: dict[str, dict[str, Any]] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a backbone builder under its function name, plus one variant per buildable attention.

    Args:
        attn_widths: every channel count an attention module sees in this backbone (gate-level modules that cannot
            be built at one of them, e.g. ELA-T at 16 channels, get no registered variant).
        input_size: default (channels, height, width) input.
        family: model family (``resnet``, ``resnet_cifar``, ``preresnet``, ...), used in listings and docs.
        attns: attention keys to register (default: all registered attention modules).
        attn_defaults: per-attention default options on this backbone.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        backbone = fn.__name__
        cfg = {'input_size': input_size, 'family': family, 'num_classes': 1000 if input_size[1] >= 224 else 10}
        _add(ModelEntry(backbone, fn, backbone, None, {}, cfg))
        for attn in list_attn() if attns is None else attns:
            if _attn_buildable(attn, attn_widths):
                defaults = dict((attn_defaults or {}).get(attn, {}))
                _add(ModelEntry(f'{attn}_{backbone}', fn, backbone, attn, defaults, cfg))
        return fn

    return decorator


def _add(entry: ModelEntry) -> None:
    if entry.name in _MODELS:
        raise ValueError(f'model {entry.name!r} is already registered')
    _MODELS[entry.name] = entry


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # as plugattn.data's cifar10

# Per family: timm pretrained-cfg fields that do not depend on the attention. ``reduction`` is the stride of the
# last feature map (pool_size = input // reduction; None for class-token models, whose features are tokens).
_FAMILY_CFG: dict[str, dict[str, Any]] = {
    'resnet': dict(first_conv='conv1', classifier='fc', reduction=32, crop_pct=0.875, interpolation='bilinear',
                   paper_ids=('arXiv:1512.03385',), paper_name='Deep Residual Learning for Image Recognition'),
    'resnet_cifar': dict(first_conv='conv1', classifier='fc', reduction=4, crop_pct=1.0, interpolation='bilinear',
                         paper_ids=('arXiv:1512.03385',), paper_name='Deep Residual Learning for Image Recognition'),
    'preresnet': dict(first_conv='conv1', classifier='fc', reduction=4, crop_pct=1.0, interpolation='bilinear',
                      paper_ids=('arXiv:1603.05027',), paper_name='Identity Mappings in Deep Residual Networks'),
    'wrn': dict(first_conv='conv1', classifier='fc', reduction=4, crop_pct=1.0, interpolation='bilinear',
                paper_ids=('arXiv:1605.07146',), paper_name='Wide Residual Networks'),
    'mobilenetv2': dict(first_conv='features.0.0', classifier='classifier.1', reduction=32, crop_pct=0.875,
                        interpolation='bilinear', paper_ids=('arXiv:1801.04381',),
                        paper_name='MobileNetV2: Inverted Residuals and Linear Bottlenecks'),
    'regnety': dict(first_conv='stem.conv', classifier='fc', reduction=32, crop_pct=0.875, interpolation='bicubic',
                    paper_ids=('arXiv:2003.13678',), paper_name='Designing Network Design Spaces'),
    # fixed_input_size: Swin's FX graphs are traced at img_size (eager runs take any size)
    'swin': dict(first_conv='patch_embed.proj', classifier='head.fc', reduction=32, crop_pct=0.9,
                 interpolation='bicubic', fixed_input_size=True, paper_ids=('arXiv:2103.14030',),
                 paper_name='Swin Transformer: Hierarchical Vision Transformer using Shifted Windows'),
    'cswin': dict(first_conv='stage1_conv_embed.0', classifier='head', reduction=32, crop_pct=0.9,
                  interpolation='bicubic', fixed_input_size=True, paper_ids=('arXiv:2107.00652',),
                  paper_name='CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows'),
    'pvt': dict(first_conv='patch_embed1.proj', classifier='head', reduction=None, crop_pct=0.875,
                interpolation='bicubic', min_input_size=(3, 32, 32), paper_ids=('arXiv:2102.12122',),
                paper_name='Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without '
                           'Convolutions'),
    'vit': dict(first_conv='patch_embed.proj', classifier='head', reduction=None, crop_pct=0.9,
                interpolation='bicubic', paper_ids=('arXiv:2012.12877', 'arXiv:2010.11929'),
                paper_name='Training data-efficient image transformers & distillation through attention'),
}
# Attention papers and official repositories (origin_url of the attention variants).
_ATTN_PAPERS: dict[str, tuple[str, str]] = {
    'se': ('arXiv:1709.01507', 'https://github.com/hujie-frank/SENet'),
    'eca': ('arXiv:1910.03151', 'https://github.com/BangguWu/ECANet'),
    'cbam': ('arXiv:1807.06521', 'https://github.com/Jongchan/attention-module'),
    'ca': ('arXiv:2103.02907', 'https://github.com/houqb/CoordAttention'),
    'ela': ('arXiv:2403.01123', ''),
    'bav1': ('arXiv:2112.04150', 'https://github.com/zhaoy376/Bridge-Attention'),
    'bav2': ('arXiv:2410.07860', 'https://github.com/ZOUrz/BA-Net-Bridge-Attention-in-Deep-Neural-Networks'),
    'dia': ('arXiv:1905.10671', 'https://github.com/gbup-group/DIANet'),
}


def pretrained_cfg(name: str, num_classes: int | None = None, in_chans: int | None = None) -> dict[str, Any]:
    """timm's pretrained cfg of a registered model (no weights: no url or hub id), every field filled.

    ``input_size`` is the architecture's native resolution (32 for the CIFAR networks, 224 for the ImageNet ones),
    ``mean``/``std`` those of the data it is meant for (CIFAR-10 or ImageNet), so that timm's
    ``resolve_data_config`` preprocesses correctly.
    """
    entry = get_model_entry(name)
    fam = _FAMILY_CFG[entry.cfg['family']]
    c, h, w = entry.cfg['input_size']
    cifar = h < 224
    papers = list(fam['paper_ids'])
    origin = 'https://github.com/pytorch/vision' if entry.cfg['family'] in ('resnet', 'mobilenetv2') else ''
    if 'resnext' in entry.backbone:
        papers.append('arXiv:1611.05431')
    if entry.attn is not None:
        paper, origin = _ATTN_PAPERS['ela' if entry.attn.startswith('ela') else entry.attn]
        papers.append(paper)
    reduction = fam['reduction']
    cfg = dict(
        architecture=name,
        input_size=(in_chans or c, h, w),
        pool_size=None if reduction is None else (h // reduction, w // reduction),
        crop_pct=fam['crop_pct'],
        interpolation=fam['interpolation'],
        mean=CIFAR10_MEAN if cifar else IMAGENET_MEAN,
        std=CIFAR10_STD if cifar else IMAGENET_STD,
        num_classes=entry.cfg['num_classes'] if num_classes is None else num_classes,
        first_conv=fam['first_conv'],
        classifier=fam['classifier'],
        fixed_input_size=fam.get('fixed_input_size', False),
        license='apache-2.0',
        paper_ids=tuple(papers),
        paper_name=fam['paper_name'],
        description=f'plugattn {name}: {entry.backbone} with {entry.attn or "no"} plug-in attention, no weights',
    )
    if origin:
        cfg['origin_url'] = origin
    if 'min_input_size' in fam:
        cfg['min_input_size'] = fam['min_input_size']
    return cfg


def list_models(
        pattern: str | Sequence[str] | None = None,
        *,
        attn: str | None = None,
        backbone: str | None = None,
) -> list[str]:
    """Registered model names, sorted, optionally filtered.

    Args:
        pattern: fnmatch pattern(s), e.g. ``'bav2*'`` or ``['*resnet20', '*resnet50']``.
        attn: only models with this attention key (``'none'`` for plain backbones).
        backbone: only variants of this backbone.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or ['*'])
    names = []
    for name, entry in _MODELS.items():
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if attn is not None and (entry.attn or 'none') != attn:
            continue
        if backbone is not None and entry.backbone != backbone:
            continue
        names.append(name)
    return sorted(names)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names raise ``ValueError`` with close matches."""
    if name in _MODELS:
        return _MODELS[name]
    if name.startswith(('tv:', 'timm:')):  # a torchvision / timm model, 'tv:NAME+ATTN' attached (plugattn.attach)
        backbone, _, attn = name.partition('+')
        return ModelEntry(name, lambda **kw: create_model(name, **kw), backbone, attn or None, {},
                          {'input_size': (3, 224, 224), 'family': name.split(':', 1)[0], 'num_classes': 1000})
    close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
    hint = f'did you mean {", ".join(close)}?' if close else "see plugattn.list_models() or 'plugattn list-models'"
    raise ValueError(f'unknown model {name!r}: {hint}')


def _split_attn_name(name: str) -> tuple[str, str] | None:
    """``('ela_t', 'resnet20')`` for a name made of a known attention and backbone that is not registered."""
    for attn in sorted(list_attn(), key=len, reverse=True):
        backbone = name[len(attn) + 1:]
        if name.startswith(attn + '_') and backbone in _MODELS and _MODELS[backbone].attn is None:
            return attn, backbone
    return None


def _merge_attn_kwargs(defaults: dict[str, Any], user: Any) -> Any:
    if user is None:
        return dict(defaults) if defaults else None
    if isinstance(user, dict):
        return {**defaults, **user}
    return [{**defaults, **d} if isinstance(d, dict) else d for d in user]


def create_model(
        name: str,
        pretrained: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name (``resnet50``, ``bav2_resnet50``, ``dia_resnet164``, ...).
        pretrained: no pretrained weights are published for these models; ``True`` raises with a pointer to
            loading your own checkpoint.
        features_only: return a feature extractor whose forward gives the stem and stage outputs.
        out_indices: feature levels to return with ``features_only`` (default: all).
        **kwargs: model options: ``num_classes``, ``in_chans``, ``attn`` (attention key for a plain backbone name),
            ``attn_kwargs`` (a dict, or one dict per stage), and the backbone's own options.
    """
    if name.startswith(('tv:', 'timm:')) or kwargs.get('warm_start'):
        # torchvision / timm models and warm-started attachment: plugattn.attach builds them
        from ..attach.build import create_model as create_attached

        return create_attached(name, pretrained, features_only=features_only, out_indices=out_indices, **kwargs)
    attn = kwargs.pop('attn', None)
    if name not in _MODELS and (split := _split_attn_name(name)) is not None:
        # A combination the registry skipped (e.g. ELA-T at 16 channels): build it so the module explains why.
        attn, name = split
    entry = get_model_entry(name)
    if attn is not None and entry.attn is not None and attn != entry.attn:
        raise ValueError(f'{name} already has attention {entry.attn!r}; pass attn={attn!r} to {entry.backbone} instead')
    if attn is not None and entry.attn is None:
        variant = f'{attn}_{entry.backbone}'
        entry = _MODELS.get(variant) or ModelEntry(variant, entry.builder, entry.backbone, attn, {}, entry.cfg)
    if pretrained:
        raise ValueError(
            f'no pretrained weights are published for {entry.name}; train one (plugattn train) or load your own '
            'state_dict with model.load_state_dict(...) / plugattn.load_official(...)'
        )
    attn_kwargs = _merge_attn_kwargs(entry.attn_kwargs, kwargs.pop('attn_kwargs', None))
    try:
        model = entry.builder(attn=entry.attn, attn_kwargs=attn_kwargs, **kwargs)
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise ValueError(f'{entry.name}: {e}; see the builder docstring for its options') from None
    model.model_name = entry.name
    base = entry.name if entry.name in _MODELS else entry.backbone
    cfg = pretrained_cfg(base, num_classes=model.num_classes, in_chans=model.in_chans)
    model.default_cfg = model.pretrained_cfg = dict(cfg, architecture=entry.name)
    if features_only:
        model.set_features_only(None if out_indices is None else tuple(out_indices))
    return model
