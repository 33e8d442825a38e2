"""The one base class of every user-facing plugattn error.

Every layer raises a subclass of :class:`PlugattnError` (``DataError``, ``EngineError``, ``AnalysisError``,
``CliError``) whose ``str()`` is one line ``'<problem>; <fix>'``, so the command line prints it without a traceback
and library callers can catch all of them with one ``except PlugattnError`` (or ``except ValueError``).
"""
from __future__ import annotations

__all__ = ['PlugattnError']


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
