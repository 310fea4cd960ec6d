"""From method declarations and recipe settings to controls, and back — plain data, no gradio.

A parameter *setting* in a recipe may be a scalar, a gradient list, a per-group mapping ``{"L03": 0.9, "*": 0.3}``
or a list of ``{filter, value}`` rules whose last, filter-less rule holds the default. The studio edits them as
two parts: the *rules* (name-pattern lines) and the *body* (a scalar, or one value per layout group). This module
splits a setting into those parts, reads the value a slider should show, and writes edits back in the canonical
recipe spelling, so the YAML view and the controls always describe the same recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError

# ------------------------------------------------------------------------------------------------ setting parts


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


def compress_groups(values: dict[str, float], groups: list[str]):
    """A per-group mapping in its shortest faithful spelling: a scalar when all equal, else ``{"*": mode, g: v}``."""
    vals = [values[g] for g in groups if g in values]
    if not vals:
        return None
    if all(v == vals[0] for v in vals) and len(vals) == len(groups):
        return vals[0]
    counts: dict[float, int] = {}
    for v in vals:
        counts[v] = counts.get(v, 0) + 1
    mode = max(counts, key=lambda v: (counts[v], -vals.index(v)))
    out: dict[str, Any] = {"*": mode} if len(vals) == len(groups) else {}
    for g in groups:
        if g in values and (values[g] != mode or "*" not in out):
            out[g] = values[g]
    return out


def body_group_values(body, groups: list[str], fallback: float) -> list[float]:
    """The value each group gets from a body (scalar, gradient list, per-group mapping or string)."""
    n = len(groups)
    if isinstance(body, str):
        from ..recipe.resolve import expand_string

        body = expand_string(body, n)
    if body is None or isinstance(body, str):
        return [fallback] * n
    if _numeric(body):
        return [float(body)] * n
    if isinstance(body, bool):
        return [float(body)] * n
    if isinstance(body, list):
        from ..recipe.resolve import interpolate

        if not body or not all(_numeric(v) for v in body):
            return [fallback] * n
        return [float(interpolate(body, i / (n - 1) if n > 1 else 0.0)) for i in range(n)]
    if isinstance(body, dict):
        default = body.get("*", body.get("default", fallback))
        default = float(default) if _numeric(default) else fallback
        return [float(body[g]) if _numeric(body.get(g)) else default for g in groups]
    return [fallback] * n


def scalar_of(body, fallback):
    """The single value a plain slider shows for a body (the '*' default of a mapping, the mean of a list)."""
    if body is None:
        return fallback
    if isinstance(body, bool) or not isinstance(body, (list, dict)):
        if isinstance(body, str):
            vals = body_group_values(body, ["x", "y"], None)
            return fallback if vals[0] is None else vals[0]
        return body
    if isinstance(body, dict):
        v = body.get("*", body.get("default"))
        if v is not None:
            return v
        nums = [x for x in body.values() if _numeric(x)]
        return sum(nums) / len(nums) if nums else fallback
    nums = [x for x in body if _numeric(x)]
    return sum(nums) / len(nums) if nums else fallback


def is_per_group(body) -> bool:
    return isinstance(body, (list, dict)) or (isinstance(body, str) and not _numeric(body))


# ------------------------------------------------------------------------------------------------ rules text


def rules_to_text(rules: list[dict]) -> str:
    return "\n".join(f"{r['filter']}: {r['value']}" for r in rules)


def parse_rules(text: str) -> list[dict]:
    """Lines ``substring: value`` (or ``=``); '#' starts a comment. First matching line wins, as in mergekit."""
    rules = []
    for n, line in enumerate((text or "").splitlines(), start=1):
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


# ------------------------------------------------------------------------------------------------ control slots


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


PRETTY = {"lambda": "λ (lambda)", "weight": "weight", "density": "density", "t": "t", "alpha": "α (alpha)",
          "beta": "β (beta)", "gamma": "γ (gamma)", "epsilon": "ε (epsilon)"}


def slider_range(p, value) -> tuple[float, float, float]:
    if p.range:
        lo, hi = float(p.range[0]), float(p.range[1])
    elif p.kind is int:
        d = p.default if _numeric(p.default) else 1
        lo, hi = 0.0, float(max(10, 2 * abs(d)))
    else:
        d = p.default if _numeric(p.default) else 1.0
        lo, hi = (0.0, 1.0) if 0 <= d <= 1 else (min(0.0, 2 * d), max(1.0, 2 * d))
    if _numeric(value):
        lo, hi = min(lo, float(value)), max(hi, float(value))
    step = 1.0 if p.kind is int else (0.001 if hi - lo <= 0.1 else 0.01)
    if p.kind is float and hi - lo < 1e-3:
        step = (hi - lo) / 100 or 1e-6
    return lo, hi, step


def default_value(p, per_model_count: int = 1):
    """A value for a parameter the recipe does not set (required ones get a neutral start)."""
    if not p.required:
        return p.default
    if p.kind is bool:
        return False
    if p.choices:
        return p.choices[0]
    if p.name == "weight":
        return 1.0
    if p.name in ("t", "alpha"):
        return 0.5
    if p.range:
        return (p.range[0] + p.range[1]) / 2
    return 1.0 if p.kind is float else 1


def make_slot(p, setting) -> Slot:
    rules, body = split_setting(setting)
    fallback = default_value(p)
    value = scalar_of(body, fallback)
    info = p.doc or ""
    if p.kind is bool:
        return Slot("checkbox", p.name, PRETTY.get(p.name, p.name), info, value=bool(value), rules=bool(rules))
    if p.choices:
        return Slot("dropdown", p.name, PRETTY.get(p.name, p.name), info, value=value, choices=list(p.choices),
                    rules=bool(rules))
    if p.kind not in (int, float):
        return Slot("text", p.name, PRETTY.get(p.name, p.name), info, value="" if value is None else str(value))
    lo, hi, step = slider_range(p, value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float(fallback) if _numeric(fallback) else lo
    if p.kind is int:
        value = int(round(value))
    return Slot("slider", p.name, PRETTY.get(p.name, p.name), info, lo, hi, step, value,
                per_group=is_per_group(body), rules=bool(rules))


def global_slots(spec, recipe: dict) -> list[Slot]:
    params = recipe.get("parameters") or {}
    return [make_slot(p, params.get(p.name)) for p in spec.params if not p.per_model and not p.compat]


def effective_model_setting(spec, recipe: dict, index: int, name: str):
    """A per-model parameter's setting for model ``index``: its own, else the top-level one (mergekit precedence)."""
    models = recipe.get("models") or []
    own = (models[index].get("parameters") or {}).get(name) if index < len(models) else None
    if own is not None:
        return own
    return (recipe.get("parameters") or {}).get(name)


@dataclass
class ModelRow:
    index: int
    ref: str
    label: str
    slots: list[Slot] = field(default_factory=list)


def model_rows(spec, recipe: dict, labels: dict[str, str]) -> list[ModelRow]:
    rows = []
    for i, m in enumerate(recipe.get("models") or []):
        ref = m["model"] if isinstance(m, dict) else str(m)
        row = ModelRow(i, ref, labels.get(ref, short_ref(ref)))
        for p in spec.per_model_params():
            if p.compat:
                continue
            row.slots.append(make_slot(p, effective_model_setting(spec, recipe, i, p.name)))
        rows.append(row)
    return rows


def short_ref(ref: str) -> str:
    from pathlib import Path

    parts = []
    for part in str(ref).split("+"):
        p = Path(part.split(":")[0] if ":" in part and not part.startswith("/") else part)
        stem = p.stem if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth") else p.name
        parts.append(stem or part)
    return "+".join(parts)


# ------------------------------------------------------------------------------------------------ group targets


def group_targets(spec, recipe: dict, labels: dict[str, str]) -> list[tuple[str, str]]:
    """(label, target id) of every numeric setting the per-layer sliders can drive.

    ``g:<param>`` = a global parameter; ``m:<index>:<param>`` = a per-model parameter of one model.
    """
    out = []
    for p in spec.params:
        if p.kind not in (int, float) or p.choices or p.compat:
            continue
        if not p.per_model:
            out.append((f"{PRETTY.get(p.name, p.name)} (all models)", f"g:{p.name}"))
    for i, m in enumerate(recipe.get("models") or []):
        ref = m["model"] if isinstance(m, dict) else str(m)
        for p in spec.per_model_params():
            if p.kind in (int, float) and not p.choices and not p.compat:
                out.append((f"{PRETTY.get(p.name, p.name)} · {labels.get(ref, short_ref(ref))}", f"m:{i}:{p.name}"))
    return out


def default_target(spec, recipe: dict) -> str | None:
    targets = [t for _, t in group_targets(spec, recipe, {})]
    for pref in ("g:lambda", "g:alpha", "g:t"):
        if pref in targets:
            return pref
    return targets[0] if targets else None


def parse_target(target: str) -> tuple[int | None, str]:
    if target.startswith("g:"):
        return None, target[2:]
    _, idx, name = target.split(":", 2)
    return int(idx), name


def get_setting(recipe: dict, target: str):
    idx, name = parse_target(target)
    if idx is None:
        return (recipe.get("parameters") or {}).get(name)
    models = recipe.get("models") or []
    if idx >= len(models):
        return None
    return (models[idx].get("parameters") or {}).get(name)


def put_setting(recipe: dict, target: str, value) -> None:
    """Write a setting (None removes it) in place."""
    idx, name = parse_target(target)
    if idx is None:
        params = recipe.setdefault("parameters", {})
    else:
        models = recipe.get("models") or []
        if idx >= len(models):
            raise RecipeError(f"there is no model #{idx + 1}")
        params = models[idx].setdefault("parameters", {})
    if value is None:
        params.pop(name, None)
    else:
        params[name] = value
    if not params:
        if idx is None:
            recipe.pop("parameters", None)
        else:
            recipe["models"][idx].pop("parameters", None)


def target_param(spec, target: str):
    return spec.param(parse_target(target)[1])


def target_group_values(spec, recipe: dict, target: str, groups: list[str]) -> list[float]:
    p = target_param(spec, target)
    setting = get_setting(recipe, target)
    idx, name = parse_target(target)
    if setting is None and idx is not None:
        setting = (recipe.get("parameters") or {}).get(name)
    _, body = split_setting(setting)
    fallback = default_value(p)
    return body_group_values(body, groups, float(fallback) if _numeric(fallback) else 0.0)


def set_group_values(spec, recipe: dict, target: str, groups: list[str], values: list[float]) -> None:
    """Write one value per group into the target's body, keeping its name-pattern rules."""
    p = target_param(spec, target)
    values = [int(round(v)) if p.kind is int else round(float(v), 6) for v in values]
    rules, _ = split_setting(get_setting(recipe, target))
    body = compress_groups(dict(zip(groups, values)), groups)
    put_setting(recipe, target, join_setting(rules, body))


def set_scalar(spec, recipe: dict, target: str, value) -> None:
    """A plain slider moved: the body becomes that scalar (per-group values are replaced), rules are kept."""
    p = target_param(spec, target)
    value = p.coerce(value, "slider") if value is not None else None
    rules, _ = split_setting(get_setting(recipe, target))
    put_setting(recipe, target, join_setting(rules, value))


def set_rules(spec, recipe: dict, target: str, rules: list[dict]) -> None:
    p = target_param(spec, target)
    for r in rules:
        p.coerce(r["value"], "name-pattern rules")
    old_rules, body = split_setting(get_setting(recipe, target))
    if body is None:
        idx, name = parse_target(target)
        body = (recipe.get("parameters") or {}).get(name) if idx is not None else None
        _, body = split_setting(body)
        if body is None:
            body = default_value(p)
    put_setting(recipe, target, join_setting(rules, body))


def target_rules(recipe: dict, target: str) -> list[dict]:
    return split_setting(get_setting(recipe, target))[0]


# ------------------------------------------------------------------------------------------------ curves


CURVES = ("flat", "ramp up", "ramp down", "peak", "valley")


def curve(shape: str, n: int, lo: float, hi: float) -> list[float]:
    """Shortcut shapes over n groups: flat (hi), ramp up/down (lo → hi), peak (hi in the middle), valley."""
    xs = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    if shape == "flat":
        f = [1.0] * n
    elif shape == "ramp up":
        f = xs
    elif shape == "ramp down":
        f = [1 - x for x in xs]
    elif shape == "peak":
        f = [math.sin(math.pi * x) for x in xs]
    elif shape == "valley":
        f = [1 - math.sin(math.pi * x) for x in xs]
    else:
        raise RecipeError(f"unknown curve {shape!r}", hint=f"one of {', '.join(CURVES)}")
    return [round(lo + (hi - lo) * v, 4) for v in f]


def preset_values(name: str, groups: list[str]) -> list[float]:
    """A block-weight preset for these groups: the exact row for SD layouts, else the U-Net shape resampled."""
    from ..layout.presets import load_presets, lookup_preset

    n = len(groups)
    vals = lookup_preset(name, n)
    if vals is not None:
        if len(vals) < n:  # the VAE slot gets no preset value: keep 0 (the first model's VAE)
            vals = list(vals) + [0.0] * (n - len(vals))
        return [float(v) for v in vals]
    row = load_presets().get(name.strip().upper())
    if row is None:
        raise RecipeError(f"unknown preset {name!r}")
    shape = row[1:] if len(row) == 26 else row  # the 25 U-Net values, x = 0 … 1
    from ..recipe.resolve import interpolate

    return [round(float(interpolate(shape, i / (n - 1) if n > 1 else 0.0)), 4) for i in range(n)]
