"""Attention in ultralytics YOLO models, trained, validated, run and exported by ultralytics itself.

``train``, ``val``, ``predict`` and ``export`` are ultralytics' own ``YOLO(...).train/val/predict/export`` with one
change: the model gets a plugattn attention (:mod:`plugattn.attach.ultralytics` describes the placements) right
after ultralytics builds or loads it, before its trainer makes the optimizer and the EMA copy, so both see the
attention parameters. A ``*.pt`` checkpoint (official or a user's) loads into the attached model with only the
attention keys missing, and ``warm_start=True`` (the default here) starts training from exactly its function.

The weights ultralytics saves (``best.pt``, ``last.pt``) pickle the whole attached model, attention included; they
load back with ``YOLO(path)`` or :func:`load` in any process where plugattn is installed (the pickle names
``plugattn.attach._core.rebuild_attached``). ultralytics' restricted loading (``ULTRALYTICS_SAFE_LOAD=1``,
``weights_only``) admits only torch and ultralytics classes, so these files need its default loading: load them
only from sources you trust, as any pickle.

Offline: nothing here downloads. ``YOLO_OFFLINE=1`` is set (unless already set) before ultralytics is first
imported, which turns off its online checks and event sync; the font check of its dataset and plotting code finds
local fonts only; plots default to off; a missing ``*.pt`` raises instead of being fetched; on CUDA the AMP check
runs only when its reference weights are on disk already (ultralytics' own offline behaviour: AMP on).

ultralytics is AGPL-3.0 (plugattn is Apache-2.0): see ``docs/yolo.md`` for what combining them means.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .attach import attach
from .attach.ultralytics import WHERE, yolo_root
from .errors import PlugattnError
from .layers import list_attn

__all__ = ['DEFAULTS', 'attach_yolo', 'attached_spec', 'attaching_trainer', 'export', 'load', 'offline', 'predict',
           'train', 'trainer_class', 'val']

INSTALL = "pip install 'plugattn[yolo]'"
# ultralytics arguments plugattn sets unless given: no plots (they fetch a font when it is missing)
DEFAULTS: dict[str, Any] = {'plots': False}
SPEC_ATTR = 'plugattn_yolo'  # the attach arguments, kept on the task model (so in its checkpoints)


def import_ultralytics() -> Any:
    """``ultralytics``, imported offline (``YOLO_OFFLINE=1`` unless set); a clear error naming the extra when it is
    not installed."""
    os.environ.setdefault('YOLO_OFFLINE', '1')
    omp_threads = os.environ.get('OMP_NUM_THREADS')
    try:
        import ultralytics
    except ImportError as err:
        raise PlugattnError(f'the YOLO commands need ultralytics, which is not installed ({err})', INSTALL) from None
    if omp_threads is None:  # its import sets OMP_NUM_THREADS=1 for the whole process and every child it starts
        os.environ.pop('OMP_NUM_THREADS', None)
    _unpatch_pil_open()
    return ultralytics


def _unpatch_pil_open() -> None:
    """Undo ultralytics' process-wide ``PIL.Image.open`` patch: on any file Pillow cannot identify it tries to install
    and import pi-heif (a download, or a ModuleNotFoundError offline) instead of raising Pillow's error, which turns
    every unreadable image in the process, plugattn's own data checks included, into an installer call. HEIC/HEIF
    sources then need ``pi_heif.register_heif_opener()`` called by the user."""
    from PIL import Image

    patches = sys.modules.get('ultralytics.utils.patches')
    original = getattr(patches, '_image_open', None)
    if original is not None and Image.open is not original:
        Image.open = original


def _local_font(font: str = 'Arial.ttf') -> Path | str | None:
    """ultralytics' ``check_font`` without its download: the font from its config folder or matplotlib's list."""
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    if (USER_CONFIG_DIR / name).exists():
        return USER_CONFIG_DIR / name
    try:
        from matplotlib import font_manager
    except ImportError:
        return None
    found = [f.fname for f in font_manager.fontManager.ttflist if font in f.fname and os.path.exists(f.fname)]
    return found[0] if found else None


def _amp_check(original: Any) -> Any:
    def check(model: nn.Module) -> bool:
        from ultralytics.utils import WEIGHTS_DIR

        if next(model.parameters()).device.type in ('cpu', 'mps'):
            return False
        if not (WEIGHTS_DIR / 'yolo26n.pt').is_file():
            return True  # ultralytics' answer when it cannot fetch its reference model
        return original(model)

    return check


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Replace, for the duration, the ultralytics functions that would fetch something (fonts, AMP reference
    weights) by local-only versions."""
    import_ultralytics()
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.plotting as plotting

    patches = [(data_utils, 'check_font', _local_font), (plotting, 'check_font', _local_font),
               (trainer_mod, 'check_amp', _amp_check(trainer_mod.check_amp))]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def _spec(attn: str | None, warm_start: bool, where: str, attn_kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    if attn is None:
        return None
    if attn not in list_attn():
        raise PlugattnError(f'unknown attention {attn!r}', f'choose one of {", ".join(list_attn())}')
    if where not in WHERE:
        raise PlugattnError(f'where={where!r} is not a YOLO placement', f'use one of {", ".join(WHERE)}')
    return {'attn': attn, 'warm_start': bool(warm_start), 'where': where, 'attn_kwargs': dict(attn_kwargs or {})}


def attach_yolo(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Attach ``spec`` (``attn``, ``warm_start``, ``where``, ``attn_kwargs``) to the ultralytics task model inside
    ``model`` (a ``YOLO`` object or a task model) and record it there, so saved weights say what they hold."""
    root = yolo_root(model)
    if root is None:
        raise PlugattnError(f'{type(model).__name__} holds no ultralytics YOLO model', 'pass YOLO(...) or its .model')
    attach(root, spec['attn'], warm_start=spec['warm_start'], where=spec['where'],
           attn_kwargs=spec['attn_kwargs'] or None)
    setattr(root, SPEC_ATTR, dict(spec))
    return model


def attached_spec(model: nn.Module) -> dict[str, Any] | None:
    """The attach arguments recorded on a YOLO model (``None`` for a plain one)."""
    root = yolo_root(model) if model is not None else None
    return getattr(root, SPEC_ATTR, None) if root is not None else None


def _check_model(model: str | Path) -> str:
    """A YAML name ultralytics ships (``yolov8n.yaml``) or an existing file; a ``*.pt`` is never downloaded."""
    text = str(model)
    if text.endswith(('.yaml', '.yml')) and not Path(text).is_file():
        import re

        from ultralytics.utils.checks import check_yaml

        try:  # ultralytics' own lookup: yolov8n.yaml is yolov8.yaml at scale n
            check_yaml(re.sub(r'(\d+)([nslmx])(.+)?$', r'\1\3', text), hard=True)
            return text
        except FileNotFoundError:
            raise PlugattnError(f'no YOLO model YAML {text!r} here or in ultralytics/cfg/models',
                                'give a path to a model YAML, or a name such as yolov8n.yaml or yolo11n-seg.yaml'
                                ) from None
    if Path(text).is_file():
        return text
    raise PlugattnError(f'model file {text!r} not found (plugattn does not download weights)',
                        'give the path of a local *.pt file, or a model YAML such as yolov8n.yaml')


def _yolo(model: Any, spec: dict[str, Any] | None) -> Any:
    """``YOLO(model)`` (or ``model`` itself when it is one), with ``spec`` attached unless it already holds
    attention."""
    import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.engine.model import Model

    yolo = model if isinstance(model, Model) else YOLO(_check_model(model))
    have = attached_spec(yolo.model)
    if spec is not None:
        if have is not None:
            if have['attn'] != spec['attn']:
                raise PlugattnError(f"this model already holds {have['attn']} attention",
                                    f"drop attn= (or pass attn={have['attn']!r}) or start from the plain model")
        else:
            attach_yolo(yolo.model, spec)
    return yolo


def trainer_class(model: Any, attn: str | None, *, warm_start: bool = True, where: str = 'csp',
                  attn_kwargs: dict[str, Any] | None = None) -> type:
    """The ultralytics trainer class of ``model``'s task (a ``YOLO`` object) that attaches ``attn`` to the model it
    builds, for ``YOLO(...).train(trainer=..., ...)`` as ultralytics users call it (:func:`train` does this)."""
    return attaching_trainer(model._smart_load('trainer'), _spec(attn, warm_start, where, attn_kwargs))


def attaching_trainer(base: type, spec: dict[str, Any] | None) -> type:
    """The ultralytics trainer class ``base`` with a ``get_model`` that attaches ``spec`` (or the attention a loaded
    checkpoint holds) to the model it builds, before loading the weights into it, so that the optimizer and the EMA
    copy, made afterwards, hold the attention."""

    def get_model(self: Any, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        model = base.get_model(self, cfg=cfg, weights=None, verbose=verbose)
        use = spec if spec is not None else attached_spec(weights)
        if use is not None:
            attach_yolo(model, use)
        if weights:
            model.load(weights)  # by key and shape: a plain checkpoint leaves only the attention keys out
        return model

    return type(base.__name__, (base,), {'get_model': get_model, '__module__': base.__module__,
                                         '__qualname__': base.__qualname__})


def train(model: str | Path | Any = 'yolov8n.yaml', attn: str | None = 'ca', *, data: str | Path,
          warm_start: bool = True, where: str = 'csp', attn_kwargs: dict[str, Any] | None = None,
          **ultralytics_args: Any) -> Any:
    """Train a YOLO model with attention through ultralytics' trainer.

    Args:
        model: a model YAML (``'yolov8n.yaml'``, ``'yolo11n-seg.yaml'``: trained from scratch), a local ``*.pt``
            (official or user-trained: fine-tuned, only the attention starts fresh) or a ``YOLO`` object.
        attn: registered attention (``plugattn.list_attn()``); ``None`` keeps the model's own: the attention a
            plugattn checkpoint holds, or none.
        data: the dataset YAML (ultralytics format).
        warm_start: start from exactly the model's function (see :func:`plugattn.attach`).
        where: placement (:data:`plugattn.attach.ultralytics.WHERE`).
        attn_kwargs: options of the attention modules.
        **ultralytics_args: ultralytics training arguments (``epochs``, ``imgsz``, ``batch``, ``device``, ...);
            :data:`DEFAULTS` fill the ones not given.

    Returns:
        The ``YOLO`` object holding the best weights (``.metrics``: validation metrics, ``.trainer.best``: their
        file), attention included.
    """
    spec = _spec(attn, warm_start, where, attn_kwargs)
    data = _check_data(data)
    import_ultralytics()
    yolo = _yolo(model, None)  # the trainer attaches, to the model it builds
    have = attached_spec(yolo.model)
    if have is None and any('_plugattn_tap' in m.__dict__ for m in yolo.modules()):
        raise PlugattnError('this YOLO model has attention attached by plugattn.attach, which the trainer cannot '
                            'rebuild', 'pass the plain model and attn= to plugattn.yolo.train')
    if spec is None:
        spec = have
    elif have is not None and have['attn'] != spec['attn']:
        raise PlugattnError(f"this checkpoint already holds {have['attn']} attention",
                            'drop attn= or start from the plain model')
    trainer = attaching_trainer(yolo._smart_load('trainer'), spec)
    with offline(), _dataset_errors():
        yolo.train(trainer=trainer, data=data, **{**DEFAULTS, **ultralytics_args})
    return yolo


def val(model: str | Path | Any, *, data: str | Path | None = None, attn: str | None = None,
        warm_start: bool = True, where: str = 'csp', **ultralytics_args: Any) -> Any:
    """Validate with ultralytics' validator; returns its metrics (``.box.map``, ``.box.map50``, ...). ``attn``
    attaches attention to a plain model first (warm-started: the plain model's numbers)."""
    yolo = _yolo(model, _spec(attn, warm_start, where, None))
    args = {**DEFAULTS, **ultralytics_args}
    if data is not None:
        args['data'] = _check_data(data)
    with offline(), _dataset_errors():
        return yolo.val(**args)


def predict(model: str | Path | Any, source: str | Path | Sequence[Any], *, attn: str | None = None,
            warm_start: bool = True, where: str = 'csp', **ultralytics_args: Any) -> list[Any]:
    """Run ultralytics' predictor; returns its ``Results`` list."""
    yolo = _yolo(model, _spec(attn, warm_start, where, None))
    if isinstance(source, (str, Path)) and not str(source).startswith(('http://', 'https://', 'rtsp://')) \
            and not Path(source).exists():
        raise PlugattnError(f'prediction source {str(source)!r} not found', 'give an image, a folder or a video')
    with offline():
        return yolo.predict(source, **ultralytics_args)


def export(model: str | Path | Any, format: str = 'onnx', *, attn: str | None = None, warm_start: bool = True,
           where: str = 'csp', **ultralytics_args: Any) -> str:
    """Export with ultralytics' exporter (ONNX by default, traced: the attention is in the graph); returns the
    file. ``simplify`` defaults to off (it needs onnxslim, which ultralytics would try to install)."""
    yolo = _yolo(model, _spec(attn, warm_start, where, None))
    with offline():
        return yolo.export(format=format, **{'simplify': False, **ultralytics_args})


def load(path: str | Path) -> Any:
    """``YOLO(path)`` for weights written by :func:`train` (attention included), with a clear error when the file
    is missing or ultralytics' restricted loading refuses plugattn's classes."""
    path = _check_model(path)
    import_ultralytics()
    from ultralytics import YOLO

    try:
        return YOLO(path)
    except Exception as err:  # ultralytics reports a refused class as a TypeError of its own wording
        from ultralytics.nn import tasks

        if getattr(tasks, 'SAFE_LOAD', False):
            raise PlugattnError(f'{path} could not be loaded with ULTRALYTICS_SAFE_LOAD set, which refuses the classes '
                                f'of plugattn attention ({err})',
                                'unset ULTRALYTICS_SAFE_LOAD to load a file you trust') from err
        raise


@contextlib.contextmanager
def _dataset_errors() -> Iterator[None]:
    """ultralytics' dataset check failures (a RuntimeError ``Dataset '...' error ...``) as one-line user errors."""
    try:
        yield
    except RuntimeError as err:
        text = ' '.join(str(err).replace('❌', '').split())
        if not text.startswith('Dataset '):
            raise
        raise PlugattnError(text, 'check the paths and names in the dataset YAML') from err


def _check_data(data: str | Path) -> str:
    path = Path(data)
    if path.suffix not in ('.yaml', '.yml'):
        raise PlugattnError(f'data must be a dataset YAML file, got {str(data)!r}',
                            'give a data.yaml (plugattn yolo train --data scenes writes one)')
    if not path.is_file():
        raise PlugattnError(f'dataset file {str(data)!r} not found',
                            'give the path of a data.yaml (plugattn yolo train --data scenes writes one)')
    return str(path)
