"""What produced a run: command line, library versions, device and the git revision of the plugattn sources."""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..version import __version__

__all__ = ['command_line', 'environment_info', 'git_revision']


def command_line(argv: Sequence[str] | None = None) -> str:
    """``argv`` (default ``sys.argv``) as one shell-quoted line."""
    return shlex.join(str(a) for a in (sys.argv if argv is None else argv))


def git_revision(path: str | Path | None = None) -> str | None:
    """``<commit>`` (``+dirty`` when tracked files changed) of the git checkout holding ``path`` (default: the
    plugattn package), or None when it is not a checkout or git is unavailable."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(['git', '-C', str(folder), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', str(folder), 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f'{head}+dirty' if head and dirty else head or None


def environment_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions of plugattn, torch, torchvision and Python, the platform, the device (with its name on CUDA) and
    the git revision of the plugattn sources where available."""
    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:
        tv = None
    dev = torch.device(device) if device is not None else torch.device('cpu')
    info: dict[str, Any] = {
        'plugattn': __version__,
        'torch': torch.__version__,
        'torchvision': tv,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'device': str(dev),
    }
    if dev.type == 'cuda' and torch.cuda.is_available():
        info['device_name'] = torch.cuda.get_device_name(dev)
        info['cuda'] = torch.version.cuda
    else:
        info['device_name'] = platform.processor() or platform.machine()
    info['git_revision'] = git_revision()
    return info
