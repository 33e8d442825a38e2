"""The exception type of user-facing engine problems, and the short cause its messages quote."""
from __future__ import annotations

from ..errors import PlugattnError

__all__ = ['EngineError', 'summarise_cause']


class EngineError(PlugattnError):
    """A problem the user can fix: bad config value, unknown recipe, unusable checkpoint or run directory."""


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
