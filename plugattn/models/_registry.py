"""Model registry: model families, backbone builders, their attention variants, ``create_model`` and ``list_models``.

Each family file registers its family's facts once (:func:`register_model_family`: first conv, classifier, crop,
papers, timm feature layout) and its backbone builders (:func:`register_model`). Every registered attention module
that can be built at a backbone's widths is a model of its own, ``{attn}_{backbone}`` (``bav2_resnet50``,
``ela_b_resnet20``, ..., specs D13), including attention modules registered after the backbone.
``create_model('resnet50', attn='bav2')`` and ``create_model('bav2_resnet50')`` build the same model. Only
plugattn's own names live here; ``plugattn.create_model`` (:mod:`plugattn.hub`) also builds torchvision and timm
models.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import PlugattnError, PlugattnTypeError
from ..layers import ATTN_REGISTRY, AttnInfo, attn_info, attn_level, create_attn, list_attn

__all__ = [
    'ModelEntry', 'ModelFamily', 'create_model', 'get_model_entry', 'get_model_family', 'list_models',
    'pretrained_cfg', 'register_model', 'register_model_family',
]

@dataclass(frozen=True)
class ModelFamily:
    """The facts a family's models share, whatever their attention (timm pretrained-cfg fields and feature layout).

    Attributes:
        name: family name (``resnet``, ``resnet_cifar``, ``preresnet``, ...), used in listings and docs.
        first_conv: module name of the first conv.
        classifier: module name of the classifier.
        reduction: stride of the last feature map (pool_size = input // reduction); ``None`` for class-token
            models, whose features are tokens.
        crop_pct: timm's evaluation crop fraction.
        interpolation: resize interpolation of the family's reference training.
        paper_ids: the backbone's papers (``'arXiv:1512.03385'``).
        paper_name: title of its main paper.
        origin_url: reference code whose keys the models use, or ``''``.
        fixed_input_size: FX graphs are traced at the input size (timm's flag; eager runs take any size).
        min_input_size: smallest input, where it differs from timm's default.
        feature_cfg: timm ``feature_cfg`` of the family's ``features_only`` wrapper.
        feature_levels: feature levels timm's ``features_only`` returns by default.
    """

    name: str
    first_conv: str
    classifier: str
    reduction: int | None
    crop_pct: float
    interpolation: str
    paper_ids: tuple[str, ...]
    paper_name: str
    origin_url: str = ''
    fixed_input_size: bool = False
    min_input_size: tuple[int, int, int] | None = None
    feature_cfg: dict[str, Any] = field(default_factory=dict)
    feature_levels: int = 5


_FAMILIES: dict[str, ModelFamily] = {}


def register_model_family(name: str, **facts: Any) -> ModelFamily:
    """Register a model family once, in its model file, before its builders (fields: :class:`ModelFamily`).

    Raises:
        ValueError: ``name`` is already registered.
    """
    if name in _FAMILIES:
        raise ValueError(f'model family {name!r} is already registered')
    family = _FAMILIES[name] = ModelFamily(name, **facts)
    return family


def get_model_family(name: str) -> ModelFamily:
    """The registered facts of family ``name``."""
    if name not in _FAMILIES:
        raise ValueError(f'unknown model family {name!r}: register it with register_model_family first '
                         f'(registered: {", ".join(sorted(_FAMILIES))})')
    return _FAMILIES[name]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model name.

    Attributes:
        name: registered name.
        builder: backbone builder, called with ``attn=`` and the user's keyword arguments.
        backbone: name of the plain backbone.
        attn: attention key, or ``None`` for the plain backbone.
        attn_kwargs: default options of the attention on this backbone (e.g. DIA's reduction).
        cfg: default configuration (input size, family, extra paper ids).
    """

    name: str
    builder: Callable[..., nn.Module]
    backbone: str
    attn: str | None
    attn_kwargs: dict[str, Any] = field(default_factory=dict)
    cfg: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Backbone:
    """What :func:`register_model` was told, to derive the backbone's attention variants from the attention
    registry whenever that changes."""

    entry: ModelEntry
    attn_widths: tuple[int, ...]
    attns: tuple[str, ...] | None
    exclude_attns: frozenset[str]
    attn_defaults: dict[str, dict[str, Any]]


_BACKBONES: dict[str, _Backbone] = {}
_MODELS: dict[str, ModelEntry] = {}
_synced: tuple[Any, ...] = ()  # the backbones and attention registrations _MODELS was made from
_buildable: dict[tuple[str, str], tuple[AttnInfo, bool]] = {}  # (backbone, attention) -> (registration, buildable)


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
        exclude_attns: Collection[str] = (),
        attn_defaults: dict[str, dict[str, Any]] | None = None,
        paper_ids: Sequence[str] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a backbone builder under its function name, plus one variant per buildable attention.

    Args:
        attn_widths: every channel count an attention module sees in this backbone (gate-level modules that cannot
            be built at one of them, e.g. ELA-T at 16 channels, get no registered variant).
        input_size: default (channels, height, width) input.
        family: a family registered with :func:`register_model_family`.
        attns: attention keys to register (default: every registered attention module, also those registered
            later).
        exclude_attns: attention keys the backbone does not take (with ``attns=None``).
        attn_defaults: per-attention default options on this backbone.
        paper_ids: papers of this backbone beyond its family's (ResNeXt's).
    """
    get_model_family(family)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        backbone = fn.__name__
        if backbone in _BACKBONES:
            raise ValueError(f'model {backbone!r} is already registered')
        cfg = {'input_size': input_size, 'family': family, 'num_classes': 1000 if input_size[1] >= 224 else 10,
               'paper_ids': tuple(paper_ids)}
        entry = ModelEntry(backbone, fn, backbone, None, {}, cfg)
        for attn in attns or ():  # a named attention must exist
            attn_info(attn)
        _BACKBONES[backbone] = _Backbone(entry, tuple(attn_widths), None if attns is None else tuple(attns),
                                         frozenset(exclude_attns), dict(attn_defaults or {}))
        return fn

    return decorator


def _sync() -> None:
    """Bring the attention variants in ``_MODELS`` in line with the backbones and the attention registry (attention
    modules registered after a backbone get their variants, removed ones lose them)."""
    global _synced
    state = (len(_BACKBONES), *ATTN_REGISTRY.items())
    if state == _synced:
        return
    variants: dict[str, ModelEntry] = {}
    for backbone, spec in _BACKBONES.items():
        for attn in list_attn() if spec.attns is None else spec.attns:
            if attn in spec.exclude_attns or attn not in ATTN_REGISTRY:
                continue
            info = ATTN_REGISTRY[attn]
            hit = _buildable.get((backbone, attn))
            if hit is None or hit[0] is not info:  # checked once per registration
                hit = _buildable[backbone, attn] = info, _attn_buildable(attn, spec.attn_widths)
            if hit[1]:
                name = f'{attn}_{backbone}'
                if name in _BACKBONES:
                    raise ValueError(f'model {name!r} is both a backbone and an attention variant')
                variants[name] = ModelEntry(name, spec.entry.builder, backbone, attn,
                                            dict(spec.attn_defaults.get(attn, {})), spec.entry.cfg)
    _MODELS.clear()
    _MODELS.update({name: spec.entry for name, spec in _BACKBONES.items()})
    _MODELS.update(variants)
    _synced = state


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # as plugattn.data's cifar10


def pretrained_cfg(name: str, num_classes: int | None = None, in_chans: int | None = None) -> dict[str, Any]:
    """timm's pretrained cfg of a registered model (no weights: no url or hub id), every field filled.

    ``input_size`` is the architecture's native resolution (32 for the CIFAR networks, 224 for the ImageNet ones),
    ``mean``/``std`` those of the data it is meant for (CIFAR-10 or ImageNet), so that timm's
    ``resolve_data_config`` preprocesses correctly.
    """
    entry = get_model_entry(name)
    fam = get_model_family(entry.cfg['family'])
    c, h, w = entry.cfg['input_size']
    cifar = h < 224
    papers = [*fam.paper_ids, *entry.cfg['paper_ids']]
    origin = fam.origin_url
    if entry.attn is not None:
        info = attn_info(entry.attn)
        origin = info.repo
        if info.arxiv:
            papers.append(f'arXiv:{info.arxiv}')
    reduction = fam.reduction
    cfg = dict(
        architecture=name,
        input_size=(in_chans or c, h, w),
        pool_size=None if reduction is None else (h // reduction, w // reduction),
        crop_pct=fam.crop_pct,
        interpolation=fam.interpolation,
        mean=CIFAR10_MEAN if cifar else IMAGENET_MEAN,
        std=CIFAR10_STD if cifar else IMAGENET_STD,
        num_classes=entry.cfg['num_classes'] if num_classes is None else num_classes,
        first_conv=fam.first_conv,
        classifier=fam.classifier,
        fixed_input_size=fam.fixed_input_size,
        license='apache-2.0',
        paper_ids=tuple(papers),
        paper_name=fam.paper_name,
        description=f'plugattn {name}: {entry.backbone} with {entry.attn or "no"} plug-in attention, no weights',
    )
    if origin:
        cfg['origin_url'] = origin
    if fam.min_input_size is not None:
        cfg['min_input_size'] = fam.min_input_size
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
    _sync()
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
    """The registry entry of a plugattn model ``name``; unknown names raise ``ValueError`` with close matches."""
    _sync()
    if name in _MODELS:
        return _MODELS[name]
    close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
    hint = f'did you mean {", ".join(close)}?' if close else "see plugattn.list_models() or 'plugattn list-models'"
    raise PlugattnError(f'unknown model {name!r}: {hint}')


def _split_attn_name(name: str) -> tuple[str, str] | None:
    """``('ela_t', 'resnet20')`` for a name made of a known attention and backbone that is not registered."""
    _sync()
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
    """Build a registered plugattn model (torchvision and timm names: :func:`plugattn.create_model`).

    Args:
        name: registered name (``resnet50``, ``bav2_resnet50``, ``dia_resnet164``, ...).
        pretrained: no pretrained weights are published for these models; ``True`` raises with a pointer to
            loading your own checkpoint.
        features_only: return a feature extractor whose forward gives the stem and stage outputs.
        out_indices: feature levels to return with ``features_only`` (default: all).
        **kwargs: model options: ``num_classes``, ``in_chans``, ``attn`` (attention key for a plain backbone name),
            ``attn_kwargs`` (a dict, or one dict per stage), and the backbone's own options.
    """
    _sync()
    attn = kwargs.pop('attn', None)
    if name not in _MODELS and (split := _split_attn_name(name)) is not None:
        # A combination the registry skipped (e.g. ELA-T at 16 channels): build it so the module explains why.
        attn, name = split
    entry = get_model_entry(name)
    if attn is not None and entry.attn is not None and attn != entry.attn:
        raise PlugattnError(f'{name} already has attention {entry.attn!r}',
                            f'pass attn={attn!r} to {entry.backbone} instead')
    if attn is not None and entry.attn is None:
        variant = f'{attn}_{entry.backbone}'
        entry = _MODELS.get(variant) or ModelEntry(variant, entry.builder, entry.backbone, attn, {}, entry.cfg)
    if pretrained:
        raise PlugattnError(
            f'no pretrained weights are published for {entry.name}; train one (plugattn train) or load your own '
            'state_dict with model.load_state_dict(...) / plugattn.load_official(...)'
        )
    attn_kwargs = _merge_attn_kwargs(entry.attn_kwargs, kwargs.pop('attn_kwargs', None))
    try:
        model = entry.builder(attn=entry.attn, attn_kwargs=attn_kwargs, **kwargs)
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise PlugattnTypeError(f'{entry.name}: {e}; see the builder docstring for its options') from None
    model.model_name = entry.name
    model.__dict__['_plugattn_build'] = (entry.backbone, kwargs)  # what plugattn.attach rebuilds with attention
    base = entry.name if entry.name in _MODELS else entry.backbone
    cfg = pretrained_cfg(base, num_classes=model.num_classes, in_chans=model.in_chans)
    model.default_cfg = model.pretrained_cfg = dict(cfg, architecture=entry.name)
    if features_only:
        model.set_features_only(out_indices)  # checked there (a string is not taken as its characters)
    return model
