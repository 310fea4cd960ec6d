"""What a search scores: objectives read from evaluators, written as text so that a Ray worker can build its own.

An objective is ``KIND[:ARG][#KEY][,max|,min]``:

* ``python:module:function`` (or ``python:FILE.py:function``) — your callable, given the merged state dict (``{name: tensor}``), returning a number or
  a mapping of numbers (``#KEY`` picks one; without it, ``average`` or the only one); maximised unless ``,min``;
* ``text:FILE`` — perplexity of a causal LM merge on a text file (minimised);
* ``eval:FILE.jsonl`` — accuracy on an evaluation set (:mod:`studio.preview.evalset`; maximised);
* ``zoo`` / ``zoo:validation`` / ``zoo:test`` — the demo family's evaluator (registered by :mod:`studio.zoo`):
  accuracy % or perplexity, ``#TASK`` for one task's.

Several objectives make a multi-objective search (a Pareto front). Objectives naming the same evaluator (``zoo#MNIST``
and ``zoo#SVHN``) share one evaluation per trial. Families above this package register their kinds in
:data:`EVALUATORS`, as layouts register detectors.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..engine import build_plan
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..evaluate.common import lower_is_better
from ..preview import previewer_for
from ..recipe import Recipe


class Evaluator(Protocol):
    """Scores the live merger's current merge: ``{"average": …, task: …}``; ``metric`` names what (accuracy, …)."""
    metric: str

    def scores(self, live: LiveMerger) -> dict[str, float]: ...


# kind → factory(arg, recipe, device) building an evaluator for the recipe's models
EVALUATORS: dict[str, Callable[[str, Recipe, str], Evaluator]] = {}


@dataclass(frozen=True)
class Objective:
    """One number a search optimises: ``key`` of what the evaluator ``source`` (``KIND[:ARG]``) returns."""
    source: str
    key: str = "average"
    direction: str | None = None    # "maximize" / "minimize"; None: the evaluator's metric decides

    @property
    def name(self) -> str:
        return self.source + ("" if self.key == "average" else f"#{self.key}")

    @classmethod
    def parse(cls, spec: str) -> "Objective":
        text = str(spec).strip()
        direction = None
        head, comma, tail = text.rpartition(",")
        if comma and tail.strip() in ("max", "min"):
            text, direction = head.strip(), "maximize" if tail.strip() == "max" else "minimize"
        source, _, key = text.partition("#")
        kind = source.partition(":")[0]
        if kind not in EVALUATORS:
            raise StudioError(f"unknown evaluator {kind!r} in {spec!r}", where="objective",
                              hint=f"one of {', '.join(sorted(EVALUATORS))} (e.g. python:my_module:score, "
                                   "text:notes.txt, eval:questions.jsonl, zoo)")
        return cls(source, key or "average", direction)


def direction_of(objective: Objective, evaluator: Evaluator) -> str:
    if objective.direction is not None:
        return objective.direction
    return "minimize" if lower_is_better(getattr(evaluator, "metric", "") or "") else "maximize"


def build_evaluators(objectives: list[Objective], recipe: Recipe, device: str) -> dict[str, Evaluator]:
    """One evaluator per distinct source, built for ``recipe``'s models on ``device``."""
    out: dict[str, Evaluator] = {}
    for o in objectives:
        if o.source not in out:
            kind, _, arg = o.source.partition(":")
            out[o.source] = EVALUATORS[kind](arg, recipe, device)
    return out


def measure(objectives: list[Objective], evaluators: dict[str, Evaluator], live: LiveMerger) -> list[float]:
    """The objectives' values for the live merger's current merge (each evaluator run once); StudioError naming the
    objective whose evaluator returned no such number, or a value that is not finite."""
    results = {src: ev.scores(live) for src, ev in evaluators.items()}
    values = []
    for o in objectives:
        got = results[o.source]
        if o.key not in got:
            raise StudioError(f"the evaluator {o.source!r} gave no {o.key!r}", where=f"objective {o.name}",
                              hint=f"it gives: {', '.join(sorted(got)) or 'nothing'}")
        v = float(got[o.key])
        if not math.isfinite(v):
            raise StudioError(f"objective {o.name} is {v}", hint="the evaluator must return a finite number")
        values.append(v)
    return values


# ------------------------------------------------------------------------------------------------ built-in kinds
def _numbers(value, where: str) -> dict[str, float]:
    """A callable's return as ``{name: number}`` (a bare number is the average)."""
    if isinstance(value, dict):
        out = {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "average" not in out and len(out) == 1:
            out["average"] = next(iter(out.values()))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"average": float(value)}
    raise StudioError(f"the function returned {type(value).__name__}", where=where,
                      hint="return a number, or a mapping of names to numbers")


def _load_module(module: str):
    """``module`` imported by name, or a ``.py`` file by its path (a scorer beside the models, on no import path)."""
    if not module.endswith(".py"):
        return importlib.import_module(module)
    path = Path(module).expanduser()
    if not path.is_file():
        raise ImportError(f"no file {module}")
    name = f"studio_objective_{zlib.crc32(str(path.resolve()).encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(loaded)
    except Exception as e:  # noqa: BLE001 — the user's file: its own error, in one line
        raise ImportError(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") \
            from None
    sys.modules[name] = loaded
    return loaded


class CallableEvaluator:
    """``python:module:function`` — ``function(state_dict)`` on the merged tensors (CPU or the merge's device)."""
    metric = ""

    def __init__(self, arg: str, recipe: Recipe, device: str):
        module, _, name = arg.rpartition(":")
        if not module or not name:
            raise StudioError(f"write python:MODULE:FUNCTION or python:FILE.py:FUNCTION, got python:{arg}",
                              where="objective")
        try:
            fn = getattr(_load_module(module), name)
        except ImportError as e:
            raise StudioError(f"cannot import {module!r} ({e})", where="objective",
                              hint="run from the folder that holds it, or put it on PYTHONPATH") from None
        except AttributeError:
            raise StudioError(f"{module!r} has no {name!r}", where="objective") from None
        if not callable(fn):
            raise StudioError(f"{module}.{name} is not callable", where="objective")
        self.fn, self.where = fn, f"python:{arg}"

    def scores(self, live: LiveMerger) -> dict[str, float]:
        try:
            value = self.fn(live.state)
        except Exception as e:  # noqa: BLE001 — the user's code: its failure is theirs to read, in one line
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise StudioError(f"the function raised {type(e).__name__}: {first}", where=self.where,
                              hint="run it on a merged state dict by hand to see the traceback") from None
        return _numbers(value, self.where)


class PipelineEvaluator:
    """``text:FILE`` / ``eval:FILE.jsonl`` — the recipe's preview pipeline (a causal LM's) scoring a text or an
    evaluation set, no generations."""

    def __init__(self, field: str, arg: str, recipe: Recipe, device: str):
        if not arg:
            raise StudioError(f"{field} needs a file: {'text:FILE' if field == 'text_file' else 'eval:FILE.jsonl'}",
                              where="objective")
        reference = build_plan(recipe).reference
        cls = previewer_for(reference)
        request = cls.Request()
        if not hasattr(request, field):
            raise StudioError(f"the preview of this model takes no {field.replace('_', ' ')}", where=reference.ref,
                              hint="text and evaluation sets score causal LMs")
        self.previewer = cls(reference, device=device)
        self.request = request
        setattr(self.request, field, arg)
        self.request.prompts = []
        self.metric = "perplexity" if field == "text_file" else "accuracy"
        self._live = None

    def scores(self, live: LiveMerger) -> dict[str, float]:
        if self._live is not live:
            self.previewer.attach(live)
            self._live = live
        else:
            self.previewer.refresh(live.last_changed)
        out = self.previewer.render(self.request)
        return {"average": float(out["average"]), **{k: float(v) for k, v in out.get("per_task", {}).items()}}


EVALUATORS["python"] = CallableEvaluator
EVALUATORS["text"] = lambda arg, recipe, device: PipelineEvaluator("text_file", arg, recipe, device)
EVALUATORS["eval"] = lambda arg, recipe, device: PipelineEvaluator("eval_set", arg, recipe, device)
