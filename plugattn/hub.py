"""One entry point for every model name: plugattn's own (``bav2_resnet50``), torchvision's (``tv:resnet50``) and
timm's (``timm:convnext_tiny``), with or without attention attached.

The hub sits above :mod:`plugattn.models` (plugattn's names) and :mod:`plugattn.attach` (torchvision and timm names,
attachment), so neither imports the other's builders; the engine, the analysis tools, the experiment runner and the
command line build models through it. ``plugattn.create_model``, ``plugattn.list_models`` and
``plugattn.attachable`` are this module's.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import models
from .attach import attach
from .attach import attachable as attachable_model
from .attach.build import ATTACH_OPTIONS, FOREIGN_PREFIXES, create_foreign_model
from .errors import PlugattnError
from .models import ModelEntry, list_models

__all__ = ['attachable', 'create_model', 'get_model_entry', 'is_foreign', 'list_models']


def is_foreign(name: str) -> bool:
    """Whether ``name`` is a torchvision (``tv:``) or timm (``timm:``) model name."""
    return name.startswith(FOREIGN_PREFIXES)


def create_model(
        name: str,
        pretrained: bool = False,
        *,
        attn: str | None = None,
        warm_start: bool = False,
        num_classes: int | None = None,
        in_chans: int | None = None,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a plugattn, torchvision (``tv:NAME``) or timm (``timm:NAME``) model, with attention ``attn``.

    Args:
        name: a registered plugattn name (``plugattn.list_models()``), ``tv:NAME`` or ``timm:NAME``; foreign names
            may carry the attention to attach, ``tv:resnet50+bav2``.
        pretrained: the host library's pretrained weights for foreign names (downloaded; offline this fails with
            one line saying how to pass a local file instead); plugattn publishes none for its own names.
        attn: attention key. On a foreign name it is attached (:func:`plugattn.attach`); on a plain plugattn
            backbone it builds plugattn's own variant (``create_model('resnet50', attn='bav2')`` is
            ``bav2_resnet50``), unless ``warm_start`` asks for the plain model with the attention attached.
        warm_start: attach with warm start (the attached model starts as exactly the original function).
        num_classes: classifier outputs.
        in_chans: input channels.
        features_only: a feature extractor instead of the classifier.
        out_indices: its feature levels (default: all, or timm's default levels for timm names).
        **kwargs: attach options (``attn_kwargs``, ``stages``, ``keep_se``, ``attn_position``) and the model's own
            options.
    """
    if is_foreign(name):
        return create_foreign_model(name, pretrained, attn=attn, warm_start=warm_start, num_classes=num_classes,
                                    in_chans=in_chans, features_only=features_only, out_indices=out_indices,
                                    **kwargs)
    opts = {k: kwargs.pop(k) for k in ATTACH_OPTIONS if k in kwargs}
    kwargs.update({k: v for k, v in (('num_classes', num_classes), ('in_chans', in_chans)) if v is not None})
    if features_only:
        kwargs.update(features_only=True, out_indices=out_indices)
    if not warm_start:
        if attn is not None:
            kwargs['attn'] = attn
        if 'stages' in opts:  # the other attach options (keep_se, attn_position, attn_kwargs) are builder options
            raise PlugattnError(f'{name}: stages= applies to attached models (tv:/timm: names or warm_start)',
                                'attach to the plain model: plugattn.attach(model, attn, stages=...)')
        return models.create_model(name, pretrained, **kwargs, **opts)
    if attn is None:
        raise PlugattnError('warm_start=True needs attn=NAME (the attention to attach)')
    return attach(models.create_model(name, pretrained, **kwargs), attn, warm_start=True, **opts)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of a plugattn name, or an entry describing a torchvision / timm name (``tv:NAME+ATTN``:
    backbone ``tv:NAME``, attention ``ATTN``); unknown plugattn names raise ``ValueError`` with close matches."""
    if not is_foreign(name):
        return models.get_model_entry(name)
    backbone, _, attn = name.partition('+')

    def build(**kwargs: Any) -> nn.Module:
        return create_model(name, **kwargs)

    return ModelEntry(name, build, backbone, attn or None, {},
                      {'input_size': (3, 224, 224), 'family': name.split(':', 1)[0], 'num_classes': 1000})


def attachable(model: nn.Module | str) -> list[str]:
    """The attention names :func:`plugattn.attach` accepts for a model, or for a model name (built on the meta
    device, no weights); raises ``ValueError`` naming the supported families for an unsupported model."""
    if isinstance(model, str):
        with torch.device('meta'):
            model = create_model(model)
    return attachable_model(model)
