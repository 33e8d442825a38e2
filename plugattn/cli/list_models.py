"""``plugattn list-models``: registered model names, the torchvision and timm hosts attach takes, optionally with
parameter counts."""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ._common import ArgumentParser, add_command

if TYPE_CHECKING:
    from torch import nn

NAME = 'list-models'
HELP = 'list model names matching an fnmatch pattern (e.g. "bav2_*", "*resnet20", "tv:*", "timm:convnext*")'

# Above this many timm candidates, say on stderr that building them takes a while.
_NOTE_ABOVE = 50


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``list-models`` parser."""
    parser = add_command(
        subparsers, NAME, HELP,
        details='Patterns starting with "tv:" or "timm:" list the torchvision (classification, detection and\n'
                'segmentation builders) or timm models that plugattn.attach takes; each candidate is built on the\n'
                'meta device (no weights, no download) and kept when it has a supported block. "timm:*" checks\n'
                'several hundred models and takes about a minute.',
        epilog='examples:\n'
               '  plugattn list-models "bav2_*" --params\n'
               '  plugattn list-models "tv:*"\n'
               '  plugattn list-models "timm:convnext*"',
    )
    parser.add_argument('pattern', nargs='?', default='*', metavar='PATTERN', help='fnmatch pattern')
    parser.add_argument('--params', action='store_true',
                        help='also print parameter counts (models built on the meta device at their default '
                             'number of classes)')
    parser.set_defaults(func=run)
    return parser


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initialisers as no-ops: a model built on the CPU then allocates its parameters
    without filling them (used where a builder computes widths with tensors, which the meta device cannot give
    back as numbers: torchvision's RegNets)."""
    from unittest import mock

    import torch
    from torch import nn

    with contextlib.ExitStack() as stack, torch.no_grad():
        for name in dir(nn.init):
            if name.endswith('_') and not name.startswith('_'):
                stack.enter_context(mock.patch.object(nn.init, name, lambda tensor, *a, **k: tensor))
        yield


def _build_empty(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device, or with its parameters allocated but not initialised where meta fails."""
    import torch

    try:
        with torch.device('meta'):
            return build()
    except (NotImplementedError, RuntimeError):
        with _skip_init():
            return build()


def _torchvision_candidates(pattern: str) -> dict[str, Callable[[], nn.Module]]:
    import torchvision
    from torchvision import models

    found: dict[str, Callable[[], nn.Module]] = {}
    for module in (models, models.detection, models.segmentation):
        extra = {} if module is models else {'weights_backbone': None}  # no backbone download
        for arch in models.list_models(module=module):
            if fnmatch.fnmatchcase(f'tv:{arch}', pattern):
                found[f'tv:{arch}'] = (lambda a=arch, kw=extra: torchvision.models.get_model(a, weights=None, **kw))
    return found


def _timm_candidates(pattern: str) -> dict[str, Callable[[], nn.Module]]:
    try:
        import timm
    except ImportError:
        return {}
    from ..attach._core import families

    # timm's model names come from the modules that define the families' model classes
    modules = sorted({t.__module__.rsplit('.', 1)[1] for f in families() for t in f.model_types
                      if t.__module__.startswith('timm.models.')})
    names = sorted({n for m in modules for n in timm.list_models(module=m)})
    return {f'timm:{n}': (lambda a=n: timm.create_model(a)) for n in names if fnmatch.fnmatchcase(f'timm:{n}', pattern)}


def attachable_hosts(pattern: str) -> dict[str, nn.Module]:
    """The torchvision (``tv:``) and timm (``timm:``) models matching ``pattern`` that :func:`plugattn.attach`
    takes, by name, built without weights."""
    import warnings

    from ..attach import attachable

    candidates = {**_torchvision_candidates(pattern), **_timm_candidates(pattern)}
    if len(candidates) > _NOTE_ABOVE:
        print(f'plugattn list-models: checking {len(candidates)} models on the meta device ...', file=sys.stderr,
              flush=True)
    hosts: dict[str, nn.Module] = {}
    for name, build in candidates.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                model = _build_empty(build)
                if attachable(model):
                    hosts[name] = model
        except Exception:  # a model attach cannot take, whatever the reason, is not listed
            continue
    return hosts


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn list-models``."""
    from ..engine.errors import EngineError
    from ..hub import create_model, list_models

    if args.pattern.startswith(('tv:', 'timm:')):
        if args.pattern.startswith('timm:'):
            try:
                import timm  # noqa: F401
            except ImportError:
                raise EngineError('timm is not installed', "pip install 'plugattn[timm]'") from None
        hosts = attachable_hosts(args.pattern)
        if not hosts:
            raise EngineError(f'no torchvision or timm model that attach takes matches {args.pattern!r}',
                              'try "tv:*" or "timm:resnet*"')
        names = sorted(hosts)
        counts = {n: sum(p.numel() for p in m.parameters()) for n, m in hosts.items()}
    else:
        names = list_models(args.pattern)
        if not names:
            raise EngineError(f'no model matches {args.pattern!r}',
                              'try a wider pattern such as "*resnet*", or none; "tv:*" and "timm:*" list the hosts '
                              'attach takes')
        counts = {}
    if not args.params:
        print('\n'.join(names))
        return 0
    import torch

    width = max(len(n) for n in names)
    for name in names:
        if name not in counts:
            with torch.device('meta'):
                counts[name] = sum(p.numel() for p in create_model(name).parameters())
        print(f'{name:<{width}}  {counts[name]:>13,}')
    return 0
