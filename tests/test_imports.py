"""Imports that tell the truth in the lower floors: the project's own modules are imported at module top (a late
import of our own code hides a cycle or an upward arrow), and the LoRA ↔ SD cycle stays broken (lora needs sd's
output metadata; sd needs nothing of lora)."""

import ast
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1] / "studio"
CHECKED = ["sources", "layout", "recipe", "lora", "sd", "engine/plan.py", "engine/live.py", "engine/execute.py",
           "describe.py", "cli.py", "commands/merge.py", "commands/inspect.py", "commands/emr.py",
           "commands/methods.py", "commands/lora.py"]


def _files():
    for name in CHECKED:
        p = STUDIO / name
        yield from sorted(p.rglob("*.py")) if p.is_dir() else [p]


def _own_imports(node, path: Path):
    """(line, dotted module) for each import of studio's own code under ``node``."""
    package = path.relative_to(STUDIO.parent).with_suffix("").parts[:-1]
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.level:
            yield n.lineno, ".".join(package[:len(package) - n.level + 1] + ((n.module,) if n.module else ()))
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("studio"):
            yield n.lineno, n.module
        elif isinstance(n, ast.Import):
            yield from ((n.lineno, a.name) for a in n.names if a.name.startswith("studio"))


def test_own_modules_are_imported_at_module_top():
    late = set()
    for f in _files():
        for fn in ast.walk(ast.parse(f.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                late |= {f"{f.relative_to(STUDIO)}:{line} {mod}" for line, mod in _own_imports(fn, f)}
    assert sorted(late) == []


def test_sd_does_not_import_lora():
    up = [f"{f.relative_to(STUDIO)}:{line} {mod}" for f in sorted((STUDIO / "sd").rglob("*.py"))
          for line, mod in _own_imports(ast.parse(f.read_text()), f) if mod.startswith("studio.lora")]
    assert up == []
