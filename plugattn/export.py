"""Export plugattn models to ONNX or TorchScript, and check the exported graph against PyTorch.

* **ONNX** (optional dependencies ``onnx`` and ``onnxruntime``; the default ``exporter='dynamo'`` also needs
  ``onnxscript``): ``torch.onnx.export`` with the torch.export-based exporter (PyTorch's default since 2.9) or, with
  ``exporter='legacy'``, the deprecated TorchScript-based one (faster, no ``onnxscript``). With ``dynamic=True`` the
  batch, height and width are symbolic, named ``batch``, ``height`` and ``width`` (the output's first axis is
  ``batch`` too): one file serves every input size. The exported file is run with onnxruntime and compared with the
  PyTorch model.
* **TorchScript**: ``torch.jit.trace`` (``torch.jit.script`` runs the models too, but scripted DIA and PVT models keep
  Python calls in their stage loops and cannot be saved, while a trace always can). A trace records the operations of
  one run and freezes every Python branch, so the saved module is always re-run at two different input sizes (and batch
  sizes) and compared with the eager model; every plugattn model passes (strip pooling is written as means and CA slices
  by the input's own height, which the tracer records as a size op). ``torch.jit`` is deprecated in recent PyTorch
  (``FutureWarning``) but still works; prefer ONNX or ``torch.export`` for new deployments.

The models are exported in eval mode (BatchNorm uses running statistics; bridge attention's BatchNorm1d accepts
batch 1 there).

**Metadata.** :func:`export_metadata` describes the model for a runtime that has only the exported file: the model
name and kwargs, the class names and the preprocessing (input size, colour mode, resize, crop, interpolation,
mean/std; see :class:`plugattn.engine.preprocess.Preprocessing`), as string values (JSON where structured). ONNX files
carry them as ``metadata_props`` (onnxruntime: ``session.get_modelmeta().custom_metadata_map``), TorchScript files
as extra files of the same names (``torch.jit.load(path, _extra_files=...)``); :func:`read_export_metadata` reads
either back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import PlugattnError, summarise_cause

__all__ = [
    'EXPORT_FORMATS',
    'ExportResult',
    'export_metadata',
    'export_model',
    'export_onnx',
    'export_torchscript',
    'read_export_metadata',
    'verify_export',
    'verify_shapes',
]

EXPORT_FORMATS = ('onnx', 'torchscript')
ONNX_EXPORTERS = ('dynamo', 'legacy')
METADATA_JSON_KEYS = ('model_kwargs', 'classes', 'preprocessing')
"""Metadata entries whose string value is JSON (the others are plain strings)."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how the exported graph compared with PyTorch.

    Attributes:
        path: The written file.
        format: ``'onnx'`` or ``'torchscript'``.
        method: ``'dynamo'`` / ``'legacy'`` (ONNX exporter) or ``'trace'`` (TorchScript).
        dynamic: Whether batch and spatial size are symbolic.
        input_shape: Shape of the example input used for export.
        checks: ``(input shape, max |exported - PyTorch|)`` of every verification run.
        metadata: The metadata stored in the file.
    """

    path: Path
    format: str
    method: str
    dynamic: bool
    input_shape: tuple[int, ...]
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _outputs(out: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def _output_names(model: nn.Module, example: Tensor) -> list[str]:
    with torch.no_grad():
        n = len(_outputs(model(example)))
    return ['logits'] if n == 1 and getattr(model, 'out_indices', None) is None else [f'feature{i}' for i in range(n)]


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the known-benign tracer and deprecation warnings (the verification runs catch real problems).

    ``AttnNet.check_input`` compares the static channel count with a Python ``if``, and ``F.group_norm`` /
    ``F.batch_norm`` check for one value per channel (an error only in train mode); the tracer reports both.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning, module=r'plugattn\.models\._base')
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning, module=r'torch\.nn\.functional')
        warnings.filterwarnings('ignore', message=r'.*torch\.jit\.\w+` is deprecated', category=FutureWarning)
        warnings.filterwarnings('ignore', message=r'.*legacy TorchScript-based ONNX', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='The feature will be removed', category=DeprecationWarning)
        yield


def _check_onnx_deps(exporter: str) -> None:
    needed = ['onnx', 'onnxruntime'] + (['onnxscript'] if exporter == 'dynamo' else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        hint = " or exporter='legacy' (--exporter legacy), which needs no onnxscript" if missing == ['onnxscript'] \
            else ''
        raise PlugattnError(f'ONNX export needs {", ".join(missing)}: pip install {" ".join(missing)}{hint}')


def export_onnx(
        model: nn.Module,
        path: str | Path,
        example: Tensor,
        *,
        dynamic: bool = True,
        opset: int | None = None,
        exporter: str = 'dynamo',
        metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` (in eval mode) as ONNX; batch, height and width symbolic when ``dynamic``.

    Args:
        model: The model, already in eval mode.
        path: Target ``.onnx`` file.
        example: Example input; with ``dynamic`` its batch must be >= 2 (torch.export specialises sizes 0 and 1).
        dynamic: Symbolic batch and spatial dimensions.
        opset: ONNX opset (default: the exporter's, 18 for dynamo, 17 for legacy).
        exporter: ``'dynamo'`` (torch.export based, default) or ``'legacy'`` (TorchScript based).
        metadata: String entries added to the model's ``metadata_props`` (see :func:`export_metadata`).
    """
    if exporter not in ONNX_EXPORTERS:
        raise PlugattnError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    _check_onnx_deps(exporter)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = _output_names(model, example)
    with _quiet_tracing(), torch.no_grad():
        if exporter == 'dynamo':
            dims = {0: 'batch', 2: 'height', 3: 'width'}  # named dynamic axes (not s0, s77, ...)
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, input_names=['input'], output_names=names,
                dynamic_shapes=(dims,) if dynamic else None, opset_version=opset or 18, external_data=False,
                verbose=False,
            )
        else:
            axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}, **{n: {0: 'batch'} for n in names}}
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, input_names=['input'], output_names=names,
                dynamic_axes=axes if dynamic else None, opset_version=opset or 17,
            )
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        onnx.helper.set_model_props(proto, {**props, **{str(k): str(v) for k, v in metadata.items()}})
        onnx.save(proto, str(path))
    return path


def export_torchscript(
        model: nn.Module,
        path: str | Path,
        example: Tensor,
        metadata: Mapping[str, str] | None = None,
) -> Path:
    """Trace ``model`` (in eval mode) with ``example`` and save it with ``torch.jit.save``; ``metadata`` entries
    become extra files of the same names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {str(k): str(v) for k, v in (metadata or {}).items()}
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=extra)
    return path


def export_metadata(
        model: nn.Module,
        meta: Mapping[str, Any] | None = None,
        input_size: Sequence[int] | None = None,
) -> dict[str, str]:
    """The metadata an exported file carries: model name and kwargs, class names, preprocessing.

    Args:
        model: The exported model.
        meta: Its checkpoint metadata (None for a model built by name: the class names are unknown and the
            preprocessing comes from ``model.default_cfg``).
        input_size: ``(C, H, W)`` the file is exported for, when it is not the checkpoint's input size (the resize
            target follows it).

    Returns:
        String values; ``model_kwargs``, ``classes`` and ``preprocessing`` are JSON.
    """
    from dataclasses import replace

    from .engine.preprocess import checkpoint_classes, preprocessing_from_meta
    from .version import __version__

    meta = dict(meta or {})
    prep = preprocessing_from_meta(meta, model)
    if input_size is not None and tuple(int(v) for v in input_size) != prep.input_size:
        c, h, w = (int(v) for v in input_size)
        prep = replace(prep, input_size=(c, h, w), resize_size=int(h / prep.crop_pct))
    kwargs = meta.get('model_kwargs') or {'num_classes': int(getattr(model, 'num_classes', 0)),
                                          'in_chans': int(getattr(model, 'in_chans', prep.input_size[0]))}
    out = {
        'model': str(meta.get('model') or getattr(model, 'model_name', type(model).__name__)),
        'model_kwargs': json.dumps(kwargs),
        'classes': json.dumps(checkpoint_classes(meta) if meta else None),
        'preprocessing': json.dumps(prep.to_dict()),
        'weights': 'trained' if meta else 'random',
        'plugattn_version': __version__,
    }
    if meta.get('sha256'):
        out['checkpoint_sha256'] = str(meta['sha256'])
    return out


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported ``.onnx`` or TorchScript file, JSON entries decoded.

    Raises:
        ValueError: The file is neither, or cannot be read.
    """
    path = Path(path)
    raw: dict[str, str]
    if path.suffix.lower() == '.onnx':
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises its own error types
            raise PlugattnError(f'cannot read ONNX file {path} ({type(e).__name__})') from None
        raw = {p.key: p.value for p in proto.metadata_props}
    else:
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = {n.rsplit('/extra/', 1)[1]: n for n in z.namelist() if '/extra/' in n}
                raw = {k: z.read(n).decode('utf-8') for k, n in names.items()}
        except (OSError, zipfile.BadZipFile) as e:
            raise PlugattnError(f'cannot read TorchScript file {path} ({type(e).__name__})') from None
    return {k: json.loads(v) if k in METADATA_JSON_KEYS else v for k, v in raw.items()}


def _run_exported(path: Path, fmt: str) -> Callable[[Tensor], list[Tensor]]:
    if fmt == 'onnx':
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]
    with _quiet_tracing():
        loaded = torch.jit.load(str(path), map_location='cpu')

    def run(x: Tensor) -> list[Tensor]:
        # The profiling executor would re-optimise the graph on the first calls at each new shape (seconds on CPU).
        with torch.jit.optimized_execution(False), torch.no_grad():
            return _outputs(loaded(x))

    return run


def verify_export(
        path: str | Path,
        model: nn.Module,
        shapes: Sequence[Sequence[int]],
        *,
        fmt: str,
        rtol: float = 1e-3,
        atol: float = 1e-4,
) -> list[tuple[tuple[int, ...], float]]:
    """Run the exported file and the PyTorch model (CPU, float32) on random inputs of each shape and compare.

    Returns:
        ``(shape, max abs difference)`` per shape.

    Raises:
        ValueError: An output differs beyond ``atol + rtol * |reference|``, or the exported graph fails at a shape
            (e.g. a traced branch frozen at the export size).
    """
    run = _run_exported(Path(path), fmt)
    model = model.to('cpu').eval()
    gen = torch.Generator().manual_seed(0)
    checks = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            ref = _outputs(model(x))
        try:
            got = run(x)
        except Exception as e:  # onnxruntime / TorchScript raise their own error types
            reason = summarise_cause(e, 300)
            raise ValueError(f'the exported {fmt} graph {path} fails on input {shape}: {reason}') from None
        if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
            raise ValueError(f'the exported {fmt} graph {path} returns shapes {[tuple(g.shape) for g in got]} on '
                             f'input {shape}, PyTorch {[tuple(r.shape) for r in ref]}')
        err = max(float((g - r).abs().max()) for g, r in zip(got, ref))
        if not all(torch.allclose(g, r, rtol=rtol, atol=atol) for g, r in zip(got, ref)):
            raise ValueError(f'the exported {fmt} graph {path} differs from PyTorch on input {shape} '
                             f'(max abs difference {err:.3g}, rtol {rtol}, atol {atol})')
        checks.append((shape, err))
    return checks


def verify_shapes(input_shape: Sequence[int], dynamic: bool) -> list[tuple[int, ...]]:
    """The export shape plus, when the graph should generalise, a larger non-square one with another batch size."""
    b, c, h, w = input_shape
    shapes = [(b, c, h, w)]
    if dynamic:
        shapes.append((b + 1, c, h + max(h // 2, 8), w + max(w // 4, 8)))
    return shapes


def export_model(
        model: nn.Module,
        path: str | Path,
        *,
        fmt: str = 'onnx',
        input_size: Sequence[int] = (3, 224, 224),
        dynamic: bool = True,
        batch_size: int | None = None,
        exporter: str = 'dynamo',
        opset: int | None = None,
        verify: bool = True,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        metadata: Mapping[str, str] | None = None,
) -> ExportResult:
    """Export a model to ONNX or TorchScript and check the exported graph against PyTorch.

    The model is put in eval mode and moved to the CPU. ONNX files are checked with onnxruntime at the export shape
    and, when ``dynamic``, at a second, larger non-square shape with another batch size; TorchScript traces are
    always checked at both, because a trace freezes Python branches.

    Args:
        model: The model (e.g. ``create_model('bav2_resnet50')``).
        path: Target file (``.onnx`` / ``.pt``).
        fmt: ``'onnx'`` or ``'torchscript'``.
        input_size: ``(C, H, W)`` of the example input.
        dynamic: ONNX only: symbolic batch, height and width (TorchScript traces always are).
        batch_size: Batch of the example input (default 2; 1 is allowed only for a static ONNX export).
        exporter: ONNX exporter, ``'dynamo'`` or ``'legacy'``.
        opset: ONNX opset (default: the exporter's).
        verify: Compare the exported graph with PyTorch.
        rtol: Relative tolerance of the comparison.
        atol: Absolute tolerance of the comparison.
        metadata: String entries stored in the file (ONNX ``metadata_props``, TorchScript extra files); see
            :func:`export_metadata`.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ValueError: Bad options, missing ONNX packages, or an exported graph that does not reproduce PyTorch.
    """
    if fmt not in EXPORT_FORMATS:
        raise PlugattnError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    if len(input_size) != 3 or min(input_size) < 1:
        raise PlugattnError(f'input_size must be (channels, height, width), got {tuple(input_size)}')
    generalises = dynamic or fmt == 'torchscript'
    batch = 2 if batch_size is None else batch_size
    if batch < 1 or (batch == 1 and generalises):
        raise PlugattnError(f'batch_size must be >= 2 for a dynamic or TorchScript export (got {batch}): exporters '
                            'specialise a batch of 1')
    model = model.to('cpu').eval()
    example = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))
    if fmt == 'onnx':
        out = export_onnx(model, path, example, dynamic=dynamic, opset=opset, exporter=exporter, metadata=metadata)
        method = exporter
    else:
        out = export_torchscript(model, path, example, metadata)
        method = 'trace'
    result = ExportResult(out, fmt, method, generalises, tuple(example.shape), metadata=dict(metadata or {}))
    if verify:
        result.checks = verify_export(out, model, verify_shapes(example.shape, generalises), fmt=fmt, rtol=rtol,
                                      atol=atol)
    return result
