"""The Analysis panel's controller: a 1-D sweep of one setting, the task-vector plane of two experts, and the
task-vector statistics — numbers from :mod:`studio.analysis`, labelled for the session's models; plain Python."""

from __future__ import annotations

import math
from typing import Callable

from ..analysis import axis_values, landscape_1d, landscape_2d, task_vector_stats
from ..errors import StudioError
from ..recipe import edit as E
from ..recipe.edit import SettingPath
from .controls import path_choices, path_label, slider_range

Progress = Callable[[float, str], None]


MAX_POINTS = 101


def whole_number(value, what: str, lo: int, hi: int) -> int:
    """A count typed into the page (a number box may send None, a float or text) as an int in [lo, hi]."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise StudioError(f"{what}: a whole number from {lo} to {hi}, got {value!r}") from None
    if not math.isfinite(n) or n != int(n) or not lo <= n <= hi:
        raise StudioError(f"{what}: a whole number from {lo} to {hi}, got {value!r}")
    return int(n)


class LandscapeController:
    def __init__(self, session):
        self.s = session

    def _numbers(self, result: dict) -> float:
        average = result.get("average")
        if not isinstance(average, (int, float)) or average != average:
            raise StudioError(f"the preview shows {result.get('metric') or 'samples'} without a number to draw",
                              hint="give a text (perplexity) or an evaluation set in the preview, or load a demo "
                                   "family")
        return float(average)

    def sweep(self, target: str | SettingPath | None = None, points: int = 11, lo: float | None = None,
              hi: float | None = None, progress: Progress | None = None) -> dict:
        """A 1-D landscape (:func:`studio.analysis.landscape_1d`): the evaluator's average as one setting (one value
        for every layer) runs from lo to hi, everything else as in the recipe.

        The result is landscape_1d's, plus ``results`` (the evaluator's full result per point, for per-task lines)
        and ``target``. The resident model is left holding the current recipe.
        """
        s = self.s
        path = SettingPath.parse(target) if target else s.need_target()
        path.groups(s.layout())  # a group the layout does not have is named now, not deep in the sweep
        r_lo, r_hi, _ = slider_range(E.param_of(s.recipe, path), None)
        lo = r_lo if lo is None else float(lo)
        hi = r_hi if hi is None else float(hi)
        points = whole_number(points, "points", 2, MAX_POINTS)
        xs = axis_values(lo, hi, points, integer=E.param_of(s.recipe, path).kind is int)
        rows: list[dict] = []

        pv = s.previewing

        def score(state):
            r = pv.score(state)
            rows.append(r)
            return self._numbers(r)

        with s.env.heavy, pv.lock:
            live = pv.sync_live()
            data = landscape_1d(live, path, xs, score, device=s.env.device, score_name=f"average {pv.metric}",
                                progress=progress)
        data["results"] = rows[:len(xs)]
        data["target"] = str(path)
        data["x"]["label"] = path_label(s.recipe, path, s.label)
        return data

    def plane(self, x_model: str | None = None, y_model: str | None = None, steps: int = 9,
              progress: Progress | None = None) -> dict:
        """The task-vector plane θ0 + α·τ_x + β·τ_y scored by the family's preview evaluator
        (:func:`studio.analysis.landscape_2d`, ``plane="task"``), with base / experts / average / current-recipe
        markers and, when this session learned a merge of the same models, its trajectory projected onto the plane.

        ``note`` in the result says what was (not) overlaid.
        """
        s = self.s
        steps = whole_number(steps, "grid", 2, MAX_POINTS)
        base = s.recipe.get("base_model")
        experts = s.experts()
        if not base:
            raise StudioError("the task-vector plane needs a base model", hint="choose one in the Models tab")
        if len(experts) < 2:
            raise StudioError("the task-vector plane needs two merged models besides the base",
                              hint="tick at least two models in the Models tab")
        x_model = x_model if x_model in experts else experts[0]
        y_model = y_model if y_model in experts and y_model != x_model else next(e for e in experts if e != x_model)
        trajectories, note = None, ""
        lr = s.learning.last
        if lr is not None:
            if lr.base == base and lr.experts == experts:
                # the points' "loss" is the learner's objective, not the evaluator's score: keep it off the hover
                points = [{k: v for k, v in pt.items() if k not in ("loss", "score")} for pt in lr.result.trajectory]
                trajectories = [{"name": lr.method, "points": points}]
                note = f"Trajectory of the {lr.label} run projected onto the plane."
            else:
                note = f"The {lr.label} run merged other models; its trajectory is not shown."
        pv = s.previewing
        with s.env.heavy, pv.lock:
            live = pv.sync_live()
            data = landscape_2d(live, lambda state: self._numbers(pv.score(state)), plane="task", i=x_model,
                                j=y_model, steps=steps, trajectories=trajectories, device=s.env.device,
                                score_name=f"average {pv.metric}", progress=progress)
        data["x"]["label"] = f"α · τ({s.label(x_model)})"
        data["y"]["label"] = f"β · τ({s.label(y_model)})"
        for m in data["markers"]:
            if m["name"] in s.labels:
                m["name"] = s.label(m["name"])
        for t in data["trajectories"]:
            t["name"] = f"{lr.label} trajectory" if lr else t["name"]
        data["note"] = note
        data["plane_models"] = [x_model, y_model]
        return data

    def axis_choices(self) -> list[tuple[str, str]]:
        """(label, setting path) of the axes a two-settings landscape offers: every slider's setting, and the
        settings the last search varied (one group of a setting, say)."""
        s = self.s
        out = path_choices(s.recipe, s.label)
        known = {v for _, v in out}
        run = s.searching.run
        return out + [(f"{name} (searched)", name) for name in (run.settings if run else []) if name not in known]

    def params_plane(self, path_x: str | SettingPath, path_y: str | SettingPath, steps: int = 7,
                     progress: Progress | None = None) -> dict:
        """A 2-D landscape over two settings (:func:`studio.analysis.landscape_2d`, ``plane="params"``): each point
        the recipe with both replaced, scored by the preview evaluator. Each axis spans its slider's range, widened
        to the last search's bounds when that search varied both settings — then its trials are drawn as a
        trajectory (their other searched settings as they were; ``note`` says so)."""
        s = self.s
        steps = whole_number(steps, "grid", 2, MAX_POINTS)
        px, py = SettingPath.parse(path_x), SettingPath.parse(path_y)
        if px == py:
            raise StudioError("choose two different settings for the axes")
        layout = s.layout()
        trajectory = s.searching.trajectory(str(px), str(py))
        values = []
        for path, axis in ((px, "x"), (py, "y")):
            path.groups(layout)
            param = E.param_of(s.recipe, path)
            lo, hi, _ = slider_range(param, E.plain_value(s.recipe, path, layout))
            if trajectory is not None:
                lo, hi = min(lo, trajectory["bounds"][axis][0]), max(hi, trajectory["bounds"][axis][1])
            values.append(axis_values(lo, hi, steps, integer=param.kind is int))
        pv = s.previewing
        with s.env.heavy, pv.lock:
            live = pv.sync_live()
            data = landscape_2d(live, lambda state: self._numbers(pv.score(state)), plane="params", path_x=px,
                                values_x=values[0], path_y=py, values_y=values[1],
                                trajectories=None if trajectory is None else [trajectory], device=s.env.device,
                                score_name=f"average {pv.metric}", progress=progress)
        data["x"]["label"] = path_label(s.recipe, px, s.label) + (f" @ {px.first}" if px.first else "")
        data["y"]["label"] = path_label(s.recipe, py, s.label) + (f" @ {py.first}" if py.first else "")
        data["note"] = "" if trajectory is None else (
            f"{len(trajectory['points'])} trials of {trajectory['name']} drawn in trial order; their score is the "
            f"search's objective, and settings the plot does not show are as each trial had them.")
        return data

    def statistics(self, density: float | None = 0.2) -> dict:
        """Task-vector statistics of the merged models against the base (:func:`studio.analysis.task_vector_stats`),
        with the session's labels as display names."""
        s = self.s
        base, experts = s.recipe.get("base_model"), s.experts()
        if not base or not experts:
            raise StudioError("diagnostics compare task vectors: choose a base and at least one other model",
                              hint="in the Models tab")
        with s.env.heavy:
            stats = task_vector_stats([base, *experts], density=density)
        stats["display_names"] = {m: s.labels[m] for m in stats["models"] if s.labels.get(m)}
        return stats
