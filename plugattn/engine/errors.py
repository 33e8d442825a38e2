"""The exception type of user-facing engine problems."""
from __future__ import annotations

__all__ = ['EngineError']


class EngineError(ValueError):
    """A problem the user can fix: bad config value, unknown recipe, unusable checkpoint or run directory.

    ``str(err)`` is one line, ``'<problem>; <fix>'``, so a command-line front end prints it without a traceback.
    It subclasses ``ValueError`` so that library callers catching ``ValueError`` keep working.

    Args:
        problem: What is wrong (one line).
        fix: What to do about it (one line).
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f'{problem}; {fix}' if fix else problem)
