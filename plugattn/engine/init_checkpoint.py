"""``--init-checkpoint``: the weights a training run starts from (a plugattn checkpoint or a host library's
pretrained state_dict), loaded into a model that may have attention attached."""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..attach.build import load_weights, read_state_dict
from .checkpoint import META_KEY, load_model_weights, read_weights
from .errors import EngineError

__all__ = ['load_init_checkpoint']


def _is_plugattn_file(path: Path) -> bool:
    """Whether a ``.safetensors`` file carries plugattn's checkpoint metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            return META_KEY in (f.metadata() or {})
    except Exception:
        return True  # let read_weights name the damage


def _task_of(model: nn.Module) -> str:
    """``detection``, ``segmentation`` or ``classification``: what torchvision's dense classes are for."""
    from torchvision.models import detection, segmentation
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.ssd import SSD

    detectors = (GeneralizedRCNN, detection.RetinaNet, detection.FCOS, SSD)
    segmenters = (segmentation.DeepLabV3, segmentation.FCN, segmentation.LRASPP)
    if isinstance(model, detectors):
        return 'detection'
    return 'segmentation' if isinstance(model, segmenters) else 'classification'


def load_init_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str) -> None:
    """Load a plugattn checkpoint of ``model_name`` (its attention keys may be missing when the attention was
    attached with ``--attn``), or a plain state_dict file of the host library (pretrained weights), into ``model``.

    Raises:
        EngineError: Unreadable file, a plugattn checkpoint of another model, or weights that do not fit.
    """
    path = Path(path)
    is_plugattn = path.suffix == '.safetensors' and path.is_file() and _is_plugattn_file(path)
    if is_plugattn or path.is_dir():
        state, meta = read_weights(path)
        task = meta.get('task') or 'classification'
        own = _task_of(model)
        if task != own:
            raise EngineError(f'--init-checkpoint {path} holds a {task} model ({meta.get("model")}), not a {own} '
                              'model', f'pass a {own} checkpoint, or a plain state_dict of the backbone\'s host '
                              'library')
        if meta.get('model') != model_name or set(state) == set(model.state_dict()):
            load_model_weights(model, path, model_name)  # the engine's strict checks and messages
            return
    else:
        try:
            state = read_state_dict(path)
        except ValueError as e:
            problem, _, fix = str(e).partition('; ')
            raise EngineError(problem, fix or 'pass a .safetensors/.pth state_dict file') from None
    try:
        load_weights(model, state)
    except ValueError as e:
        msg = str(e)
        raise EngineError(f'{path}: {msg.split("; ")[0]}', msg.split('; ')[-1]) from None
