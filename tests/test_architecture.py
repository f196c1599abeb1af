"""The package's shape: no import circles in the domain, thin adapters.

The import graph is read from the source with ``ast`` (not by importing), so a lazy
import inside a function counts as much as a module-level one: a circle hidden in a
function body is still a circle, and it only breaks later, at the first call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
SERVER = ROOT / "server"

# Circles that are known and accepted, each with why. Keep it empty if you can.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Libraries too heavy for an adapter's module level: the CLI's and the server's start
# must not pay for them (the domain imports them inside the functions that need them).
HEAVY = {"torch", "transformers", "datasets", "trl", "peft", "numpy", "pyarrow",
         "accelerate", "huggingface_hub"}


def _modules(folder: Path, package: str) -> dict[str, Path]:
    mods = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join([package, *parts])] = path
    return mods


def _imports(tree: ast.AST, *, top_level_only: bool = False) -> list[tuple[str, str | None]]:
    """(module, name) for every import; name is None for ``import x``."""
    nodes = tree.body if top_level_only else ast.walk(tree)  # type: ignore[attr-defined]
    out: list[tuple[str, str | None]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name) for a in node.names]
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``tunestep.tools`` modules it imports, at any depth of its code.

    ``from pkg import sub`` where ``pkg.sub`` is a module is an edge to ``pkg.sub`` (not
    to ``pkg``'s ``__init__``): a package's modules importing their siblings through the
    package name is how Python resolves them, not a circle.
    """
    mods = _modules(TOOLS, "tunestep.tools")
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for module, imported in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if imported is not None and f"{module}.{imported}" in mods:
                edges.add(f"{module}.{imported}")
            elif module in mods:
                edges.add(module)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_cycle_finder_finds_a_lazy_circle() -> None:
    # The checker itself: a circle through a function-level import is found.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_tools() -> None:
    graph = import_graph()
    assert "tunestep.tools.drafts.draft" in graph and "tunestep.tools.data.merge" in graph
    found = [c for c in cycles(graph) if c not in KNOWN_CYCLES]
    shown = ["  " + " <-> ".join(sorted(c)) for c in found]
    assert not found, "import circles among tunestep.tools modules:\n" + "\n".join(shown)


def test_known_cycles_are_still_real() -> None:
    # An exception that no longer exists is removed from the list, not kept "just in case".
    found = set(cycles(import_graph()))
    assert found >= KNOWN_CYCLES


def test_domain_never_imports_the_adapters() -> None:
    # tools/ is the domain: no MCP SDK, no server module (the adapters wrap the domain).
    bad = []
    for name, path in _modules(TOOLS, "tunestep.tools").items():
        for module, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if module.split(".")[0] in {"mcp", "mcp_types"} or module.startswith(
                    "tunestep.server"):
                bad.append(f"{name}: {module}")
    assert not bad, bad


@pytest.mark.parametrize("path", sorted(SERVER.glob("*.py")), ids=lambda p: p.name)
def test_adapters_import_no_heavy_library_at_module_level(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    heavy = sorted({m for m, _ in _imports(tree, top_level_only=True)
                    if m.split(".")[0] in HEAVY})
    assert not heavy, f"{path.name} imports {heavy} at module level"
