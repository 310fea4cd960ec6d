"""What a search varies: recipe settings, each one number between two bounds.

A dimension is named by the setting path the studio and ``--set`` use (:mod:`studio.recipe.edit`): ``lambda``,
``models.1.weight``, ``parameters.lambda@L03``. What a user writes may name several — ``models.*.weight`` (one per
model), ``parameters.lambda@L00..L31`` (one per group) — and may carry bounds, ``PATH=LO:HI``; without them the
bounds are the method's declared slider range for that parameter. Bounds must lie within the parameter's hard bounds
(a density in [0, 1]), so every trial is a valid recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecipeError
from ..layout import Layout
from ..recipe import Recipe
from ..recipe.edit import SettingPath, param_of, set_value


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a path naming one model (or the top level) and at most one group."""
    path: SettingPath
    low: float
    high: float
    integer: bool = False

    @property
    def name(self) -> str:
        return str(self.path)

    def to_dict(self) -> dict:
        return {"path": self.name, "low": self.low, "high": self.high, "integer": self.integer}


def _bounds(text: str, where: str) -> tuple[float, float]:
    lo, sep, hi = text.partition(":")
    try:
        low, high = float(lo), float(hi)
    except ValueError:
        raise RecipeError(f"bounds must be LO:HI numbers, got {text!r}", where=where,
                          hint="e.g. models.*.weight=0:1") from None
    if not sep or not low < high or low != low or high != high or abs(low) == float("inf") or abs(high) == float("inf"):
        raise RecipeError(f"bounds must be LO:HI with LO < HI, both finite; got {text!r}", where=where)
    return low, high


def search_space(recipe: Recipe, specs: list[str], layout: Layout | None) -> list[Dimension]:
    """The dimensions ``specs`` name (``PATH`` or ``PATH=LO:HI``, see the module's doc), in the order given, each once;
    RecipeError for an unknown path, a parameter that is not a number, or bounds outside the parameter's."""
    if not specs:
        raise RecipeError("a search needs at least one setting to vary",
                          hint="e.g. --set-range models.*.weight=0:1 or --set-range lambda@L00..L05")
    data = recipe.to_dict()
    out: dict[str, Dimension] = {}
    for spec in specs:
        text, _, bounds = str(spec).partition("=")
        where = f"search setting {spec!r}"
        path = SettingPath.parse(text)
        param = param_of(data, path.setting if path.index != "*" else SettingPath(path.name, 0))
        if param.kind not in (float, int):
            raise RecipeError(f"{param.name!r} is not a number: a search varies numbers", where=where)
        if bounds:
            low, high = _bounds(bounds, where)
        elif param.range is not None:
            low, high = float(param.range[0]), float(param.range[1])
        else:
            raise RecipeError(f"{param.name!r} declares no range to search", where=where,
                              hint=f"give one: {text}=LO:HI")
        for edge in (low, high):
            if not param.within_bounds(edge):
                raise RecipeError(f"{param.name!r} cannot be {edge:g}", where=where,
                                  hint=f"its bounds: {param.describe().get('bounds')}")
        for one in path.expand(data):
            groups = [None] if one.first is None else one.groups(layout) if layout is not None else [one.first]
            for g in groups:
                dim = Dimension(SettingPath(one.name, one.index, g), low, high, param.kind is int)
                set_value(data, dim.path, low, layout)  # refuses now what the first trial would: models.7 of 2
                out.setdefault(dim.name, dim)
    return list(out.values())


def trial_recipe(recipe: Recipe, dims: list[Dimension], values: dict[str, float], layout: Layout | None) -> Recipe:
    """``recipe`` with every dimension set to its value in ``values`` (by name), validated."""
    data = recipe.to_dict()
    for d in dims:
        v = values[d.name]
        data = set_value(data, d.path, int(round(v)) if d.integer else float(v), layout)
    return Recipe.from_dict(data, where="search trial")
