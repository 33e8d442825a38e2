"""Run directories and checkpoints, written atomically.

A run directory holds:

* ``run.json``: marks the folder as a plugattn run (status, recipe, model, completed epochs);
* ``config.yaml``: the resolved config;
* ``last.safetensors`` / ``best.safetensors``: model weights with JSON metadata in the safetensors header (model
  name and kwargs, class names, preprocessing, recipe, epoch, metrics, plugattn version, a SHA-256 of the tensor
  data and a SHA-256 of the metadata itself, so an edited field is detected as well as damaged weights);
* ``last_state.pt``: everything else needed to resume bit for bit (model weights again, optimizer, schedule,
  GradScaler, EMA weights, RNG states, epoch, step, metric history) and a SHA-256 of all of it, read with
  ``torch.load(weights_only=True)`` and checked against that checksum (``torch.load`` does not check the zip
  members' CRCs, so damaged tensor data would otherwise load).

``last_state.pt`` is self-contained, so resuming never depends on two files having been replaced together. Every
write goes to a temporary file in the same folder, is flushed and fsync'ed, then ``os.replace``'d over the target
and the folder is fsync'ed: a crash or kill during a save leaves the previous file intact.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import secrets
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from ..errors import summarise_cause
from ..version import __version__
from .errors import EngineError

__all__ = [
    'BEST_FILE',
    'LAST_FILE',
    'RUN_FILE',
    'STATE_FILE',
    'atomic_write',
    'atomic_write_bytes',
    'capture_rng_state',
    'check_free_space',
    'is_run_dir',
    'load_model_weights',
    'load_state',
    'pickled_object',
    'read_run_info',
    'read_weights',
    'restore_rng_state',
    'save_state',
    'save_weights',
    'state_digest',
    'write_run_info',
]

RUN_FILE = 'run.json'
STATE_FILE = 'last_state.pt'
LAST_FILE = 'last.safetensors'
BEST_FILE = 'best.safetensors'
RUN_FORMAT = 'plugattn-run'
WEIGHTS_FORMAT = 'plugattn-weights'
STATE_FORMAT = 'plugattn-state'
META_KEY = 'plugattn'
META_DIGEST_KEY = 'metadata_sha256'
# Fields that only checkpoints with a metadata checksum carry: one of them without the checksum means the header was
# edited (older checkpoints, written before the metadata checksum existed, have none of them and stay readable).
CHECKSUMMED_FIELDS = ('classes', 'preprocessing')


# --------------------------------------------------------------------------------------------- atomic writes


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms without directory file descriptors
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_DISK_ERRORS = {
    errno.ENOSPC: 'the disk is full',
    errno.EFBIG: 'the file would exceed the file-size limit (ulimit -f) or the file system\'s maximum file size',
    getattr(errno, 'EDQUOT', -1): 'the disk quota is exceeded',
}


def _mib(n: float) -> str:
    return f'{n / 2**20:.1f} MiB'


def _disk_error(path: Path, reason: str) -> EngineError:
    return EngineError(f'cannot save {path}: {reason} (nothing was replaced: the previous {path.name} is intact)',
                       f'free disk space in {path.parent} (or raise the limit) or choose another --output folder, '
                       'then continue the run with --resume')


def check_free_space(path: str | Path, nbytes: int) -> None:
    """Refuse a write of ``nbytes`` to ``path`` that cannot fit: free space of its file system (with 1 MiB to
    spare) and the process' file-size limit (``RLIMIT_FSIZE``), where they can be known.

    Raises:
        EngineError: Names the file, the bytes needed and the bytes available.
    """
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and nbytes + 2**20 > free:
        raise _disk_error(path, f'it needs {_mib(nbytes)} and {path.parent} has {_mib(free)} free')
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise _disk_error(path, f'it needs {_mib(nbytes)}, more than the file-size limit of {_mib(soft)} '
                                '(ulimit -f)')


class _WriteRecorder:
    """A file wrapper that remembers the OSError of a failed write (torch.save replaces it with a RuntimeError)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _create_temp(path: Path) -> tuple[int, str]:
    """Create and open ``.NAME.<random>.tmp`` next to ``path`` with the mode ``open()`` gives (0o666 less the umask).

    ``tempfile.mkstemp`` would give 0o600, which the rename would carry to the run files: they would then be
    private while ``tb/`` and every other file the user writes follow the umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0)
    for _ in range(100):
        tmp = path.parent / f'.{path.name}.{secrets.token_hex(4)}.tmp'
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, 'no free temporary file name', str(path.parent))


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], size_hint: int | None = None) -> None:
    """Write a file atomically: temp file in the same folder, flush + fsync, ``os.replace``, fsync the folder.

    Args:
        path: Target file.
        write: Called with the open binary temp file; if it raises, the temp file is removed and ``path`` is left
            as it was.
        size_hint: Expected size in bytes; when given, a write that cannot fit is refused before it starts.

    Raises:
        EngineError: The disk is full, a quota or the file-size limit is exceeded (checked before the write where
            ``size_hint`` allows, else when the write fails); ``path`` is then left as it was.
    """
    path = Path(path)
    if size_hint is not None:
        check_free_space(path, size_hint)
    try:
        fd, tmp = _create_temp(path)
    except OSError as e:
        if e.errno in _DISK_ERRORS:
            raise _disk_error(path, _DISK_ERRORS[e.errno]) from None
        raise
    recorder = None
    try:
        with os.fdopen(fd, 'wb') as f:
            recorder = _WriteRecorder(f)
            write(recorder)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = recorder.error if recorder is not None and recorder.error is not None else e
        if isinstance(cause, OSError) and cause.errno in _DISK_ERRORS:
            raise _disk_error(path, _DISK_ERRORS[cause.errno]) from None
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of a byte string (its size is checked against the free space first)."""
    atomic_write(path, lambda f: f.write(data), size_hint=len(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write_bytes(path, text.encode('utf-8'))


def remove_stale_temps(folder: str | Path) -> None:
    """Delete temp files a killed save left behind (``.NAME.*.tmp``)."""
    for tmp in Path(folder).glob('.*.tmp'):
        with contextlib.suppress(OSError):
            tmp.unlink()


# --------------------------------------------------------------------------------------------- run.json


def write_run_info(run_dir: str | Path, info: Mapping[str, Any]) -> None:
    """Write ``run.json`` atomically (the format tag and plugattn version are added)."""
    data = {'format': RUN_FORMAT, 'plugattn_version': __version__, **info}
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(data, indent=2) + '\n')


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """Read and check ``run.json``.

    Raises:
        EngineError: The folder is missing, has no ``run.json``, or it is not a plugattn run file.
    """
    run_dir = Path(run_dir)
    fix = 'pass a run directory created by "plugattn train" (it holds run.json)'
    if not run_dir.is_dir():
        raise EngineError(f'run directory {run_dir} does not exist', fix)
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise EngineError(f'{run_dir} is not a plugattn run directory (no {RUN_FILE})', fix) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f'cannot read {path} ({type(e).__name__})', fix) from None
    if not isinstance(data, dict) or data.get('format') != RUN_FORMAT:
        raise EngineError(f'{path} is not a plugattn run file', fix)
    return data


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a valid ``run.json``."""
    try:
        read_run_info(path)
    except EngineError:
        return False
    return True


# --------------------------------------------------------------------------------------------- weights


def _tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``meta`` without its own digest field (the tensor digest is inside)."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(',', ':'), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode('ascii')).hexdigest()


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Save model weights as safetensors with plugattn metadata, atomically.

    Args:
        path: Target ``.safetensors`` file.
        state_dict: Model state dict (any device, any memory format).
        meta: JSON-serialisable metadata (model name and kwargs, class names, preprocessing, recipe, epoch,
            metrics, ...); the format tag, plugattn version, a SHA-256 of the tensor data and a SHA-256 of the whole
            metadata (``metadata_sha256``) are added.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().to('cpu', copy=True).contiguous() for k, v in state_dict.items()}
    full = {'format': WEIGHTS_FORMAT, 'plugattn_version': __version__, **meta, 'sha256': _tensor_digest(tensors)}
    full = json.loads(json.dumps(full))  # the digest is of what a reader gets back (tuples -> lists, str keys)
    full[META_DIGEST_KEY] = _meta_digest(full)
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(full), 'format': 'pt'}))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a plugattn ``.safetensors`` checkpoint and verify it.

    Args:
        path: The file.

    Returns:
        ``(state_dict, metadata)`` with CPU tensors.

    Raises:
        EngineError: Missing or unreadable file, truncated or corrupted data (checksum mismatch), edited metadata
            (metadata checksum mismatch, or class names / preprocessing without a checksum), or a file without
            plugattn metadata.
    """
    from safetensors import safe_open

    path = Path(path)
    fix = 'use an intact checkpoint (last.safetensors or best.safetensors of a run) or train again'
    if not path.is_file():
        raise EngineError(f'checkpoint {path} does not exist', 'pass a .safetensors file or a run directory')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except PermissionError:
        raise EngineError(f'cannot read checkpoint {path} (permission denied)', 'check the file permissions') from None
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise EngineError(f'checkpoint {path} is truncated or corrupted ({summarise_cause(e)})', fix) from None
    if META_KEY not in raw_meta:
        raise EngineError(f'{path} is not a plugattn checkpoint (no plugattn metadata)',
                          'load it with safetensors.torch.load_file and model.load_state_dict, or train with '
                          'plugattn')
    try:
        meta = json.loads(raw_meta[META_KEY])
    except json.JSONDecodeError:
        raise EngineError(f'checkpoint {path} has corrupted metadata', fix) from None
    if not isinstance(meta, dict) or meta.get('format') != WEIGHTS_FORMAT or 'model' not in meta:
        raise EngineError(f'checkpoint {path} has corrupted metadata', fix)
    if meta.get('sha256') != _tensor_digest(tensors):
        raise EngineError(f'checkpoint {path} is corrupted (tensor data checksum mismatch)', fix)
    if META_DIGEST_KEY in meta:
        if meta[META_DIGEST_KEY] != _meta_digest(meta):
            raise EngineError(f'checkpoint {path} has altered metadata (metadata checksum mismatch)', fix)
    elif any(k in meta for k in CHECKSUMMED_FIELDS):
        raise EngineError(f'checkpoint {path} has altered metadata (class names or preprocessing without the '
                          'metadata checksum)', fix)
    return tensors, meta


def check_state_dict_fits(
        model: nn.Module,
        state: Mapping[str, torch.Tensor],
        source: str,
        source_model: str | None,
        target_model: str | None,
) -> None:
    """Raise a clear error unless ``state`` has exactly the keys and shapes of ``model``'s state dict.

    Raises:
        EngineError: Names the first missing/unexpected key or shape mismatch and the two architectures.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f'{len(missing)} missing keys (e.g. {missing[0]})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected keys (e.g. {unexpected[0]})')
    if shapes:
        k = shapes[0]
        parts.append(f'{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})')
    what = f'{source_model} weights' if source_model else 'weights'
    target = target_model or type(model).__name__
    raise EngineError(
        f'checkpoint {source} holds {what} that do not fit {target}: {", ".join(parts)}',
        f'use a checkpoint of {target} with the same number of classes and input channels'
        + (f', or pass --model {source_model}' if source_model and source_model != target_model else ''),
    )


def load_model_weights(
        model: nn.Module,
        path: str | Path,
        model_name: str | None = None,
) -> dict[str, Any]:
    """Load a plugattn weights file into ``model`` after checking that it is the same architecture.

    Args:
        model: Target model (unwrapped).
        path: ``.safetensors`` checkpoint.
        model_name: Registered name of ``model`` (compared with the checkpoint's).

    Returns:
        The checkpoint metadata.

    Raises:
        EngineError: Unreadable/corrupted file, or weights of another architecture.
    """
    state, meta = read_weights(path)
    src = meta.get('model')
    if model_name is not None and src != model_name:
        raise EngineError(
            f'checkpoint {path} holds {src} weights, not {model_name}',
            f'pass a checkpoint of {model_name}, or use --model {src}',
        )
    check_state_dict_fits(model, state, str(path), src, model_name)
    model.load_state_dict(state)
    return meta


# --------------------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors/lists (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        'python': {'version': py_version, 'state': torch.tensor(py_state, dtype=torch.int64), 'gauss': py_gauss},
        'numpy': {
            'name': np_name, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
            'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss),
        },
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state['python']
    random.setstate((int(py['version']), tuple(int(v) for v in py['state'].tolist()), py['gauss']))
    npst = state['numpy']
    np.random.set_state((
        npst['name'], npst['keys'].numpy().astype(np.uint32), int(npst['pos']), int(npst['has_gauss']),
        float(npst['cached_gaussian']),
    ))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda') or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------- training state


STATE_DIGEST_KEY = 'sha256'


def _feed_digest(h: Any, obj: Any) -> None:
    """Add a nested state (mappings, sequences, tensors, scalars) to a hash, with its structure and types."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to('cpu').contiguous()
        h.update(f'T{t.dtype}{tuple(t.shape)};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f'{{{len(obj)};'.encode())
        for key, value in obj.items():
            _feed_digest(h, key)
            _feed_digest(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f'[{len(obj)};'.encode())
        for value in obj:
            _feed_digest(h, value)
    else:
        h.update(f'{type(obj).__name__}:{obj!r};'.encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a resume state's tensors and values (its own digest field left out)."""
    h = hashlib.sha256()
    _feed_digest(h, {k: v for k, v in state.items() if k != STATE_DIGEST_KEY})
    return h.hexdigest()


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Save the resume state with ``torch.save``, atomically (format tag, version and a SHA-256 of the whole state
    added, which :func:`load_state` checks)."""
    full = {'format': STATE_FORMAT, 'plugattn_version': __version__, **state}
    full[STATE_DIGEST_KEY] = state_digest(full)
    atomic_write(path, lambda f: torch.save(full, f), size_hint=_tensor_bytes(full))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (what ``torch.save`` writes, less a small header)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _damage(e: BaseException) -> str:
    """What a failed ``torch.load`` says about the file, in a few words."""
    text = ' '.join(str(e).split())
    if (isinstance(e, OSError) and e.errno == errno.EINVAL) or 'PytorchStreamReader' in text:
        return 'its zip archive is cut short or garbled'
    if isinstance(e, (EOFError, zipfile.BadZipFile)):
        return 'it ends early'
    return summarise_cause(e)


def pickled_object(e: BaseException) -> str | None:
    """The ``module.name`` a ``weights_only`` load refused (the file needs code to load), else ``None``."""
    import pickle
    import re

    if not isinstance(e, pickle.UnpicklingError):
        return None
    found = re.search(r'GLOBAL ([\w.]+)', str(e))
    return found.group(1) if found else None


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a resume state with ``torch.load(weights_only=True)`` onto the CPU and verify its checksum.

    Raises:
        EngineError: Missing, truncated or damaged file (checksum mismatch), or not a plugattn state file; the
            message names the file and what is left to continue from.
    """
    import warnings

    path = Path(path)
    weights = path.parent / LAST_FILE
    way_out = (f'its weights of the last finished epoch are intact in {weights}: start a new run from them with '
               f'--init-checkpoint {weights} (the optimizer state is not in it), or train again'
               if weights.is_file() else 'start a new run')
    if not path.is_file():
        raise EngineError(f'the resume state {path} does not exist', way_out)
    try:
        with warnings.catch_warnings():  # torch warns in several lines about what it refuses; the error says it
            warnings.simplefilter('ignore')
            state = torch.load(path, map_location='cpu', weights_only=True)
    except PermissionError:
        raise EngineError(f'cannot read {path} (permission denied)', 'check the file permissions') from None
    except Exception as e:  # zip/unpickling errors of a truncated or garbled file, or a refused pickle payload
        obj = pickled_object(e)
        if obj:
            raise EngineError(f'resume state {path} holds a pickled Python object ({obj}) that is not '
                              'checkpoint data (refused without running it)',
                              'start a new run, and load this file with weights_only=False only if you trust its '
                              'source') from None
        raise EngineError(f'resume state {path} is truncated or corrupted ({_damage(e)})', way_out) from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise EngineError(f'{path} is not a plugattn resume state', 'start a new run instead of --resume')
    if STATE_DIGEST_KEY in state and state[STATE_DIGEST_KEY] != state_digest(state):
        raise EngineError(f'resume state {path} is corrupted (checksum mismatch: its data changed after it was saved)',
                          way_out)
    return state
