"""Registry of attention modules: each name with its factory and its facts (paper, arXiv id, official repository,
label, colour, default options), and the ``create_attn`` factory.

Every attention module registers itself in its own file, so a new attention is one new file plus its
``register_attn`` call; model names (``<attn>_<backbone>``), pretrained cfgs and figures read everything from here.
"""
from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import PlugattnError, PlugattnTypeError
from .base import BlockAttention, GateAttention, StageAttention

__all__ = [
    'ATTN_REGISTRY', 'AttnInfo', 'AttnSpec', 'attn_info', 'attn_level', 'create_attn', 'get_attn', 'list_attn',
    'register_attn',
]

AttnFactory = Callable[..., nn.Module]
AttnSpec = str | AttnFactory | None

# Colour of an attention registered without one (and of unknown names in figures).
FALLBACK_COLOR = '#9da5b4'


@dataclass(frozen=True)
class AttnInfo:
    """One registered attention name and its facts.

    Attributes:
        name: registered name (``'se'``, ``'ela_t'``, ...).
        factory: the module class, or a partial of it carrying ``defaults``.
        label: display name in tables and figures (``'SE'``, ``'ELA-T'``).
        color: figure colour (hex), one per attention across every figure.
        paper: paper title.
        arxiv: arXiv id without prefix (``'1709.01507'``), or ``''``.
        repo: official repository URL, or ``''`` where none is published.
        defaults: module options this name presets (ELA's variants).
    """

    name: str
    factory: AttnFactory
    label: str
    color: str = FALLBACK_COLOR
    paper: str = ''
    arxiv: str = ''
    repo: str = ''
    defaults: Mapping[str, Any] = field(default_factory=dict)


ATTN_REGISTRY: dict[str, AttnInfo] = {}


def register_attn(
        name: str,
        *,
        label: str | None = None,
        color: str = FALLBACK_COLOR,
        paper: str = '',
        arxiv: str = '',
        repo: str = '',
        defaults: Mapping[str, Any] | None = None,
) -> Callable[[AttnFactory], AttnFactory]:
    """Class decorator (or function) registering a module under ``name`` with its facts.

    Args:
        name: registered name, lower case (``'se'``); models with it are named ``<name>_<backbone>``.
        label: display name (default: ``name``).
        color: figure colour (hex).
        paper: paper title.
        arxiv: arXiv id (``'1709.01507'``).
        repo: official repository URL.
        defaults: module options the name presets, which makes it a named variant:
            ``register_attn('ela_t', defaults={'kernel_size': 5})(ELA)`` registers ``partial(ELA, kernel_size=5)``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: AttnFactory) -> AttnFactory:
        if name in ATTN_REGISTRY:
            raise PlugattnError(f'attention {name!r} is already registered; pick another name')
        factory = functools.partial(cls, **defaults) if defaults else cls
        ATTN_REGISTRY[name] = AttnInfo(name, factory, label or name, color, paper, arxiv.removeprefix('arXiv:'),
                                       repo, dict(defaults or {}))
        return cls

    return decorator


def list_attn() -> list[str]:
    """Registered attention names, sorted."""
    return sorted(ATTN_REGISTRY)


def attn_info(name: str) -> AttnInfo:
    """The registered facts of attention ``name``; unknown names raise ``ValueError`` with close matches."""
    key = name.lower().replace('-', '_')
    if key not in ATTN_REGISTRY:
        close = difflib.get_close_matches(key, ATTN_REGISTRY, n=3, cutoff=0.5)
        hint = f'did you mean {", ".join(close)}?' if close else f'choose one of {", ".join(list_attn())}'
        raise PlugattnError(f'unknown attention {name!r}: {hint}')
    return ATTN_REGISTRY[key]


def get_attn(spec: AttnSpec) -> AttnFactory | None:
    """Resolve a name, class or partial to a module factory (``None`` stays ``None``)."""
    if spec is None or spec == '':
        return None
    if isinstance(spec, str):
        return attn_info(spec).factory
    if callable(spec):
        return spec
    raise PlugattnTypeError(f'attention spec must be a name, a class or a partial, got {type(spec).__name__}')


def create_attn(spec: AttnSpec, channels: int, **kwargs: Any) -> nn.Module | None:
    """Build an attention module for ``channels`` channels.

    Args:
        spec: registered name (``'se'``, ``'bav2'``, ...), a class or a partial; ``None`` returns ``None``.
        channels: channels of the gated tensor (the first positional argument of every module).
        **kwargs: module options, e.g. ``reduction=8`` or, for bridge attention, ``inner_channels=(64, 64)``.
    """
    factory = get_attn(spec)
    return None if factory is None else factory(channels, **kwargs)


def attn_level(spec: AttnSpec) -> str | None:
    """``'gate'``, ``'block'`` or ``'stage'`` for an attention spec, ``None`` for no attention."""
    factory = get_attn(spec)
    if factory is None:
        return None
    cls = factory.func if isinstance(factory, functools.partial) else factory
    for base, level in ((GateAttention, 'gate'), (BlockAttention, 'block'), (StageAttention, 'stage')):
        if isinstance(cls, type) and issubclass(cls, base):
            return level
    return 'gate'
