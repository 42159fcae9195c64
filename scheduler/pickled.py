"""Slotted frozen dataclasses pickled as a call with their fields' values.

The session workers' pipe (``scheduler.session_wire``) pickles a message per batch of changed hosts, each
with its containers. A dataclass with ``slots=True`` pickles through ``dataclasses``' own
``__getstate__``, which calls ``dataclasses.fields()`` for every object, and unpickles through its
``__setstate__``, which calls it again: 7.8 % of a session worker's py-spy samples while placing
100,000 replicas at 5,000 hosts were ``fields()`` alone (docs/scaling.md, part 25). ``by_fields``
pickles such an object as ``cls(*values)`` instead, the values read by one ``operator.attrgetter``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def by_fields(cls: type[T]) -> type[T]:
    """``cls`` (a dataclass whose fields are all positional ``__init__`` arguments) pickled as
    ``cls(*values)``. Apply it above ``@dataclass``, to the class that decorator returns."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init or f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: every field must be a positional __init__ argument")
    names = tuple(f.name for f in fields)
    get: Callable[[Any], Any] = operator.attrgetter(*names)
    if len(names) == 1:
        def reduce(self: Any) -> tuple[type[T], tuple[Any, ...]]:
            return cls, (get(self),)
    else:
        def reduce(self: Any) -> tuple[type[T], tuple[Any, ...]]:
            return cls, get(self)
    cls.__reduce__ = reduce  # type: ignore[method-assign]
    return cls


__all__ = ["by_fields"]
