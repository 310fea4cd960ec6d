"""Merge methods as pure tensor functions with declared parameters.

A method never opens files or parses config. The engine hands it float32 tensors already on the compute device
and the parameters resolved for this tensor; it returns one tensor. The declaration (``Param`` list and flags)
drives recipe validation, CLI help, the studio's sliders and the docs table.

Calling convention::

    fn(base, models, *, <declared params>, [generator], [context]) -> Tensor

* ``base``: the base model's tensor, or ``None`` when the recipe has no base.
* ``models``: the input tensors. With ``includes_base=False`` (task-vector methods) the base is *not* among them;
  with ``includes_base=True`` (linear, karcher, ...) it is one of them, in recipe order (appended last when the
  recipe names a base that is not listed, as mergekit does).
* the method owns ``base`` and ``models`` (fresh float32 copies): it may modify them in place.
* per-model parameters arrive as lists aligned with ``models``; global ones as scalars.
* ``generator`` (methods declared ``random=True``): a ``torch.Generator`` on the compute device, seeded from the
  recipe seed and the tensor name, so results do not depend on execution order.
* ``context`` (methods that declare ``global_stats``): whatever ``combine`` returned after a first pass of
  ``collect`` over every tensor; used by methods that need whole-model statistics (e.g. global top-k).
  A spec with ``rounds = r > 1`` needs r passes: round j ≥ 2 calls ``collect(..., context=<combine of round
  j−1>)`` on every tensor, and the method receives the last round's combine (see
  ``studio.methods.global_stats.gather_context``, the reference driver).

Parameter values: ``range`` and ``bounds``

* ``range`` is where a control goes: the slider's ends in the studio, the span a search samples, the docs table. It
  is advice, not a rule: a recipe may set a weight of 3 or a λ of 5 and the merge follows it (extrapolation is a
  use, not a mistake).
* ``bounds`` is the rule: a value outside has no meaning for the method (a fraction of entries above 1, a
  probability band wider than the probabilities, a negative count or tolerance). The recipe is refused with a
  RecipeError naming the parameter, the value and the bounds. Either end may be None (unbounded). Declare bounds
  only where the formula needs them; ``range`` must lie within them.

Every value a recipe gives is checked where it is read, in every spelling a setting has (a scalar, each point of a
gradient list, each group of a ``{"*": …, "L03": …}`` mapping, each number of a block-weight string, each filter
rule's value) and again once resolved per tensor. Every number must be finite: NaN and ±inf are refused for every
parameter, bounded or not.
"""

from __future__ import annotations

import inspect
import keyword
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import RecipeError

REQUIRED = object()
# the bounds most parameters that have any share: a fraction (of entries, of the way), and "no negative values"
FRACTION = (0.0, 1.0)
NON_NEGATIVE = (0.0, None)


@dataclass(frozen=True)
class Param:
    name: str
    default: Any = REQUIRED
    per_model: bool = False
    range: tuple[float, float] | None = None
    kind: type = float
    # hard limits (None: open at that end); values outside are refused — see the module's doc on range and bounds
    bounds: tuple[float | None, float | None] | None = None
    choices: tuple | None = None
    doc: str = ""
    # accepted so mergekit recipes validate, but without effect here: the studio does not draw a control for it
    compat: bool = False
    # how a control names it when the name alone reads poorly ("λ (lambda)"); see ``title``
    label: str = ""
    # where a control starts when the recipe leaves a required parameter unset; see ``initial``
    start: Any = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def initial(self) -> Any:
        """The value a control shows before the recipe sets one: the default; for a required parameter ``start``,
        else a neutral value (False, the first choice, the range's midpoint, 1)."""
        if not self.required:
            return self.default
        if self.start is not None:
            return self.start
        if self.kind is bool:
            return False
        if self.choices:
            return self.choices[0]
        if self.range:
            middle = (self.range[0] + self.range[1]) / 2
            return round(middle) if self.kind is int else middle
        return 1.0 if self.kind is float else 1

    @property
    def py_name(self) -> str:
        return self.name + "_" if keyword.iskeyword(self.name) else self.name

    def coerce(self, value: Any, where: str = "") -> Any:
        """Validate one resolved scalar value."""
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("true", "yes", "1", "on"):
                        return True
                    if low in ("false", "no", "0", "off"):
                        return False
                    raise ValueError
                return bool(value)
            if self.kind in (int, float):
                if isinstance(value, bool):
                    raise ValueError
                number = float(value)
                if not math.isfinite(number):
                    raise RecipeError(f"parameter {self.name!r} must be a finite number, got {value!r}", where,
                                      hint="NaN and infinity are not values")
                if self.kind is int and number != int(number):
                    raise ValueError
                value = int(number) if self.kind is int else number
            else:
                value = self.kind(value)
        except (TypeError, ValueError, OverflowError):
            raise RecipeError(f"parameter {self.name!r} must be {self.kind.__name__}, got {value!r}", where) from None
        if self.choices is not None and value not in self.choices:
            raise RecipeError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}", where)
        if self.bounds is not None and not self.within_bounds(value):
            raise RecipeError(f"parameter {self.name!r} must be {self.bounds_text()}, got {value!r}", where,
                              hint=self.doc or None)
        return value

    def within_bounds(self, value: float) -> bool:
        lo, hi = self.bounds or (None, None)
        return (lo is None or value >= lo) and (hi is None or value <= hi)

    def bounds_text(self) -> str:
        """``within [0, 1]``, ``at least 1``, ``at most 2``."""
        lo, hi = self.bounds or (None, None)
        if lo is not None and hi is not None:
            return f"within [{lo:g}, {hi:g}]"
        return f"at least {lo:g}" if lo is not None else f"at most {hi:g}" if hi is not None else "any number"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "default": None if self.required else self.default,
            "required": self.required,
            "per_model": self.per_model,
            "range": list(self.range) if self.range else None,
            "bounds": list(self.bounds) if self.bounds else None,
            "kind": self.kind.__name__,
            "choices": list(self.choices) if self.choices else None,
            "doc": self.doc,
            "compat": self.compat,
            "label": self.label,
            "start": self.start,
            "title": self.title,
            "initial": self.initial,
        }


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    params: list[Param]
    needs_base: bool = False
    includes_base: bool = False
    random: bool = False
    min_models: int = 1
    max_models: int | None = None
    ref: str = ""
    category: str = "mergekit"
    collect: Callable | None = None
    combine: Callable | None = None
    rounds: int = 1
    formula: str = ""
    label: str = ""
    # True when the function never writes into base/models: the live engine may then pass its resident tensors
    # without copying them (a slider release costs one merge, not a copy of every input)
    pure_inputs: bool = False
    # True when the function accepts inputs in their stored dtype (fp16/bf16 views of mapped files, read-only) and
    # does its arithmetic in float32 itself; the streaming engine then skips materialising float32 copies of every
    # input (mixed-dtype in-place adds upcast on the fly), which is most of a simple merge's memory traffic.
    stored_dtype_inputs: bool = False
    # True when the function takes ``out=`` (a float32 tensor of the result's shape to overwrite): the live engine
    # then re-merges into the previous result's memory instead of allocating (fresh pages cost more than the math)
    accepts_out: bool = False
    # True when the function takes ``out_dtype=`` (the output tensor's dtype) and returns its result in that dtype,
    # each value rounded once from its float32 result (equal to ``result.to(out_dtype)``): blocked CPU kernels then
    # cast block by block from a cache-sized float32 scratch instead of filling a float32 tensor the size of the
    # output and casting it in another pass (fresh float32 pages cost more than the arithmetic)
    casts_output: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    @property
    def global_stats(self) -> bool:
        return self.collect is not None

    def param(self, name: str) -> Param:
        return find_param(self.params, name, f"method {self.name!r}")

    def per_model_params(self) -> list[Param]:
        return [p for p in self.params if p.per_model]

    def global_params(self) -> list[Param]:
        return [p for p in self.params if not p.per_model]

    def __call__(self, base, models, **kwargs):
        return self.fn(base, models, **kwargs)


# every method the package's modules declare; studio/methods/__init__.py imports them all, so importing any
# studio.methods module fills it
def find_param(params: list[Param], name: str, owner: str, error: type = RecipeError,
               what: str = "parameter") -> Param:
    """The declaration called ``name`` among ``params``; else ``error`` saying what ``owner`` declares instead."""
    for p in params:
        if p.name == name:
            return p
    raise error(f"{owner} has no {what} {name!r}",
                hint=f"its {what}s are: {', '.join(p.name for p in params) or 'none'}")


_REGISTRY: dict[str, MethodSpec] = {}


def method(name: str, params: list[Param] | None = None, **flags) -> Callable:
    """Register a merge method. See the module docstring for the calling convention."""

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"merge method {name!r} registered twice")
        spec = MethodSpec(name=name, fn=fn, params=list(params or []), **flags)
        for p in spec.params:  # a slider must not offer what the recipe would refuse
            if p.bounds and p.range and not (p.within_bounds(p.range[0]) and p.within_bounds(p.range[1])):
                raise ValueError(f"method {name}: parameter {p.name}'s range {p.range} leaves its bounds {p.bounds}")
        accepted = set(inspect.signature(fn).parameters)
        missing = [p.py_name for p in spec.params if p.py_name not in accepted]
        if missing:
            raise TypeError(f"method {name}: function lacks declared parameters {missing}")
        _REGISTRY[name] = spec
        fn.spec = spec
        return fn

    return wrap


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if n.replace("_", "") == str(name).replace("_", "").replace("-", "")]
        hint = f"did you mean {close[0]!r}?" if close else f"known methods: {', '.join(sorted(_REGISTRY))}"
        raise RecipeError(f"unknown merge method {name!r}", hint=hint) from None


def list_methods() -> list[MethodSpec]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
