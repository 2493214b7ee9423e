"""The layering of src/visionlaunch: no two packages import each other (directly or round a longer circle), and
the datasets package never reaches up into ffcv_builders. Read from the source with ast, so an import inside a
function counts as much as one at the top of a file."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "visionlaunch"


def _part(dotted: str) -> str | None:
    """The top-level part of visionlaunch that a dotted name lies in: a subpackage or a module directly under
    visionlaunch (config, errors, ...); "visionlaunch" for the package's own __init__; None for other projects."""
    names = dotted.split(".")
    if names[0] != "visionlaunch":
        return None
    return names[1] if len(names) > 1 else "visionlaunch"


def _owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return "visionlaunch" if rel.stem == "__init__" else rel.stem  # __main__ is a part of its own: nothing imports it


def _imported(path: Path) -> set[str]:
    """The dotted module names that `path` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = ["visionlaunch", *path.relative_to(PACKAGE).with_suffix("").parts]
    if here[-1] == "__init__":
        here.append("")  # a package's __init__ resolves `.x` inside the package itself
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:-node.level] + ([base] if base else []))
            found.add(base)
            # `from visionlaunch.models import timm_models` imports that module (a name may be one)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is_part(name: str) -> bool:
    return name == "visionlaunch" or (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def package_graph() -> dict[str, set[str]]:
    """part -> the other parts it imports (a name the package does not have, like __version__, is the root)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        graph[owner] |= set()
        for dotted in _imported(path):
            target = _part(dotted)
            if target is not None and _is_part(target) and target != owner:
                graph[owner].add(target)
    return graph


def _is_module(dotted: str) -> bool:
    return PACKAGE.joinpath(*dotted.split(".")[1:]).with_suffix(".py").is_file()


def module_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (the package's __init__ left out: it is the face that
    imports them all)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted((PACKAGE / package).rglob("*.py")):
        if path.stem == "__init__":
            continue
        name = ".".join(["visionlaunch", *path.relative_to(PACKAGE).with_suffix("").parts])
        graph[name] |= set()
        for dotted in _imported(path):
            if dotted.startswith(f"visionlaunch.{package}.") and dotted != name and _is_module(dotted):
                graph[name].add(dotted)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its nodes, the first repeated at the end), or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def _files_importing(package: str, target: str) -> list[str]:
    return [str(p.relative_to(PACKAGE)) for p in sorted((PACKAGE / package).rglob("*.py"))
            if any(_part(d) == target for d in _imported(p))]


def test_the_checker_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_every_part_and_lazy_imports():
    graph = package_graph()
    assert {"datasets", "ffcv_builders", "models", "trainers", "launch", "config", "errors"} <= set(graph)
    # trainers imports the ffcv builders only inside a function: that is an edge too
    assert "ffcv_builders" in graph["trainers"] and "datasets" in graph["trainers"]


def test_no_import_cycle_between_packages():
    graph = package_graph()
    circle = find_cycle(graph)
    assert circle is None, "packages of visionlaunch import each other in a circle: " + " -> ".join(circle)


@pytest.mark.parametrize("package", ["datasets", "ffcv_builders", "models"])
def test_no_import_cycle_between_modules_of_the_data_and_model_packages(package):
    circle = find_cycle(module_graph(package))
    assert circle is None, f"modules of visionlaunch.{package} import each other: " + " -> ".join(circle)


def test_datasets_never_imports_the_ffcv_builders():
    assert _files_importing("datasets", "ffcv_builders") == []


MAX_MODULE_LINES = 400


def test_no_module_is_over_400_lines():
    """A module is the home of one idea: past 400 lines it holds two, and should be split where they part."""
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert sizes, f"no modules found under {PACKAGE}"
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"
