"""The configuration reference, docs/configuration.md, written from the config classes themselves: every key with
its type, constraints, default and description (the pydantic `Field(description=...)`), so that the reference can
never say something other than what the code accepts. `visionlaunch show-config --keys --markdown` prints it, and
a test compares the committed file with it."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

import annotated_types
import yaml
from pydantic.fields import FieldInfo

from visionlaunch.config import RunConfig

REGENERATE = "visionlaunch show-config --keys --markdown > docs/configuration.md"

_HEADER = f"""\
# Configuration reference

Every key of a run's configuration, with its type, default and meaning. A preset (`configs/*.yaml`) sets some of
them by section; any key can be changed on the command line as `section.key=value`, read as YAML (`3`, `0.1`,
`true`, `[64, 128]`, `null`):

```bash
visionlaunch train --config configs/mnist_cnn.yaml optim.lr=0.05 train.epochs=3 "model.args={{channels: [32, 64]}}"
```

An unknown key, a wrong type or a value out of range stops before anything is read or written, naming the key
([errors](errors.md)). `visionlaunch show-config --config X [key=value ...]` prints the resolved config of a run,
`visionlaunch show-config --keys` this list as text, and `visionlaunch models` the arguments each model takes in
`model.args`.

This page is generated from the config classes (`src/visionlaunch/config.py`, `optim_config.py`,
`resolution_config.py`) by `{REGENERATE}`;
`tests/test_config_reference.py` fails when it differs from what that command writes.
"""


def _yaml(value: Any) -> str:
    """A value as it is written in a preset or an override."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _type(annotation: Any) -> str:
    """`int`, `str` or `null`, one of `a`, `b`, ... as a reader writes the value."""
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{_yaml(v)}`" for v in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(_type(a) for a in members)
        return text + (" or `null`" if len(members) < len(typing.get_args(annotation)) else "")
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return f"`{annotation.__name__}`"
    return f"`{str(annotation).replace('typing.', '')}`"


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                bound = getattr(item, attribute)
                found.append(f"{sign} {bound:,}" if isinstance(bound, int) and bound > 10**6 else f"{sign} {bound}")
    return ", ".join(found)


def _cell(text: str, prose: bool = False) -> str:
    """Text for a table cell: a '|' would end the cell; in prose GitHub reads <name> as an HTML tag and hides it."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text) if prose else text


def describe_keys() -> str:
    """Every key with its type, default and description: the text of `visionlaunch show-config --keys`."""
    out = []
    for section, field in RunConfig.model_fields.items():
        out.append(f"{section}:")
        for key, f in field.annotation.model_fields.items():
            default = f.default if f.default_factory is None else f.default_factory()
            ann = " | ".join(map(repr, typing.get_args(f.annotation))) if typing.get_origin(f.annotation) is Literal \
                else str(f.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
            desc = f"  # {f.description}" if f.description else ""
            out.append(f"  {key}: {default!r}  ({ann}){desc}")
    return "\n".join(out)


def fields() -> list[tuple[str, FieldInfo]]:
    """(dotted key, pydantic field) of every key, section by section."""
    return [(f"{section}.{key}", field) for section, holder in RunConfig.model_fields.items()
            for key, field in holder.annotation.model_fields.items()]


def markdown_reference() -> str:
    """The text of docs/configuration.md."""
    out = [_HEADER]
    for section, holder in RunConfig.model_fields.items():
        cls = holder.annotation
        out += [f"## `{section}`", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # pydantic's own text for undocumented ones
            out += [" ".join(cls.__doc__.split()), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, field in cls.model_fields.items():
            default = field.default_factory() if field.default_factory is not None else field.default
            kind = _type(field.annotation) + (f" ({_bounds(field)})" if _bounds(field) else "")
            meaning = _cell(field.description or "", prose=True)
            out.append(f"| `{section}.{key}` | {_cell(kind)} | `{_cell(_yaml(default))}` | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
