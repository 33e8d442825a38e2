"""``plugattn list-models``: registered model names, optionally with parameter counts."""
from __future__ import annotations

import argparse

from ._common import ArgumentParser, add_command

NAME = 'list-models'
HELP = 'list model names matching an fnmatch pattern (e.g. "bav2_*", "*resnet20")'


def register(subparsers: argparse._SubParsersAction) -> ArgumentParser:
    """Add the ``list-models`` parser."""
    parser = add_command(subparsers, NAME, HELP)
    parser.add_argument('pattern', nargs='?', default='*', metavar='PATTERN', help='fnmatch pattern')
    parser.add_argument('--params', action='store_true',
                        help='also print parameter counts (models built on the meta device at their default '
                             'number of classes)')
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``plugattn list-models``."""
    from ..engine.errors import EngineError
    from ..hub import create_model, list_models

    names = list_models(args.pattern)
    if not names:
        raise EngineError(f'no model matches {args.pattern!r}', 'try a wider pattern such as "*resnet*", or none')
    if not args.params:
        print('\n'.join(names))
        return 0
    import torch

    width = max(len(n) for n in names)
    for name in names:
        with torch.device('meta'):
            model = create_model(name)
        count = sum(p.numel() for p in model.parameters())
        print(f'{name:<{width}}  {count:>13,}')
    return 0
