"""Run directories: their file names, creation, the lock held by the training process, and the config a resume
continues with."""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .checkpoint import STATE_FILE, read_run_info
from .config import RESUME_MUTABLE, resolve_config, validate_config
from .errors import EngineError

__all__ = [
    'CONFIG_FILE',
    'LOCK_FILE',
    'RunDirLock',
    'leftovers_only',
    'load_resume_config',
    'new_run_dir',
    'resume_command',
    'unstarted_run',
]

CONFIG_FILE = 'config.yaml'
LOCK_FILE = '.lock'


def load_resume_config(run_dir: str | Path, overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """The saved config of a run, with the overrides allowed on resume applied.

    A folder a run was killed in before it wrote ``run.json`` (it holds only its ``config.yaml``, lock and temp files)
    counts as a run directory: it is started again from the beginning with that config.

    Raises:
        EngineError: Not a run directory, unreadable config, or an override of a key that cannot change on resume.
    """
    import yaml

    run_dir = Path(run_dir)
    if not leftovers_only(run_dir):
        read_run_info(run_dir)
    elif not (run_dir / CONFIG_FILE).is_file():
        raise EngineError(f'{run_dir} holds no run to resume (no run.json or {CONFIG_FILE}: a run stopped while it '
                          'created its folder leaves it so)',
                          f'start it again with the same command and --output {shlex.quote(str(run_dir.parent))} '
                          f'--name {shlex.quote(run_dir.name)} (that folder is then used)')
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


def new_run_dir(cfg: Mapping[str, Any]) -> tuple[Path, bool]:
    """Create the run directory a config asks for (``output.dir`` / ``output.name``, or a time-stamped name).

    Returns:
        ``(run_dir, reused)``: ``reused`` when ``output.name`` names a folder that holds only what a run stopped
        before its first checkpoint left behind; the new run starts in it.

    Raises:
        EngineError: The named folder holds anything else (a run to resume, or other files), or cannot be created.
    """
    parent = Path(cfg['output']['dir']).expanduser()
    name = cfg['output']['name']
    explicit = name is not None
    if not explicit:
        stamp = _dt.datetime.now().strftime('%Y%m%d-%H%M%S')
        name = f'{cfg["data"]["name"]}-{cfg["model"]["name"]}-{stamp}'
    run_dir = parent / name
    reused = explicit and run_dir.is_dir() and any(run_dir.iterdir())
    if reused and not unstarted_run(run_dir):
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
    return run_dir, reused


def resume_command(run_dir: str | Path) -> str:
    """The shell command that continues a run directory."""
    return f'plugattn train --resume {shlex.quote(str(run_dir))}'


def _is_leftover(name: str) -> bool:
    """A file a run writes before its first checkpoint: the lock, the config, a temp file of a cut-short write."""
    return name in (LOCK_FILE, CONFIG_FILE) or (name.startswith('.') and name.endswith('.tmp'))


def leftovers_only(run_dir: Path) -> bool:
    """A folder without ``run.json`` that holds files a run writes before it (lock, config, temp files) and nothing
    else: a run killed while it created its directory (an empty folder is not taken for one)."""
    try:
        names = [p.name for p in run_dir.iterdir()]
    except OSError:
        return False
    return bool(names) and all(_is_leftover(n) for n in names)


def unstarted_run(run_dir: Path) -> bool:
    """A run directory whose run ended before its first resume state was saved: nothing to resume, nothing to lose.

    ``run.json`` says no epoch finished (or is missing, with only the files a starting run writes present), and there
    is no ``last_state.pt`` (weights files without it come from a first save that was cut short).
    """
    if not run_dir.is_dir() or (run_dir / STATE_FILE).exists():
        return False
    try:
        info = read_run_info(run_dir)
    except EngineError:
        return leftovers_only(run_dir)
    return not info.get('epochs_done') and info.get('status') != 'finished'


class RunDirLock:
    """An exclusive lock on a run directory, held by the process that trains in it.

    A second ``plugattn train`` on the same directory (``--resume`` of a run that is still going, or ``--name`` of
    a running run that has not saved its first checkpoint yet) stops with one line instead of writing alongside
    it. The lock is ``flock`` on ``.lock`` in the directory, which the system releases when the owner exits, however
    it exits: the ``.lock`` file a killed run leaves behind (it holds that run's pid) is taken over with a one-line
    notice. Without ``fcntl`` (Windows), or on a file system without ``flock``, there is no lock.
    """

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self.handle = handle

    @classmethod
    def acquire(cls, run_dir: Path, echo: Callable[[str], None] = print) -> RunDirLock | None:
        """Lock ``run_dir`` (``echo`` prints the notice when a killed run's lock file is taken over).

        Raises:
            EngineError: Another process holds the lock.
        """
        try:
            import fcntl
        except ImportError:
            return None
        path = run_dir / LOCK_FILE
        handle = open(path, 'a+')  # noqa: SIM115  (held open for the lifetime of the run)
        handle.seek(0)
        owner = handle.read().strip()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None  # a file system without flock: run unlocked rather than not at all
            raise EngineError(f'run directory {run_dir} is in use by a running plugattn train'
                              + (f' (pid {owner})' if owner else ''),
                              'wait for that run to end or stop it, or choose another --name') from None
        if owner and owner != str(os.getpid()):
            echo(f'  note: taking over {path}, left by pid {owner}, which ended without releasing it')
        handle.truncate(0)
        handle.write(f'{os.getpid()}\n')
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        """Remove the lock file and release the lock."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.handle.close()
