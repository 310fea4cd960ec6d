"""The models a session offers for merging (its shelf): references in the Models panel's order, with short labels.

A reference enters the shelf from a demo family, from the user (a path, hub id or ``base+lora[:s]``, only inside the
allowed folders) or from a recipe that names it. The shelf never decides what is merged: that is the recipe's.
"""

from __future__ import annotations

from ..errors import StudioError
from ..describe import human_count
from ..sources.resolve import short_name

class ModelShelf:
    def __init__(self, env):
        self.env = env
        self.available: list[str] = []
        self.labels: dict[str, str] = {}

    def reset(self, refs: list[str], labels: dict[str, str]) -> None:
        self.available = list(refs)
        self.labels = dict(labels)

    def label(self, ref: str) -> str:
        return self.labels.get(ref) or short_name(ref)

    def offer(self, ref: str, first: bool = False) -> None:
        """Make sure a reference is on the shelf (a recipe named it)."""
        self.labels.setdefault(ref, short_name(ref))
        if ref not in self.available:
            self.available.insert(0 if first else len(self.available), ref)

    def add(self, ref: str) -> tuple[str, dict]:
        """Open a user's reference (only inside the allowed folders) and put it on the shelf; its header report."""
        ref = self.env.roots.check_reference(ref)
        info = self.env.describe(ref)
        self.offer(ref)
        return ref, info

    def add_lora(self, model_ref: str, lora_ref: str, strength: float = 1.0) -> tuple[str, dict]:
        """``model+lora[:strength]`` as one more model, labelled ``model+lora×strength``."""
        if not model_ref or not lora_ref:
            raise StudioError("choose a model and a LoRA")
        strength = float(strength)
        suffix = "" if strength == 1.0 else f":{strength:g}"
        ref, info = self.add(f"{model_ref}+{lora_ref}{suffix}")
        self.labels[ref] = (f"{self.label(model_ref)}+{self.label(lora_ref).removeprefix('lora:')}"
                            + ("" if strength == 1.0 else f"×{strength:g}"))
        return ref, info

    def choices(self) -> list[tuple[str, str]]:
        return [(self.label(ref), ref) for ref in self.available]

    def table(self, recipe: dict) -> list[list]:
        """Rows: model, role, kind, architecture, parameters, dtype, layout · groups (from headers only)."""
        base = recipe.get("base_model")
        included = {m["model"] for m in recipe.get("models") or []}
        rows = []
        for ref in self.available:
            role = "base" if ref == base else ("merged" if ref in included else "available")
            try:
                d = self.env.describe(ref)
            except StudioError as e:
                rows.append([self.label(ref), role, "error", str(e), "", "", ""])
                continue
            dtypes = ", ".join(str(k).replace("torch.", "") for k in (d.get("dtypes") or {}))
            rows.append([self.label(ref), role, d.get("kind", "?"), d.get("architecture", "?"),
                         human_count(d.get("parameters") or 0), dtypes, f"{d.get('layout')} · {d.get('groups')}"])
        return rows
