"""Values of templated operator arguments, checked after rendering.

A template renders to a string unless the DAG renders native objects, so a flag may arrive as
``True`` or as ``"True"``. Anything else is refused before the operator changes anything.
"""

from __future__ import annotations

from typing import Any

from data_lifecycle.exceptions import LifecycleConfigError

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def as_bool(value: Any, *, field: str) -> bool:
    """A bool, or the string a template renders one to."""
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise LifecycleConfigError(f"{field} must be true or false, got {value!r}")
