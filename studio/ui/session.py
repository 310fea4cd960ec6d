"""One browser session's studio: its recipe, its resident preview model, its history — plain Python, no gradio.

Every UI event calls one method here and renders what it returns, so the whole studio can be driven (and tested)
without a browser. Nothing here does merge math: recipes go to :mod:`studio.engine` (``LiveMerger`` for previews,
``merge_to_disk`` for export) and merged weights go to the family's evaluator.

A :class:`StudioEnv` is shared by all sessions of one app (the catalog of demo families, the allowed folders, the
device, a semaphore bounding heavy work); a :class:`Session` belongs to one tab and never sees another's recipe.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import RecipeError, StudioError
from ..learn import list_variants
from ..methods import get_method, list_methods
from ..recipe import Recipe
from . import controls as C
from .catalog import Catalog, family_label
from .formula import render as render_formula
from .paths import AllowedRoots

MAX_UNDO = 200
MAX_HISTORY = 500


class StudioEnv:
    """What all sessions of one app share. Heavy work (merges, evaluations, exports) takes ``heavy`` first."""

    def __init__(self, catalog: Catalog | None = None, roots: AllowedRoots | None = None, device: str = "auto",
                 max_parallel: int = 1, export_dir: str | None = None):
        from ..devices import resolve_device
        from ..engine.live import CachedOpener

        self.catalog = catalog if catalog is not None else Catalog(device="cpu")
        self.device = str(resolve_device(device))
        self.catalog.device = self.device
        self.roots = roots if roots is not None else AllowedRoots()
        for fam in self.catalog.families.values():  # the zoo's own files are always readable
            self.roots.add(Path(str(fam.base)).parent)
            for p in list((getattr(fam, "experts", None) or {}).values()) + list(
                    (getattr(fam, "loras", None) or {}).values()):
                self.roots.add(Path(str(p)).parent)
        self.export_dir = export_dir
        self.opener = CachedOpener()
        self.max_parallel = max(1, int(max_parallel))
        self.heavy = threading.BoundedSemaphore(self.max_parallel)
        self._describe: dict[str, dict] = {}
        self._layouts: dict[str, Any] = {}

    def new_session(self, family: str | None = None) -> "Session":
        s = Session(self)
        fam = family or self.catalog.default_family()
        if fam:
            s.load_family(fam)
        return s

    def describe(self, ref: str) -> dict:
        hit = self._describe.get(ref)
        if hit is None:
            from ..describe import describe

            hit = describe(self.opener(ref))
            self._describe[ref] = hit
        return hit

    def layout(self, ref: str):
        hit = self._layouts.get(ref)
        if hit is None:
            from ..layout import detect_layout

            hit = detect_layout(self.opener(ref))
            self._layouts[ref] = hit
        return hit


@dataclass
class Preview:
    """What one preview produced: the merge's scores, the inputs' scores, timings."""

    recipe: dict
    result: dict
    inputs: dict[str, dict]            # label → evaluator result of that input model
    merge_seconds: float
    eval_seconds: float
    total_seconds: float
    changed: int                       # output tensors recomputed by the live engine
    tensors: int
    superseded: bool = False
    previous: dict | None = None       # the result of the preview before this one (for side-by-side)
    source: str | None = None          # set when the numbers are of learned weights, not of the recipe


@dataclass
class HistoryEntry:
    id: int
    when: float
    recipe: dict
    method: str
    average: float | None
    per_task: dict
    metric: str
    latency_ms: float


# choice → (label, studio.learn method, hyperparameters): the learners' declared variants
LEARNED_CHOICES = {v.name: (v.label, v.learner, dict(v.hparams)) for v in list_variants()}


@dataclass
class Learned:
    """One Optimize run: the LearnResult, what it merged, and its preview-budget scores."""

    choice: str
    label: str
    method: str
    base: str
    experts: list[str]
    result: Any                        # studio.learn.LearnResult
    scores: dict                       # the evaluator's result for the learned weights
    seconds: float
    recipe: dict | None                # the learned recipe (coefficient methods), else None
    current: dict | None = None        # the recipe's preview numbers when the run started (for comparison)


@dataclass
class ControlsView:
    """Everything the Recipe panel shows, derived from the recipe (and so always consistent with the YAML)."""

    method: str
    global_slots: list[C.Slot]
    model_rows: list[C.ModelRow]
    targets: list[tuple[str, str]]
    target: str | None
    groups: list[str]
    group_labels: dict[str, str]
    group_values: list[float]
    group_range: tuple[float, float, float]
    layout_shape: str
    layout_name: str
    rules_text: str
    yaml: str
    formula: str


class Session:
    def __init__(self, env: StudioEnv):
        self.env = env
        self.family: str | None = None
        self.recipe: dict = {}
        self.available: list[str] = []          # model references offered in the Models panel
        self.labels: dict[str, str] = {}
        self.undo_stack: list[dict] = []
        self.history: list[HistoryEntry] = []
        self.target: str | None = None
        self.live = None
        self.last_preview: Preview | None = None
        self.learned: Learned | None = None     # the last Optimize run of this session
        self._ticket = 0
        self._lock = threading.Lock()
        self._ticket_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- families
    def load_family(self, name: str) -> None:
        fam = self.env.catalog.get(name)
        self.family = name
        base = str(fam.base)
        experts = [str(p) for p in (fam.experts or {}).values()]
        self.available = [base] + experts
        self.labels = {ref: family_label(fam, ref) or C.short_ref(ref) for ref in self.available}
        for lname, path in (getattr(fam, "loras", None) or {}).items():
            self.labels[str(path)] = f"lora:{lname}"
        self.close()
        self.learned = None
        lam = 0.3 if len(experts) >= 4 else 0.5
        recipe = {"name": f"{name}-merge", "merge_method": "task_arithmetic", "base_model": base,
                  "models": [{"model": e, "parameters": {"weight": 1.0}} for e in experts[:8]],
                  "parameters": {"lambda": lam}}
        self._set_recipe(recipe, record=bool(self.recipe))
        self.target = C.default_target(self.spec, self.recipe)

    def family_obj(self):
        return self.env.catalog.get(self.family) if self.family else None

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
        except StudioError:
            import yaml

            return yaml.safe_dump(self.recipe, sort_keys=False, allow_unicode=True)

    def _set_recipe(self, recipe: dict, record: bool = True) -> bool:
        if recipe == self.recipe:
            return False
        if record and self.recipe:
            self.undo_stack.append(copy.deepcopy(self.recipe))
            del self.undo_stack[:-MAX_UNDO]
        self.recipe = copy.deepcopy(recipe)
        for m in self.recipe.get("models") or []:
            self.labels.setdefault(m["model"], C.short_ref(m["model"]))
            if m["model"] not in self.available:
                self.available.append(m["model"])
        base = self.recipe.get("base_model")
        if base:
            self.labels.setdefault(base, C.short_ref(base))
            if base not in self.available:
                self.available.insert(0, base)
        targets = [t for _, t in C.group_targets(self.spec, self.recipe, self.labels)]
        if self.target not in targets:
            self.target = C.default_target(self.spec, self.recipe)
        return True

    def _edit(self, fn: Callable[[dict], None]) -> bool:
        """Apply ``fn`` to a copy of the recipe; keep it only if the result validates (else RecipeError)."""
        new = copy.deepcopy(self.recipe)
        fn(new)
        Recipe.from_dict(copy.deepcopy(new))
        return self._set_recipe(new)

    def set_yaml(self, text: str) -> None:
        """Replace the recipe by edited YAML (RecipeError with the parser's message when it is not valid)."""
        r = Recipe.from_yaml(text, where="YAML view")
        for ref in r.referenced_models():
            self.env.roots.check_reference(ref)
        self._set_recipe(r.to_dict())

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        self.recipe = self.undo_stack.pop()
        targets = [t for _, t in C.group_targets(self.spec, self.recipe, self.labels)]
        if self.target not in targets:
            self.target = C.default_target(self.spec, self.recipe)
        return True

    def set_method(self, name: str) -> None:
        spec = get_method(name)

        def edit(r):
            r["merge_method"] = spec.name
            keep = {p.name for p in spec.global_params()}
            per = {p.name for p in spec.per_model_params()}
            params = {k: v for k, v in (r.get("parameters") or {}).items() if k in keep or k in per}
            for p in spec.global_params():
                if p.required and p.name not in params:
                    params[p.name] = C.default_value(p)
            r["parameters"] = params
            if not params:
                r.pop("parameters")
            for m in r.get("models") or []:
                mp = {k: v for k, v in (m.get("parameters") or {}).items() if k in per}
                for p in spec.per_model_params():
                    if p.required and p.name not in mp and p.name not in params:
                        mp[p.name] = C.default_value(p)
                if mp:
                    m["parameters"] = mp
                else:
                    m.pop("parameters", None)
            if spec.needs_base and not r.get("base_model") and self.available:
                r["base_model"] = self.available[0]
        new = copy.deepcopy(self.recipe)
        edit(new)
        self._set_recipe(new)  # kept even when invalid (e.g. too many models): the dry run says what to change
        self.target = C.default_target(spec, self.recipe)

    def set_global(self, name: str, value) -> None:
        self._edit(lambda r: C.set_scalar(self.spec, r, f"g:{name}", value))

    def set_model_param(self, index: int, name: str, value) -> None:
        self._edit(lambda r: C.set_scalar(self.spec, r, f"m:{index}:{name}", value))

    # ---- models
    def model_choices(self) -> list[tuple[str, str]]:
        return [(self.labels.get(ref, C.short_ref(ref)), ref) for ref in self.available]

    def included(self) -> list[str]:
        return [m["model"] for m in self.recipe.get("models") or []]

    def set_included(self, refs: list[str]) -> None:
        refs = [r for r in self.available if r in set(refs)]  # keep the panel's order

        def edit(r):
            old = {m["model"]: m for m in r.get("models") or []}
            spec = self.spec
            models = []
            for ref in refs:
                m = copy.deepcopy(old.get(ref, {"model": ref}))
                mp = m.get("parameters") or {}
                for p in spec.per_model_params():
                    if p.required and p.name not in mp and p.name not in (r.get("parameters") or {}):
                        mp[p.name] = C.default_value(p)
                if mp:
                    m["parameters"] = mp
                models.append(m)
            if not models:
                raise RecipeError("choose at least one model to merge")
            r["models"] = models
        new = copy.deepcopy(self.recipe)
        edit(new)
        self._set_recipe(new)

    def set_base(self, ref: str | None) -> None:
        def edit(r):
            if ref:
                r["base_model"] = ref
            else:
                r.pop("base_model", None)
        new = copy.deepcopy(self.recipe)
        edit(new)
        self._set_recipe(new)

    def add_model(self, ref: str, include: bool = True) -> dict:
        """Open a path / hub id / ``base+lora[:s]`` (only inside the allowed folders) and offer it for merging."""
        ref = self.env.roots.check_reference(ref)
        info = self.env.describe(ref)
        if ref not in self.available:
            self.available.append(ref)
        self.labels.setdefault(ref, C.short_ref(ref))
        if include and ref not in self.included():
            self.set_included(self.included() + [ref])
        return info

    def add_lora(self, model_ref: str, lora_ref: str, strength: float = 1.0, include: bool = True) -> dict:
        if not model_ref or not lora_ref:
            raise StudioError("choose a model and a LoRA")
        ref = f"{model_ref}+{lora_ref}" + ("" if float(strength) == 1.0 else f":{float(strength):g}")
        info = self.add_model(ref, include)
        m_label = self.labels.get(model_ref, C.short_ref(model_ref))
        l_label = self.labels.get(lora_ref, C.short_ref(lora_ref)).removeprefix("lora:")
        self.labels[ref] = f"{m_label}+{l_label}" + ("" if float(strength) == 1.0 else f"×{float(strength):g}")
        return info

    def lora_choices(self) -> list[tuple[str, str]]:
        fam = self.family_obj()
        loras = (getattr(fam, "loras", None) or {}) if fam else {}
        return [(name, str(path)) for name, path in loras.items()]

    def models_table(self) -> list[list]:
        """Rows: model, role, kind, architecture, parameters, dtype, layout · groups (headers only)."""
        from ..describe import human_count

        base = self.recipe.get("base_model")
        included = set(self.included())
        rows = []
        for ref in self.available:
            role = "base" if ref == base else ("merged" if ref in included else "available")
            try:
                d = self.env.describe(ref)
                dtypes = ", ".join(str(k).replace("torch.", "") for k in (d.get("dtypes") or {}))
                rows.append([self.labels.get(ref, C.short_ref(ref)), role, d.get("kind", "?"),
                             d.get("architecture", "?"), human_count(d.get("parameters") or 0), dtypes,
                             f"{d.get('layout')} · {d.get('groups')}"])
            except StudioError as e:
                rows.append([self.labels.get(ref, ref), role, "error", str(e), "", "", ""])
        return rows

    def dry_run(self) -> tuple[bool, str]:
        """The header-only verdict on the current recipe: (ok, markdown)."""
        from ..engine import build_plan
        from ..describe import human_bytes

        try:
            recipe = self.recipe_obj()
            plan = build_plan(recipe, self.env.opener)
        except StudioError as e:
            return False, f"✗ **Will not merge:** {e}"
        s = plan.summary()
        msg = (f"✓ **Ready** — {s['merged']} of {s['tensors']} tensors merged with `{s['method']}`, "
               f"{len(s['groups'])} groups ({s['layout']}), output {human_bytes(s['output_bytes'])}. "
               f"Checked from headers only.")
        for w in s.get("warnings") or []:
            msg += f"\n\n⚠ {w}"
        return True, msg

    # ---- layout + per-group controls
    def reference_model(self) -> str | None:
        return self.recipe.get("base_model") or (self.included() or [None])[0]

    def layout(self):
        ref = self.reference_model()
        if ref is None:
            from ..layout import FlatLayout

            return FlatLayout()
        return self.env.layout(ref)

    def set_target(self, target: str) -> None:
        if target not in [t for _, t in C.group_targets(self.spec, self.recipe, self.labels)]:
            raise StudioError(f"unknown per-layer target {target!r}")
        self.target = target

    def _need_target(self) -> str:
        if not self.target:
            raise StudioError(f"method {self.spec.name!r} has no numeric parameter to vary per layer")
        return self.target

    def group_values(self) -> list[float]:
        groups = self.layout().groups
        if not self.target:
            return [0.0] * len(groups)
        return C.target_group_values(self.spec, self.recipe, self.target, groups)

    def set_group_value(self, group: str, value: float) -> None:
        target = self._need_target()
        groups = self.layout().groups
        vals = C.target_group_values(self.spec, self.recipe, target, groups)
        vals[groups.index(group)] = float(value)
        self._edit(lambda r: C.set_group_values(self.spec, r, target, groups, vals))

    def set_group_values(self, values: list[float]) -> None:
        target = self._need_target()
        groups = self.layout().groups
        if len(values) != len(groups):
            raise StudioError(f"expected {len(groups)} values (one per group), got {len(values)}")
        self._edit(lambda r: C.set_group_values(self.spec, r, target, groups, list(values)))

    def apply_curve(self, shape: str, lo: float, hi: float) -> None:
        self.set_group_values(C.curve(shape, len(self.layout().groups), float(lo), float(hi)))

    def apply_preset(self, name: str) -> None:
        self.set_group_values(C.preset_values(name, self.layout().groups))

    def set_rules_text(self, text: str) -> None:
        target = self._need_target()
        rules = C.parse_rules(text)
        self._edit(lambda r: C.set_rules(self.spec, r, target, rules))

    def controls(self) -> ControlsView:
        spec = self.spec
        layout = self.layout()
        groups = list(layout.groups)
        target = self.target
        if target:
            p = C.target_param(spec, target)
            vals = C.target_group_values(spec, self.recipe, target, groups)
            lo, hi, step = C.slider_range(p, None)
            lo, hi = min([lo] + vals), max([hi] + vals)
            rules = C.rules_to_text(C.target_rules(self.recipe, target))
        else:
            vals, (lo, hi, step), rules = [0.0] * len(groups), (0.0, 1.0, 0.01), ""
        return ControlsView(
            method=spec.name, global_slots=C.global_slots(spec, self.recipe),
            model_rows=C.model_rows(spec, self.recipe, self.labels),
            targets=C.group_targets(spec, self.recipe, self.labels), target=target, groups=groups,
            group_labels=dict(layout.labels), group_values=vals, group_range=(lo, hi, step),
            layout_shape=layout.shape, layout_name=layout.name, rules_text=rules, yaml=self.yaml(),
            formula=self.formula())

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
        refs = []
        base = self.recipe.get("base_model")
        if base:
            refs.append(base)
        refs += [r for r in self.included() if r not in refs]
        out = {}
        for ref in refs:
            try:
                out[self.labels.get(ref, C.short_ref(ref))] = self.env.catalog.input_score(
                    self.family, ref, self.env.opener)
            except (StudioError, KeyError, RuntimeError):
                continue  # a model the family's evaluator cannot score (e.g. a foreign checkpoint) is just not shown
        return out

    def preview(self, ticket: int | None = None) -> Preview:
        """Re-merge what changed into the resident model and evaluate it with the preview budget.

        A call whose ticket is older than the newest request returns ``superseded=True`` without evaluating: the
        newer request will show its own numbers.
        """
        from ..engine.live import LiveMerger

        ticket = self.next_ticket() if ticket is None else ticket
        recipe = self.recipe_obj()
        snapshot = copy.deepcopy(self.recipe)
        with self.env.heavy, self._lock:
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
            result = {}
            if self.family:
                result = self.env.catalog.evaluator(self.family).evaluate(self.live.state)
            t2 = time.perf_counter()
            inputs = self.input_scores()
        prev = self.last_preview.result if self.last_preview else None
        pv = Preview(snapshot, result, inputs, t1 - t0, t2 - t1, t2 - t0, changed, len(self.live.state),
                     previous=prev)
        self.last_preview = pv
        self._record(pv)
        return pv

    def _evaluator_metric(self) -> str:
        ev = self.env.catalog.evaluator(self.family)
        return str(getattr(ev, "metric", None) or (self.last_preview.result.get("metric") if self.last_preview
                                                   and self.last_preview.result else None) or "score")

    def _sync_live(self):
        """The resident LiveMerger holding the current recipe (built on first use). Call under ``_lock``."""
        from ..engine.live import LiveMerger

        if self.live is None:
            self.live = LiveMerger(self.recipe_obj(), device=self.env.device, opener=self.env.opener)
        else:
            self.live.update(self.recipe_obj())
        return self.live

    def sweep(self, target: str | None = None, points: int = 11, lo: float | None = None,
              hi: float | None = None, progress: Callable[[float, str], None] | None = None) -> dict:
        """A 1-D landscape (:func:`studio.analysis.landscape_1d`): the evaluator's average as one setting (one value
        for every layer) runs from lo to hi, everything else as in the recipe.

        The result is landscape_1d's, plus ``results`` (the evaluator's full result per point, for per-task lines)
        and ``target``. The resident model is left holding the current recipe.
        """
        from ..analysis import landscape_1d

        target = target or self._need_target()
        if not self.family:
            raise StudioError("a landscape needs a demo family's evaluator")
        p = C.target_param(self.spec, target)
        r_lo, r_hi, _ = C.slider_range(p, None)
        lo = r_lo if lo is None else float(lo)
        hi = r_hi if hi is None else float(hi)
        points = max(2, int(points))
        xs = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
        if p.kind is int:
            xs = sorted({int(round(x)) for x in xs})
        idx, name = C.parse_target(target)
        path = ("parameters", name) if idx is None else ("models", idx, name)
        ev = self.env.catalog.evaluator(self.family)
        rows: list[dict] = []

        def score(state):
            r = ev.evaluate(state)
            rows.append(r)
            return r["average"]

        metric = self._evaluator_metric()
        with self.env.heavy, self._lock:
            data = landscape_1d(self._sync_live(), path, xs, score, device=self.env.device,
                                score_name=f"average {metric}", progress=progress)
        data["results"] = rows[:len(xs)]
        data["target"] = target
        label = dict((t, lab) for lab, t in C.group_targets(self.spec, self.recipe, self.labels)).get(target)
        if label:
            data["x"]["label"] = label
        return data

    def experts(self) -> list[str]:
        """The merged models other than the base (what task vectors are taken of), in recipe order."""
        base = self.recipe.get("base_model")
        return [r for r in self.included() if r != base]

    def landscape_plane(self, x_model: str | None = None, y_model: str | None = None, steps: int = 9,
                        progress: Callable[[float, str], None] | None = None) -> dict:
        """The task-vector plane θ0 + α·τ_x + β·τ_y scored by the family's preview evaluator
        (:func:`studio.analysis.landscape_2d`, ``plane="task"``), with base / experts / average / current-recipe
        markers and, when this session learned a merge of the same models, its trajectory projected onto the plane.

        ``note`` in the result says what was (not) overlaid.
        """
        from ..analysis import landscape_2d

        if not self.family:
            raise StudioError("a landscape needs a demo family's evaluator")
        base = self.recipe.get("base_model")
        experts = self.experts()
        if not base:
            raise StudioError("the task-vector plane needs a base model", hint="choose one in the Models tab")
        if len(experts) < 2:
            raise StudioError("the task-vector plane needs two merged models besides the base",
                              hint="tick at least two models in the Models tab")
        x_model = x_model if x_model in experts else experts[0]
        y_model = y_model if y_model in experts and y_model != x_model else next(e for e in experts if e != x_model)
        trajectories, note = None, ""
        lr = self.learned
        if lr is not None:
            if lr.base == base and lr.experts == experts:
                # the points' "loss" is the learner's objective, not the evaluator's score: keep it off the hover
                trajectories = [{"name": lr.method, "points": [{k: v for k, v in pt.items() if k not in ("loss", "score")}
                                                               for pt in lr.result.trajectory]}]
                note = f"Trajectory of the {lr.label} run projected onto the plane."
            else:
                note = f"The {lr.label} run merged other models; its trajectory is not shown."
        ev = self.env.catalog.evaluator(self.family)
        metric = self._evaluator_metric()
        with self.env.heavy, self._lock:
            data = landscape_2d(self._sync_live(), ev, plane="task", i=x_model, j=y_model, steps=int(steps),
                                trajectories=trajectories, device=self.env.device, score_name=f"average {metric}",
                                progress=progress)
        lab = lambda r: self.labels.get(r, C.short_ref(r))  # noqa: E731
        data["x"]["label"] = f"α · τ({lab(x_model)})"
        data["y"]["label"] = f"β · τ({lab(y_model)})"
        for m in data["markers"]:
            if m["name"] in self.labels:
                m["name"] = lab(m["name"])
        for t in data["trajectories"]:
            t["name"] = f"{lr.label} trajectory" if lr else t["name"]
        data["note"] = note
        data["plane_models"] = [x_model, y_model]
        return data

    # ------------------------------------------------------------------------------------------- learned merges
    def learn(self, choice: str, steps: int | None = None, progress: Callable[[float, str], None] | None = None,
              data: str | None = None, **hparams) -> "Learned":
        """Run a learned merge (:func:`studio.learn.run_learned`) of the merged models on unlabeled data; the result is
        kept as ``self.learned`` (nothing in the recipe changes until :meth:`load_learned`).

        ``data``: a folder (inside the allowed folders) with a subfolder of unlabeled inputs per merged model, named
        after the models' labels (else matched in sorted order); without it, the demo family's unlabeled splits.
        With a family, the learned model is evaluated once with the preview budget so its numbers can be compared.
        """
        from ..learn import run_learned

        if choice not in LEARNED_CHOICES:
            raise StudioError(f"unknown learned method {choice!r}", hint=", ".join(LEARNED_CHOICES))
        label, method, hp = LEARNED_CHOICES[choice]
        fam = self.family_obj()
        base = self.recipe.get("base_model")
        experts = self.experts()
        if not base or not experts:
            raise StudioError("learned merging needs a base model and at least one fine-tuned model",
                              hint="choose them in the Models tab")
        tasks = [self.labels.get(e, "") for e in experts]
        if data and str(data).strip():
            data = str(self.env.roots.check_path(str(data)))
        else:
            data = self._family_data(fam, experts, tasks)
        t0 = time.perf_counter()
        with self.env.heavy:
            res = run_learned(method, base, experts, data, device=self.env.device, steps=steps, progress=progress,
                              tasks=tasks, **{**hp, **hparams})
            result = self.env.catalog.evaluator(self.family).evaluate(res.state_dict) if fam is not None else {}
        self.learned = Learned(choice=choice, label=label, method=method, base=base, experts=list(experts),
                               result=res, scores=result, seconds=time.perf_counter() - t0,
                               recipe=res.recipe.to_dict() if res.recipe is not None else None,
                               current=(self.last_preview.result if self.last_preview
                                        and not self.last_preview.source else None))
        return self.learned

    def _family_data(self, fam, experts: list[str], tasks: list[str]) -> dict:
        """Each merged model's unlabeled split from the demo family (they must be the family's experts)."""
        if fam is None:
            raise StudioError("learned merging needs unlabeled data of each task",
                              hint="give a folder with a subfolder per merged model in the Optimize tab, or use a "
                                   "demo family")
        fam_tasks = list(getattr(fam, "tasks", None) or (getattr(fam, "experts", None) or {}))
        unknown = [self.labels.get(e, C.short_ref(e)) for e, t in zip(experts, tasks) if t not in fam_tasks]
        if unknown:
            raise StudioError(f"learned merging on the family's data needs each merged model to be one of its "
                              f"experts (it learns on that task's unlabeled data); {', '.join(unknown)} is not",
                              hint="untick it in the Models tab, or give your own data folder")
        if not hasattr(fam, "data"):
            raise StudioError(f"the {self.family} family has no unlabeled data to learn from")
        data = {}
        for t in tasks:
            d = fam.data(t, "unlabeled")
            if d is None:
                raise StudioError(f"the {self.family} family has no task data; learned merging needs unlabeled "
                                  "inputs of each task", hint="use the vision or text family, or your own data folder")
            data[t] = d[0] if isinstance(d, tuple) else d
        return data

    def load_learned(self) -> None:
        """Replace the recipe by the learned one (undo brings the previous back; the next preview records it)."""
        lr = self.learned
        if lr is None:
            raise StudioError("nothing learned yet in this session", hint="run a method in the Optimize tab first")
        if lr.recipe is None and lr.result.coefficients:
            raise StudioError(f"{lr.label}'s coefficients cannot become a recipe here: the base and the experts do "
                              "not share one tensor set (a full CLIP model and vision towers)",
                              hint="preview or export the learned weights from the Optimize tab")
        if lr.recipe is None:
            raise StudioError(f"{lr.label} learns merged weights, not recipe coefficients",
                              hint="preview them or export them from the Optimize tab")
        self._set_recipe(lr.recipe)

    def preview_learned(self) -> Preview:
        """Show the learned weights' numbers in the preview (the recipe is unchanged; the next edit re-previews it)."""
        lr = self.learned
        if lr is None:
            raise StudioError("nothing learned yet in this session", hint="run a method in the Optimize tab first")
        prev = self.last_preview.result if self.last_preview else None
        pv = Preview(copy.deepcopy(self.recipe), lr.scores, self.input_scores(), lr.seconds, 0.0, lr.seconds,
                     0, len(lr.result.state_dict or {}), previous=prev, source=f"learned weights · {lr.label}")
        self.last_preview = pv
        return pv

    def export_learned(self, target: str, dtype: str = "float16", overwrite: bool = False) -> dict:
        """Write the learned merged weights: ``target`` ending in .safetensors → that file (+ a ``.learned.json``
        beside it); a folder → :meth:`studio.learn.LearnResult.save` (recipe.yml when there is one,
        merged.safetensors, trajectory.json). Written atomically, only inside the allowed folders."""
        from ..output import AtomicTarget, check_target, learned_summary_path

        lr = self.learned
        if lr is None or not lr.result.state_dict:
            raise StudioError("nothing learned to export", hint="run a method in the Optimize tab first")
        out = self.env.roots.check_write(target)
        inputs = [Path(p) for p in [lr.base, *lr.experts] if Path(p).exists()]
        check_target(out, overwrite, inputs)
        t0 = time.perf_counter()
        with self.env.heavy:
            if out.suffix == ".safetensors":
                check_target(learned_summary_path(out), overwrite, inputs)
                lr.result.save(out, dtype, label=lr.label, base=lr.base, experts=lr.experts)
                files = [out, learned_summary_path(out)]
            else:
                with AtomicTarget(out) as tmp:
                    lr.result.save(tmp)
                files = sorted(p for p in out.rglob("*") if p.is_file())
        return {"path": str(out), "files": [str(p) for p in files],
                "bytes": sum(p.stat().st_size for p in files), "seconds": time.perf_counter() - t0}

    def _record(self, pv: Preview) -> None:
        if pv.source:
            return  # learned weights are not a recipe: nothing to restore
        r = pv.result or {}
        self.history.append(HistoryEntry(
            id=len(self.history) + 1, when=time.time(), recipe=copy.deepcopy(pv.recipe),
            method=pv.recipe.get("merge_method", "?"), average=r.get("average"),
            per_task=dict(r.get("per_task") or {}), metric=r.get("metric", ""),
            latency_ms=round(pv.total_seconds * 1000, 1)))
        del self.history[:-MAX_HISTORY]

    def history_rows(self) -> list[list]:
        rows = []
        for h in reversed(self.history):
            rows.append([h.id, time.strftime("%H:%M:%S", time.localtime(h.when)), h.method,
                         _settings_summary(h.recipe, self.labels),
                         None if h.average is None else round(float(h.average), 4), h.metric, h.latency_ms])
        return rows

    def restore(self, entry_id: int) -> None:
        for h in self.history:
            if h.id == int(entry_id):
                self._set_recipe(h.recipe)
                return
        raise StudioError(f"no history entry #{entry_id}")

    # ------------------------------------------------------------------------------------------- export
    def export(self, target: str, dtype: str = "float16", overwrite: bool = False,
               progress: Callable[[float], None] | None = None) -> dict:
        """Stream the current recipe to ``target`` (a folder, or a path ending in .safetensors)."""
        from ..engine import merge_to_disk
        from ..output import model_card, recipe_path

        out = self.env.roots.check_write(target)
        recipe = self.recipe_obj()
        if dtype and dtype != "as input":
            recipe.out_dtype = dtype
        kwargs: dict[str, Any] = {"device": self.env.device, "overwrite": bool(overwrite), "progress": False}
        if progress is not None:
            import inspect as _inspect

            if "progress_callback" in _inspect.signature(merge_to_disk).parameters:
                kwargs["progress_callback"] = progress
        t0 = time.perf_counter()
        with self.env.heavy:
            summary = merge_to_disk(recipe, out, **kwargs)
        seconds = time.perf_counter() - t0
        recipe_yaml = recipe.to_yaml()
        if out.suffix == ".safetensors":
            files = [out, recipe_path(out)]  # merge_to_disk writes the recipe beside a single file
            card = model_card(recipe_yaml, self.spec.label or self.spec.name, recipe.referenced_models(),
                              recipe.base_model)
        else:
            files = sorted(p for p in out.rglob("*") if p.is_file())
            readme = out / "README.md"
            card = readme.read_text() if readme.exists() else ""
        size = sum(p.stat().st_size for p in files)
        return {"path": str(out), "files": [str(p) for p in files], "bytes": size, "seconds": seconds,
                "card": card, "recipe": recipe_yaml, "summary": summary}


def _settings_summary(recipe: dict, labels: dict[str, str], limit: int = 120) -> str:
    parts = []
    for k, v in (recipe.get("parameters") or {}).items():
        parts.append(f"{k}={_short(v)}")
    for m in recipe.get("models") or []:
        for k, v in (m.get("parameters") or {}).items():
            parts.append(f"{k}[{labels.get(m['model'], C.short_ref(m['model']))}]={_short(v)}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return "per-layer" if isinstance(v, dict) or not all(isinstance(x, dict) for x in v) else "rules"
    return str(v)


def method_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered method, grouped by category."""
    out = []
    for spec in sorted(list_methods(), key=lambda s: (s.category, s.name)):
        out.append((f"{spec.label or spec.name}  ·  {spec.name}  [{spec.category}]", spec.name))
    return out
