"""Type checks of constructor arguments against their annotations, with messages that name the parameter.

Only plain value types are checked (``int``, ``float``, ``bool``, ``str``, ``None``, their unions and sequences or
mappings of them): a wrong value type there would otherwise surface as a TypeError deep inside torch, or not at all
(``drop_rate='0.5'`` builds a model that fails in its first forward pass). Annotations that name classes, callables
or anything else are not checked.
"""
from __future__ import annotations

import collections.abc as cabc
import functools
import inspect
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

from ..errors import PlugattnTypeError

__all__ = ['check_arguments', 'checked_init']

_SIMPLE = (int, float, bool, str, type(None))


def _is_simple(hint: Any) -> bool:
    """Whether a hint is made only of types this module checks."""
    if hint in _SIMPLE:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return all(_is_simple(a) for a in args)
    if origin in (tuple, list, cabc.Sequence):
        return bool(args) and all(a is Ellipsis or _is_simple(a) for a in args)
    return False


def _matches(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin in (tuple, list, cabc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    return True


def _describe(hint: Any) -> str:
    names = {int: 'an int', float: 'a number', bool: 'true or false (bool)', str: 'a string', type(None): 'None'}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return ' or '.join(_describe(a) for a in args)
    if origin in (tuple, list, cabc.Sequence):
        inner = _describe(args[0]).removeprefix('an ').removeprefix('a ')
        return f'a sequence of {inner}s' if inner != 'None' else 'a sequence'
    return str(hint)


def _suggest(name: str, value: Any, hint: Any) -> str:
    """``pass reduction=16`` when a string spells a valid value, else ``pass NAME as TYPE``."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                parsed = kind(value)
            except ValueError:
                continue
            if _matches(parsed, hint):
                return f'pass {name}={parsed!r} (a number, not a string)'
    return f'pass {name} as {_describe(hint)}'


@functools.cache
def _signature(fn: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]] | None:
    try:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError, AttributeError):  # unresolvable annotations: nothing is checked
        return None
    return sig, {k: v for k, v in hints.items() if k != 'return' and _is_simple(v)}


def check_arguments(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], owner: str) -> None:
    """Raise a PlugattnTypeError naming the first argument whose value does not fit ``fn``'s annotation.

    Args:
        fn: The function or ``__init__`` (unbound; ``args`` then starts with ``self``).
        args: Positional arguments.
        kwargs: Keyword arguments.
        owner: Shown in the message, e.g. the class name.

    Raises:
        PlugattnTypeError: ``'<owner>: <name> must be <type>, got <value> (<type>); pass ...'``, or an unknown
            keyword / too many positional arguments in Python's wording.
    """
    found = _signature(fn)
    if found is None:
        return
    sig, hints = found
    try:
        bound = sig.bind_partial(*args, **kwargs)
    except TypeError as e:  # an unknown keyword or too many positional arguments: Python's wording
        raise PlugattnTypeError(f'{owner}.{fn.__name__}() {e}') from None
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        if hint is not None and not _matches(value, hint):
            raise PlugattnTypeError(f'{owner}: {name} must be {_describe(hint)}, got {value!r} '
                                    f'({type(value).__name__}); {_suggest(name, value, hint)}')


def checked_init(cls: type) -> None:
    """Wrap ``cls.__init__`` (when the class defines one) with :func:`check_arguments`.

    Called from ``__init_subclass__`` of the attention and model base classes.
    """
    init = cls.__dict__.get('__init__')
    if init is None or getattr(init, '_plugattn_checked', False):
        return

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        check_arguments(init, (self, *args), kwargs, cls.__name__)
        init(self, *args, **kwargs)

    __init__._plugattn_checked = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]
