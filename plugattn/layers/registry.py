"""Registry of attention modules: names to classes (or partials), and the ``create_attn`` factory."""
from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import PlugattnError, PlugattnTypeError
from .base import BlockAttention, GateAttention, StageAttention

__all__ = ['ATTN_REGISTRY', 'AttnSpec', 'attn_level', 'create_attn', 'get_attn', 'list_attn', 'register_attn']

AttnFactory = Callable[..., nn.Module]
AttnSpec = str | AttnFactory | None

ATTN_REGISTRY: dict[str, AttnFactory] = {}


def register_attn(*names: str, **defaults: Any) -> Callable[[AttnFactory], AttnFactory]:
    """Class decorator (or function) registering a module under one or more names.

    ``defaults`` turn the registration into a named variant: ``register_attn('ela_t', kernel_size=5)(ELA)``
    registers ``partial(ELA, kernel_size=5)``. Registering a name twice raises.
    """

    def decorator(cls: AttnFactory) -> AttnFactory:
        factory = functools.partial(cls, **defaults) if defaults else cls
        for name in names:
            if name in ATTN_REGISTRY:
                raise PlugattnError(f'attention {name!r} is already registered; pick another name')
            ATTN_REGISTRY[name] = factory
        return cls

    return decorator


def list_attn() -> list[str]:
    """Registered attention names, sorted."""
    return sorted(ATTN_REGISTRY)


def get_attn(spec: AttnSpec) -> AttnFactory | None:
    """Resolve a name, class or partial to a module factory (``None`` stays ``None``)."""
    if spec is None or spec == '':
        return None
    if isinstance(spec, str):
        key = spec.lower().replace('-', '_')
        if key not in ATTN_REGISTRY:
            close = difflib.get_close_matches(key, ATTN_REGISTRY, n=3, cutoff=0.5)
            hint = f'did you mean {", ".join(close)}?' if close else f'choose one of {", ".join(list_attn())}'
            raise PlugattnError(f'unknown attention {spec!r}: {hint}')
        return ATTN_REGISTRY[key]
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
