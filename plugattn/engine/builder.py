"""The model of a run: built from its name with user errors as :class:`EngineError`, and checked before any data is
read (``plugattn train --print-config`` and the start of :func:`~plugattn.engine.train`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import EngineError

__all__ = ['build_model', 'check_config']


def build_model(name: str, num_classes: int, in_chans: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """``plugattn.models.create_model`` with user errors turned into :class:`EngineError`."""
    from ..models import create_model

    try:
        return create_model(name, num_classes=num_classes, in_chans=in_chans, **dict(kwargs))
    except EngineError:
        raise
    except (ValueError, TypeError) as e:
        msg = ' '.join(str(e).split())
        if 'unknown model' in msg:
            raise EngineError(msg.split('; ')[0] if '; ' in msg else msg,
                              'run "plugattn list-models" to see the names (or --model NAME)') from None
        raise EngineError(f'cannot build model {name!r}: {msg}', 'check --model and model.kwargs') from None


def check_config(cfg: Mapping[str, Any]) -> None:
    """Check a config's dataset and model names and the model kwargs against the constructors, in well under a
    second and before any data is read: the model is built on the meta device (no memory, no initialisation).

    Raises:
        EngineError: Unknown model, wrongly typed or unknown model kwargs (the message names the parameter).
        DataError: Unknown dataset name.
    """
    from ..data.info import canonical_name, get_dataset_info

    data = canonical_name(cfg['data']['name'])
    info = None if data == 'imagefolder' else get_dataset_info(data)  # imagefolder classes: counted when loading
    with torch.device('meta'):
        build_model(cfg['model']['name'], info.num_classes if info else 1000, info.in_chans if info else 3,
                    cfg['model']['kwargs'])
