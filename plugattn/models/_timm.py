"""Make every plugattn model reachable through ``timm.create_model`` when timm is installed.

timm is optional and heavy to import, so ``import plugattn`` never imports it: if timm is already imported the
models are registered at once, otherwise a one-shot import hook registers them right after timm's own import.
Names timm already uses (``resnet50``, ``resnext50_32x4d``, ...) are left to timm; the plugattn versions of
those stay available through :func:`plugattn.create_model`.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

from ._registry import create_model, list_models

__all__ = ['install_timm_hook', 'register_with_timm']

_registered: list[str] = []


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   cache_dir: Any = None, **kwargs: Any) -> nn.Module:
        return create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f'plugattn {name} (see plugattn.create_model).'
    return entrypoint


def register_with_timm() -> list[str]:
    """Register plugattn's models in timm's registry; returns the names registered (idempotent)."""
    if _registered:
        return list(_registered)
    from timm.models import is_model, register_model

    for name in list_models():
        if not is_model(name):
            register_model(_entrypoint(name))
            _registered.append(name)
    return list(_registered)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps timm's loader so that registration runs once timm has been imported."""

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None):
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            register_with_timm()

        spec.loader.exec_module = exec_and_register
        return spec


def install_timm_hook() -> None:
    """Register with timm now if it is imported, else when it gets imported."""
    if 'timm' in sys.modules:
        register_with_timm()
    elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
