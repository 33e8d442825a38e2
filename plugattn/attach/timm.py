"""timm families for :func:`plugattn.attach` (timm is imported only when a model is attached)."""
from __future__ import annotations

__all__ = ['register']


def register() -> None:
    """Register the timm families (called once, the first time a family is looked up)."""
