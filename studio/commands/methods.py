"""python -m studio methods [METHOD] [--json] — the method declarations; with a name, one method's help."""

from __future__ import annotations

from ..cli import print_json
from ..methods import get_method, list_methods


def add_arguments(p):
    p.add_argument("method", nargs="?", help="one method's formula, reference and parameters")
    p.add_argument("--json", action="store_true")


def _declaration(s) -> dict:
    return {"name": s.name, "label": s.label, "category": s.category, "needs_base": s.needs_base,
            "formula": s.formula, "ref": s.ref, "params": [p.describe() for p in s.params]}


def run(args) -> int:
    if args.method:
        s = get_method(args.method)  # an unknown name is a RecipeError with the closest name: exit 2, one line
        if args.json:
            print_json(_declaration(s))
            return 0
        print(f"{s.name} — {s.label or s.name}" + (" (needs a base model)" if s.needs_base else ""))
        if s.formula:
            print(f"  {s.formula}")
        if s.ref:
            print(f"  reference: {s.ref}")
        for p in s.params:
            d = p.describe()
            where = "per model" if p.per_model else "global"
            default = "required" if p.required else f"default {p.default}"
            span = f", range {d['range'][0]}…{d['range'][1]}" if d.get("range") else ""
            choices = f", one of {', '.join(map(str, d['choices']))}" if d.get("choices") else ""
            print(f"  {p.name:<16} {where}, {default}{span}{choices}" + (f" — {p.doc}" if p.doc else ""))
        return 0
    specs = list_methods()
    if args.json:
        print_json([_declaration(s) for s in specs])
        return 0
    for s in specs:
        params = ", ".join(p.name + ("" if p.required else f"={p.default}") + ("*" if p.per_model else "")
                           for p in s.params)
        print(f"{s.name:<20} {params}")
    print("(* = per-model parameter; `python -m studio methods NAME` for one method's help)")
    return 0
