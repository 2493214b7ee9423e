"""Models by name: builders register themselves, configs name them, arguments are checked before building.

A builder is ``builder(in_shape, num_classes, *, arg: type = default, ...) -> nn.Module``; the annotations validate
user arguments (through pydantic, so YAML lists become ``list[int]``) and print in help and error text. The tests hold
the contract for every registered model: that signature, ``model.classifier`` the final nn.Linear (num_classes
outputs) and ``model.feature_dim`` its in_features.
"""

from __future__ import annotations

import difflib
import inspect
import operator
import typing
from collections.abc import Callable
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import TypeAdapter, ValidationError
from torch import nn

from visionlaunch.errors import VisionlaunchError
from visionlaunch.models import timm_models  # imports timm only when a timm model is named
from visionlaunch.numbers import bool_for_number

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}
_FIXED_PARAMS = ("in_shape", "num_classes")  # every builder's first two parameters


def register(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered by {_BUILDERS[name].__qualname__}")
        _BUILDERS[name] = builder
        return builder

    return decorator


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def model_args(name: str) -> dict[str, tuple[str, Any]]:
    """The arguments a model takes: ``{arg: (type as text, default)}``, for help and error text."""
    return {arg: (type_name(ann), _shown(default)) for arg, (ann, default) in _arg_specs(name).items()}


def describe_args(name: str) -> str:
    """One line per argument, ``name: type = default``, as printed in help and errors."""
    return "; ".join(f"{arg}: {kind} = {default!r}" for arg, (kind, default) in model_args(name).items())


def validate_model_args(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """User arguments checked against the builder's annotations (nothing is built), completed with defaults."""
    specs = _arg_specs(name)
    args = dict(args or {})
    unknown = [arg for arg in args if arg not in specs]
    if unknown:
        hints = [h for arg in unknown for h in difflib.get_close_matches(str(arg), specs, n=1)]
        maybe = f" (did you mean {', '.join(map(repr, hints))}?)" if hints else ""
        raise VisionlaunchError(
            f"model {name!r} has no argument {', '.join(map(repr, unknown))}{maybe}. "
            f"Valid arguments are: {describe_args(name)}."
        )
    resolved = {arg: _shown(default) for arg, (_, default) in specs.items()}
    for arg, value in args.items():
        annotation = specs[arg][0]
        if bool_for_number(annotation, value):
            details = "a number is expected, not true/false (YAML reads those words as booleans)"
        else:
            try:
                resolved[arg] = TypeAdapter(annotation).validate_python(value)
                continue
            except ValidationError as err:
                details = "; ".join(_error_text(e) for e in err.errors())
        raise VisionlaunchError(
            f"model {name!r}: argument {arg!r} must be {type_name(annotation)}, got {value!r} ({details}). "
            f"Valid arguments are: {describe_args(name)}."
        )
    return resolved


def build_model(
    name: str, in_shape: tuple[int, int, int], num_classes: int, args: dict[str, Any] | None = None
) -> nn.Module:
    """Build a registered model for inputs of shape (C, H, W) and ``num_classes`` outputs."""
    builder = _lookup(name)
    in_shape = _check_in_shape(name, in_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise VisionlaunchError(
            f"model {name!r} needs num_classes to be an integer >= 2, got {num_classes!r}; "
            "it comes from the dataset's class list, so check that the dataset has at least two classes."
        )
    return builder(in_shape, num_classes, **validate_model_args(name, args))


def type_name(annotation: Any) -> str:
    """Readable text for an argument annotation: ``list[int > 0]``, ``float >= 0 and < 1``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *metadata = typing.get_args(annotation)
        limits = [_limit_text(m) for m in metadata]
        limits = [text for text in limits if text]
        return type_name(base) + (" " + " and ".join(limits) if limits else "")
    if origin is not None:
        inner = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _limit_text(meta: Any) -> str:
    for cls, attr, op in ((Gt, "gt", ">"), (Ge, "ge", ">="), (Lt, "lt", "<"), (Le, "le", "<=")):
        if isinstance(meta, cls):
            # :g so 0 and 0.0 read the same: typing caches Annotated[float, Ge(0.0)] and Ge(0) as equal.
            return f"{op} {getattr(meta, attr):g}"
    if isinstance(meta, MinLen):
        return f"with at least {meta.min_length} item(s)"
    if isinstance(meta, MaxLen):
        return f"with at most {meta.max_length} item(s)"
    return ""


def _error_text(error: dict[str, Any]) -> str:
    where = "".join(f"[{p}]" for p in error["loc"])
    return f"item {where}: {error['msg']}" if where else error["msg"]


def _shown(default: Any) -> Any:
    # Builders use tuples as defaults (immutable); users write lists, so show lists.
    return list(default) if isinstance(default, tuple) else default


def _lookup(name: str) -> Builder:
    if str(name).startswith(timm_models.PREFIX):
        return timm_models.builder_for(name)
    if name not in _BUILDERS:
        hints = difflib.get_close_matches(str(name), _BUILDERS, n=1)
        maybe = f" Did you mean {hints[0]!r}?" if hints else ""
        raise VisionlaunchError(
            f"unknown model {name!r}.{maybe} Registered models are: {', '.join(model_names())}; any timm "
            "architecture is timm/<architecture> (`visionlaunch models --timm PATTERN` lists them)."
        )
    return _BUILDERS[name]


def _arg_specs(name: str) -> dict[str, tuple[Any, Any]]:
    builder = _lookup(name)
    hints = typing.get_type_hints(builder, include_extras=True)
    params = list(inspect.signature(builder).parameters.values())[len(_FIXED_PARAMS) :]
    return {p.name: (hints[p.name], p.default) for p in params}


def _check_in_shape(name: str, in_shape: Any) -> tuple[int, int, int]:
    try:
        # operator.index accepts numpy and torch integers but not floats or bools.
        shape = tuple(operator.index(d) for d in in_shape if not isinstance(d, bool))
        ok = len(shape) == len(tuple(in_shape)) == 3 and all(d > 0 for d in shape)
    except TypeError:
        ok = False
    if not ok:
        raise VisionlaunchError(
            f"model {name!r} needs in_shape as three positive integers (channels, height, width), "
            f"e.g. (1, 28, 28) for MNIST or (3, 32, 32) for CIFAR; got {in_shape!r}."
        )
    return shape  # type: ignore[return-value]
