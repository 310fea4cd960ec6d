"""Recipe edits as pure functions, and the one address form of a setting.

Every edit the studio, the CLI (``--set``) and the analysis tools make to a recipe is a function here: it takes a
recipe mapping (``Recipe.to_dict()`` form) and returns a new one, never changing its input. Whether the result is a
valid recipe is :class:`~studio.recipe.Recipe`'s to say (``Recipe.from_dict``); these functions only keep the
spelling canonical, so the YAML view and the controls always describe the same recipe.

**Setting paths.** One string names one parameter setting::

    parameters.lambda              the top-level value (all models) of lambda; ``lambda`` alone means the same
    models.2.weight                model 2's own weight (it falls back to ``parameters.weight`` when unset)
    models.*.weight                every model's weight (expands to models.0.weight, models.1.weight, …)
    models.2.density@IN04          the value that setting gives one layout group
    parameters.lambda@L00..L31     a run of groups, in layout order

**Anatomy of a setting.** A setting may be a scalar, a gradient list, a per-group mapping ``{"L03": 0.9, "*": 0.3}``,
a block-weight string or preset name, or a list of ``{filter, value}`` rules whose last, filter-less rule holds the
default (see :mod:`studio.recipe.resolve`). Edits treat it as two parts: the *rules* (name-pattern lines, kept
unless the edit is about rules) and the *body* (everything else: a scalar, or one value per group). What each group
gets from a body is computed by :func:`studio.recipe.resolve.evaluate_setting` at the group's own position, so the
sliders show exactly what the engine applies.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import RecipeError
from ..layout import Layout, detect_layout
from ..layout.presets import lookup_preset
from ..methods import MethodSpec, Param, get_method
from ..sources import open_source
from .limits import parse_yaml
from .model import Recipe
from .resolve import evaluate_setting, group_entry

# --------------------------------------------------------------------------------------------------- setting paths

# a group id may hold single dots (a MoE layer's ``L07.expert03``); ``..`` separates a range's ends
_PATH = re.compile(r"^(?:(?P<scope>parameters|models)\.)?(?:(?P<index>\d+|\*)\.)?(?P<name>[A-Za-z_][\w]*)"
                   r"(?:@(?P<first>[^\s]+?)(?:\.\.(?P<last>[^\s]+))?)?$")


@dataclass(frozen=True)
class SettingPath:
    """The address of one setting (see the module docstring for the spelling)."""

    name: str
    index: int | str | None = None      # None: top-level parameters; an int: that model; "*": every model
    first: str | None = None            # a group id, or the first of a run of groups
    last: str | None = None             # the last group of a run (inclusive)

    @classmethod
    def parse(cls, text: "str | SettingPath") -> "SettingPath":
        if isinstance(text, SettingPath):
            return text
        m = _PATH.match(str(text).strip())
        if m is None or (m["scope"] == "models") != (m["index"] is not None):
            raise RecipeError(f"bad setting path {text!r}",
                              hint="write parameters.NAME or models.INDEX.NAME, optionally @GROUP or @FIRST..LAST "
                                   "(e.g. models.0.weight, parameters.lambda@L03)")
        index = None if m["index"] is None else ("*" if m["index"] == "*" else int(m["index"]))
        return cls(m["name"], index, m["first"], m["last"])

    def __str__(self) -> str:
        head = "parameters" if self.index is None else f"models.{self.index}"
        groups = "" if self.first is None else f"@{self.first}" + (f"..{self.last}" if self.last else "")
        return f"{head}.{self.name}{groups}"

    @property
    def per_model(self) -> bool:
        return self.index is not None

    @property
    def parts(self) -> list:
        """The path as a list for JSON results: ``["parameters", "lambda"]``, ``["models", 1, "weight", "L03"]``."""
        head = ["parameters", self.name] if self.index is None else ["models", self.index, self.name]
        return head + ([] if self.first is None else [self.first + (f"..{self.last}" if self.last else "")])

    @property
    def label(self) -> str:
        """A plain axis label: ``lambda``, ``weight (model 0)``, ``density (all models) [L03]``."""
        who = "" if self.index is None else " (all models)" if self.index == "*" else f" (model {self.index})"
        groups = "" if self.first is None else f" [{self.first}" + (f"..{self.last}]" if self.last else "]")
        return f"{self.name}{who}{groups}"

    @property
    def setting(self) -> "SettingPath":
        """The whole setting, without a group selector."""
        return SettingPath(self.name, self.index)

    def groups(self, layout: Layout) -> list[str]:
        """The group ids the selector names (all groups when there is none), in layout order."""
        if self.first is None:
            return list(layout.groups)
        for g in (self.first, self.last):
            if g is not None and g not in layout.groups:
                raise RecipeError(f"{self}: no group {g!r} in the {layout.name} layout",
                                  hint=f"its groups: {', '.join(layout.groups)}")
        i = layout.groups.index(self.first)
        j = layout.groups.index(self.last) if self.last else i
        if j < i:
            raise RecipeError(f"{self}: {self.last} comes before {self.first} in the layout")
        return list(layout.groups[i:j + 1])

    def expand(self, recipe: dict) -> list["SettingPath"]:
        """``models.*.x`` → one path per model; any other path → itself."""
        if self.index != "*":
            return [self]
        return [SettingPath(self.name, i, self.first, self.last) for i in range(len(recipe.get("models") or []))]


def spec_of(recipe: dict) -> MethodSpec:
    return get_method(recipe.get("merge_method", "task_arithmetic"))


def param_of(recipe: dict, path: SettingPath) -> Param:
    """The declaration behind a path (RecipeError when the method has no such parameter, or it is global-only and
    the path names a model)."""
    spec = spec_of(recipe)
    p = spec.param(path.name)
    if path.per_model and not p.per_model:
        raise RecipeError(f"{path}: {p.name!r} is a global parameter of {spec.name!r}",
                          hint=f"write parameters.{p.name}")
    return p


# --------------------------------------------------------------------------------------------------- anatomy


def _numeric(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def split_setting(value) -> tuple[list[dict], Any]:
    """``(rules, body)``: the filter rules (without the default) and the default value (None when absent)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rules, body = [], None
        for rule in value:
            f = rule.get("filter")
            if f is None or f == "*":
                body = rule.get("value")
                break  # later rules can never match
            rules.append({"filter": f, "value": rule.get("value")})
        return rules, body
    return [], value


def join_setting(rules: list[dict], body):
    """Inverse of :func:`split_setting`: the plain body when there are no rules."""
    if not rules:
        return body
    out = [dict(r) for r in rules]
    if body is not None:
        out.append({"value": body})
    return out


def compress_groups(values: dict[str, float], groups: list[str], default=None):
    """A per-group mapping in its shortest faithful spelling: a scalar when all equal, else ``{"*": d, g: v}`` with
    d = ``default`` when given (the setting keeps its default while single groups change), else the most common
    value."""
    vals = [values[g] for g in groups if g in values]
    if not vals:
        return None
    if all(v == vals[0] for v in vals) and len(vals) == len(groups):
        return vals[0]
    counts: dict[float, int] = {}
    for v in vals:
        counts[v] = counts.get(v, 0) + 1
    mode = default if default is not None else max(counts, key=lambda v: (counts[v], -vals.index(v)))
    out: dict[str, Any] = {"*": mode} if len(vals) == len(groups) else {}
    for g in groups:
        # a sub-group (L07.expert03) falls back on its parents' entries (written before it) before "*": it is written
        # when what it would inherit differs
        inherited = out.get(group_entry(out, g) or "*", mode)
        if g in values and (values[g] != inherited or "*" not in out):
            out[g] = values[g]
    return out


def is_per_group(body) -> bool:
    """Whether a body gives different groups different values (a list, a mapping, a block-weight string)."""
    return isinstance(body, (list, dict, str))


def get_setting(recipe: dict, path: SettingPath):
    """The setting as written at ``path`` (None when unset there)."""
    if path.index is None:
        return (recipe.get("parameters") or {}).get(path.name)
    models = recipe.get("models") or []
    if not isinstance(path.index, int) or path.index >= len(models):
        return None
    return (models[path.index].get("parameters") or {}).get(path.name)


def effective_setting(recipe: dict, path: SettingPath):
    """A per-model setting as it applies: the model's own, else the top-level one (mergekit's precedence)."""
    own = get_setting(recipe, path)
    if own is None and path.per_model:
        return get_setting(recipe, SettingPath(path.name))
    return own


def _effective_body(recipe: dict, path: SettingPath):
    rules, body = split_setting(get_setting(recipe, path))
    if body is None and path.per_model:
        _, body = split_setting(get_setting(recipe, SettingPath(path.name)))
    return body


def scalar_of(body, fallback):
    """The single value a plain slider shows for a body: the scalar, the '*' default of a mapping, the mean of a
    list, the first value of a block-weight string."""
    if body is None:
        return fallback
    if isinstance(body, str):
        v = evaluate_setting(body, "", 0.0)
        return fallback if isinstance(v, str) or v is None else v
    if isinstance(body, dict):
        v = body.get("*", body.get("default"))
        if v is not None:
            return v
        nums = [x for x in body.values() if _numeric(x)]
        return sum(nums) / len(nums) if nums else fallback
    if isinstance(body, list):
        nums = [x for x in body if _numeric(x)]
        return sum(nums) / len(nums) if nums else fallback
    return body


def scalar_value(recipe: dict, path: SettingPath) -> tuple[Any, bool, bool]:
    """``(value, per_group, has_rules)`` of a setting as a plain control shows it (the declaration's start value
    when unset)."""
    path = path.setting
    p = param_of(recipe, path)
    rules, body = split_setting(effective_setting(recipe, path))
    per_group = is_per_group(body) and not (p.kind is str and isinstance(body, str))
    return scalar_of(body, p.initial), per_group, bool(rules)


def group_values(recipe: dict, path: SettingPath, layout: Layout) -> list[float]:
    """The value each group of ``layout`` gets from the setting's body, as the engine resolves it (rules aside)."""
    p = param_of(recipe, path)
    fallback = float(p.initial) if _numeric(p.initial) else 0.0
    body = _effective_body(recipe, path.setting)
    groups = list(layout.groups)
    out = []
    for g in groups:
        v = evaluate_setting(body, "", layout.group_position(g), g, len(groups))
        try:
            out.append(fallback if v is None else float(v))
        except (TypeError, ValueError):
            out.append(fallback)
    return out


def plain_value(recipe: dict, path: SettingPath, layout: Layout | None = None) -> float | None:
    """The one number a setting has where ``path`` points (one group's value for a group path, else the setting's
    when it is the same for every tensor); None when it varies (per group, by rules) or is not a number."""
    path = SettingPath.parse(path)
    if path.index == "*":  # every model: their one common value, if they share it
        values = {plain_value(recipe, one, layout) for one in path.expand(recipe)}
        return values.pop() if len(values) == 1 else None
    if path.first is not None and layout is not None and path.last is None:
        return group_values(recipe, path, layout)[layout.groups.index(path.first)]
    value, per_group, rules = scalar_value(recipe, path)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if numeric and not per_group and not rules and path.first is None else None


def rules_of(recipe: dict, path: SettingPath) -> list[dict]:
    return split_setting(get_setting(recipe, path.setting))[0]


# --------------------------------------------------------------------------------------------------- edits


def _put(recipe: dict, path: SettingPath, value) -> dict:
    """A copy of ``recipe`` with ``value`` written at ``path`` (None removes it); empty parameter maps disappear."""
    out = copy.deepcopy(recipe)
    if path.index is None:
        params = out.setdefault("parameters", {})
    else:
        models = out.get("models") or []
        if not isinstance(path.index, int) or path.index >= len(models):
            raise RecipeError(f"{path}: there is no model #{path.index}",
                              hint=f"the recipe merges {len(models)} models, numbered from 0")
        params = models[path.index].setdefault("parameters", {})
    if value is None:
        params.pop(path.name, None)
    else:
        params[path.name] = copy.deepcopy(value)  # the result shares nothing with the caller's objects
    if not params:
        (out if path.index is None else out["models"][path.index]).pop("parameters", None)
    return out


def set_scalar(recipe: dict, path: SettingPath, value) -> dict:
    """A plain control moved: the setting's default becomes ``value``. Groups with their own values keep them (a
    per-group value overrides the plain control, as the studio says), a gradient is replaced, the rules are kept. To
    flatten every group, write the body whole (``--set 'parameters.lambda={"*": 0.6}'``) or give all groups one
    value."""
    path = SettingPath.parse(path).setting
    p = param_of(recipe, path)
    value = p.coerce(value, str(path)) if value is not None else None
    body = split_setting(get_setting(recipe, path))[1]
    if isinstance(body, dict) and value is not None:
        own = {g: v for g, v in body.items() if g != "*" and v != value}
        value = {"*": value, **own} if own else value
    return _put(recipe, path, join_setting(rules_of(recipe, path), value))


def set_group_values(recipe: dict, path: SettingPath, layout: Layout, values: dict[str, float] | list[float]
                     ) -> dict:
    """Give groups their own values (a list: one per group in layout order; a mapping: only those groups, the
    others keep what they resolve to now). The rules are kept; the body is spelled as short as it stays exact."""
    path = SettingPath.parse(path).setting
    p = param_of(recipe, path)
    groups = list(layout.groups)
    if not isinstance(values, dict):
        values = list(values)
        if len(values) != len(groups):
            raise RecipeError(f"{path}: expected {len(groups)} values (one per group), got {len(values)}")
        values = dict(zip(groups, values))
    unknown = [g for g in values if g not in groups]
    if unknown:
        raise RecipeError(f"{path}: no group {unknown[0]!r} in the {layout.name} layout",
                          hint=f"its groups: {', '.join(groups)}")
    if len(values) < len(groups):  # a layer's value covers its router and experts (L07 → L07.expert03) unless named
        named, values = values, dict(values)
        for sub in groups:  # the entry the resolver would read for it: its own, L07.experts, then L07
            entry = group_entry(named, sub)
            if entry is not None and entry != sub:
                values[sub] = named[entry]
    merged = dict(zip(groups, group_values(recipe, path, layout)))
    merged.update(values)
    clean = {}
    for g, v in merged.items():
        v = p.coerce(v, f"{path}@{g}")
        clean[g] = round(v, 6) if isinstance(v, float) else v
    default = None
    if len(values) < len(groups):
        # some groups change: the others keep the value a plain control shows for the setting (its default, or the
        # mean of a gradient), so editing one group never moves that control
        default = scalar_of(_effective_body(recipe, path), None)
        default = default if _numeric(default) else None
    return _put(recipe, path, join_setting(rules_of(recipe, path), compress_groups(clean, groups, default)))


def set_value(recipe: dict, path: "SettingPath | str", value, layout: Layout | None = None) -> dict:
    """What ``--set PATH=VALUE`` and the studio's API do: a group selector sets those groups (needs the layout); a
    scalar replaces the body; a list or mapping is written as the body as it is (a gradient, per-group values,
    rules); ``models.*`` sets every model."""
    path = SettingPath.parse(path)
    for one in path.expand(recipe):
        param_of(recipe, one)
        if one.first is not None:
            if layout is None:
                raise RecipeError(f"{one}: per-group values need the model's layout")
            recipe = set_group_values(recipe, one, layout, {g: value for g in one.groups(layout)})
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            recipe = _put(recipe, one, copy.deepcopy(value))  # a whole rule list replaces the setting
        elif isinstance(value, (list, dict)):
            recipe = _put(recipe, one, join_setting(rules_of(recipe, one), copy.deepcopy(value)))
        else:
            recipe = set_scalar(recipe, one, value)
    return recipe


def parse_assignment(text: str) -> tuple[SettingPath, Any]:
    """``PATH=VALUE`` (the value read as YAML: ``0.5``, ``true``, ``[0, 1]``, ``{L03: 0.9}``) → (path, value)."""
    path, sep, raw = str(text).partition("=")
    if not sep or not path.strip():
        raise RecipeError(f"--set {text!r} needs PATH=VALUE", hint="e.g. --set models.0.weight=0.5")
    try:
        value = parse_yaml(raw, where=f"--set {text!r}")
    except RecipeError as e:
        raise RecipeError(f"--set {text!r}: {raw!r} is not a value ({e.what})", hint="numbers, true/false, [lists]") \
            from None
    return SettingPath.parse(path), value


def apply_assignments(recipe: dict, assignments: Iterable[str], layout: Layout | None = None) -> dict:
    for text in assignments:
        path, value = parse_assignment(text)
        recipe = set_value(recipe, path, value, layout)
    return recipe


def _entries(recipe: dict) -> list[dict]:
    """Every model entry of a recipe mapping: its models, its slices' sources, its modules' (in recipe order)."""
    parts = [recipe] + [m for m in (recipe.get("modules") or {}).values() if isinstance(m, dict)]
    return [e for p in parts for e in (p.get("models") or [s for sl in p.get("slices") or []
                                                           for s in sl.get("sources") or []])]


def input_refs(recipe: dict) -> list[str]:
    """Every model a recipe mapping merges (its models, slices' sources or modules'), each once, in recipe order."""
    return list(dict.fromkeys(e["model"] for e in _entries(recipe) if isinstance(e, dict) and "model" in e))


def reference_model(recipe: dict) -> str | None:
    """The model whose tensor names and layout the merge follows: the base, else the first model (as the plan)."""
    models = _entries(recipe)
    return recipe.get("base_model") or (models[0]["model"] if models else None)


def output_layers(recipe: dict) -> int | None:
    """The layer count a slices recipe builds (None for other recipes: the reference model's)."""
    slices = recipe.get("slices")
    if not slices:
        return None
    try:
        return sum(int(sl["sources"][0]["layer_range"][1]) - int(sl["sources"][0]["layer_range"][0]) for sl in slices)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def vocabulary_key(recipe: dict) -> str | None:
    """What the merge's vocabulary (tokenizer and embedding rows) depends on: its tokenizer settings and its models;
    None when it has no vocabulary settings."""
    if recipe.get("tokenizer_source") is None and recipe.get("tokenizer") is None:
        return None
    return json.dumps([recipe.get("tokenizer_source"), recipe.get("tokenizer"), recipe.get("base_model"),
                       [e.get("model") for e in _entries(recipe)]], sort_keys=True, default=str)


def with_assignments(recipe: Recipe, assignments: Iterable[str], opener=open_source) -> Recipe:
    """A recipe with ``PATH=VALUE`` settings applied (the CLI's ``--set``). The reference model's headers are read
    for its layout only when a setting names groups."""
    assignments = list(assignments or [])
    if not assignments:
        return recipe
    layout = None
    if any(parse_assignment(a)[0].first is not None for a in assignments):
        ref = reference_model(recipe.to_dict())
        layout = detect_layout(opener(ref)) if ref else None
    return Recipe.from_dict(apply_assignments(recipe.to_dict(), assignments, layout), where="--set")


def set_rules(recipe: dict, path: SettingPath, rules: list[dict]) -> dict:
    """Replace a setting's name-pattern rules, keeping its body (the declaration's start value when it had none)."""
    path = SettingPath.parse(path).setting
    p = param_of(recipe, path)
    for r in rules:
        p.coerce(r["value"], "name-pattern rules")
    body = _effective_body(recipe, path)
    return _put(recipe, path, join_setting(rules, p.initial if body is None else body))


def rules_to_text(rules: list[dict]) -> str:
    return "\n".join(f"{r['filter']}: {r['value']}" for r in rules)


def parse_rules(text: str) -> list[dict]:
    """Lines ``substring: value`` (or ``=``); '#' starts a comment. First matching line wins, as in mergekit."""
    rules = []
    for n, line in enumerate(("" if text is None else str(text)).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        sep = ":" if ":" in line else "=" if "=" in line else None
        if sep is None:
            raise RecipeError(f"rule line {n} needs 'name-substring: value'", where="name-pattern rules")
        pat, _, val = line.rpartition(sep)
        pat, val = pat.strip(), val.strip()
        if not pat:
            raise RecipeError(f"rule line {n} has no name substring", where="name-pattern rules")
        try:
            num = float(val)
        except ValueError:
            raise RecipeError(f"rule line {n}: {val!r} is not a number", where="name-pattern rules") from None
        rules.append({"filter": pat, "value": int(num) if num.is_integer() and "." not in val else num})
    return rules


CURVES = ("flat", "ramp up", "ramp down", "peak", "valley")


def curve(shape: str, n: int, lo: float, hi: float) -> list[float]:
    """Shortcut shapes over n groups: flat (hi), ramp up/down (lo → hi), peak (hi in the middle), valley."""
    xs = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    shapes = {"flat": lambda x: 1.0, "ramp up": lambda x: x, "ramp down": lambda x: 1 - x,
              "peak": lambda x: math.sin(math.pi * x), "valley": lambda x: 1 - math.sin(math.pi * x)}
    if shape not in shapes:
        raise RecipeError(f"unknown curve {shape!r}", hint=f"one of {', '.join(CURVES)}")
    if not (_numeric(lo) and _numeric(hi)):
        raise RecipeError(f"a curve runs between two numbers, got {lo!r} and {hi!r}", hint="fill in 'from' and 'to'")
    return [round(lo + (hi - lo) * shapes[shape](x), 4) for x in xs]


def preset_values(name: str, groups: list[str]) -> list[float]:
    """A block-weight preset for these groups: the exact row for SD layouts, else the U-Net shape by depth."""
    if not isinstance(name, str) or not name.strip():
        raise RecipeError("choose a preset", hint="e.g. GRAD_V, ALL_B, or a row of assets/presets/block_weights.tsv")
    n = len(groups)
    vals = lookup_preset(name, n)
    if vals is None:
        raise RecipeError(f"unknown preset {name!r}", hint="presets are the rows of assets/presets/block_weights.tsv")
    # the VAE slot gets no preset value: keep 0 (the first model's VAE)
    return [float(v) for v in vals] + [0.0] * (n - len(vals))


def _shaped(layout: Layout, what: str) -> None:
    """A shape over the groups needs several groups: over one it would silently become one number."""
    if len(layout.groups) < 2:
        raise RecipeError(f"the {layout.name} layout has one group ({layout.groups[0] if layout.groups else '—'}): "
                          f"a {what} needs per-block or per-layer groups",
                          hint="set the value with the slider; presets and curves shape models with blocks or layers")


def _over_layers(layout: Layout, shaped) -> list[float]:
    """``shaped(groups)`` (one value per group) over the layout's top-level groups, each sub-group taking its
    parent's value: a MoE layer's router and experts (``L07.expert03``) follow the curve at their layer."""
    top = [g for g in layout.groups if "." not in g]
    values = dict(zip(top, shaped(top)))
    return [values[g.split(".", 1)[0]] for g in layout.groups]


def apply_curve(recipe: dict, path: SettingPath, layout: Layout, shape: str, lo: float, hi: float) -> dict:
    _shaped(layout, "curve")
    return set_group_values(recipe, path, layout, _over_layers(layout, lambda gs: curve(shape, len(gs), lo, hi)))


def apply_preset(recipe: dict, path: SettingPath, layout: Layout, name: str) -> dict:
    _shaped(layout, f"preset ({name})")
    return set_group_values(recipe, path, layout, _over_layers(layout, lambda gs: preset_values(name, gs)))


def _start_missing(spec: MethodSpec, model: dict, top: dict) -> dict:
    """A model entry with every required per-model parameter the recipe does not set yet at its start value."""
    mp = dict(model.get("parameters") or {})
    for p in spec.per_model_params():
        if p.required and p.name not in mp and p.name not in top:
            mp[p.name] = p.initial
    out = {k: v for k, v in model.items() if k != "parameters"}
    if mp:
        out["parameters"] = mp
    return out


def switch_method(recipe: dict, name: str, fallback_base: str | None = None) -> dict:
    """Another merge method, keeping every setting it still declares and starting its required ones; a method that
    needs a base gets ``fallback_base`` when the recipe has none. The result may not validate (e.g. too many models
    for SLERP): the dry run says what to change."""
    spec = get_method(name)
    out = copy.deepcopy(recipe)
    out["merge_method"] = spec.name
    keep = {p.name for p in spec.params}
    per = {p.name for p in spec.per_model_params()}
    params = {k: v for k, v in (out.get("parameters") or {}).items() if k in keep}
    for p in spec.global_params():
        if p.required and p.name not in params:
            params[p.name] = p.initial
    out["parameters"] = params
    if not params:
        out.pop("parameters")
    models = []
    for m in out.get("models") or []:
        m = dict(m, parameters={k: v for k, v in (m.get("parameters") or {}).items() if k in per})
        models.append(_start_missing(spec, m, params))
    if "models" in out:
        out["models"] = models
    if spec.needs_base and not out.get("base_model") and fallback_base:
        out["base_model"] = fallback_base
    return out


def set_models(recipe: dict, refs: list[str]) -> dict:
    """Merge exactly these models, in this order: models already in the recipe keep their settings, new ones start
    with the method's required per-model parameters."""
    if not refs:
        raise RecipeError("choose at least one model to merge")
    spec = spec_of(recipe)
    old = {m["model"]: m for m in recipe.get("models") or []}
    top = recipe.get("parameters") or {}
    out = copy.deepcopy(recipe)
    out["models"] = [_start_missing(spec, copy.deepcopy(old.get(ref, {"model": ref})), top) for ref in refs]
    return out


def set_base(recipe: dict, ref: str | None) -> dict:
    return _set_top(recipe, "base_model", ref)


def set_vae(recipe: dict, ref: str | None) -> dict:
    """Bake this VAE into a diffusion merge (None: the reference model's VAE, copied)."""
    return _set_top(recipe, "vae", ref)


def _set_top(recipe: dict, key: str, ref: str | None) -> dict:
    out = copy.deepcopy(recipe)
    if ref:
        out[key] = ref
    else:
        out.pop(key, None)
    return out


# --------------------------------------------------------------------------------------------------- what to offer


def numeric_paths(recipe: dict) -> list[SettingPath]:
    """Every setting a per-group control can drive: numeric, not a choice, not a mergekit-compatibility flag;
    global parameters first, then each model's own."""
    spec = spec_of(recipe)

    def drawable(p: Param) -> bool:
        return p.kind in (int, float) and not p.choices and not p.compat

    out = [SettingPath(p.name) for p in spec.params if not p.per_model and drawable(p)]
    for i, _ in enumerate(recipe.get("models") or []):
        out += [SettingPath(p.name, i) for p in spec.per_model_params() if drawable(p)]
    return out


def default_path(recipe: dict) -> SettingPath | None:
    """The setting the per-group controls start on: the method's strength (λ, α, t) when it has one."""
    paths = numeric_paths(recipe)
    for name in ("lambda", "alpha", "t"):
        if SettingPath(name) in paths:
            return SettingPath(name)
    return paths[0] if paths else None
