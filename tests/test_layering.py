"""The package's rooms and their order: no upward import, no cycle, no borrowed private module.

The imports are read from the source (``ast``), so nothing is imported and every import
counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "maas_tune"

#: Each room: the top-level modules and packages of ``maas_tune`` it holds. A room may
#: hold several root modules that import each other (``data`` and ``frames``); rooms may not.
ROOMS: dict[str, frozenset[str]] = {
    "values": frozenset(
        {
            "_constants",
            "_files",
            "_lazy",
            "_money",
            "_version",
            "errors",
            "metrics",
            "pricing",
            "scores",
        }
    ),
    "storage": frozenset({"storage"}),
    "providers": frozenset({"providers"}),
    "task": frozenset({"task"}),
    "data": frozenset({"data", "frames"}),
    "datasets": frozenset({"datasets"}),
    "estimators": frozenset({"decoders", "estimator", "_artefact", "_artefact_schema"}),
    "client": frozenset({"client"}),
    "methods": frozenset({"methods"}),
    "registry": frozenset({"registry", "persistence", "_saved_schema"}),
    "experiment": frozenset({"experiment"}),
    "bench": frozenset({"bench"}),
    "ray": frozenset({"ray"}),
    "server": frozenset({"server"}),
    "cli": frozenset({"cli", "__main__"}),
}

#: Rooms from the bottom up: a room imports only rooms of its own layer or below.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"values"}),
    frozenset({"storage"}),
    frozenset({"providers"}),
    frozenset({"data"}),
    frozenset({"task", "estimators"}),
    frozenset({"client", "datasets"}),
    frozenset({"methods"}),
    frozenset({"registry"}),
    frozenset({"experiment"}),
    frozenset({"bench", "ray", "server"}),
    frozenset({"cli"}),
)


def _module_name(path: Path) -> str:
    parts = ("maas_tune", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _at_import(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of ``body`` that run when the module is imported: not function or
    class bodies, not ``if TYPE_CHECKING:`` blocks."""
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _at_import(node.body)
            yield from _at_import(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse):
                yield from _at_import(block)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node


def _imports(name: str, path: Path, *, deferred: bool = True) -> Iterator[str]:
    """The ``maas_tune`` modules that module ``name`` (file ``path``) imports (with
    ``deferred=False``, only those imported when it is imported)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree) if deferred else _at_import(tree.body):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "maas_tune")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "maas_tune":
                continue
            for alias in node.names:  # ``from . import _cli`` imports a module
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base


GRAPH: dict[str, set[str]] = {m: set(_imports(m, p)) for m, p in MODULES.items()}
#: Only the imports that run when a module is imported.
AT_IMPORT: dict[str, set[str]] = {
    m: set(_imports(m, p, deferred=False)) for m, p in MODULES.items()
}


def _room(module: str) -> str | None:
    """The room of ``maas_tune.X...`` (None for the package's own ``__init__``)."""
    top = module.split(".")[1] if "." in module else None
    if top is None:
        return None
    rooms = [room for room, members in ROOMS.items() if top in members]
    assert rooms, f"maas_tune.{top} is in no room: add it to ROOMS in tests/test_layering.py"
    return rooms[0]


def _layer(room: str) -> int:
    return next(i for i, rooms in enumerate(LAYERS) if room in rooms)


def _room_edges() -> dict[tuple[str, str], list[str]]:
    """Each import between two rooms, with the module pairs that make it."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, imported in GRAPH.items():
        for target in imported:
            src, dst = _room(module), _room(target)
            if src is not None and dst is not None and src != dst:
                edges.setdefault((src, dst), []).append(f"{module} -> {target}")
    return edges


def test_every_room_is_in_one_layer() -> None:
    placed = [room for rooms in LAYERS for room in rooms]
    assert sorted(placed) == sorted(ROOMS)
    for module in MODULES:
        _room(module)  # asserts that each top-level module has a room


def test_no_room_imports_a_room_above_it() -> None:
    upward = [
        f"{pair} ({src} is below {dst})"
        for (src, dst), pairs in _room_edges().items()
        if _layer(src) < _layer(dst)
        for pair in pairs
    ]
    assert upward == [], "upward imports:\n" + "\n".join(sorted(upward))


def _cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges``, or None."""
    succ: dict[str, list[str]] = {}
    for src, dst in sorted(edges):
        succ.setdefault(src, []).append(dst)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in succ.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(succ):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_import_cycle_between_rooms() -> None:
    edges = _room_edges()
    cycle = _cycle(set(edges))
    assert cycle is None, (
        "import cycle between rooms: "
        + " -> ".join(cycle or [])
        + "\n"
        + ("\n".join(p for a, b in zip(cycle or [], (cycle or [])[1:]) for p in edges[(a, b)]))
    )


def test_no_import_cycle_between_modules_at_import_time() -> None:
    """No two modules need each other to be imported; a deferred import (a factory that
    picks a backend, matplotlib loaded for a plot) is the only way a module reaches back."""
    edges = {
        (module, target)
        for module, imported in AT_IMPORT.items()
        for target in imported
        if not module.startswith(target + ".")  # a module's own package is imported first
    }
    cycle = _cycle(edges)
    assert cycle is None, "import cycle at import time: " + " -> ".join(cycle or [])


def _owner(module: str) -> str | None:
    """The package a private module belongs to (``maas_tune.providers`` for
    ``maas_tune.providers._http``), or None when no part of its name is private."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_no_module_imports_another_packages_private_module() -> None:
    borrowed = [
        f"{module} -> {target}"
        for module, imported in GRAPH.items()
        for target in imported
        if (owner := _owner(target)) is not None
        and not (module == owner or module.startswith(owner + "."))
    ]
    assert borrowed == [], (
        "private modules imported from outside their package (make the name public in "
        "its package, or move it):\n" + "\n".join(sorted(borrowed))
    )


@pytest.mark.parametrize(
    ("edges", "has_cycle"),
    [
        ({("a", "b"), ("b", "c")}, False),
        ({("a", "b"), ("b", "c"), ("c", "a")}, True),
        ({("a", "b"), ("b", "a")}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: set[tuple[str, str]], has_cycle: bool) -> None:
    assert (_cycle(edges) is not None) == has_cycle


def test_the_layout_page_names_every_public_room():
    """docs/architecture.md is the newcomer's map: it must name every public room."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    public = {m for room in ROOMS.values() for m in room if not m.startswith("_")}
    missing = sorted(m for m in public if f"`{m}" not in page)
    assert not missing, f"add {missing} to docs/architecture.md"
