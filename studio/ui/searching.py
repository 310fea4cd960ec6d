"""The Optimize panel's search controller: a black-box search (:mod:`studio.search`) over the session's sliders
against an objective, run in a background thread — plain Python, no gradio.

A run searches a copy of the recipe as it was at Start, in its own live merger (the preview's stays the user's),
and stores every trial in an SQLite file in the workspace's ``searches/`` folder (the CLI's ``search`` resumes it).
The heavy-work semaphore is taken per trial, so previews of this and other tabs go on between trials; Stop is seen
between trials. Nothing in the recipe changes until :meth:`SearchController.load` makes a trial the recipe.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .. import figures
from ..errors import StudioError
from ..recipe import Recipe
from ..recipe import edit as E
from ..recipe.edit import SettingPath
from ..search import SAMPLERS, LocalBackend, Objective, Scorer, Search, open_study, prepare, run_search, \
    search_space, trial_rows
from ..search.study import best_trials, search_layout
from ..zoo.search_evaluator import family_of
from .controls import bug_report, path_label, slider_range
from .landscapes import whole_number
from .previewing import PipelineJudge

log = logging.getLogger("studio.ui")
REFRESH_SECONDS = 1.0   # the page's timer asks once a second

MAX_TRIALS = 1000
BEST_ROWS = 10
BATCH = 1   # trials asked at a time: one keeps Stop and the heavy-work semaphore a trial apart (local backend)


@dataclass
class SearchRun:
    """One search of this session: what it searches, where it is stored, and what it has found so far."""

    search: Search
    name: str
    storage: str
    path: Path
    study: object
    started: float = field(default_factory=time.perf_counter)
    points: list = field(default_factory=list)     # (trial number, values) of every completed trial, in order
    rows: list = field(default_factory=list)       # studio.search.trial_rows, as last read back (REFRESH_SECONDS)
    front: list = field(default_factory=list)      # trial numbers of the best trial (or the Pareto front)
    recipes: dict = field(default_factory=dict)    # trial number → its recipe's YAML
    error: str | None = None
    stopped: bool = False
    finished: bool = False
    seconds: float = 0.0
    refreshed: float = 0.0                          # when rows and front were last read back from the storage

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.search.objectives]

    @property
    def settings(self) -> list[str]:
        return [d.name for d in self.search.dims]


class SearchController:
    def __init__(self, session):
        self.s = session
        self.run: SearchRun | None = None
        self.chosen: list[str] = []            # the settings the user ticked (setting paths)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()          # the run's fields between the worker and the page
        self._zoo: tuple = (None, False)       # (models, whether the zoo evaluator scores them)

    # ------------------------------------------------------------------------------------------- the form
    def setting_choices(self) -> list[tuple[str, str]]:
        """(label, setting path) of every setting a search can vary: each slider (one value for every layer), and
        when the layout has groups, each setting's groups as one dimension each ("every group of …") and the
        current per-layer target's groups one by one."""
        s = self.s
        recipe, layout = s.recipe, s.layout()
        groups = list(layout.groups)
        out = []
        for path in E.numeric_paths(recipe):
            lo, hi = self.default_bounds(str(path))
            label = path_label(recipe, path, s.label)
            out.append((f"{label} [{lo:g}, {hi:g}]", str(path)))
            if len(groups) > 1:
                out.append((f"{label}: every group of it ({len(groups)} settings)",
                            str(SettingPath(path.name, path.index, groups[0], groups[-1]))))
        if s.target is not None and len(groups) > 1:
            label = path_label(recipe, s.target, s.label)
            out += [(f"{label} @ {layout.labels.get(g, g)}", str(SettingPath(s.target.name, s.target.index, g)))
                    for g in groups]
        return out

    def choose(self, paths) -> None:
        self.chosen = [str(p) for p in paths or []]

    def default_bounds(self, spec: str) -> tuple[float, float]:
        """A setting's bounds unless the user gives others: its declared range, else its slider's extent."""
        p = E.param_of(self.s.recipe, SettingPath.parse(spec))
        lo, hi, _ = slider_range(p, None)
        return lo, hi

    def objective_choices(self) -> list[tuple[str, str]]:
        """(label, objective) of what can score these models without code: the demo family's validation and test
        splits, or the preview's text (perplexity) and evaluation set (accuracy) for a causal LM."""
        s = self.s
        out = []
        if s.family is not None and self._zoo_family():
            out += [(f"{s.family} family, validation split (keeps the test split for the report)", "zoo:validation"),
                    (f"{s.family} family, test split", "zoo")]
        judge = s.previewing.judge
        request = getattr(judge, "request", None) if isinstance(judge, PipelineJudge) else None
        for fld, kind, what in (("text_file", "text", "perplexity on"), ("eval_set", "eval", "accuracy on")):
            value = getattr(request, fld, None)
            if value:
                out.append((f"{what} {Path(str(value)).name} (the preview's)", f"{kind}:{value}"))
        return out

    def _zoo_family(self) -> bool:
        """Whether the zoo evaluator scores these models (asked once per set of models: every page render asks)."""
        s = self.s
        key = (s.family, s.recipe.get("base_model"), tuple(s.included()))
        if self._zoo[0] != key:
            try:
                family_of(Recipe.from_dict(dict(s.recipe), where="recipe"))
                self._zoo = (key, True)
            except StudioError:
                self._zoo = (key, False)
        return self._zoo[1]

    def objectives(self, choice: str | None, own: str | None) -> list[Objective]:
        """The objectives a run optimises: ``own`` (one per line or ';', e.g. ``python:my_module:score,min``) when
        given, else the offered ``choice``. A ``python:`` module must lie inside the allowed folders: the page may
        not run code from anywhere else on this machine."""
        specs = [x.strip() for x in str(own or "").replace(";", "\n").splitlines() if x.strip()] or \
            ([choice] if choice else [])
        if not specs:
            raise StudioError("choose what to optimise", where="search",
                              hint="pick an evaluator, or write python:MODULE:FUNCTION for your own")
        out = []
        for spec in specs:
            o = Objective.parse(spec)
            kind, _, arg = o.source.partition(":")
            if kind == "python":
                module, _, fn = arg.rpartition(":")
                found = self._check_module(module)
                if found != module:  # found in an allowed folder: read from there
                    o = Objective(f"python:{found}:{fn}", o.key, o.direction)
            elif kind in ("text", "eval") and arg:
                self.s.env.roots.check_path(arg)
            out.append(o)
        return out

    def _check_module(self, module: str) -> str:
        """Where a ``python:`` objective's code is read from, which must be inside the allowed folders: a ``.py``
        path as it is; a module on the import path; else ``MODULE.py`` in an allowed folder (its path)."""
        roots = self.s.env.roots
        if module.endswith(".py"):
            roots.check_path(module)
            return module
        top = module.split(".")[0]
        try:  # finds the top-level module without running it
            spec = importlib.util.find_spec(top) if top else None
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            near = [r / (module.replace(".", "/") + ".py") for r in roots.top()]
            found = next((p for p in near if p.is_file()), None)
            if found is None:
                raise StudioError(f"cannot find the module {module!r}", where="search objective",
                                  hint="put MODULE.py in an allowed folder, or write python:/path/to/file.py:FUNCTION")
            return str(roots.check_path(str(found)))
        places = list(spec.submodule_search_locations or []) or [spec.origin or ""]
        for place in places:
            roots.check_path(place)
        return module

    # ------------------------------------------------------------------------------------------- a run
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, settings=None, ranges: str = "", objective: str | None = None, own: str | None = None,
              sampler: str = "tpe", trials=30, seed=0, grid_points: int = 5) -> SearchRun:
        """Start a search of the current recipe in a background thread; returns its run at once. ``settings``:
        setting paths (default: the ticked ones); ``ranges``: lines ``PATH=LO:HI`` replacing a setting's bounds.
        Everything a user can get wrong (no setting, bad bounds, an evaluator that cannot score these models) is a
        StudioError here, before anything runs."""
        s = self.s
        if self.running:
            raise StudioError("a search is already running in this tab", hint="stop it first")
        paths = [str(p) for p in (settings if settings is not None else self.chosen)]
        recipe = Recipe.from_dict(dict(s.recipe), where="recipe")
        search = Search(recipe, search_space(recipe, self._specs(paths, ranges), search_layout(recipe)),
                        self.objectives(objective, own), sampler=str(sampler or "tpe"),
                        trials=whole_number(trials, "trials", 1, MAX_TRIALS), seed=whole_number(seed, "seed", 0, 2**31),
                        batch=BATCH, grid_points=whole_number(grid_points, "grid points", 2, 101), device=s.env.device)
        with s.env.heavy:
            evaluators = prepare(search)
        name = time.strftime("search-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        path = s.env.roots.check_write(str(Path(s.env.default_dir("searches")) / f"{name}.db"))
        storage = f"sqlite:///{path}"
        run = SearchRun(search, name, storage, path, open_study(search, storage, name))
        self.run = run
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, args=(run, evaluators), name=f"studio-{name}",
                                        daemon=True)
        self._thread.start()
        return run

    def _specs(self, paths: list[str], ranges: str) -> list[str]:
        """``PATH=LO:HI`` for every chosen setting: the bounds typed in ``ranges``, else its default bounds."""
        given = {}
        for line in str(ranges or "").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                path, sep, bounds = line.partition("=")
                if not sep:
                    raise StudioError(f"a range line needs PATH=LO:HI, got {line!r}", where="search ranges")
                given[str(SettingPath.parse(path))] = bounds.strip()
        if not paths:
            paths = list(given)
        unknown = [p for p in given if p not in {str(SettingPath.parse(x)) for x in paths}]
        if unknown:
            raise StudioError(f"a range for a setting not searched: {', '.join(unknown)}", where="search ranges",
                              hint="tick it above, or delete its line")
        out = []
        for p in paths:
            key = str(SettingPath.parse(p))
            if key in given:
                out.append(f"{key}={given[key]}")
            elif E.param_of(self.s.recipe, SettingPath.parse(p)).range is not None:
                out.append(key)
            else:
                out.append("{}={:g}:{:g}".format(key, *self.default_bounds(key)))
        return out

    def _work(self, run: SearchRun, evaluators) -> None:
        heavy = self.s.env.heavy
        try:
            with heavy:
                env = self.s.env  # the models the studio has open are not opened again
                scorer = Scorer(run.search, evaluators, opener=env.opener, memory_budget=env.memory_budget)
            run_search(run.search, run.study, _OneAtATime(LocalBackend(scorer), heavy),
                       progress=lambda ev: self._note(run, ev), stop=self._stop.is_set)
        except StudioError as e:
            run.error = str(e)
        except Exception as e:  # noqa: BLE001 — a bug must not kill the tab silently: logged, one line shown
            run.error = bug_report(f"search {run.name}", e)
        finally:
            try:
                self._refresh(run)
            except Exception:  # noqa: BLE001 — the storage is unreadable now; what was noted stays shown
                log.exception("reading search %s back", run.name)
            with self._lock:
                run.stopped = self._stop.is_set()
                run.seconds = time.perf_counter() - run.started
                run.finished = True

    def _note(self, run: SearchRun, event: dict) -> None:
        """After each completed trial (in the worker): its values, and the table's rows read back from the storage."""
        with self._lock:
            run.points.append((event["trial"], list(event["values"])))
            run.recipes[event["trial"]] = event["recipe"]
        # the table is read back from the storage (every trial, the Pareto front): at most as often as the page asks
        if time.perf_counter() - run.refreshed >= REFRESH_SECONDS:
            self._refresh(run)

    def _refresh(self, run: SearchRun) -> None:
        rows = trial_rows(run.study, run.search)
        front = [t.number for t in best_trials(run.study, run.search)]
        with self._lock:
            run.rows, run.front = rows, front
            run.seconds = time.perf_counter() - run.started
            run.refreshed = time.perf_counter()

    def stop(self) -> bool:
        """Ask the running search to end after its current trial; False when none runs."""
        if not self.running:
            return False
        self._stop.set()
        return True

    def wait(self, timeout: float | None = None) -> SearchRun | None:
        """Block until the run ends (tests, scripts); the run."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.run

    # ------------------------------------------------------------------------------------------- results
    def _need(self) -> SearchRun:
        if self.run is None:
            raise StudioError("no search in this tab yet", hint="start one in the Optimize tab")
        return self.run

    def best_rows(self, limit: int = BEST_ROWS) -> tuple[list[str], list[list]]:
        """(headers, rows) of the best completed trials: the best one (or the Pareto front) first, then the others
        by the first objective."""
        run = self.run
        if run is None:
            return [], []
        with self._lock:
            rows, front, directions = list(run.rows), list(run.front), list(run.search.directions)
        done = [r for r in rows if r["state"] == "complete"]
        sign = -1.0 if directions and directions[0] == "maximize" else 1.0
        done.sort(key=lambda r: (r["trial"] not in front, sign * r[run.names[0]]))
        headers = ["trial", *run.names, *run.settings]
        return headers, [[r["trial"], *(_shown(r[k]) for k in headers[1:])] for r in done[:limit]]

    def load(self, trial) -> None:
        """Make a completed trial's recipe the session's (undo brings the previous one back)."""
        run = self._need()
        number = whole_number(trial, "trial", 0, 10**9)
        with self._lock:
            text = run.recipes.get(number)
        if text is None:
            raise StudioError(f"trial {number} has no recipe (not completed)",
                              hint="choose a trial number from the table of best trials")
        self.s.open_recipe(Recipe.from_yaml(text, where=f"search trial {number}").to_dict(),
                           where=f"search trial {number}")

    def trajectory(self, path_x: str, path_y: str) -> dict | None:
        """The completed trials as a trajectory over two searched settings (``{"x", "y", "score", "step"}`` points,
        in trial order), or None when the last search did not vary both."""
        run = self.run
        if run is None:
            return None
        x, y = str(SettingPath.parse(path_x)), str(SettingPath.parse(path_y))
        with self._lock:
            rows = [r for r in run.rows if r["state"] == "complete"]
        if x not in run.settings or y not in run.settings:
            return None
        dims = {d.name: (d.low, d.high) for d in run.search.dims}
        return {"name": f"search {run.name}", "bounds": {"x": dims[x], "y": dims[y]},
                "points": [{"x": r[x], "y": r[y], "score": r[run.names[0]], "step": r["trial"]} for r in rows]}

    def figure(self):
        """The run's convergence (its first objective per trial and the best so far), as the CLI's report draws it."""
        run = self._need()
        with self._lock:
            rows = list(run.rows)
        return figures.search_convergence(rows, run.names[0], run.search.directions[0])

    def progress(self) -> dict:
        """What the page shows of the run: counts, the best values, the points to plot, whether it still runs."""
        run = self._need()
        with self._lock:
            return {"name": run.name, "path": str(run.path), "done": len(run.points), "total": run.search.trials,
                    "points": list(run.points), "names": run.names, "directions": list(run.search.directions),
                    "error": run.error, "stopped": run.stopped, "finished": run.finished,
                    "seconds": run.seconds if run.finished else time.perf_counter() - run.started,
                    "running": self.running}


class _OneAtATime:
    """A backend that takes the studio's heavy-work semaphore while it scores a batch (one trial here)."""

    def __init__(self, backend, heavy):
        self.backend, self.heavy = backend, heavy

    def score(self, batch):
        with self.heavy:
            return self.backend.score(batch)

    def close(self) -> None:
        self.backend.close()


def progress_markdown(p: dict) -> str:
    """One line for the page: where the run is, its best values so far, and where it is stored."""
    if p["error"]:
        head = f"⚠ **Search ended:** {p['error']}"
    elif p["finished"]:
        head = f"{'■ Stopped' if p['stopped'] else '✓ Finished'} after **{p['done']}** of {p['total']} trials " \
               f"in {p['seconds']:.1f} s"
    else:
        head = f"⏳ Searching: **{p['done']}** of {p['total']} trials ({p['seconds']:.0f} s)"
    bests = []
    for i, (name, d) in enumerate(zip(p["names"], p["directions"])):
        vals = [v[i] for _, v in p["points"]]
        if vals:
            bests.append(f"best {name}: **{(max if d == 'maximize' else min)(vals):.5g}** ({d[:3]})")
    where = f"Stored in `{p['path']}` (study `{p['name']}`)."
    return "\n\n".join(x for x in [head, " · ".join(bests), where] if x)


__all__ = ["SAMPLERS", "SearchController", "SearchRun", "progress_markdown"]


def _shown(value):
    """A table cell: numbers to 5 significant digits (the stored trial keeps them whole)."""
    return float(f"{value:.5g}") if isinstance(value, float) else value
