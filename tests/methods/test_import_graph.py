"""The modules of studio/methods import one another without a cycle (read from their source with ast)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import studio.methods

PACKAGE = Path(studio.methods.__file__).parent


def _module_imports() -> dict[str, set[str]]:
    """module → the package modules it imports ("__init__" for names taken from the package itself). Python also
    runs a package's __init__ before any of its modules; that implicit step is not an edge here."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        edges = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    parts = node.module.split(".") if node.module else []
                elif node.level == 0 and (node.module or "").startswith("studio.methods"):
                    parts = node.module.split(".")[2:]
                else:
                    continue
                if parts:
                    edges.add(parts[0])
                else:  # from . import x: a module of the package, or a name from its __init__
                    edges |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.Import):
                for a in node.names:
                    parts = a.name.split(".")
                    if parts[:2] == ["studio", "methods"]:
                        edges.add(parts[2] if len(parts) > 2 else "__init__")
        graph[name] = edges
    return graph


def test_methods_modules_import_without_a_cycle():
    graph = _module_imports()
    # the reader sees the edges that matter (a parser that found none would pass vacuously)
    assert {"ties_blocked", "sparsify", "shared_params", "registry"} <= graph["ties_dare_della"]
    assert {"cache_blocks", "order_statistics", "sparsify"} <= graph["ties_blocked"]
    assert "cache_blocks" in graph["basic"] and "ties_dare_della" not in graph["basic"]
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle in studio/methods: {' → '.join(e.args[1])}") from None
    assert order.index("registry") < order.index("basic") < order.index("__init__")

