"""YAML written by people (config presets, ablation files, key=value overrides), read safely and strictly.

PyYAML's safe loader runs no code, but it takes a key written twice in one mapping as last-wins without a word,
lets aliases multiply a few lines into billions of values ("billion laughs": the values are shared, so loading is
cheap, but validating or printing them is not), and recurses once per level of nesting until Python's recursion
limit. Here each of these is refused with the line it is on, before anything else looks at the values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from visionlaunch.errors import VisionlaunchError, describe_os_error

# Far above what any config or ablation file holds (a few hundred values, a few levels), far below what costs
# memory or time to validate and print.
MAX_VALUES = 100_000
MAX_DEPTH = 64
_MERGE = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.YAMLError):
    """Well-formed YAML that visionlaunch refuses. The message is a clause that follows the name of its source:
    '<file> has the key ...'."""


class _StrictLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent, index):  # the composer recurses once per level: stop well before Python does
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlRefused(f"nests deeper than {MAX_DEPTH} levels (line {line}); a config needs a few levels "
                                  "of sections and lists: flatten it")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:  # before merge keys (<<) are flattened: overriding a merged key is fine
            if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            try:
                earlier = first.get(key)
            except TypeError:  # unhashable: the constructor reports it
                continue
            if earlier is not None:
                lines = f"lines {earlier} and {line}" if earlier != line else f"both on line {line}"
                raise YamlRefused(f"has the key {key!r} twice in one mapping ({lines}); YAML would keep only the "
                                  "last in silence: remove one of them")
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Refuse a document whose aliases expand it past MAX_VALUES values or MAX_DEPTH levels, or make it contain
    itself. Counted on the node graph (aliases are shared nodes), each node once: never expanded."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key, line = id(node), node.start_mark.line + 1
        if children_done:
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_VALUES and len(size) < size[key]:  # fewer nodes written than it counts: aliases
                raise YamlRefused(f"expands to more than {MAX_VALUES} values through its aliases (*name), at the "
                                  f"value on line {line}; a config needs far fewer: write the values out, or "
                                  "repeat an anchor fewer times")
            if size[key] > MAX_VALUES:
                raise YamlRefused(f"holds more than {MAX_VALUES} values (in the value on line {line}); a config "
                                  "needs far fewer: check that this is the file meant")
            if depth[key] > MAX_DEPTH:
                raise YamlRefused(f"nests deeper than {MAX_DEPTH} levels through its aliases (*name), at the value "
                                  f"on line {line}: flatten it")
            continue
        if key in size:
            continue
        if key in depth:  # entered and not finished: an alias inside the value it names
            raise YamlRefused(f"holds a value that contains itself (an alias inside its own anchor, line {line}): "
                              "remove the alias")
        depth[key] = -1
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def read_yaml(text: str) -> Any:
    """The one document in `text`, as yaml.safe_load reads it, or YamlRefused (a yaml.YAMLError) for a duplicate
    key, alias expansion past the bounds, a value that contains itself or nesting past MAX_DEPTH."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike, what: str = "config file",
              example: str = "--config configs/mnist_cnn.yaml (the presets are in configs/)",
              holds: str = "a mapping of sections (data:, model:, ...)") -> dict:
    """A YAML file that must hold a mapping (a preset, an ablation file); an empty file is an empty mapping."""
    p = Path(path)
    if p.is_dir():
        raise VisionlaunchError(f"{what} {p} is a folder, not a file. Pass a YAML file, e.g. {example}.")
    if not p.is_file():
        raise VisionlaunchError(f"{what} {p} does not exist. Pass an existing YAML file, e.g. {example}.")
    try:
        tree = read_yaml(p.read_bytes().decode("utf-8")) or {}
    except OSError as exc:
        raise VisionlaunchError(f"{what} {p} cannot be read: {describe_os_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise VisionlaunchError(
            f"{what} {p} is not UTF-8 text (byte {exc.start} cannot be decoded: {exc.reason}). Pass a YAML file, "
            f"saved as UTF-8, e.g. {example}.") from None
    except YamlRefused as exc:
        raise VisionlaunchError(f"{what} {p} {exc}.") from None
    except yaml.YAMLError as exc:
        raise VisionlaunchError(f"{what} {p} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise VisionlaunchError(f"{what} {p} must hold {holds}, not a {type(tree).__name__}.")
    return tree
