"""The exception type of user-facing engine problems."""
from __future__ import annotations

from ..errors import PlugattnError

__all__ = ['EngineError']


class EngineError(PlugattnError):
    """A problem the user can fix: bad config value, unknown recipe, unusable checkpoint or run directory."""
