"""The demo families the studio offers, and what every session shares about them: evaluators (one per family,
built once) and the scores of the input models (each evaluated once, then cached).

Families come from :mod:`studio.zoo` (``list_families`` / ``get_family``); tests and embedders may pass their own
objects with the same attributes (``name, kind, base, experts, loras, tasks, description, evaluator(budget, device)``).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from PIL import Image

from ..errors import StudioError
from ..zoo import get_family, list_families


def zoo_families() -> dict[str, Any]:
    """The built zoo families, by name ({} when the zoo is not built: the studio then starts on the user's models)."""
    return {name: get_family(name) for name in list_families()}


def family_label(fam, ref: str) -> str:
    """A short name for a model of a family: 'base', the expert's task, the LoRA's name, else the file name."""
    ref = str(ref)
    if str(fam.base) == ref:
        return "base"
    for task, path in (getattr(fam, "experts", None) or {}).items():
        if str(path) == ref:
            return task
    for name, path in (getattr(fam, "loras", None) or {}).items():
        if str(path) == ref:
            return f"lora:{name}"
    return None


class Catalog:
    """Families plus the caches every session shares (evaluators, input-model scores)."""

    def __init__(self, families: dict[str, Any] | None = None, device: str = "cpu"):
        self.families = dict(zoo_families() if families is None else families)
        self.device = device
        self._evaluators: dict[tuple[str, str], Any] = {}
        self._scores: dict[tuple[str, str, str], dict] = {}
        self._about: dict[str | None, tuple[str, Image.Image | None]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        order = {"vision": 0, "text": 1, "diffusion": 2}
        return sorted(self.families, key=lambda n: (order.get(getattr(self.families[n], "kind", ""), 9), n))

    def default_family(self) -> str | None:
        names = self.names()
        for n in names:
            if getattr(self.families[n], "kind", "") == "vision":
                return n
        return names[0] if names else None

    def get(self, name: str):
        try:
            return self.families[name]
        except KeyError:
            raise StudioError(f"unknown demo family {name!r}", hint=f"known: {', '.join(self.names()) or 'none'}")

    def about(self, name: str | None) -> tuple[str, Image.Image | None]:
        """The note on a demo family (markdown: its description and tasks) and its picture of the tasks (or None);
        for no family, a note on the user's own models. Made once per family."""
        if name not in self._about:
            self._about[name] = self._describe(name)
        return self._about[name]

    def _describe(self, name: str | None) -> tuple[str, Image.Image | None]:
        if not name:
            return ("**Your own models** — the recipe below merges the models you added; the preview follows "
                    "them (images, text or your evaluation set). Load a demo family to go back to the demos.", None)
        try:
            fam = self.get(name)
        except StudioError as e:
            return f"⚠ {e}", None
        docs = getattr(fam, "task_docs", None) or {}
        rows = [f"| `{t}` | {docs.get(t, '')} |" for t in fam.tasks]
        md = "\n".join([f"**{name}** — {getattr(fam, 'description', '')}", "", "| task | what it is |", "|---|---|",
                        *rows])
        sheet_fn = getattr(fam, "sample_sheet", None)
        sheet = sheet_fn() if sheet_fn else None
        if sheet is None:
            return md, None
        return md + "\n\nBelow: test images of each task, one row per task in this order.", Image.fromarray(sheet)

    def evaluator(self, name: str, budget: str = "preview"):
        key = (name, budget)
        with self._lock:
            ev = self._evaluators.get(key)
            if ev is None:
                ev = self.get(name).evaluator(budget=budget, device=self.device)
                self._evaluators[key] = ev
        return ev

    def input_score(self, name: str, ref: str, opener, budget: str = "preview") -> dict:
        """The evaluator's result for one input model (base or expert), computed once per process."""
        key = (name, str(ref), budget)
        hit = self._scores.get(key)
        if hit is not None:
            return hit
        src = opener(str(ref))
        state = {k: src.get(k).to(torch.float32) for k in src.keys() if src.info(k).dtype.is_floating_point}
        state.update({k: src.get(k) for k in src.keys() if not src.info(k).dtype.is_floating_point})
        result = self.evaluator(name, budget).evaluate(state)
        self._scores[key] = result
        return result
