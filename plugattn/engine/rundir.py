"""Run directories: their file names, creation, the lock held by the training process, and the config a resume
continues with."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import read_run_info
from .config import RESUME_MUTABLE, resolve_config, validate_config
from .errors import EngineError

__all__ = [
    'BEST_FILE',
    'CONFIG_FILE',
    'LAST_FILE',
    'LOCK_FILE',
    'STATE_FILE',
    'RunDirLock',
    'load_resume_config',
    'new_run_dir',
    'resume_command',
    'unstarted_run',
]

STATE_FILE = 'last_state.pt'
LAST_FILE = 'last.safetensors'
BEST_FILE = 'best.safetensors'
CONFIG_FILE = 'config.yaml'
LOCK_FILE = '.lock'


def load_resume_config(run_dir: str | Path, overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """The saved config of a run, with the overrides allowed on resume applied.

    Raises:
        EngineError: Not a run directory, unreadable config, or an override of a key that cannot change on resume.
    """
    import yaml

    run_dir = Path(run_dir)
    read_run_info(run_dir)
    path = run_dir / CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise EngineError(f'run directory {run_dir} has no {CONFIG_FILE}', 'start a new run') from None
    except (OSError, yaml.YAMLError) as e:
        raise EngineError(f'cannot read {path} ({type(e).__name__})', 'start a new run') from None
    for key, _ in overrides:
        if key not in RESUME_MUTABLE:
            raise EngineError(
                f'{key} cannot change when resuming (the run was trained with the saved config)',
                f'drop that option; on resume only {", ".join(sorted(RESUME_MUTABLE))} may change',
            )
    return resolve_config(base=validate_config(saved), overrides=overrides)


def new_run_dir(cfg: Mapping[str, Any]) -> Path:
    parent = Path(cfg['output']['dir']).expanduser()
    name = cfg['output']['name']
    explicit = name is not None
    if not explicit:
        stamp = _dt.datetime.now().strftime('%Y%m%d-%H%M%S')
        name = f'{cfg["data"]["name"]}-{cfg["model"]["name"]}-{stamp}'
    run_dir = parent / name
    if explicit and run_dir.exists() and any(run_dir.iterdir()) and not unstarted_run(run_dir):
        raise EngineError(f'output folder {run_dir} already exists and is not empty',
                          f'continue it with --resume {run_dir}, or choose another --name')
    suffix = 1
    while not explicit and run_dir.exists():
        run_dir = parent / f'{name}-{suffix}'
        suffix += 1
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f'cannot create run directory {run_dir} ({e.strerror or e})',
                          'choose a writable --output folder') from None
    return run_dir


def resume_command(run_dir: str | Path) -> str:
    """The shell command that continues a run directory."""
    return f'plugattn train --resume {shlex.quote(str(run_dir))}'


def unstarted_run(run_dir: Path) -> bool:
    """A run directory whose run was killed before its first checkpoint (nothing to resume, nothing to lose)."""
    try:
        info = read_run_info(run_dir)
    except EngineError:
        return False
    return (not (run_dir / STATE_FILE).exists() and not (run_dir / LAST_FILE).exists()
            and not info.get('epochs_done') and info.get('status') != 'finished')


class RunDirLock:
    """An exclusive lock on a run directory, held by the process that trains in it.

    A second ``plugattn train`` on the same directory (``--resume`` of a run that is still going, or ``--name`` of
    a running run that has not saved its first checkpoint yet) stops with one line instead of writing alongside
    it. The lock is ``flock`` on ``.lock`` in the directory, which the system releases when the owner exits, however
    it exits, so a killed run leaves nothing that blocks its resume. Without ``fcntl`` (Windows) there is no lock.
    """

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self.handle = handle

    @classmethod
    def acquire(cls, run_dir: Path) -> RunDirLock | None:
        try:
            import fcntl
        except ImportError:
            return None
        path = run_dir / LOCK_FILE
        handle = open(path, 'a+')  # noqa: SIM115  (held open for the lifetime of the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise EngineError(f'run directory {run_dir} is in use by a running plugattn train'
                              + (f' (pid {owner})' if owner else ''),
                              'wait for that run to end or stop it, or choose another --name') from None
        handle.truncate(0)
        handle.write(f'{os.getpid()}\n')
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.handle.close()

