"""The model of a run: built from its name with user errors as :class:`EngineError`, and checked against its config
and input size before any data is read (``plugattn train --print-config`` and the start of
:func:`~plugattn.engine.train`); the input-size check also serves the commands with ``--img-size``."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import EngineError

__all__ = ['build_model', 'check_config', 'check_input_size']


def build_model(name: str, num_classes: int, in_chans: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """``plugattn.create_model`` (plugattn, torchvision and timm names) with user errors turned into
    :class:`EngineError`."""
    from ..hub import create_model

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
    """Check a config's dataset and model names, the model kwargs against the constructors and the input size
    against the model, in well under a second and before any data is read: the model is built and run on the meta
    device (no memory, no initialisation, no arithmetic).

    Raises:
        EngineError: Unknown model, wrongly typed or unknown model kwargs (the message names the parameter), or an
            input size the model cannot take (the message names the smallest one it can).
        DataError: Unknown dataset name.
    """
    from ..data.info import IMAGEFOLDER_DEFAULT_SIZE, canonical_name, get_dataset_info

    if cfg.get('task', 'classification') != 'classification':
        from .tasks import check_dense_config

        check_dense_config(cfg)
        return
    data = canonical_name(cfg['data']['name'])
    info = None if data == 'imagefolder' else get_dataset_info(data)  # imagefolder classes: counted when loading
    in_chans = info.in_chans if info else 3
    with torch.device('meta'):
        model = build_model(cfg['model']['name'], info.num_classes if info else 1000, in_chans, cfg['model']['kwargs'])
    size = cfg['aug']['image_size']
    hw = (size, size) if size else tuple(info.image_size) if info else (IMAGEFOLDER_DEFAULT_SIZE,) * 2
    what = f'the {info.name} images' if info and not size else 'aug.image_size'
    check_input_size(model, cfg['model']['name'], in_chans, hw, '--set aug.image_size={}', what)


# Sizes tried, smallest first, for the smallest input a model takes (multiples of 8 and 32, and common sizes).
_PROBE_SIZES = (16, 24, 32, 40, 48, 56, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)


def _forward_works(model: nn.Module, in_chans: int, size: tuple[int, int]) -> bool:
    device = next((p.device for p in model.parameters()), torch.device('cpu'))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model(torch.zeros(1, in_chans, *size, device=device))
    except Exception:
        return False
    return True


def check_input_size(
        model: nn.Module,
        name: str,
        in_chans: int,
        size: tuple[int, int],
        option: str,
        what: str = 'the input',
) -> None:
    """Refuse an input size too small for a model (or one it cannot take), naming the smallest size it takes.

    One forward pass of a batch of one in eval mode at ``size`` (on the model's device; on the meta device it costs
    no arithmetic). Only when it fails are larger square sizes tried, and only when one of them works is the failure
    the size's: any other failure is left to the caller's own forward pass, where it surfaces as what it is.

    Args:
        model: The model (its mode is restored).
        name: Model name for the message.
        in_chans: Input channels.
        size: ``(H, W)`` to check.
        option: The option that changes the size, with ``{}`` for the size, e.g. ``'--img-size {}'``.
        what: Where the size comes from, e.g. ``'the digits images'``.

    Raises:
        EngineError: ``{name} cannot take HxW inputs (...); use OPTION``.
    """
    was_training = model.training
    model.eval()
    try:
        if _forward_works(model, in_chans, size):
            return
        cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
        default = int((cfg.get('input_size') or (0, 0, 0))[-1])
        candidates = sorted({*_PROBE_SIZES, default} - {0})
        smallest = next((s for s in candidates if s > max(size) and _forward_works(model, in_chans, (s, s))), None)
    finally:
        model.train(was_training)
    if smallest is not None:
        h, w = size
        raise EngineError(f'{name} cannot take {h}x{w} inputs ({what}): the smallest input size it takes is '
                          f'{smallest}x{smallest}', f'use {option.format(smallest)}')
