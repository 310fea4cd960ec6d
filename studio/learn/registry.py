"""Learned merge methods declared like merge methods: a function plus its declared hyperparameters.

A learner never opens files. ``run_learned`` (api.py) builds the task adapter and the unlabeled data and calls::

    fn(adapter, data, *, [steps], progress, seed, <declared hyperparameters>) -> dict

* ``adapter``: a :class:`~studio.learn.adapters.TaskAdapter` (θ0, the experts, logits per task);
* ``data``: ``{task: unlabeled inputs}``;
* ``steps``: passed only to learners whose function takes it (the iterative ones; ``None`` = the method's default);
* the result holds ``history``, ``trajectory``, ``metrics`` and either ``merge`` (a ``CoefficientMerge``:
  ``produces="coefficients"``, exportable as a recipe) or ``state_dict`` (``produces="weights"``).

The declaration drives hyperparameter validation (:meth:`LearnerSpec.check`), the CLI's help and ``--set``, the zoo
report's learned rows and the studio's Optimize panel. ``variants`` name the settings offered as one choice each
(a menu entry, a report row), e.g. ``adamerging_task`` = adamerging with ``granularity="task"``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import StudioError
from ..methods.registry import Param, find_param

PRODUCES = ("coefficients", "weights")
# what run_learned passes itself; a declared hyperparameter may not take these names
RUN_ARGS = ("adapter", "data", "steps", "progress", "seed")


@dataclass(frozen=True)
class Variant:
    """One named setting of a learner, offered as a single choice (an Optimize-panel entry, a zoo-report row)."""

    name: str
    label: str
    learner: str
    hparams: dict = field(default_factory=dict)


@dataclass
class LearnerSpec:
    name: str
    fn: Callable
    params: list[Param]
    produces: str
    label: str = ""
    ref: str = ""
    variants: dict[str, Variant] = field(default_factory=dict)
    takes_steps: bool = False

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    @property
    def summary(self) -> str:
        """The docstring's first paragraph on one line."""
        return " ".join(self.doc.split("\n\n")[0].split())

    def param(self, name: str) -> Param:
        return find_param(self.params, name, f"learned method {self.name!r}", StudioError, "hyperparameter")

    def check(self, hparams: dict[str, Any]) -> dict[str, Any]:
        """``hparams`` coerced to their declared kinds and choices, keyed by the function's argument names. An
        undeclared name is a StudioError naming the declared ones; ``None`` stands for "the method's default" where
        the declared default is ``None``."""
        out = {}
        for key, value in hparams.items():
            p = self.param(key)
            keep_none = value is None and p.default is None
            out[p.py_name] = value if keep_none else p.coerce(value, where=f"learned method {self.name}")
        return out

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "produces": self.produces, "ref": self.ref,
                "doc": self.doc, "params": [p.describe() for p in self.params],
                "variants": [{"name": v.name, "label": v.label, "hparams": dict(v.hparams)}
                             for v in self.variants.values()]}

    def __call__(self, adapter, data, *, steps: int | None = None, progress=None, seed: int = 0, **hparams) -> dict:
        if self.takes_steps:
            hparams["steps"] = steps
        return self.fn(adapter, data, progress=progress, seed=seed, **hparams)


# name → declaration, in registration order; ``@learner`` fills it
LEARNERS: dict[str, LearnerSpec] = {}


def signature_errors(fn: Callable, params: list[Param]) -> list[str]:
    """What is wrong with a learner function for these declared hyperparameters (empty when nothing)."""
    accepted = inspect.signature(fn).parameters
    errors = [f"{p.name!r} is passed by run_learned, not declared" for p in params if p.name in RUN_ARGS]
    errors += [f"the function lacks the declared {p.py_name!r}" for p in params if p.py_name not in accepted]
    errors += [f"the function lacks {a!r}" for a in ("progress", "seed") if a not in accepted]
    return errors


def learner(name: str, params: list[Param] | None = None, *, produces: str, label: str = "", ref: str = "",
            variants: dict[str, tuple[str, dict]] | None = None) -> Callable:
    """Register a learned merge method. See the module docstring for the calling convention.

    ``variants``: ``{variant name: (label, hyperparameters)}``; default: one variant named like the learner.
    """

    def wrap(fn: Callable) -> Callable:
        if name in LEARNERS:
            raise ValueError(f"learned method {name!r} registered twice")
        if produces not in PRODUCES:
            raise ValueError(f"learned method {name}: produces is one of {PRODUCES}, got {produces!r}")
        errors = signature_errors(fn, list(params or []))
        if errors:
            raise TypeError(f"learned method {name}: {'; '.join(errors)}")
        spec = LearnerSpec(name=name, fn=fn, params=list(params or []), produces=produces, label=label or name,
                           ref=ref, takes_steps="steps" in inspect.signature(fn).parameters)
        for key, (vlabel, hp) in (variants or {name: (spec.label, {})}).items():
            spec.check(hp)  # a variant's settings are declared values
            if any(key in other.variants for other in LEARNERS.values()):
                raise ValueError(f"learned method {name}: variant {key!r} is already registered")
            spec.variants[key] = Variant(key, vlabel, name, dict(hp))
        LEARNERS[name] = spec
        fn.spec = spec
        return fn

    return wrap


def get_learner(name: str) -> LearnerSpec:
    key = str(name).lower().replace("-", "_")
    try:
        return LEARNERS[key]
    except KeyError:
        raise StudioError(f"unknown learned method {name!r}", hint=f"choose one of {', '.join(LEARNERS)}") from None


def list_learners() -> list[LearnerSpec]:
    """Every learner, in registration order (the order ``studio/learn/__init__.py`` imports their modules)."""
    return list(LEARNERS.values())


def list_variants() -> list[Variant]:
    """Every learner's variants, in registration order."""
    return [v for spec in LEARNERS.values() for v in spec.variants.values()]


def get_variant(name: str) -> Variant:
    for v in list_variants():
        if v.name == name:
            return v
    raise StudioError(f"unknown learned variant {name!r}",
                      hint=f"choose one of {', '.join(v.name for v in list_variants())}")
