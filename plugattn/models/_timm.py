"""Register plugattn's models with timm, so that ``timm.create_model('bav2_resnet50')`` and timm's tools work.

Registration is an explicit step, :func:`register_with_timm` (also ``plugattn.register_timm()``); ``import plugattn``
registers by itself only when timm has already been imported. Nothing touches the import system.

Every model is registered with a complete timm pretrained cfg (no weights: no url, no hub id; see
:func:`plugattn.models.pretrained_cfg`) and built through timm's ``build_model_with_cfg``, so timm's
``features_only`` wrappers (``feature_cls='list' | 'dict' | 'hook' | 'fx' | 'getter'``, ``feature_cfg``), its
``pretrained_cfg`` handling and its ``resolve_data_config`` apply unchanged. Names timm already owns (``resnet50``,
``resnext50_32x4d``, ...) are registered as ``plugattn_<name>`` (``timm.create_model('plugattn_resnet50')``); the
attention variants keep their names. timm is imported only inside these functions (it is optional).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from ._registry import create_model, get_model_entry, get_model_family, list_models, pretrained_cfg

__all__ = ['TIMM_PREFIX', 'default_cfgs', 'register_with_timm', 'timm_names']

TIMM_PREFIX = 'plugattn_'
# timm reads ``<module of the entrypoint>.default_cfgs[name]`` when an entrypoint is registered.
default_cfgs: dict[str, dict[str, Any]] = {}
_registered: dict[str, str] = {}  # timm name -> plugattn name


def _entrypoint(timm_name: str, name: str) -> Callable[..., nn.Module]:
    family = get_model_family(get_model_entry(name).cfg['family'])  # its timm feature wrapper and levels

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models import build_model_with_cfg

        if pretrained:
            create_model(name, pretrained=True)  # raises the "no pretrained weights" error
        feature_cfg = dict(family.feature_cfg, out_indices=tuple(range(family.feature_levels)))
        feature_cfg.update(kwargs.pop('feature_cfg', None) or {})
        return build_model_with_cfg(
            _Builder(name), timm_name, pretrained, feature_cfg=feature_cfg, **kwargs,
        )

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'plugattn {name} through timm (see plugattn.create_model).'
    return entrypoint


class _Builder:
    """Calls :func:`plugattn.create_model` for one name (a picklable, named stand-in for timm's model class)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, **kwargs: Any) -> nn.Module:
        return create_model(self.name, **kwargs)


def register_with_timm() -> list[str]:
    """Register every plugattn model with timm (idempotent); returns the names timm knows them by.

    Plain backbones whose names timm already uses are registered as ``plugattn_<name>``.
    """
    if _registered:
        return list(_registered)
    from timm.models import is_model, register_model

    module = sys.modules[__name__]
    for name in list_models():
        timm_name = name
        if is_model(name) and name not in _registered:
            timm_name = TIMM_PREFIX + name
        default_cfgs[timm_name] = dict(pretrained_cfg(name), architecture=timm_name)
        fn = _entrypoint(timm_name, name)
        setattr(module, timm_name, fn)  # timm lists registered names in the module's __all__
        register_model(fn)
        _registered[timm_name] = name
    return list(_registered)


def timm_names() -> dict[str, str]:
    """timm name -> plugattn name of every registered model (empty before :func:`register_with_timm`)."""
    return dict(_registered)


def register_if_timm_imported() -> None:
    """Register now if timm is already imported (used by ``import plugattn``; never imports timm itself)."""
    if 'timm' in sys.modules:
        register_with_timm()
