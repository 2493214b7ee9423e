"""A pydantic ValidationError of the config (or of one of its sections) as the message a user reads: one line per
problem naming the dotted key, the valid keys for an unknown one, and the offending value in a few characters."""

from __future__ import annotations

import reprlib
import typing
from types import UnionType

from pydantic import BaseModel, ValidationError


# A value's text in a message, bounded however large (or multiplied by YAML aliases) the value is.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 6, 80, 80


def _error_key(model: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """The dotted key of a pydantic error location, without the names pydantic gives the members of a union
    ('data.val_size.float' is 'data.val_size'), and the model whose keys the last part is one of (or None)."""
    parts, owner, parent, annotation = [], model, None, None
    for part in loc:
        if owner is None and isinstance(part, str) and typing.get_origin(annotation) in (typing.Union, UnionType):
            continue
        parts.append(str(part))
        parent, field = owner, owner.model_fields.get(str(part)) if owner is not None else None
        annotation = field.annotation if field is not None else None
        owner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ".".join(parts), parent


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line per problem of `model.model_validate`, naming the dotted key (and the valid keys for an unknown one)."""
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key, parent = _error_key(model, tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            prefix = key.rpartition(".")[0]
            valid = (f" Valid keys{f' in {prefix!r}' if prefix else ''}: {', '.join(parent.model_fields)}."
                     if parent is not None else "")
            lines.append(f"  - unknown key '{key}'.{valid}")
        else:
            got = e.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {_SHORT.repr(got)})"
            lines.append(f"  - {f'{key!r}' if key else 'config'}: {e['msg'].rstrip('.')}{got_text}.")
    lines = list(dict.fromkeys(lines))  # a union's members fail alike: say it once
    lines.append("Fix the YAML file or the key=value override; `visionlaunch show-config` prints every key with its default.")
    return "\n".join(lines)
