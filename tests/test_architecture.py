"""The house rules, read from the code: dependency arrows point down the data flow (no cycle between packages),
gradio stays in the UI, no hidden or late imports of our own code, one UI file per panel or controller
(docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1] / "studio"

# a package may import packages at its own level or below (the data flow, bottom to top)
LEVEL = {"errors": 0, "devices": 0, "sources": 1, "layout": 2, "recipe": 3, "methods": 3, "engine": 4, "output": 4,
         "lora": 5, "sd": 5, "describe": 5, "kinds": 5, "evaluate": 6, "analysis": 6, "figures": 6, "preview": 6, "learn": 7, "moe": 7,
         "search": 7, "zoo": 8, "commands": 9, "cli": 9, "ui": 10}


def _imports(path: Path):
    """(line, [module parts]) of every import in a file, relative imports resolved against ``studio``."""
    here = path.relative_to(STUDIO.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            mod = (list(here[:-node.level]) if node.level else []) + (node.module.split(".") if node.module else [])
            if mod == ["studio"]:
                yield from ((node.lineno, ["studio", a.name]) for a in node.names)
            else:
                yield node.lineno, mod
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name.split(".")) for a in node.names)


def _package(path: Path) -> str:
    return path.relative_to(STUDIO).parts[0].removesuffix(".py")


def test_imports_point_down_and_gradio_stays_in_the_ui():
    """Nothing but studio/ui imports gradio; nothing below the UI imports it (ui is the top level); the lower floors
    (sources, layout, recipe, methods, engine, output) import nothing above them — no package does."""
    broken = []
    for f in sorted(STUDIO.rglob("*.py")):
        src = _package(f)
        for line, mod in _imports(f):
            where = f"{f.relative_to(STUDIO.parent)}:{line}"
            if mod[0] == "gradio" and src != "ui":
                broken.append(f"{where} imports gradio outside studio/ui")
            if mod[0] != "studio" or len(mod) < 2:
                continue
            if src in LEVEL and LEVEL.get(mod[1], 0) > LEVEL[src]:
                broken.append(f"{where}: {src} imports {mod[1]}, which sits above it")
    assert not broken, "\n".join(broken)


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for f in STUDIO.rglob("*.py"):
        src = _package(f)
        for _, mod in _imports(f):
            if mod[0] == "studio" and len(mod) > 1 and mod[1] != src and src not in ("__init__", "__main__"):
                graph.setdefault(src, set()).add(mod[1])
    return graph


def test_packages_import_each_other_without_cycles():
    graph = _package_graph()

    def reaches(a: str) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            for b in graph.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    assert [p for p in graph if p in reaches(p)] == []
    assert "lora" not in reaches("sd")  # lora writes SD metadata; sd needs nothing of lora


def test_our_own_modules_are_imported_at_module_top():
    """A late import of our own code hides a cycle or an upward arrow; only optional heavy packages come late."""
    late = []
    for f in sorted(STUDIO.rglob("*.py")):
        for fn in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                late += [f"{f.relative_to(STUDIO.parent)}:{n.lineno}" for n in ast.walk(fn)
                         if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("studio"))
                         or isinstance(n, ast.Import) and any(a.name.startswith("studio") for a in n.names)]
    assert late == []


def test_every_package_has_a_level():
    """A new package must say where it sits in the data flow (add it to LEVEL and to docs/architecture.md)."""
    names = {_package(f) for f in STUDIO.rglob("*.py")} - {"__init__", "__main__"}
    assert names <= set(LEVEL), sorted(names - set(LEVEL))


def test_no_hidden_imports_of_our_own_code():
    hidden = []
    for f in sorted(STUDIO.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers) and any(
                    isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("studio"))
                    for n in ast.walk(node)):
                hidden.append(f"{f.relative_to(STUDIO.parent)}:{node.lineno}")
    assert not hidden, hidden


def test_ui_files_hold_one_panel_or_controller():
    long = {str(f.relative_to(STUDIO.parent)): n for f in STUDIO.joinpath("ui").rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_test_files_have_unique_names():
    # the tests folders have no __init__.py, so pytest imports every test file by its base name: two files with one
    # name stop the collection of the whole suite
    from collections import Counter
    names = Counter(f.name for f in STUDIO.parent.joinpath("tests").rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], names
