"""Every file in configs/ as a user gets it: each preset and each ablation file loads and validates, and every value
in them reaches its key as the type the key takes. YAML 1.1 reads some words as other types (no, off, yes, on as
booleans; null, ~ as None; 1e3 as a string but 1.0e3 as a number): a word that YAML turns into a boolean where the key
wants a word (train.precision: no) or a number where it wants a boolean is caught here, whether or not the
validation would coerce it back."""

import collections.abc
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from visionlaunch.ablation import load_ablation
from visionlaunch.config import RunConfig, load_config, parse_override
from visionlaunch.models.registry import _arg_specs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
ABLATIONS = sorted((CONFIGS / "ablations").glob("*.yaml"))


def accepted_types(annotation: Any) -> set[type]:
    """The Python types a value read from YAML may have for this annotation, without any coercion."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return {object}
    if origin is typing.Annotated:
        return accepted_types(args[0])
    if origin is Literal:
        return {type(a) for a in args}
    if origin in (typing.Union, types.UnionType):
        return set().union(*map(accepted_types, args))
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        return {list}
    if origin is dict or annotation is dict:
        return {dict}
    if annotation is None or annotation is type(None):
        return {type(None)}
    if annotation is float:
        return {float, int}
    if isinstance(annotation, type):
        return {annotation}
    return {object}  # an annotation this check does not know: not judged


def mistyped(dotted: str, value: Any, model: str) -> str | None:
    """'key: got bool False for str' when YAML gave `value` a type the key does not take, else None."""
    keys = dotted.split(".")
    if keys[:2] == ["model", "args"]:
        if len(keys) == 2:  # the whole mapping of builder arguments
            return next(filter(None, (mistyped(f"model.args.{k}", v, model) for k, v in value.items())), None)
        annotation = _arg_specs(model)[keys[2]][0]
    else:
        annotation = RunConfig.model_fields[keys[0]].annotation.model_fields[keys[1]].annotation
    allowed = accepted_types(annotation)
    if object in allowed or type(value) in allowed:
        return None
    return f"{dotted}: YAML read {value!r} as {type(value).__name__}, the key takes {annotation}"


def preset_values(tree: dict) -> list[tuple[str, Any]]:
    return [(f"{section}.{key}", value) for section, mapping in tree.items() for key, value in mapping.items()]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_its_words_survive_yaml(preset):
    cfg = load_config(preset)
    problems = [p for key, value in preset_values(yaml.safe_load(preset.read_text()))
                if (p := mistyped(key, value, cfg.model.name))]
    assert not problems, problems


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: p.stem)
def test_every_ablation_file_loads_and_its_words_survive_yaml(ablation, tmp_path):
    plan = load_ablation(ablation, out=tmp_path / "out")  # every variant validated as `visionlaunch train` would
    problems = set()
    for variant in plan.variants:
        for override in variant.overrides:  # the file's values, written back as key=value text
            keys, value = parse_override(override)
            if problem := mistyped(".".join(keys), value, variant.config.model.name):
                problems.add(problem)
    assert not problems, sorted(problems)


def test_the_check_catches_precision_no_and_other_words_yaml_changes():
    assert mistyped("train.precision", yaml.safe_load("no"), "fcn")  # False, not a precision's name
    assert mistyped("output.name", yaml.safe_load("off"), "fcn")
    assert mistyped("augment.flip", yaml.safe_load("1"), "fcn")  # an int where a boolean is meant
    assert mistyped("model.args", yaml.safe_load("{hidden: [32], batch_norm: nope}"), "fcn")
    assert mistyped("train.precision", "fp32", "fcn") is None and mistyped("optim.lr", 1, "fcn") is None
    assert mistyped("model.args.hidden", [32], "fcn") is None and mistyped("data.val_size", 0.1, "fcn") is None
