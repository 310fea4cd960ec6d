"""One browser tab's studio: its recipe, undo and history, the models it offers, and the resident preview model —
plain Python, no gradio.

Every UI event calls one method here (or on one of the session's controllers: ``learning``, ``landscapes``) and
renders what it returns, so the whole studio can be driven and tested without a browser. Nothing here edits a recipe
by hand or does merge math: edits are :mod:`studio.recipe.edit` functions, previews go through
:class:`studio.engine.live.LiveMerger` and the family's evaluator.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Callable

import yaml

from ..engine import build_plan
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..describe import human_bytes
from ..layout import FlatLayout
from ..methods import get_method, list_methods
from ..recipe import Recipe
from ..recipe import edit as E
from ..recipe.edit import SettingPath
from . import history as H
from .catalog import family_label
from .formula import render as render_formula
from .landscapes import LandscapeController
from .learning import LearnController
from .preview_view import Preview
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
        self.live: LiveMerger | None = None
        self.last_preview: Preview | None = None
        self.learning = LearnController(self)
        self.landscapes = LandscapeController(self)
        self._ticket = 0
        self.lock = threading.Lock()              # one merge or evaluation of the resident model at a time
        self.events = threading.RLock()           # one UI event of this tab at a time (with --max-parallel > 1)
        self._ticket_lock = threading.Lock()
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
        if include and ref not in self.included():
            self.set_included(self.included() + [ref])
        return info

    def add_lora(self, model_ref: str, lora_ref: str, strength: float = 1.0, include: bool = True) -> dict:
        ref, info = self.shelf.add_lora(model_ref, lora_ref, strength)
        if include and ref not in self.included():
            self.set_included(self.included() + [ref])
        return info

    def lora_choices(self) -> list[tuple[str, str]]:
        fam = self.family_obj()
        return [(name, str(path)) for name, path in ((getattr(fam, "loras", None) or {}) if fam else {}).items()]

    def models_table(self) -> list[list]:
        return self.shelf.table(self.recipe)

    def close(self) -> None:
        """Drop the resident preview model (frees its memory)."""
        self.live = None
        self.last_preview = None

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
        for ref in self.included():
            self.shelf.offer(ref)
        if self.recipe.get("base_model"):
            self.shelf.offer(self.recipe["base_model"], first=True)
        self._keep_target()
        return True

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

    def set_yaml(self, text: str) -> None:
        """Replace the recipe by edited YAML (RecipeError with the parser's message when it is not valid)."""
        r = Recipe.from_yaml(text, where="YAML view")
        for ref in r.input_references():  # the VAE and the tokenizer source are read too
            self.env.roots.check_reference(ref)
        self.set_recipe(r.to_dict())

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        self.recipe = self.undo_stack.pop()
        self._keep_target()
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
                   f"Checked from headers only." + "".join(f"\n\n⚠ {w}" for w in s.get("warnings") or []))
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
    def next_ticket(self) -> int:
        with self._ticket_lock:
            self._ticket += 1
            return self._ticket

    def input_scores(self) -> dict[str, dict]:
        """The evaluator's result for the base and each merged model (cached per process)."""
        if not self.family:
            return {}
        base = self.recipe.get("base_model")
        refs = ([base] if base else []) + [r for r in self.included() if r != base]
        out = {}
        for ref in refs:
            try:
                out[self.label(ref)] = self.env.catalog.input_score(self.family, ref, self.env.opener)
            except (StudioError, KeyError, RuntimeError):
                continue  # a model the family's evaluator cannot score (e.g. a foreign checkpoint) is just not shown
        return out

    def sync_live(self) -> LiveMerger:
        """The resident LiveMerger holding the current recipe (built on first use). Call under ``lock``."""
        if self.live is None:
            self.live = LiveMerger(self.recipe_obj(), device=self.env.device, opener=self.env.opener)
        else:
            self.live.update(self.recipe_obj())
        return self.live

    def preview(self, ticket: int | None = None) -> Preview:
        """Re-merge what changed into the resident model and evaluate it with the preview budget.

        A call whose ticket is older than the newest request returns ``superseded=True`` without evaluating: the
        newer request will show its own numbers.
        """
        ticket = self.next_ticket() if ticket is None else ticket
        recipe = self.recipe_obj()
        snapshot = copy.deepcopy(self.recipe)
        with self.env.heavy, self.lock:
            if ticket != self._ticket:
                return Preview(snapshot, {}, {}, 0.0, 0.0, 0.0, 0, 0, superseded=True)
            t0 = time.perf_counter()
            if self.live is None:
                self.live = LiveMerger(recipe, device=self.env.device, opener=self.env.opener)
                changed = len(self.live.state)
            else:
                changed = len(self.live.update(recipe))
            t1 = time.perf_counter()
            if ticket != self._ticket:
                return Preview(snapshot, {}, {}, t1 - t0, 0.0, t1 - t0, changed, len(self.live.state),
                               superseded=True)
            result = self.env.catalog.evaluator(self.family).evaluate(self.live.state) if self.family else {}
            t2 = time.perf_counter()
            inputs = self.input_scores()
        prev = self.last_preview.result if self.last_preview else None
        pv = Preview(snapshot, result, inputs, t1 - t0, t2 - t1, t2 - t0, changed, len(self.live.state),
                     previous=prev)
        self.last_preview = pv
        H.record(self.history, snapshot, result, pv.total_seconds)
        return pv

    def show(self, pv: Preview) -> Preview:
        """Show numbers that are not the recipe's (learned weights) as the current preview; not recorded in the
        history."""
        pv.previous = self.last_preview.result if self.last_preview else None
        self.last_preview = pv
        return pv

    def evaluator_metric(self) -> str:
        ev = self.env.catalog.evaluator(self.family)
        last = self.last_preview.result if self.last_preview else None
        return str(getattr(ev, "metric", None) or (last or {}).get("metric") or "score")

    # ------------------------------------------------------------------------------------------- history
    def history_rows(self) -> list[list]:
        return H.rows(self.history, self.label)

    def restore(self, entry_id: int) -> None:
        h = H.find(self.history, entry_id)
        if h is None:
            raise StudioError(f"no history entry #{entry_id}")
        self.set_recipe(h.recipe)


def method_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered method, grouped by category."""
    return [(f"{spec.label or spec.name}  ·  {spec.name}  [{spec.category}]", spec.name)
            for spec in sorted(list_methods(), key=lambda s: (s.category, s.name))]
