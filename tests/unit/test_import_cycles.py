"""No import cycles inside ``stratacache``, and the layering between its packages.

The sources are parsed with :mod:`ast`, never imported. Every import statement counts,
wherever it is: at module level, inside a function, under ``if TYPE_CHECKING:``. A cycle
that only a lazy or type-checking import closes today becomes an ``ImportError`` (or a
half-initialised module) the day someone moves that import to the top. Calls such as
``importlib.import_module("...")`` are not import statements and are not counted: that is
how the lazy tier registry in ``config.py`` loads optional backends.

Edges: ``import a.b`` goes to ``a.b``; ``from pkg import name`` goes to ``pkg.name`` when
that is a module or package of its own, else to ``pkg``; a package stands for its
``__init__.py``. The parent packages Python initialises on the way to a submodule are not
edges of their own (``stratacache/__init__.py`` imports nearly everything, so counting them
would make every module part of one cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT_PACKAGE = "stratacache"


@dataclass(frozen=True)
class Import:
    """One edge of the graph: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Every module and package under ``src/package``, by dotted name."""
    modules: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, else its longest known parent."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement names."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not _is_package(path):
        parts.pop()  # a plain module's imports are relative to its package
    up = node.level - 1
    if up > len(parts):
        raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top package")
    if up:
        parts = parts[:-up]
    if node.module:
        parts.append(node.module)
    return ".".join(parts)


def imports_of(module: str, path: Path, modules: dict[str, Path], package: str) -> list[Import]:
    """Every edge from ``module`` to a module of ``package``, from every import statement
    anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    shown = str(path.relative_to(SRC)) if path.is_relative_to(SRC) else str(path)
    edges: list[Import] = []

    def add(name: str, line: int) -> None:
        if name != package and not name.startswith(package + "."):
            return
        target = _known(name, modules)
        if target is None:
            raise AssertionError(f"{shown}:{line}: imports {name!r}, which does not exist")
        edges.append(Import(module, target, shown, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if alias.name != "*" and submodule in modules:
                    add(submodule, node.lineno)
                else:
                    add(base, node.lineno)
    return edges


def import_graph(src: Path = SRC, package: str = ROOT_PACKAGE) -> dict[str, list[Import]]:
    modules = module_names(src, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def strongly_connected(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit), components in graph order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    # The explicit DFS stack: each node with what is left of its successors.
    work: list[tuple[str, Iterator[str]]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter([edge.target for edge in graph[node]])))

    for root in graph:
        if root in index:
            continue
        visit(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    visit(successor)
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def cycle_through(start: str, members: set[str], graph: dict[str, list[Import]]) -> list[Import]:
    """A shortest chain of imports from ``start`` back to itself, within one component."""
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    return [*paths[node], edge]
                if edge.target in members and edge.target not in paths:
                    paths[edge.target] = [*paths[node], edge]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"{start} is in a component but on no cycle")  # pragma: no cover


def describe(chain: list[Import]) -> str:
    names = " -> ".join([chain[0].source, *(edge.target for edge in chain)])
    where = "; ".join(
        f"{edge.source} imports {edge.target} at {edge.path}:{edge.line}" for edge in chain
    )
    return f"{names}\n      ({where})"


def find_cycles(graph: dict[str, list[Import]]) -> list[str]:
    """Each import cycle, as a readable chain: every component of more than one module,
    and every module that imports itself."""
    found: list[str] = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) > 1:
            found.append(
                f"cycle among {len(component)} modules {component}:\n    "
                + describe(cycle_through(component[0], members, graph))
            )
        else:
            (module,) = component
            selfish = [edge for edge in graph[module] if edge.target == module]
            if selfish:
                found.append(f"self-import:\n    {describe(selfish[:1])}")
    return found


# ---------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return import_graph()


def test_no_import_cycles_in_stratacache(graph: dict[str, list[Import]]) -> None:
    assert len(graph) > 20, f"found only {sorted(graph)} under {SRC / ROOT_PACKAGE}"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in src/stratacache:\n  " + "\n  ".join(cycles)


@pytest.mark.parametrize("layer", ["stratacache.tiers", "stratacache.policies"])
def test_tiers_and_policies_never_import_the_hierarchy(
    graph: dict[str, list[Import]], layer: str
) -> None:
    modules = [name for name in graph if name == layer or name.startswith(layer + ".")]
    assert len(modules) > 1, f"no modules found in {layer}"
    wrong = [
        f"{edge.source} imports {edge.target} at {edge.path}:{edge.line}"
        for name in modules
        for edge in graph[name]
        if edge.target == "stratacache.hierarchy"
        or edge.target.startswith("stratacache.hierarchy.")
    ]
    assert not wrong, f"{layer} must not depend on stratacache.hierarchy:\n  " + "\n  ".join(wrong)


# --------------------------------------------------- the checker itself (so it can fail)


def test_edges_resolve_to_modules_not_to_the_package(graph: dict[str, list[Import]]) -> None:
    def targets(module: str) -> set[str]:
        return {edge.target for edge in graph[module]}

    # ``from .. import _accel`` / ``from . import _accel``: the module, not stratacache.
    assert "stratacache._accel" in targets("stratacache.policies")
    assert "stratacache._accel" in targets("stratacache.metrics")
    assert "stratacache" not in targets("stratacache.policies")
    assert "stratacache" not in targets("stratacache.metrics")
    # ``from . import rules as level_rules`` inside the hierarchy package.
    assert "stratacache.hierarchy.rules" in targets("stratacache.hierarchy.flow")
    # A package's __init__ and its own relative imports.
    assert "stratacache.hierarchy.sync" in targets("stratacache")
    assert "stratacache.policies.arc" in targets("stratacache.policies")
    # An import inside a function counts (``__getattr__`` imports config lazily).
    assert "stratacache.config" in targets("stratacache")
    # importlib.import_module("...") does not: config names its tiers only as strings.
    assert not any(
        target.startswith("stratacache.tiers") for target in targets("stratacache.config")
    )


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checker_sees_cycles_closed_by_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    src = _write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\n",
            "pkg/a.py": "from .b import B\nA = 1\n",
            "pkg/b.py": "def f():\n    from .sub import c\n    return c\nB = 2\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n"
            ),
            "pkg/d.py": "import importlib\nimportlib.import_module('pkg.e')\n",
            "pkg/e.py": "from . import d\n",
            "pkg/f.py": "import pkg.f\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert {edge.target for edge in graph["pkg.b"]} == {"pkg.sub.c"}
    assert {edge.target for edge in graph["pkg.sub.c"]} == {"pkg.a"}
    assert {edge.target for edge in graph["pkg.e"]} == {"pkg.d"}
    assert graph["pkg.d"] == []  # import_module with a string is not an edge
    cycles = find_cycles(graph)
    assert len(cycles) == 2, cycles
    assert any("pkg.a -> pkg.b -> pkg.sub.c -> pkg.a" in cycle for cycle in cycles), cycles
    assert any(c.startswith("self-import") and "pkg.f -> pkg.f" in c for c in cycles), cycles
