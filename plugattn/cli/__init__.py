"""The ``plugattn`` command line (also ``python -m plugattn``).

Each subcommand lives in its own module of this package with ``NAME``, ``HELP``, ``register(subparsers)``
(adds its parser and sets ``func``) and ``run(args) -> int``; add a module to :data:`SUBCOMMANDS` to add a command.
User errors print one line ``plugattn: error: <problem>; <fix>`` on stderr and exit with code 2 (``--debug`` shows
the traceback); an interrupt exits with 130.
"""
from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence

from ..version import __version__
from ._common import PROG, ArgumentParser, CliError, HelpFormatter, add_debug, format_error

__all__ = ['SUBCOMMANDS', 'build_parser', 'main']

# Module names (relative to this package) of the subcommands, in help order.
SUBCOMMANDS: tuple[str, ...] = (
    'train', 'evaluate', 'list_models', 'predict', 'bench', 'cam', 'attn_corr', 'compare', 'export', 'yolo',
    'diffusion_demo',
)

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = ArgumentParser(
        prog=PROG,
        description='plugattn: paper-faithful attention modules for vision backbones, with a training engine.\n\n'
                    'Run "plugattn train" with no arguments for the default quick run (BAv2-ResNet-20 on '
                    'Fashion-MNIST).',
        formatter_class=HelpFormatter,
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    add_debug(parser, default=False)
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=ArgumentParser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f'.{name}', __name__)
        module.register(subparsers)
    return parser


def _process_start() -> float:
    """``time.perf_counter()`` value at process start (Linux), so wall times include start-up and imports."""
    import os
    import time

    now = time.perf_counter()
    try:
        with open('/proc/self/stat', encoding='ascii') as f:
            start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/uptime', encoding='ascii') as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - age if 0.0 <= age < 3600.0 else now


def _command_names(parser: ArgumentParser | None) -> set[str]:
    if parser is None or parser._subparsers is None:
        return set()
    return {name for action in parser._subparsers._group_actions for name in getattr(action, 'choices', {}) or {}}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 2 user error, 1 internal error, 130 interrupted.
    """
    t_start = _process_start()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in argv
    command = next((a for a in argv if not a.startswith('-')), None)
    parser = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = bool(getattr(args, 'debug', False))
        if args.command is None:
            parser.print_help()
            return 0
        command = args.command
        args.t_start = t_start
        args.argv = [PROG, *argv]
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `plugattn list-models | head`): stop quietly, without a second error at exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit:
        raise
    except CliError as err:
        if debug:
            traceback.print_exc()
        if command in _command_names(parser) and err.fix == f'see "{PROG} --help"':
            err = CliError(err.problem, f'see "{PROG} {command} --help"')  # unknown option of a subcommand
        print(f'{PROG}: error: {format_error(err, command)}', file=sys.stderr)
        return EXIT_USER_ERROR
    except BaseException as err:
        from ..data import DataError
        from ..engine.errors import EngineError
        from ..errors import summarise_cause

        user = isinstance(err, (CliError, EngineError, DataError, ValueError, FileNotFoundError, OSError, KeyError))
        if debug:
            traceback.print_exc()
        if user:
            print(f'{PROG}: error: {format_error(err, command)}', file=sys.stderr)
            return EXIT_USER_ERROR
        text = summarise_cause(err, limit=300)
        print(f'{PROG}: error: internal error {type(err).__name__}: {text}; rerun with --debug for the traceback '
              'and report it', file=sys.stderr)
        return EXIT_INTERNAL_ERROR

