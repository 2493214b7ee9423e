"""A boolean is not a number. YAML reads `true`/`false` as booleans, and pydantic's lax mode (which the config keeps,
so that `1e-3`, read by YAML as a string, and 3 for a float still work) takes `true` for 1: `train.epochs=true`
would train one epoch. Config sections and model arguments ask `bool_for_number` before they validate a value."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any


def bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether `value` holds a bool where `annotation` expects a number: an int or float field, an item of a list
    or tuple of numbers, a value of a mapping to numbers. A field that accepts booleans too (`int | bool`) never."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return bool_for_number(args[0], value)
    if annotation in (int, float):
        return isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return bool not in args and any(bool_for_number(a, value) for a in args)
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return any(bool_for_number(a, v) for a, v in zip(args, value))
        return any(bool_for_number(args[0], v) for v in value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return any(bool_for_number(args[1], v) for v in value.values())
    return False
