"""The single exception type raised for user-facing data problems."""

from __future__ import annotations

from ..errors import PlugattnError

__all__ = ["DataError"]


class DataError(PlugattnError):
    """A data problem the user can fix: bad name, missing or corrupt files, invalid option.

    The message is one line that names the problem and says how to fix it, so a command-line
    front end can print ``str(err)`` without a traceback.
    """
