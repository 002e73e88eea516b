"""The subpackages of controller/ are layers: a module imports only its own layer and the layers below it,
and no two modules import each other, directly or around a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support

PACKAGE = support.REPO / "controller"
# Lowest first. The ground floor is the modules directly in controller/.
LAYERS = ["", "manifests", "artifacts", "tree", "fleet", "engine", "daemon", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(support.REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The rank of a module of the controller package: its subpackage, or the ground floor."""
    if module == "controller.__main__":
        return len(LAYERS)  # `python -m controller` starts the command line
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else 0


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) for every controller module that `path` imports, at any depth in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("controller."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "controller":
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                yield node.lineno, child if child in known else node.module


def graph() -> dict[str, dict[str, int]]:
    found = modules()
    known = set(found)
    return {name: {target: line for line, target in imported(path, known) if target in known}
            for name, path in found.items()}


def upward_imports(edges: dict[str, dict[str, int]]) -> list[str]:
    return [f"{source} (line {line}) imports {target}, a higher layer"
            for source, targets in edges.items() for target, line in targets.items()
            if layer_of(target) > layer_of(source)]


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_every_module_sits_in_a_layer_package_or_the_ground_floor() -> None:
    ground = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert ground == ["__init__.py", "__main__.py", "errors.py", "formats.py", "fsutil.py", "nofollow.py",
                      "within.py"]
    packages = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
    assert packages == sorted(LAYERS[1:])


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports(graph()) == []


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert cycles(graph()) == []


def test_each_layer_package_says_what_it_owns_and_may_import() -> None:
    for layer in LAYERS[1:]:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc is not None and "import" in doc, layer


@pytest.mark.parametrize(("edges", "expected"), [
    ({"controller.tree.a": {"controller.engine.b": 3}, "controller.engine.b": {}},
     ["controller.tree.a (line 3) imports controller.engine.b, a higher layer"]),
    ({"controller.errors": {"controller.manifests.model": 1}, "controller.manifests.model": {}},
     ["controller.errors (line 1) imports controller.manifests.model, a higher layer"]),
    ({"controller.cli.main": {"controller.tree.records": 5}, "controller.tree.records": {}}, []),
])
def test_the_layer_check_reports_an_upward_import_with_its_line(edges: dict[str, dict[str, int]],
                                                                expected: list[str]) -> None:
    assert upward_imports(edges) == expected


def test_the_cycle_check_finds_a_cycle_through_three_modules() -> None:
    edges = {"controller.tree.a": {"controller.tree.b": 1}, "controller.tree.b": {"controller.tree.c": 1},
             "controller.tree.c": {"controller.tree.a": 1}, "controller.tree.d": {"controller.tree.a": 1}}
    assert cycles(edges) == [["controller.tree.a", "controller.tree.b", "controller.tree.c"]]


def test_the_readme_layout_names_every_module_once() -> None:
    readme = (support.REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ")] if "\n## " in layout else layout
    for name, path in modules().items():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        assert layout.count(f"`{path.stem}`") == 1, name
