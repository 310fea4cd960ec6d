"""python -m studio methods [--json] — the method declarations."""

from __future__ import annotations

from ..cli import print_json
from ..methods import list_methods


def add_arguments(p):
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    specs = list_methods()
    if args.json:
        print_json([{"name": s.name, "label": s.label, "category": s.category, "needs_base": s.needs_base,
                     "formula": s.formula, "ref": s.ref, "params": [p.describe() for p in s.params]} for s in specs])
        return 0
    for s in specs:
        params = ", ".join(p.name + ("" if p.required else f"={p.default}") + ("*" if p.per_model else "")
                           for p in s.params)
        print(f"{s.name:<20} {params}")
    print("(* = per-model parameter)")
    return 0
