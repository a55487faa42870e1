"""The package's shape, read with `ast` (lazy and type-only imports included): no import cycles,
no private names across modules, layers that import only downwards, Ray only where it belongs,
small modules and functions."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "benchmarks", "docs", "build"}
# DESIGN.md's layers, lowest first: a module imports its own area or lower ones only
LAYERS = {
    "errors": 0, "dag": 1, "compiler": 2, "web": 3, "visualize": 3, "executors": 4,
    "serving": 5, "testing": 6, "cli": 6, "pipelines": 7, "__main__": 7,
}
# where `import ray` may appear: the replicas' side, the client side, and the emitters (which
# read Ray's version and schema)
RAY_AREAS = ("servegraph.executors.ray", "servegraph.serving", "servegraph.compiler.emit")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: list[tuple[str, str | None, int]] = field(default_factory=list)  # target, name, line


def package_modules(root: Path = ROOT) -> dict[str, Module]:
    modules = {}
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP and not d.startswith("."))
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = Path(dirpath, file)
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(["servegraph", *parts])
            modules[name] = Module(name, path, is_package)
    for module in modules.values():
        module.imports = list(_imports(module))
    return modules


def _imports(module: Module) -> list[tuple[str, str | None, int]]:
    found = []
    for node in ast.walk(ast.parse(module.path.read_text())):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.name.split(".")
                if not module.is_package:
                    base.pop()
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.extend((target, alias.name, node.lineno) for alias in node.names)
    return found


def import_graph(modules: dict[str, Module]) -> nx.DiGraph:
    """module -> each package module it imports (`from pkg import submodule` names the
    submodule); importing a submodule's parent package implicitly is not an edge."""
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module in modules.values():
        for target, name, _ in module.imports:
            candidate = f"{target}.{name}" if name else target
            for reached in (candidate, target):
                if reached in modules and reached != module.name:
                    graph.add_edge(module.name, reached)
                    break
    return graph


def area(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = package_modules()


def test_the_package_is_read() -> None:
    assert {"servegraph.compiler.plan", "servegraph.executors.core",
            "servegraph.serving.handle", "servegraph.cli"} <= set(MODULES)


def test_no_import_cycles() -> None:
    cycles = sorted(sorted(c) for c in nx.strongly_connected_components(import_graph(MODULES))
                    if len(c) > 1)
    assert cycles == []


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """The checker itself: two modules importing each other, one lazily and type-only."""
    (tmp_path / "a.py").write_text("from .b import B\n")
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from .a import A\n")
    graph = import_graph(package_modules(tmp_path))
    assert [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1] == [
        ["servegraph.a", "servegraph.b"]]


def test_no_private_name_is_imported_from_another_module() -> None:
    crossings = [f"{m.path.relative_to(ROOT)}:{line} imports {name} from {target}"
                 for m in MODULES.values() for target, name, line in m.imports
                 if name and name.startswith("_") and not name.startswith("__")
                 and target.startswith("servegraph") and target != m.name]
    assert crossings == []


def test_layers_import_downwards() -> None:
    upward = []
    for source, target in import_graph(MODULES).edges:
        a, b = area(source), area(target)
        if a == b or not b:
            continue
        if LAYERS[b] >= LAYERS[a]:
            upward.append(f"{source} -> {target}")
    assert upward == []


@pytest.mark.parametrize("forbidden", ["ray", "graphviz", "torch"])
def test_heavy_imports_stay_where_they_belong(forbidden: str) -> None:
    allowed = {"ray": RAY_AREAS, "graphviz": ("servegraph.visualize",),
               # a GPU's memory is read from torch when it is installed (`detect_cluster`)
               "torch": ("servegraph.pipelines", "servegraph.serving.cluster")}[forbidden]
    misplaced = [f"{m.name}:{line}" for m in MODULES.values() for target, _, line in m.imports
                 if (target == forbidden or target.startswith(forbidden + "."))
                 and not m.name.startswith(allowed)]
    assert misplaced == []


FILE_LINES, FUNCTION_LINES = 400, 60


def test_modules_and_functions_stay_small() -> None:
    """House style: a module under ~400 lines, a function under ~60."""
    large = []
    for module in MODULES.values():
        source = module.path.read_text()
        if source.count("\n") > FILE_LINES:
            large.append(f"{module.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LINES:
                    large.append(f"{module.name}.{node.name}: {length} lines")
    assert large == []
