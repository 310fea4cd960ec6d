"""A search: Optuna asks for settings, a backend merges and scores them, Optuna is told — trial by trial, stored.

The driver asks Optuna for ``batch`` trials at a time and tells it their scores in trial order once the whole batch
is scored. The batch is a setting of the search, not of the backend: the local backend scores a batch one trial after
another, the Ray backend (:mod:`studio.search.ray_backend`) on several workers at once, and with the same seed both
see the same trials. Every trial's recipe, scores and time are stored in the Optuna storage (SQLite in the workspace
by default), so a search can be stopped, resumed (it runs on to its number of trials) and read back.

Samplers are Optuna's: ``cmaes`` (one objective), ``tpe``, ``nsga2`` (several objectives: a Pareto front), and
``random`` / ``grid`` as baselines; all seeded.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..analysis import axis_values
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..layout import Layout, detect_layout
from ..recipe import Recipe
from ..sources import TensorSource, open_source
from .objectives import Evaluator, Objective, build_evaluators, direction_of, measure
from .space import Dimension, trial_recipe

SAMPLERS = ("cmaes", "tpe", "nsga2", "random", "grid")


def _optuna():
    try:  # optional: only a search needs it (requirements.txt installs it)
        import optuna
    except ImportError:  # pragma: no cover
        raise StudioError("searching needs optuna", hint="pip install optuna cmaes") from None
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


@dataclass
class Search:
    """What to search: the recipe, the settings varied, the objectives, how, and how many trials."""
    recipe: Recipe
    dims: list[Dimension]
    objectives: list[Objective]
    sampler: str = "tpe"
    trials: int = 50
    seed: int = 0
    batch: int = 4
    grid_points: int = 5
    device: str = "cpu"
    directions: list[str] = field(default_factory=list)   # filled by ``prepare``

    def describe(self) -> dict:
        """What makes two searches the same one (stored with the study; a resume must match it)."""
        return {"recipe": self.recipe.to_dict(), "dims": [d.to_dict() for d in self.dims],
                "objectives": [o.name for o in self.objectives], "directions": self.directions,
                "sampler": self.sampler, "seed": self.seed, "batch": self.batch, "grid_points": self.grid_points}


@dataclass
class TrialResult:
    values: list[float] | None = None
    error: str | None = None
    seconds: float = 0.0
    recipe: str | None = None     # the YAML of the recipe the trial merged (stored with the trial)


class Backend(Protocol):
    def score(self, batch: list[dict[str, float]]) -> list[TrialResult]: ...

    def close(self) -> None: ...


class Scorer:
    """Merges trial settings into a resident live merger and scores them: what a backend's worker holds."""

    def __init__(self, search: Search, evaluators: dict[str, Evaluator] | None = None, **live_options):
        """``live_options`` go to the :class:`LiveMerger` (the studio passes its opener, so the models it has open
        are not opened again, and its memory budget)."""
        self.search = search
        self.live = LiveMerger(search.recipe, device=search.device, **live_options)
        self.layout = search_layout(search.recipe, self.live.opener)  # the merger's sources, not opened again
        self.evaluators = evaluators or build_evaluators(search.objectives, search.recipe, search.device)

    def score(self, values: dict[str, float]) -> TrialResult:
        t0 = time.perf_counter()
        try:
            recipe = trial_recipe(self.search.recipe, self.search.dims, values, self.layout)
            self.live.update(recipe)
            scores = measure(self.search.objectives, self.evaluators, self.live)
        except StudioError as e:
            return TrialResult(error=str(e), seconds=time.perf_counter() - t0)
        return TrialResult(scores, seconds=time.perf_counter() - t0, recipe=recipe.to_yaml())


class LocalBackend:
    """Scores a batch in this process, one trial after another."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def score(self, batch: list[dict[str, float]]) -> list[TrialResult]:
        return [self.scorer.score(v) for v in batch]

    def close(self) -> None:
        pass


def search_layout(recipe: Recipe, opener: Callable[[str], TensorSource] = open_source) -> Layout:
    """The layout group names in setting paths refer to: the reference model's."""
    ref = recipe.base_model or recipe.input_models()[0].model
    return detect_layout(opener(ref))


def prepare(search: Search) -> dict[str, Evaluator]:
    """Check the search before anything runs and fill its directions; returns the evaluators (built here, on the
    driver: a bad objective is said before a worker starts)."""
    if search.sampler not in SAMPLERS:
        raise StudioError(f"unknown sampler {search.sampler!r}", where="--sampler", hint=", ".join(SAMPLERS))
    if search.trials < 1 or search.batch < 1:
        raise StudioError("a search needs at least one trial and a batch of at least one")
    if search.sampler == "cmaes" and len(search.objectives) > 1:
        raise StudioError("CMA-ES optimises one objective", where="--sampler",
                          hint="use nsga2 or tpe for several objectives (a Pareto front)")
    if search.sampler == "grid" and search.grid_points < 2:
        raise StudioError("a grid needs at least 2 points per setting", where="--grid-points")
    if search.sampler == "grid":
        grid_points(search)  # refuses a grid too large before anything runs
    evaluators = build_evaluators(search.objectives, search.recipe, search.device)
    search.directions = [direction_of(o, evaluators[o.source]) for o in search.objectives]
    return evaluators


def _sampler(search: Search, already: int = 0):
    """The search's sampler; resuming after ``already`` trials, seeded on from there (the same seed would draw the
    first trials again)."""
    optuna = _optuna()
    s, seed = search.sampler, search.seed + already
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if s == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if s == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # grid: every point is enqueued when the study is made (open_study), in order; Optuna's GridSampler stops the
    # study from inside tell(), which only optimize() allows
    return optuna.samplers.RandomSampler(seed=seed)


MAX_GRID = 100_000


def grid_points(search: Search) -> list[dict[str, float]]:
    """Every point of the grid, the first setting varying slowest."""
    axes = [grid_values(d, search.grid_points) for d in search.dims]
    size = math.prod(len(a) for a in axes)
    if size > MAX_GRID:
        raise StudioError(f"the grid has {size} points", where="--grid-points",
                          hint=f"keep it under {MAX_GRID}: fewer points per setting or fewer settings")
    return [dict(zip((d.name for d in search.dims), combo)) for combo in itertools.product(*axes)]


def grid_values(d: Dimension, points: int) -> list[float]:
    return axis_values(d.low, d.high, points, integer=d.integer)


def distributions(search: Search) -> dict:
    optuna = _optuna()
    return {d.name: optuna.distributions.IntDistribution(int(d.low), int(d.high)) if d.integer
            else optuna.distributions.FloatDistribution(d.low, d.high) for d in search.dims}


def open_study(search: Search, storage: str | None = None, name: str = "search"):
    """The study ``name`` in ``storage`` (an Optuna storage URL; None: in memory): created, or loaded when it exists
    — then it must be the same search (recipe, settings, objectives, sampler, seed)."""
    optuna = _optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=search.directions,
                                    sampler=_sampler(search), load_if_exists=True)
    except (ValueError, RuntimeError) as e:  # e.g. a stored study with other directions
        raise StudioError(f"cannot open the search {name!r} ({e})", where=storage or "memory",
                          hint="give another --study name to start a new search") from None
    except Exception as e:  # noqa: BLE001 — SQLAlchemy's errors for an unusable storage URL or file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StudioError(f"cannot open the search storage ({first})", where=storage or "memory",
                          hint="give a writable sqlite:///PATH.db (or another Optuna storage URL)") from None
    stored = study.user_attrs.get("search")
    mine = json.loads(json.dumps(search.describe()))
    if study.trials:
        study.sampler = _sampler(search, len(study.trials))
    if stored is None:
        study.set_user_attr("search", mine)
        if search.sampler == "grid":
            for point in grid_points(search):
                study.enqueue_trial(point)
    elif stored != mine:
        differs = [k for k in mine if stored.get(k) != mine[k]]
        raise StudioError(f"the stored search {name!r} is another search (its {', '.join(differs)} differ)",
                          where=storage or "memory",
                          hint="resume it with the same recipe and settings, or give another --study name")
    return study


INTERRUPTED = "interrupted"   # the error of trials asked but not scored when a search was stopped (Ctrl-C)


def finished(study) -> int:
    """Trials already run to an end (complete, or failed by their merge or evaluator): what a resumed search counts
    toward its total. Trials an interruption left unscored do not count: a resume runs them again."""
    optuna = _optuna()
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    return sum(t.state in done and t.user_attrs.get("error") != INTERRUPTED for t in study.get_trials(deepcopy=False))


def run_search(search: Search, study, backend: Backend, *, progress: Callable[[dict], None] | None = None,
               stop: Callable[[], bool] | None = None) -> int:
    """Run ``search.trials`` trials in ``study`` (those already finished count), ``batch`` at a time; after each
    trial ``progress({"done", "total", "trial", "values", "best"})``. ``stop()`` is asked between batches (a trial
    that started ends first). A trial whose merge or evaluator fails is stored as failed and ends the search with
    its error. Returns the number of trials run now."""
    optuna = _optuna()
    dist = distributions(search)
    ran, done = 0, finished(study)   # counted here, not read back from the storage after every trial
    best = best_values(study, search)
    while done < search.trials and not (stop and stop()):
        asked = [study.ask(dist) for _ in range(min(search.batch, search.trials - done))]
        try:
            results = backend.score([dict(t.params) for t in asked])
        except KeyboardInterrupt:
            abandon(study, asked)
            raise
        failure = None
        for t, r in zip(asked, results):
            t.set_user_attr("seconds", round(r.seconds, 4))
            done += 1
            if r.error is not None:
                t.set_user_attr("error", r.error)
                study.tell(t, state=optuna.trial.TrialState.FAIL)
                failure = failure or (t.number, r.error)
                continue
            t.set_user_attr("recipe", r.recipe)
            study.tell(t, r.values)
            ran += 1
            best = [(max if d == "maximize" else min)(v, b) for d, v, b in
                    zip(search.directions, r.values, best or r.values)]
            if progress:
                progress({"done": done, "total": search.trials, "trial": t.number, "values": r.values,
                          "params": dict(t.params), "recipe": r.recipe, "best": best})
        if failure is not None:
            raise StudioError(f"trial {failure[0]} failed: {failure[1]}", where="search",
                              hint="the trial is stored as failed; fix the evaluator or the ranges and resume")
        if search.sampler == "grid" and not _waiting(study):
            break  # the whole grid is scored
    return ran


def abandon(study, trials) -> None:
    """Trials asked but not scored when the search was stopped (Ctrl-C): stored as failed with the error
    INTERRUPTED, so the storage holds no trial that will never end and a resume does not count them as run."""
    for t in trials:
        t.set_user_attr("error", INTERRUPTED)
        study.tell(t, state=_optuna().trial.TrialState.FAIL)


def _waiting(study) -> bool:
    """Whether enqueued trials (grid points) are still to be run."""
    optuna = _optuna()
    return any(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))


def best_values(study, search: Search) -> list[float] | None:
    """The best value of each objective so far (for one objective: the best trial's)."""
    done = completed(study)
    if not done:
        return None
    return [(max if d == "maximize" else min)(t.values[i] for t in done) for i, d in enumerate(search.directions)]


def completed(study) -> list:
    optuna = _optuna()
    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def best_trials(study, search: Search) -> list:
    """The best trial (one objective) or the Pareto front (several), by trial number."""
    if not completed(study):
        return []
    return sorted(study.best_trials, key=lambda t: t.number) if len(search.objectives) > 1 else [study.best_trial]


def trial_rows(study, search: Search) -> list[dict]:
    """Every trial as a row: number, state, each objective's value, each setting's, seconds, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name.lower()}
        for o, v in zip(search.objectives, t.values or [None] * len(search.objectives)):
            row[o.name] = v
        row.update({d.name: t.params.get(d.name) for d in search.dims})
        row["seconds"] = t.user_attrs.get("seconds")
        if "error" in t.user_attrs:
            row["error"] = t.user_attrs["error"]
        rows.append(row)
    return rows
