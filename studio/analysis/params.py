"""Addressing one recipe setting, so a landscape can sweep it.

A *parameter path* names one setting of a recipe (a tuple, or the same joined by dots):

* ``("parameters", NAME)``           — top-level (global) parameter, e.g. ``("parameters", "lambda")``;
* ``("models", I, NAME)``            — per-model parameter of ``models[I]`` (I: index in ``models``, or the model
                                       reference string), e.g. ``("models", 0, "weight")``;
* ``("models", "*", NAME)``          — the same value for every model (e.g. a shared ``density``);
* any of the above + ``GROUP``       — only the layout group GROUP (``L03``, ``IN04``…): the setting becomes a
                                       ``{GROUP: value, "*": previous}`` mapping, i.e. one block-weight slider.

String form: ``"parameters.lambda"``, ``"models.0.weight"``, ``"models.*.density.L03"`` (integers are indices; use
the tuple form for model references that contain dots).
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import StudioError
from ..recipe import Recipe

ParamPath = tuple


def parse_path(path) -> tuple:
    """A tuple or dotted string → a normalised tuple; validates the shape of the path."""
    if isinstance(path, str):
        parts = [int(p) if p.lstrip("-").isdigit() else p for p in path.split(".")]
    else:
        parts = list(path)
    if not parts:
        raise StudioError("empty parameter path")
    if parts[0] == "parameters" and len(parts) in (2, 3):
        return tuple(parts)
    if parts[0] == "models" and len(parts) in (3, 4):
        return tuple(parts)
    raise StudioError(f"bad parameter path {path!r}",
                      hint="use ('parameters', NAME[, GROUP]) or ('models', INDEX|'*', NAME[, GROUP]), "
                           "e.g. 'parameters.lambda' or 'models.0.weight'")


def path_label(path) -> str:
    p = parse_path(path)
    if p[0] == "parameters":
        return p[1] + (f" [{p[2]}]" if len(p) == 3 else "")
    who = "all models" if p[1] == "*" else (f"model {p[1]}" if isinstance(p[1], int) else str(p[1]))
    return f"{p[2]} ({who})" + (f" [{p[3]}]" if len(p) == 4 else "")


def _targets(recipe: Recipe, p: tuple) -> list[dict]:
    """The parameter dicts a path writes into."""
    if p[0] == "parameters":
        return [recipe.parameters]
    if recipe.models is None:
        raise StudioError("per-model paths need a recipe with models: (slices are not addressed)",
                          hint="sweep a top-level parameter instead, e.g. 'parameters.lambda'")
    who = p[1]
    if who == "*":
        return [m.parameters for m in recipe.models]
    if isinstance(who, int):
        if not -len(recipe.models) <= who < len(recipe.models):
            raise StudioError(f"model index {who} out of range (the recipe has {len(recipe.models)} models)")
        return [recipe.models[who].parameters]
    hits = [m.parameters for m in recipe.models if m.model == who]
    if not hits:
        raise StudioError(f"no model {who!r} in the recipe", hint="use its index or its exact reference")
    return hits


def get_param(recipe: Recipe, path) -> Any:
    """The current setting at ``path`` (the first model's for ``'*'``); None when unset (the method default)."""
    p = parse_path(path)
    name = p[-2] if _has_group(p) else p[-1]
    d = _targets(recipe, p)[0]
    value = d.get(name)
    if value is None and p[0] == "models":
        value = recipe.parameters.get(name)
    if value is None:
        value = _default(recipe, name)
    if _has_group(p) and isinstance(value, dict):
        g = p[-1]
        return value.get(g, value.get("*", value.get("default")))
    return value


def _has_group(p: tuple) -> bool:
    return (p[0] == "parameters" and len(p) == 3) or (p[0] == "models" and len(p) == 4)


def set_param(recipe: Recipe, path, value) -> Recipe:
    """A validated copy of ``recipe`` with the setting at ``path`` replaced by ``value``."""
    p = parse_path(path)
    r = recipe.copy()
    group = p[-1] if _has_group(p) else None
    name = p[-2] if group else p[-1]
    for d in _targets(r, p):
        if group is None:
            d[name] = value
            continue
        old = d.get(name)
        if old is None and p[0] == "models":
            old = r.parameters.get(name)
        if isinstance(old, dict):
            new = copy.deepcopy(old)
        else:
            new = {} if old is None else {"*": copy.deepcopy(old)}
            if old is None:
                default = _default(r, name)
                if default is not None:
                    new["*"] = default
        new[group] = value
        d[name] = new
    r.validate("landscape")
    return r


def _default(recipe: Recipe, name: str):
    try:
        p = recipe.spec.param(name)
    except Exception:  # noqa: BLE001 - unknown name: validation reports it when set
        return None
    return None if p is None or p.required else p.default
