"""The package's shape: capability packages in layers, no import circles, thin adapters.

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

# Which capability package of tools/ may import which: the picture in tools/__init__.py,
# each package's docstring ("May import: ...") and .specs/layout.md, held here.
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "jobs": set(),
    "signing": {"core"},
    "hub": {"core"},
    "inspector": {"core"},
    "demo": {"core"},
    "lineage": {"core", "signing", "hub", "jobs"},
    "data": {"core", "signing", "hub", "inspector", "jobs", "lineage"},
    "drafts": {"core", "signing", "hub", "inspector", "jobs", "lineage", "data"},
    "runs": {"core", "signing", "hub", "inspector", "jobs", "lineage", "data", "drafts"},
}
# The one module allowed past its package's layer, and why: the remote inspector's
# wrapper runs in a job but imports the inspector from the approved wheel it unpacks.
LAYER_EXCEPTIONS = {"tunestep.tools.jobs.inspect_remote": {"", "core", "inspector"}}

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


def package_of(module: str) -> str:
    """``tunestep.tools.<package>.<module>`` -> ``<package>``; the root package -> ''."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, edges in sorted(graph.items()):
        own = package_of(module)
        allowed = LAYERS.get(own, set()) | {own} | LAYER_EXCEPTIONS.get(module, set())
        for target in sorted(edges):
            if package_of(target) not in allowed:
                bad.append(f"{module} -> {target}")
    return bad


def test_layer_checker_finds_an_upward_import() -> None:
    # The checker itself: core reaching up into drafts is named; drafts using core is not.
    graph = {"tunestep.tools.core.plan": {"tunestep.tools.drafts.draft"},
             "tunestep.tools.drafts.draft": {"tunestep.tools.core.plan"}}
    assert layer_violations(graph) == ["tunestep.tools.core.plan -> tunestep.tools.drafts.draft"]


def test_every_domain_module_lives_in_a_capability_package() -> None:
    # No flat room again: tools/ holds only __init__.py and the packages of LAYERS.
    flat = sorted(p.name for p in TOOLS.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules directly in tools/: {flat} (put each in a package)"
    packages = {p.name for p in TOOLS.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS), packages ^ set(LAYERS)


def test_packages_import_only_the_layers_below() -> None:
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layering (LAYERS):\n" + "\n".join(bad)


def test_layers_have_no_circle() -> None:
    # The allowed-imports table itself is a picture with no way back up.
    found = cycles({k: set(v) for k, v in LAYERS.items()})
    assert not found, found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_docstring_says_what_it_may_import(package: str) -> None:
    # Each package says what it owns and what it may import; the sentence must match the
    # table, so the docstring a newcomer reads is the rule the test holds.
    doc = ast.get_docstring(ast.parse((TOOLS / package / "__init__.py").read_text()))
    assert doc and "May import:" in doc, f"tools/{package}/__init__.py: no 'May import:'"
    said = doc.split("May import:", 1)[1].split(".\n", 1)[0]
    named = {name for name in LAYERS if f"``{name}``" in said}
    if package == "runs":
        assert "every other package" in said
    else:
        assert named == LAYERS[package], (package, named, LAYERS[package])


def test_layout_spec_names_every_package() -> None:
    layout = (ROOT / ".specs" / "layout.md").read_text()
    missing = [p for p in LAYERS if f"  {p}/" not in layout]
    assert not missing, f".specs/layout.md has no row for tools/{missing}"
