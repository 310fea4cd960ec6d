"""What the Recipe panel shows, derived from the recipe — plain data, no gradio and no recipe logic.

Which settings exist and what each group resolves to come from the method declarations and
:mod:`studio.recipe.edit`; this module only turns them into controls (a slider's extent, a label, a hint), so the
YAML view and the controls always describe the same recipe.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..layout import Layout
from ..recipe import edit as E
from ..recipe.edit import SettingPath


@dataclass
class Slot:
    """One control: what widget, which parameter, its range and current value."""

    kind: str                     # slider | checkbox | dropdown | text
    name: str                     # parameter name
    label: str
    info: str = ""
    minimum: float = 0.0
    maximum: float = 1.0
    step: float = 0.01
    value: Any = None
    choices: list | None = None
    per_group: bool = False       # the setting varies by layer/block (the slider shows its default)
    rules: bool = False           # name-pattern rules refine it


def slider_range(p, value) -> tuple[float, float, float]:
    """A slider's (minimum, maximum, step): the declared range, widened to show ``value`` if it lies outside."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if p.range:
        lo, hi = float(p.range[0]), float(p.range[1])
    else:
        d = p.default if isinstance(p.default, (int, float)) and not isinstance(p.default, bool) else 1
        if p.kind is int:
            lo, hi = 0.0, float(max(10, 2 * abs(d)))
        else:
            lo, hi = (0.0, 1.0) if 0 <= d <= 1 else (min(0.0, 2 * d), max(1.0, 2 * d))
    if numeric:
        lo, hi = min(lo, float(value)), max(hi, float(value))
    step = 1.0 if p.kind is int else (0.001 if hi - lo <= 0.1 else 0.01)
    if p.kind is float and hi - lo < 1e-3:
        step = (hi - lo) / 100 or 1e-6
    return lo, hi, step


def make_slot(p, value, per_group: bool = False, rules: bool = False) -> Slot:
    info = p.doc or ""
    if p.kind is bool:
        return Slot("checkbox", p.name, p.title, info, value=bool(value), rules=rules)
    if p.choices:
        return Slot("dropdown", p.name, p.title, info, value=value, choices=list(p.choices), rules=rules)
    if p.kind not in (int, float):
        return Slot("text", p.name, p.title, info, value="" if value is None else str(value))
    lo, hi, step = slider_range(p, value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float(p.initial) if isinstance(p.initial, (int, float)) else lo
    if p.kind is int:
        value = int(round(value))
    return Slot("slider", p.name, p.title, info, lo, hi, step, value, per_group=per_group, rules=rules)


def slot_for(recipe: dict, path: SettingPath) -> Slot:
    p = E.param_of(recipe, path)
    return make_slot(p, *E.scalar_value(recipe, path))


def global_slots(recipe: dict) -> list[Slot]:
    spec = E.spec_of(recipe)
    return [slot_for(recipe, SettingPath(p.name)) for p in spec.params if not p.per_model and not p.compat]


@dataclass
class ModelRow:
    index: int
    ref: str
    label: str
    slots: list[Slot] = field(default_factory=list)


def model_rows(recipe: dict, label) -> list[ModelRow]:
    spec = E.spec_of(recipe)
    return [ModelRow(i, m["model"], label(m["model"]),
                     [slot_for(recipe, SettingPath(p.name, i)) for p in spec.per_model_params() if not p.compat])
            for i, m in enumerate(recipe.get("models") or [])]


def path_label(recipe: dict, path: SettingPath, label) -> str:
    """'λ (lambda) (all models)' or 'weight · digits'."""
    p = E.spec_of(recipe).param(path.name)
    if path.index is None:
        return f"{p.title} (all models)"
    return f"{p.title} · {label(recipe['models'][path.index]['model'])}"


def path_choices(recipe: dict, label) -> list[tuple[str, str]]:
    """(label, setting path) of every setting the per-layer sliders (and a sweep) can drive."""
    return [(path_label(recipe, p, label), str(p)) for p in E.numeric_paths(recipe)]


@dataclass
class ControlsView:
    """Everything the Recipe panel shows, derived from the recipe (and so always consistent with the YAML)."""

    method: str
    global_slots: list[Slot]
    model_rows: list[ModelRow]
    targets: list[tuple[str, str]]
    target: str | None
    groups: list[str]
    group_labels: dict[str, str]
    group_values: list[float]
    group_range: tuple[float, float, float]
    layout_shape: str
    layout_name: str
    rules_text: str


def controls_view(recipe: dict, layout: Layout, target: SettingPath | None, label) -> ControlsView:
    groups = list(layout.groups)
    if target is not None:
        vals = E.group_values(recipe, target, layout)
        lo, hi, step = slider_range(E.param_of(recipe, target), None)
        lo, hi = min([lo] + vals), max([hi] + vals)
        rules = E.rules_to_text(E.rules_of(recipe, target))
    else:
        vals, (lo, hi, step), rules = [0.0] * len(groups), (0.0, 1.0, 0.01), ""
    return ControlsView(
        method=recipe.get("merge_method", ""), global_slots=global_slots(recipe), model_rows=model_rows(recipe, label),
        targets=path_choices(recipe, label), target=None if target is None else str(target), groups=groups,
        group_labels=dict(layout.labels), group_values=vals, group_range=(lo, hi, step), layout_shape=layout.shape,
        layout_name=layout.name, rules_text=rules)


def bug_report(what: str, exc: BaseException) -> str:
    """Log a bug with its traceback under a short id, and the one line the page shows for it."""
    ident = uuid.uuid4().hex[:8]
    logging.getLogger("studio.ui").error("bug #%s in %s:\n%s", ident, what, traceback.format_exc())
    return (f"internal error in {what} ({type(exc).__name__}) — logged as #{ident}; please report it with what you "
            "did")
