"""Helpers shared by the analysis tools: the error type, optional imports and model loading."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from ..errors import PlugattnError

__all__ = ['AnalysisError', 'load_model', 'model_attn', 'model_stages', 'require']

# Optional packages: import name -> pip distribution name.
_DISTRIBUTIONS = {'pytorch_grad_cam': 'grad-cam', 'matplotlib': 'matplotlib', 'skimage': 'scikit-image'}


class AnalysisError(PlugattnError):
    """A problem the user can fix (missing optional package, bad layer name, unreadable image, ...)."""


def require(module: str, purpose: str, extra: str = 'viz') -> ModuleType:
    """Import an optional dependency, or raise a one-line :class:`AnalysisError` naming the extra to install.

    Args:
        module: Import name (``'pytorch_grad_cam'``, ``'matplotlib'``, ...).
        purpose: What needs it, for the message (``'plugattn cam'``).
        extra: The ``plugattn[...]`` extra that provides it.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        dist = _DISTRIBUTIONS.get(module, module)
        raise AnalysisError(f'{purpose} needs {dist}, which is not installed',
                            f"pip install 'plugattn[{extra}]'") from None


def model_stages(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``[(name, stage container), ...]`` of a plugattn model (``stages()``), or of a torchvision / timm model as its
    :mod:`plugattn.attach` family names them (timm ConvNeXt's ``stages.i.blocks``); ``None`` when the model has none.
    """
    stages = getattr(model, 'stages', None)
    if '_plugattn_stage_names' not in model.__dict__ and callable(stages) and not isinstance(stages, nn.Module):
        found = list(stages())
        names = getattr(model, 'stage_names', None) or [f'stage{i}' for i in range(len(found))]
        return list(zip(names, found, strict=True))
    from ..attach._core import model_stages as family_stages

    return family_stages(model)


def model_attn(name: str) -> str:
    """Attention key of a registered model name (``'none'`` for a plain backbone or an unknown name)."""
    from ..hub import get_model_entry

    try:
        return get_model_entry(name).attn or 'none'
    except ValueError:
        return 'none'


def load_model(
        model: str | None = None,
        checkpoint: str | Path | None = None,
        which: str = 'best',
        **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model by name (random weights) or from a plugattn checkpoint, in eval mode.

    Args:
        model: Registered model name; with ``checkpoint`` it must match the checkpoint's model.
        checkpoint: A run directory or a ``.safetensors`` file written by the training engine.
        which: ``'best'`` or ``'last'`` weights of a run directory.
        **kwargs: ``create_model`` options for a model built by name (``num_classes``, ``in_chans``, ...); ignored
            for a checkpoint, whose metadata holds them.

    Returns:
        ``(model, meta)``: the model and the checkpoint metadata (``{}`` for a model built by name; for a checkpoint
        ``meta['data']`` names the training data set and its input size).
    """
    from ..hub import create_model

    if (model is None) == (checkpoint is None):
        raise AnalysisError('pass exactly one of a model name and a checkpoint',
                            'use --model NAME or --checkpoint RUN_DIR')
    if checkpoint is None:
        net = create_model(model, **kwargs)
        return net.eval(), {}
    from ..engine.evaluation import load_checkpoint_model

    net, meta, path = load_checkpoint_model(checkpoint, which)
    return net.eval(), {**meta, 'checkpoint': str(path)}
