"""One browser tab's studio: its recipe, undo and history, the models it offers, and the resident preview model —
plain Python, no gradio.

Every UI event calls one method here (or on one of the session's controllers: ``learning``, ``searching``, ``landscapes``) and
renders what it returns, so the whole studio can be driven and tested without a browser. Nothing here edits a recipe
by hand or does merge math: edits are :mod:`studio.recipe.edit` functions, previews go through
:class:`studio.engine.live.LiveMerger` and the family's evaluator.
"""

from __future__ import annotations

import copy
import threading
from typing import Callable

import yaml

from ..engine import build_plan
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..describe import compare, human_bytes, human_count
from ..layout import FlatLayout
from ..methods import get_method, list_methods
from ..recipe import Recipe, effective_lora_scales
from ..recipe import edit as E
from ..recipe.edit import SettingPath
from . import history as H
from .browser import FileBrowser
from .catalog import family_label
from .formula import render as render_formula
from .grids import GridController
from .landscapes import LandscapeController
from .learning import LearnController
from .preview_view import Preview
from .previewing import PreviewController
from .recipes import SavedRecipes
from .searching import SearchController
from .shelf import ModelShelf

MAX_UNDO = 200


class Session:
    def __init__(self, env):
        self.env = env
        self.family: str | None = None
        self.recipe: dict = {}
        self.shelf = ModelShelf(env)
        self.undo_stack: list[dict] = []
        self.history: list[H.HistoryEntry] = []
        self.target: SettingPath | None = None  # the setting the per-layer sliders drive
        self.previewing = PreviewController(self)
        self.grids = GridController(self)
        self.learning = LearnController(self)
        self.landscapes = LandscapeController(self)
        self.searching = SearchController(self)
        self.saved = SavedRecipes(self)
        self.files = FileBrowser(self)
        self.events = threading.RLock()           # one UI event of this tab at a time (with --max-parallel > 1)
        self._verdict: tuple[dict, tuple[bool, str]] | None = None
        # what this tab's page shows, kept by the UI so that it sends only what changed ({component id: props})
        self.view_cache: dict = {}

    # ------------------------------------------------------------------------------------------- models
    @property
    def labels(self) -> dict[str, str]:
        return self.shelf.labels

    @property
    def available(self) -> list[str]:
        return self.shelf.available

    def label(self, ref: str) -> str:
        return self.shelf.label(ref)

    def load_family(self, name: str) -> None:
        """A demo family's base and experts on the shelf, and its starting recipe (task arithmetic of all experts)."""
        fam = self.env.catalog.get(name)
        self.family = name
        base = str(fam.base)
        experts = [str(p) for p in (fam.experts or {}).values()]
        labels = {ref: family_label(fam, ref) or self.shelf.label(ref) for ref in [base] + experts}
        labels.update({str(p): f"lora:{n}" for n, p in (getattr(fam, "loras", None) or {}).items()})
        self.shelf.reset([base] + experts, labels)
        self.close()
        self.learning.forget()
        recipe = {"name": f"{name}-merge", "merge_method": "task_arithmetic", "base_model": base,
                  "models": [{"model": e, "parameters": {"weight": 1.0}} for e in experts[:8]],
                  "parameters": {"lambda": 0.3 if len(experts) >= 4 else 0.5}}
        self.set_recipe(recipe, record=bool(self.recipe))
        self.target = E.default_path(self.recipe)

    def new_recipe(self) -> None:
        """An empty recipe and an empty shelf (the demo family put away): add your own models next. Undo brings the
        previous recipe back."""
        self.start_own([])

    def family_obj(self):
        return self.env.catalog.get(self.family) if self.family else None

    def included(self) -> list[str]:
        return [m["model"] for m in self.recipe.get("models") or []]

    def experts(self) -> list[str]:
        """The merged models other than the base (what task vectors are taken of), in recipe order."""
        base = self.recipe.get("base_model")
        return [r for r in self.included() if r != base]

    def add_model(self, ref: str, include: bool = True) -> dict:
        """Open a path / hub id / ``base+lora[:s]`` (only inside the allowed folders) and offer it; merge it too."""
        ref, info = self.shelf.add(ref)
        self._include(ref, include)
        return info

    def add_lora(self, model_ref: str, lora_ref: str, strength: float = 1.0, include: bool = True) -> dict:
        ref, info = self.shelf.add_lora(model_ref, lora_ref, strength)
        self._include(ref, include)
        return info

    def _include(self, ref: str, include: bool) -> None:
        """Merge ``ref`` too. A model that does not fit a demo family's tensors starts a recipe of its own instead of
        joining (and breaking) the demo's; among the user's own models the user decides (a CLIP model and bare
        vision towers are merged by a learned merge), and the verdict names what does not line up."""
        if not include or ref in self.included():
            return
        reference = E.reference_model(self.recipe)
        if reference is None or self.family is not None and not compare(
                [self.env.opener(reference), self.env.opener(ref)])["against"][0]["compatible"]:
            self.start_own([ref])
            return
        self.set_included(self.included() + [ref])

    def start_own(self, refs: list[str]) -> None:
        """A fresh recipe of the user's own models (the demo family and its resident merge are put away): a weighted
        average to start from, or an empty recipe for none; pick the base and the method next."""
        self.family = None
        self.shelf.reset(refs, {r: self.label(r) for r in refs})
        self.close()
        self.learning.forget()
        self.set_recipe({"name": f"{self.label(refs[0])}-merge", "merge_method": "linear",
                         "models": [{"model": r, "parameters": {"weight": 1.0}} for r in refs]} if refs else {})
        self.target = E.default_path(self.recipe)

    def lora_choices(self) -> list[tuple[str, str]]:
        fam = self.family_obj()
        return [(name, str(path)) for name, path in ((getattr(fam, "loras", None) or {}) if fam else {}).items()]

    def models_table(self) -> list[list]:
        return self.shelf.table(self.recipe)

    def close(self) -> None:
        """Drop the resident preview model (frees its memory)."""
        self.previewing.close()

    # ------------------------------------------------------------------------------------------- recipe
    @property
    def spec(self):
        return get_method(self.recipe.get("merge_method", "task_arithmetic"))

    def recipe_obj(self) -> Recipe:
        return Recipe.from_dict(copy.deepcopy(self.recipe))

    def yaml(self) -> str:
        try:
            return self.recipe_obj().to_yaml()
        except StudioError:  # an invalid recipe is still shown, as written (the dry run says what is wrong)
            return yaml.safe_dump(self.recipe, sort_keys=False, allow_unicode=True)

    def set_recipe(self, recipe: dict, record: bool = True) -> bool:
        """Make ``recipe`` the session's recipe (as it is: validating is the caller's choice); recorded for undo."""
        if recipe == self.recipe:
            return False
        if record and self.recipe:
            self.undo_stack.append(copy.deepcopy(self.recipe))
            del self.undo_stack[:-MAX_UNDO]
        self.recipe = copy.deepcopy(recipe)
        self._offer_models()
        return True

    def _offer_models(self) -> None:
        """The recipe's models on the shelf (the base first), and a slider target that exists."""
        for ref in self.included():
            self.shelf.offer(ref)
        if self.recipe.get("base_model"):
            self.shelf.offer(self.recipe["base_model"], first=True)
        self._keep_target()

    def _keep_target(self) -> None:
        if self.target not in E.numeric_paths(self.recipe):
            self.target = E.default_path(self.recipe)

    def edit(self, fn: Callable[..., dict], *args, validate: bool = True) -> bool:
        """Replace the recipe by ``fn(recipe, *args)`` (a :mod:`studio.recipe.edit` function); with ``validate`` it
        is kept only if it is a valid recipe (else RecipeError). Recorded for undo."""
        new = fn(self.recipe, *args)
        if validate:
            Recipe.from_dict(copy.deepcopy(new))
        return self.set_recipe(new)

    def set_yaml(self, text: str) -> list[str]:
        """Replace the recipe by edited YAML (RecipeError with the parser's message when it is not valid); returns a
        line for each key that had no effect and was dropped."""
        r = Recipe.from_yaml("" if text is None else str(text), where="YAML view")
        self.open_recipe(r.to_dict())
        return r.warnings

    def open_recipe(self, recipe: dict, where: str = "recipe") -> None:
        """A recipe from outside the session (typed, opened, dropped, saved in the browser) becomes its recipe: it
        must be valid and read only inside the allowed folders. One naming models other than the demo family's
        puts the demo away."""
        r = Recipe.from_dict(copy.deepcopy(recipe), where=where)
        refs = r.input_references()
        for ref in refs:  # the VAE and the tokenizer source are read too
            self.env.roots.check_reference(ref)
        if self.family is not None and not set(r.referenced_models()) <= set(self.available):
            self.family = None
            self.shelf.reset([], {})
            self.close()
            self.learning.forget()
        self.set_recipe(r.to_dict())

    def set_vae(self, ref: str | None) -> None:
        self.edit(E.set_vae, self.env.roots.check_reference(ref) if ref else None, validate=False)

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        self.recipe = self.undo_stack.pop()
        self._offer_models()
        return True

    def set_method(self, name: str) -> None:
        # kept even when invalid (e.g. too many models for SLERP): the dry run says what to change
        self.edit(E.switch_method, name, self.available[0] if self.available else None, validate=False)
        self.target = E.default_path(self.recipe)

    def set_value(self, path: str | SettingPath, value) -> None:
        """Set one setting by its path (``models.0.weight``, ``parameters.lambda@L03`` …)."""
        self.edit(E.set_value, SettingPath.parse(path), value, self.layout())

    def set_included(self, refs: list[str]) -> None:
        wanted = set(refs)
        self.edit(E.set_models, [r for r in self.available if r in wanted], validate=False)  # the panel's order

    def set_base(self, ref: str | None) -> None:
        self.edit(E.set_base, ref or None, validate=False)

    def recheck(self) -> None:
        """Forget the verdict on the recipe (its files may have changed since)."""
        self._verdict = None

    def dry_run(self) -> tuple[bool, str]:
        """The header-only verdict on the current recipe: (ok, markdown); computed once per recipe."""
        if self._verdict is not None and self._verdict[0] == self.recipe:
            return self._verdict[1]
        try:
            s = build_plan(self.recipe_obj(), self.env.opener).summary()
            msg = (f"✓ **Ready** — {s['merged']} of {s['tensors']} tensors merged with `{s['method']}`, "
                   f"{len(s['groups'])} groups ({s['layout']}), output {human_bytes(s['output_bytes'])}. "
                   f"Checked from headers only." + "".join(f"\n\n⚠ {w}" for w in s.get("warnings") or [])
                   # a LoRA's strength meets the method's weight and λ: say what reaches the merge
                   + "".join(f"\n\nℹ {x.explanation}" for x in effective_lora_scales(self.recipe_obj())))
            verdict = (True, msg)
        except StudioError as e:
            verdict = (False, f"✗ **Will not merge:** {e}")
        self._verdict = (copy.deepcopy(self.recipe), verdict)
        return verdict

    # ---- per-layer controls
    def layout(self):
        """The reference model's layout (one flat group while it cannot be opened: the dry run says why)."""
        ref = E.reference_model(self.recipe)
        try:
            return FlatLayout() if ref is None else self.env.layout(ref)
        except StudioError:
            return FlatLayout()

    def block_map(self) -> tuple[str, list[list]]:
        """The reference model's block map: (a title naming the model and its layout, one row per group)."""
        ref = E.reference_model(self.recipe)
        if ref is None:
            return "Block map", []
        try:
            layout, rows = self.env.layout(ref), self.env.block_map(ref)
        except StudioError as e:
            return f"Block map: {e}", []
        title = f"Block map of {self.label(ref)} — {layout.description or layout.name} ({len(layout.groups)} groups)"
        return title, [[r.group, r.label, r.tensors, human_count(r.params), ", ".join(r.examples)] for r in rows]

    def set_target(self, target: str | SettingPath) -> None:
        path = SettingPath.parse(target)
        if path not in E.numeric_paths(self.recipe):
            raise StudioError(f"unknown per-layer target {str(target)!r}")
        self.target = path

    def need_target(self) -> SettingPath:
        if self.target is None:
            raise StudioError(f"method {self.spec.name!r} has no numeric parameter to vary per layer")
        return self.target

    def group_values(self) -> list[float]:
        if self.target is None:
            return [0.0] * len(self.layout().groups)
        return E.group_values(self.recipe, self.target, self.layout())

    def set_group_value(self, group: str, value: float) -> None:
        self.edit(E.set_group_values, self.need_target(), self.layout(), {group: float(value)})

    def set_group_values(self, values: list[float]) -> None:
        self.edit(E.set_group_values, self.need_target(), self.layout(), list(values))

    def apply_curve(self, shape: str, lo: float, hi: float) -> None:
        self.edit(E.apply_curve, self.need_target(), self.layout(), shape, lo, hi)

    def apply_preset(self, name: str) -> None:
        self.edit(E.apply_preset, self.need_target(), self.layout(), name)

    def set_rules_text(self, text: str) -> None:
        self.edit(E.set_rules, self.need_target(), E.parse_rules(text))

    def formula(self) -> str:
        return render_formula(self.spec, self.recipe, self.labels)

    # ------------------------------------------------------------------------------------------- preview
    # (the resident merge and what judges it: studio/ui/previewing.py)
    @property
    def live(self) -> LiveMerger | None:
        return self.previewing.live

    @property
    def last_preview(self) -> Preview | None:
        return self.previewing.last

    def next_ticket(self) -> int:
        return self.previewing.next_ticket()

    def preview(self, ticket: int | None = None, progress=None) -> Preview:
        """Re-merge what changed into the resident model and judge it (see PreviewController.run)."""
        return self.previewing.run(ticket, progress)

    def input_scores(self) -> dict[str, dict]:
        return self.previewing.inputs()

    def show(self, pv: Preview) -> Preview:
        return self.previewing.show(pv)

    # ------------------------------------------------------------------------------------------- history
    def history_rows(self) -> list[list]:
        return H.rows(self.history, self.label)

    def restore(self, entry_id: int | None) -> None:
        if not entry_id:  # entries are numbered from 1; an empty number box arrives as None or 0
            raise StudioError("choose an entry first", hint="click a row of the history table or type its number")
        h = H.find(self.history, entry_id)
        if h is None:
            raise StudioError(f"no history entry #{entry_id}", hint="the table's first column numbers the entries")
        self.open_recipe(h.recipe, where=f"history entry #{entry_id}")

    # ------------------------------------------------------------------------------------------- page reloads
    def snapshot(self) -> dict:
        """What the browser keeps for this tab (its recipe, family and history), to come back after a reload."""
        return {"v": 1, "family": self.family, "recipe": copy.deepcopy(self.recipe), "history": H.dump(self.history)}

    def resume(self, saved) -> bool:
        """Come back to a snapshot the browser kept. It is the page's data: every recipe in it is checked as if
        typed (a bad one is skipped with the rest). False when there was nothing to resume."""
        if not isinstance(saved, dict) or saved.get("v") != 1 or not saved.get("recipe"):
            return False
        family = saved.get("family")
        if family in self.env.catalog.names() and family != self.family:
            self.load_family(family)
        self.history = H.load(saved.get("history"))
        self.open_recipe(saved["recipe"], where="the recipe this page kept")
        return True


def method_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered method, grouped by category."""
    return [(f"{spec.label or spec.name}  ·  {spec.name}  [{spec.category}]", spec.name)
            for spec in sorted(list_methods(), key=lambda s: (s.category, s.name))]
