"""Shared command-line machinery: the argument parser class, help formatting and one-line user errors."""
from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from ..errors import PlugattnError

__all__ = [
    'PROG',
    'ArgumentParser',
    'CliError',
    'HelpFormatter',
    'add_debug',
    'format_error',
    'non_negative_int',
    'positive_int',
    'stdout_is_tty',
]

PROG = 'plugattn'


class CliError(PlugattnError):
    """A command-line usage problem; printed as one ``plugattn: error: ...`` line, exit code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the hand-wrapped descriptions and epilogs."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=120)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ''
        if '(default' in text or action.default in (None, argparse.SUPPRESS) or action.default is False:
            return text
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        return text + ' (default: %(default)s)'


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors raised as :class:`CliError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise the usage problem as a one-line :class:`CliError`."""
        name = self.prog.removeprefix(PROG).strip()
        help_cmd = f'{PROG} {name} --help' if name else f'{PROG} --help'
        raise CliError(message, f'see "{help_cmd}"')


def format_error(err: BaseException, command: str | None = None) -> str:
    """One line ``<problem>; <fix>`` for an exception raised by plugattn code."""
    from ..data import DataError
    from ..engine import EngineError

    if isinstance(err, KeyError):
        text = f'missing key {err.args[0]!r}' if err.args else 'missing key'
    else:
        text = str(err) or type(err).__name__
    text = ' '.join(text.split())
    if isinstance(err, (CliError, EngineError)):
        return text
    if isinstance(err, DataError):
        # The data layer writes '<problem>: <fix>'; show it in the CLI's '<problem>; <fix>' form.
        if '; ' in text:
            return text
        head, sep, tail = text.rpartition(': ')
        if sep and head and tail:
            return f'{head}; {tail}'
        return f'{text}; check --data and --data-dir (see "{PROG} train --help")'
    if isinstance(err, FileNotFoundError) and err.filename:
        text = f'{err.strerror or "file not found"}: {err.filename}'
    elif isinstance(err, OSError) and err.filename:
        text = f'{err.strerror or type(err).__name__}: {err.filename}'
    if '; ' in text:
        return text
    where = f'{PROG} {command} --help' if command else f'{PROG} --help'
    return f'{text}; check the arguments (see "{where}") or rerun with --debug for the traceback'


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid int value: {text!r}') from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {value}')
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def add_command(
        subparsers: argparse._SubParsersAction,
        name: str,
        summary: str,
        details: str = '',
        epilog: str | None = None,
) -> ArgumentParser:
    """A subcommand parser with ``--debug``: ``summary`` is its one-line help and opens its description.

    Args:
        subparsers: The ``plugattn`` subparsers.
        name: Subcommand name.
        summary: One line, without a final full stop.
        details: Hand-wrapped paragraphs that follow the summary in ``--help``.
        epilog: Hand-wrapped text after the options (examples).
    """
    parser = subparsers.add_parser(
        name, help=summary, description=f'{summary}.' + (f'\n\n{details}' if details else ''), epilog=epilog,
        formatter_class=HelpFormatter,
    )
    add_debug(parser)
    return parser


def add_debug(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """``--debug``: show tracebacks of errors (accepted before or after the subcommand)."""
    parser.add_argument('--debug', action='store_true', default=default,
                        help='show the full traceback of errors (default: one-line messages)')


def stdout_is_tty() -> bool:
    """Whether standard output is a terminal."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
