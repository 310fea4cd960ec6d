"""Per-tensor parameter values, with mergekit's precedence and interpolation rules.

A setting may be:
  * a scalar;
  * a gradient list of numbers, interpolated at the tensor's position t (mergekit rule: scaled = t·(len−1),
    linear between the two nearest anchors; a non-numeric list takes s[int(t·(len−1))]);
  * a list of ``{filter, value}`` rules: the first whose filter is absent, "*" or a substring of the tensor name wins;
    each value may itself be any setting;
  * (ours) a mapping ``{group id: value}`` with optional "*" default — per-block / per-layer values by name; a
    sub-group without an entry takes its parent's (``L07.expert03`` → ``L07``: a MoE layer's experts follow the
    layer's value unless given their own);
  * (ours) a string of comma-separated numbers (SuperMerger's block-weight string), or a preset name.
Precedence (most specific first): slice source parameters > slice parameters > model parameters > top-level.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import RecipeError
from ..layout.presets import load_presets, lookup_preset
from ..methods.registry import Param


def _numeric(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_number_list(text: str) -> list[float] | None:
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    if len(parts) < 2:
        return None
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def expand_string(text: str, num_groups: int | None = None):
    """A comma-separated list or a preset name → a list of floats; otherwise the string itself."""
    nums = parse_number_list(text)
    if nums is not None:
        return nums
    values = lookup_preset(text.strip(), num_groups or 0)
    return values if values is not None else text


def interpolate(values: list, t: float):
    if len(values) == 1:
        return values[0]
    scaled = t * (len(values) - 1)
    if not all(_numeric(v) for v in values):
        return values[int(scaled)]
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def evaluate_setting(value: Any, key: str, t: float, group: str | None = None, num_groups: int | None = None):
    """The value of one setting for the tensor ``key`` at position ``t`` in group ``group`` (None = no match)."""
    if isinstance(value, str):
        value = expand_string(value, num_groups)
    if isinstance(value, list):
        if not value:
            return None
        if all(isinstance(v, dict) for v in value):
            for rule in value:
                f = rule.get("filter")
                if f is None or f == "*" or f in key:
                    return evaluate_setting(rule.get("value"), key, t, group, num_groups)
            return None
        return interpolate(value, t)
    if isinstance(value, dict):
        entry = group_entry(value, group)
        if entry is not None:
            return evaluate_setting(value[entry], key, t, group, num_groups)
        for default in ("*", "default"):
            if default in value:
                return evaluate_setting(value[default], key, t, group, num_groups)
        return None
    return value


EXPERT_GROUP = re.compile(r"^(?P<layer>.+)\.expert\d+$")


def group_entry(mapping: dict, group: str | None) -> str | None:
    """The mapping's entry for ``group``: its own, else its nearest parent's (``L07.expert03``, then ``L07``); an
    expert's own ``L07.experts`` (all of the layer's experts) comes before the layer's."""
    while group:
        if group in mapping:
            return group
        m = EXPERT_GROUP.match(group)
        if m and f"{m.group('layer')}.experts" in mapping:
            return f"{m.group('layer')}.experts"
        group = group.rpartition(".")[0]
    return None


def names_matter(value: Any) -> bool:
    """Whether a setting's value can depend on the tensor's name (it holds ``{filter, value}`` rules somewhere);
    otherwise it depends only on the tensor's group and position, and tensors sharing both share the value."""
    if isinstance(value, dict):
        return any(names_matter(v) for v in value.values())
    if isinstance(value, list):
        return any(isinstance(v, dict) for v in value) or any(names_matter(v) for v in value)
    return False


BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def normalize_setting(param: Param, value: Any) -> Any:
    """Text that YAML left a string but mergekit's schema reads as a value — ``"1e-5"`` (YAML 1.1 needs a dot for a
    float), ``"0.5"``, ``"true"`` — as that value, wherever it sits (a gradient, a per-group mapping, a rule)."""
    if isinstance(value, list):
        return [normalize_setting(param, v) for v in value]
    if isinstance(value, dict):
        return {k: (v if k == "filter" else normalize_setting(param, v)) for k, v in value.items()}
    if not isinstance(value, str) or param.kind is str:
        return value
    text = value.strip()
    if param.kind is bool:
        return BOOL_WORDS.get(text.lower(), value)
    try:
        number = float(text)
    except ValueError:
        return value
    if param.kind is int and number.is_integer():
        return int(number)
    return number  # a non-finite one is refused by the check, as when written as a number


def check_setting(param: Param, value: Any, where: str) -> None:
    """Static validation of a setting against its declaration (every leaf value must coerce)."""
    if isinstance(value, str) and param.kind is not str:
        if value.strip().upper() in load_presets():
            return  # a preset's values depend on the layout's groups: checked per tensor when they are resolved
        value = expand_string(value)
        if isinstance(value, str) and param.kind is not bool:
            raise RecipeError(f"{value!r} is neither a number, a comma-separated list nor a known preset", where=where,
                              hint="write a number (0.5), a gradient ([0, 0.5, 1]), block weights (\"0.5, 1, 1\") or a "
                                   "block-weight preset such as GRAD_V")
    if isinstance(value, list):
        if not value:
            raise RecipeError("an empty list is not a value", where=where)
        if all(isinstance(v, dict) for v in value):
            for rule in value:
                extra = set(rule) - {"filter", "value"}
                if extra or "value" not in rule or not isinstance(rule.get("filter", ""), (str, type(None))):
                    raise RecipeError("filter rules are {filter: substring, value: setting}", where=where)
                check_setting(param, rule["value"], where)
            return
        for v in value:
            if isinstance(v, (list, dict)):
                raise RecipeError("gradient lists hold plain values", where=where)
            param.coerce(v, where)
        return
    if isinstance(value, dict):
        if set(value) == {"filter", "value"}:
            raise RecipeError("a filter rule must be inside a list: [{filter: ..., value: ...}]", where=where)
        for g, v in value.items():
            check_setting(param, v, f"{where}.{g}")
        return
    param.coerce(value, where)


def resolve_param(param: Param, scopes: list[dict], key: str, t: float, group: str | None,
                  num_groups: int | None, where: str):
    for scope in scopes:
        if scope and param.name in scope:
            v = evaluate_setting(scope[param.name], key, t, group, num_groups)
            if v is not None:
                return param.coerce(v, where)
    if param.required:
        raise RecipeError(f"missing required parameter {param.name!r}", where=where,
                          hint=f"set it under parameters (e.g. {param.name}: 0.5)")
    return param.default
