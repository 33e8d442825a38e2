"""The one base class of every user-facing plugattn error, and the checks the layers share.

Every layer raises a subclass of :class:`PlugattnError` (``DataError``, ``EngineError``, ``AnalysisError``,
``CliError``) whose ``str()`` is one line ``'<problem>; <fix>'``, so the command line prints it without a traceback
and library callers can catch all of them with one ``except PlugattnError`` (or ``except ValueError``). A wrongly
typed argument or an unknown keyword is a :class:`PlugattnTypeError`, which ``except TypeError`` also catches, as it
did before these classes existed.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ['PlugattnError', 'PlugattnTypeError', 'check_out_indices', 'summarise_cause']


class PlugattnError(ValueError):
    """A problem the user can fix: a bad name, value, file or option.

    ``str(err)`` is one line, ``'<problem>; <fix>'`` (just the problem when no fix is given). It subclasses
    ``ValueError`` so that callers catching ``ValueError`` keep working.

    Args:
        problem: What is wrong (one line).
        fix: What to do about it (one line).
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f'{problem}; {fix}' if fix else problem)


class PlugattnTypeError(PlugattnError, TypeError):
    """An argument of the wrong type, or one the callee does not take (``except TypeError`` catches it too)."""


def check_out_indices(out_indices: Any, num_levels: int, owner: str) -> tuple[int, ...]:
    """Validate the feature levels a ``features_only`` model returns, as timm numbers them.

    Args:
        out_indices: A sequence of distinct ints in ``-num_levels .. num_levels - 1`` (negative counts from the end,
            as in timm), or None for all levels.
        num_levels: The levels the model has.
        owner: The model, named in the message.

    Returns:
        The indices as a tuple (negative ones kept as given).

    Raises:
        PlugattnTypeError: ``out_indices`` is not a sequence of ints (a string, a float, a bare int).
        PlugattnError: An index is out of range or repeated.
    """
    if out_indices is None:
        return tuple(range(num_levels))
    example = f'e.g. out_indices={tuple(range(max(0, num_levels - 2), num_levels))}'
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in out_indices):
        raise PlugattnTypeError(f'out_indices of {owner} must be a tuple of ints (feature levels '
                                f'0..{num_levels - 1}, negative from the end), got {out_indices!r}', f'pass {example}')
    indices = tuple(int(i) for i in out_indices)
    bad = [i for i in indices if not -num_levels <= i < num_levels]
    if bad:
        raise PlugattnError(f'out_indices {indices} of {owner}: {bad} out of range for {num_levels} feature levels '
                            f'(0..{num_levels - 1}, or -{num_levels}..-1 from the end)', f'pass {example}')
    absolute = [i % num_levels for i in indices]
    repeated = sorted({i for i in indices if absolute.count(i % num_levels) > 1})
    if repeated or not indices:
        what = f'names levels {repeated} more than once' if repeated else 'is empty'
        raise PlugattnError(f'out_indices {indices} of {owner} {what}', f'list each level once, {example}')
    return indices


def summarise_cause(exc: BaseException, limit: int = 100) -> str:
    """A short cause for a one-line message: the first sentence of ``exc``'s text, whole words only.

    Library messages run to several sentences (PyTorch's advice on ``weights_only``, miniz's explanation); one line
    keeps the first, and a sentence longer than ``limit`` characters ends after its last whole word with ``...``.
    The exception's type name stands in for an empty text.
    """
    text = ' '.join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    first = text.split('. ', 1)[0].rstrip('.')
    if len(first) > limit:
        first = first[:limit].rsplit(' ', 1)[0].rstrip(',;:') + ' ...'
    return first or type(exc).__name__
