"""Loss / metric landscapes: a score evaluated over a line or a grid of merges, with markers and trajectories.

Three kinds of 2-D grids (algorithms.md §5), one 1-D sweep:

* ``landscape_1d``      — one recipe setting (a :class:`~studio.recipe.edit.SettingPath`) over a list of values;
* ``landscape_params``  — two recipe settings; each grid point is the recipe with both replaced, re-merged by the
                          live engine (only the tensors whose parameters changed are recomputed);
* ``landscape_task_plane`` — θ(α, β) = θ0 + α·τ_i + β·τ_j: base at (0, 0), experts at (1, 0) and (0, 1), their
                          average at (½, ½), task arithmetic with λ at (λ, λ). ``orthonormal=True`` uses
                          u = τ_i/‖τ_i‖, v = (τ_j − ⟨τ_j, u⟩u)/‖·‖ instead, so axes are in parameter-distance units;
* ``landscape_random_plane`` — θ* + a·d1 + b·d2 around the current merge θ*, with seeded Gaussian directions
                          filter-normalised per output row (tensors with ≤ 1 dimension get 0: ``ignore='biasbn'``).

Plane grids are built by direct arithmetic on resident float32 tensors. Every grid point's merge is handed to
``scorer(state_dict) -> float`` (or an evaluator whose ``evaluate(state_dict)`` returns a dict; its ``"average"`` is
used). The dict passed to the scorer is reused for the next point: copy what you keep. Every function takes
``progress(fraction, message)``, called after each evaluation (grid points, then markers; the last with fraction 1)
with a message that counts them and estimates the time left: "landscape point 12/121 · about 1 min 10 s left".

Results are plain numbers: ``{"kind", "x": {"label", "values"}, "y": {…} (2-D), "z": rows over y of values over x
(1-D: a list), "score_name", "markers": [{"name", "x", "y", "score", "residual"}], "trajectories": [{"name", "x",
"y", "score", "residual", "step"}], "evaluations", "seconds"}``. ``residual`` is the relative distance of a point
from the plane (‖δ − proj δ‖/‖δ‖; 0 = on the plane) — projected points with a large residual are far off the plot.

Trajectories: for parameter grids, points are ``[x, y]`` pairs or ``{"x", "y"}`` (passed through). For planes, a
point is a state dict, ``{"state": …}``, ``{"coords": [c_1…c_n]}`` (θ = θ0 + Σ c_k τ_k over *all* the recipe's
experts, in order — what ``studio.learn`` records), ``{"lambda": [[model][tensor]]}`` (task-wise ``[[c]…]`` or
layer-wise with the trajectory's ``"keys"``, defaulting to the plane's tensor order), or a plain list of n numbers;
it is projected onto the plane by least squares. A ``"loss"`` or ``"score"`` carried by a point is kept for hover.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Sequence

import torch

from ..devices import resolve_device
from ..engine import merge_in_memory
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..layout import is_mergeable
from ..recipe import Recipe
from ..recipe.edit import SettingPath, plain_value, set_value
from ..sources.resolve import short_name
from .stats import resolve_inputs

Scorer = Callable[[dict], float]


# ------------------------------------------------------------------------------------------------------- helpers
def axis_values(lo: float, hi: float, points: int, integer: bool = False) -> list[float]:
    """``points`` evenly spaced values from ``lo`` to ``hi`` (both included); for a whole-number setting the distinct
    whole numbers they round to. The axes of landscapes, sweeps and grid searches."""
    xs = [lo + (hi - lo) * i / (points - 1) for i in range(points)] if points > 1 else [lo]
    return sorted({int(round(x)) for x in xs}) if integer else xs


def as_scorer(scorer, key: str = "average") -> Scorer:
    """A callable ``state_dict -> float`` from a callable or an evaluator with ``evaluate(state_dict)``."""
    fn = scorer.evaluate if hasattr(scorer, "evaluate") else scorer

    def score(sd) -> float:
        out = fn(sd)
        if isinstance(out, dict):
            for k in (key, "average", "loss", "score"):
                if k in out and isinstance(out[k], (int, float)):
                    return float(out[k])
            raise StudioError(f"the evaluator returned no numeric {key!r}", hint=f"keys: {', '.join(out)}")
        return float(out)

    return score


def _score_name(scorer, given: str | None) -> str:
    if given:
        return given
    return str(getattr(scorer, "metric", None) or getattr(scorer, "score_name", None) or "score")


def _as_recipe(obj):
    if isinstance(obj, str):
        return Recipe.load(obj)
    if isinstance(obj, dict):
        return Recipe.from_dict(obj)
    return obj


def _with(recipe: Recipe, path: SettingPath, value, layout) -> Recipe:
    """The recipe with one setting replaced (validated)."""
    return Recipe.from_dict(set_value(recipe.to_dict(), path, value, layout), where="landscape")


def _axis(path: SettingPath, values: list[float]) -> dict:
    return {"label": path.label, "values": values, "path": path.parts}


def _live(live_or_recipe, device):
    """→ (LiveMerger, the recipe it currently holds)."""
    if isinstance(live_or_recipe, LiveMerger):
        return live_or_recipe, live_or_recipe.plan.recipe
    recipe = _as_recipe(live_or_recipe)
    return LiveMerger(recipe, device=device), recipe


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


class _Evaluations:
    """Counts a landscape's evaluations (grid points, then markers) and reports each one to ``progress(fraction,
    message)`` with an estimate of the rest — the mean time of an evaluation so far times those left — so that the
    studio's progress bar and the CLI's say how long a plane will take: "landscape point 12/121 · about 1 min 10 s
    left", the last "landscape point 121/121 · done in 1 min 21 s"."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, max(1, total), 0
        self.t0 = time.perf_counter()

    def counted(self, score: Scorer) -> Scorer:
        def scored(state) -> float:
            value = score(state)
            self.step()
            return value

        return scored

    def step(self) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        when = f"about {_duration(left)} left" if self.done < self.total else f"done in {_duration(elapsed)}"
        self.progress(self.done / self.total, f"landscape point {self.done}/{self.total} · {when}")


# --------------------------------------------------------------------------------------------- recipe parameters
def landscape_1d(live_or_recipe, param_path, values: Sequence[float], scorer, *, device: str = "cpu",
                 score_name: str | None = None, progress=None) -> dict:
    """Score the merge while one setting sweeps ``values`` (everything else as in the recipe).

    The ``"current"`` marker is the recipe's own value (when it is a number), scored by merging the recipe itself.
    A LiveMerger passed in is left holding its original recipe.
    """
    t0 = time.perf_counter()
    path = SettingPath.parse(param_path)
    score = as_scorer(scorer)
    live, recipe = _live(live_or_recipe, device)
    layout = live.plan.layout
    values = [float(v) for v in values]
    cur = plain_value(recipe.to_dict(), path, layout)
    score = _Evaluations(progress, len(values) + (cur is not None)).counted(score)
    z = []
    try:
        for v in values:
            live.update(_with(recipe, path, v, layout))
            z.append(score(live.state))
    finally:
        live.update(recipe)
    markers = []
    if cur is not None:
        markers.append({"name": "current", "x": cur, "y": None, "score": score(live.state), "residual": 0.0})
    return {"kind": "param1d", "x": _axis(path, values), "z": z, "score_name": _score_name(scorer, score_name),
            "markers": markers, "trajectories": [], "evaluations": len(values) + len(markers),
            "seconds": time.perf_counter() - t0}


def landscape_params(live_or_recipe, path_x, values_x: Sequence[float], path_y, values_y: Sequence[float], scorer, *,
                     trajectories: Iterable | None = None, device: str = "cpu", score_name: str | None = None,
                     progress=None) -> dict:
    """Score a grid over two recipe settings; z[j][i] is the merge with x = values_x[i], y = values_y[j]."""
    t0 = time.perf_counter()
    px, py = SettingPath.parse(path_x), SettingPath.parse(path_y)
    score = as_scorer(scorer)
    live, recipe = _live(live_or_recipe, device)
    layout = live.plan.layout
    xs, ys = [float(v) for v in values_x], [float(v) for v in values_y]
    cx, cy = plain_value(recipe.to_dict(), px, layout), plain_value(recipe.to_dict(), py, layout)
    score = _Evaluations(progress, len(xs) * len(ys) + (cx is not None and cy is not None)).counted(score)
    z = []
    try:
        for j, y in enumerate(ys):
            row_recipe = _with(recipe, py, y, layout)
            # serpentine order: consecutive points differ in one setting, so fewer tensors re-merge
            order = range(len(xs)) if j % 2 == 0 else range(len(xs) - 1, -1, -1)
            vals = {}
            for i in order:
                live.update(_with(row_recipe, px, xs[i], layout))
                vals[i] = score(live.state)
            z.append([vals[i] for i in range(len(xs))])
    finally:
        live.update(recipe)
    markers = []
    if cx is not None and cy is not None:
        markers.append({"name": "current", "x": cx, "y": cy, "score": score(live.state), "residual": 0.0})
    trajs = []
    for n, tr in enumerate(_norm_trajectories(trajectories)):
        x, y, s, steps = [], [], [], []
        for k, p in enumerate(tr["points"]):
            if isinstance(p, dict):
                x.append(float(p["x"]))
                y.append(float(p["y"]))
                s.append(_point_score(p))
                steps.append(p.get("step", k))
            else:
                x.append(float(p[0]))
                y.append(float(p[1]))
                s.append(float(p[2]) if len(p) > 2 else None)
                steps.append(k)
        trajs.append({"name": tr.get("name") or f"trajectory {n + 1}", "x": x, "y": y, "score": s,
                      "residual": [0.0] * len(x), "step": steps})
    return {"kind": "params", "x": _axis(px, xs), "y": _axis(py, ys), "z": z,
            "score_name": _score_name(scorer, score_name), "markers": markers, "trajectories": trajs,
            "evaluations": len(xs) * len(ys) + len(markers), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------------- planes
class Plane:
    """θ(a, b) = origin + a·d1 + b·d2 over the mergeable tensors; other tensors fixed. All float32, resident."""

    def __init__(self, origin: dict, d1: dict, d2: dict, fixed: dict):
        self.keys = list(origin)
        self.origin, self.d1, self.d2, self.fixed = origin, d1, d2, fixed
        self.gram = torch.tensor([[_dot(d1, d1), _dot(d1, d2)], [_dot(d1, d2), _dot(d2, d2)]], dtype=torch.float64)
        self._buf = {k: torch.empty_like(v) for k, v in origin.items()}

    def state(self, a: float, b: float) -> dict:
        out = dict(self.fixed)
        for k in self.keys:
            buf = self._buf[k]
            torch.add(self.origin[k], self.d1[k], alpha=float(a), out=buf)
            buf.add_(self.d2[k], alpha=float(b))
            out[k] = buf
        return out

    def project(self, state: dict) -> tuple[float, float, float]:
        """Least-squares plane coordinates of ``state`` and its relative residual distance from the plane."""
        b1 = b2 = nn = 0.0
        for k in self.keys:
            if k not in state:
                raise StudioError(f"a trajectory point lacks tensor {k!r}")
            o = self.origin[k]
            d = state[k].detach().to(o.device, torch.float32).reshape(o.shape) - o
            b1 += float(torch.sum(d.double() * self.d1[k].double()))
            b2 += float(torch.sum(d.double() * self.d2[k].double()))
            nn += float(torch.sum(d.double() ** 2))
        rhs = torch.tensor([b1, b2], dtype=torch.float64)
        c = torch.linalg.lstsq(self.gram, rhs.unsqueeze(1)).solution.flatten()
        proj2 = float(c @ rhs)
        res = math.sqrt(max(nn - proj2, 0.0)) / math.sqrt(nn) if nn > 0 else 0.0
        return float(c[0]), float(c[1]), res


def _dot(a: dict, b: dict) -> float:
    return sum(float(torch.sum(a[k].double() * b[k].double())) for k in a)


class _Models:
    """Base and experts read once into float32 on the device (zoo-sized models)."""

    def __init__(self, recipe_or_sources, device, base=None):
        self.device = resolve_device(device)
        base_src, experts, names = resolve_inputs(recipe_or_sources, base)
        self.names = names
        self.base_src, self.experts = base_src, experts
        self.keys, self.fixed, self.base = [], {}, {}
        for k in base_src.keys():
            info = base_src.info(k)
            t = base_src.get(k)
            ok = (is_mergeable(k, info.dtype) and all(k in s and s.info(k).shape == info.shape for s in experts))
            if ok:
                self.keys.append(k)
                self.base[k] = t.to(self.device, torch.float32, copy=True)
            else:
                self.fixed[k] = t.to(self.device, copy=True)
        self._tau: dict[int, dict] = {}

    def index(self, who) -> int:
        if isinstance(who, int):
            if not -len(self.names) <= who < len(self.names):
                raise StudioError(f"expert index {who} out of range ({len(self.names)} experts)")
            return who % len(self.names)
        if who in self.names:
            return self.names.index(who)
        raise StudioError(f"no expert {who!r}", hint=f"experts: {', '.join(self.names)}")

    def tau(self, i: int) -> dict:
        if i not in self._tau:
            s = self.experts[i]
            self._tau[i] = {k: s.get(k).to(self.device, torch.float32) - self.base[k] for k in self.keys}
        return self._tau[i]

    def combo(self, coeffs: Sequence[float], per_key: dict | None = None) -> dict:
        """θ0 + Σ c_k τ_k (``per_key``: key → [c_k], layer-wise) as a full state dict."""
        out = dict(self.fixed)
        for k in self.keys:
            t = self.base[k].clone()
            cs = per_key[k] if per_key is not None else coeffs
            for i, c in enumerate(cs):
                if c:
                    t.add_(self.tau(i)[k], alpha=float(c))
            out[k] = t
        return out


def _point_score(p) -> float | None:
    if isinstance(p, dict):
        for k in ("score", "loss"):
            if _numeric(p.get(k)):
                return float(p[k])
    return None


def _norm_trajectories(trajectories) -> list[dict]:
    if trajectories is None:
        return []
    if isinstance(trajectories, dict):
        trajectories = [trajectories]
    out = []
    for tr in trajectories:
        if hasattr(tr, "trajectory"):  # a studio.learn LearnResult
            out.append({"name": getattr(tr, "method", None), "points": list(tr.trajectory)})
        elif isinstance(tr, dict) and "points" in tr:
            out.append(dict(tr))
        elif isinstance(tr, dict) and "trajectory" in tr:
            out.append({"name": tr.get("method") or tr.get("name"), "points": list(tr["trajectory"])})
        else:
            out.append({"name": None, "points": list(tr)})
    return out


def _point_state(models: _Models, p, keys_hint):
    if isinstance(p, dict) and "state" in p:
        return p["state"]
    if isinstance(p, dict) and p and all(isinstance(v, torch.Tensor) for v in p.values()):
        return p
    if isinstance(p, dict) and "coords" in p:
        return models.combo([float(c) for c in p["coords"]])
    if isinstance(p, dict) and "lambda" in p:
        lam = p["lambda"]
        if all(len(row) == 1 for row in lam):
            return models.combo([float(row[0]) for row in lam])
        keys = keys_hint or models.keys
        if any(len(row) != len(keys) for row in lam):
            raise StudioError(f"layer-wise lambda has {len(lam[0])} columns but {len(keys)} tensor names are known",
                              hint="give the trajectory a 'keys' list (the tensor order of its columns)")
        per_key = {k: [0.0] * len(lam) for k in models.keys}
        for j, k in enumerate(keys):
            if k in per_key:
                per_key[k] = [float(row[j]) for row in lam]
        return models.combo([], per_key)
    if isinstance(p, (list, tuple)) and all(_numeric(c) for c in p):
        if len(p) != len(models.names):
            raise StudioError(f"a coefficient point has {len(p)} values for {len(models.names)} experts")
        return models.combo(p)
    raise StudioError("unrecognised trajectory point", hint="use a state dict, {'coords': [...]}, {'lambda': [[...]]} "
                                                            "or a list of one coefficient per expert")


def _project_trajectories(plane: Plane, models: _Models, trajectories) -> list[dict]:
    out = []
    for n, tr in enumerate(_norm_trajectories(trajectories)):
        xs, ys, res, sc, steps = [], [], [], [], []
        for k, p in enumerate(tr["points"]):
            a, b, r = plane.project(_point_state(models, p, tr.get("keys")))
            xs.append(a)
            ys.append(b)
            res.append(r)
            sc.append(_point_score(p))
            steps.append(p.get("step", k) if isinstance(p, dict) else k)
        out.append({"name": tr.get("name") or f"trajectory {n + 1}", "x": xs, "y": ys, "score": sc, "residual": res,
                    "step": steps})
    return out


def _grid(plane: Plane, xs, ys, score) -> list[list[float]]:
    return [[score(plane.state(a, b)) for a in xs] for b in ys]


def _linspace(lo, hi, steps) -> list[float]:
    return [float(v) for v in torch.linspace(float(lo), float(hi), int(steps), dtype=torch.float64)]


def _current_state(current, device):
    """A state dict for the 'current recipe' marker from a LiveMerger, a Recipe, or a state dict."""
    if current is None:
        return None
    if isinstance(current, LiveMerger):
        return current.state
    if isinstance(current, dict) and current and all(isinstance(v, torch.Tensor) for v in current.values()):
        return current
    return merge_in_memory(_as_recipe(current), device=str(device))


def landscape_task_plane(recipe_or_sources, scorer, i=0, j=1, *, alphas: Sequence[float] | None = None,
                         betas: Sequence[float] | None = None, steps: int = 11, orthonormal: bool = False,
                         current=None, trajectories=None, device: str = "cpu", score_name: str | None = None,
                         progress=None, base=None) -> dict:
    """Score θ0 + α·τ_i + β·τ_j over a grid (default α, β ∈ [−0.5, 1.5], ``steps`` each).

    ``recipe_or_sources``: a Recipe / YAML path / LiveMerger (its recipe; its merge is the ``current`` marker) or
    ``[base, expert, …]``. ``i``, ``j``: the two experts (index among the non-base models, or reference).
    ``current``: the merge to mark (LiveMerger, Recipe or state dict); defaults to the recipe's own merge.
    Markers: base, both experts, their average, the current merge (projected; its score is the true merge's).
    """
    t0 = time.perf_counter()
    score = as_scorer(scorer)
    src = recipe_or_sources
    if isinstance(src, LiveMerger):
        current = src if current is None else current
        src = src.plan.recipe
    elif current is None and (isinstance(src, str) or hasattr(src, "merge_method")
                              or (isinstance(src, dict) and "merge_method" in src)):
        current = src
    models = _Models(src, device, base)
    ii, jj = models.index(i), models.index(j)
    if ii == jj:
        raise StudioError("the task-vector plane needs two different experts")
    ti, tj = models.tau(ii), models.tau(jj)
    names = (models.names[ii], models.names[jj])
    short = tuple(short_name(n) for n in names)
    if orthonormal:
        ni = math.sqrt(_dot(ti, ti))
        if ni == 0:
            raise StudioError(f"the task vector of {names[0]} is zero")
        u = {k: v / ni for k, v in ti.items()}
        c = _dot(tj, u)
        w = {k: tj[k] - c * u[k] for k in tj}
        nw = math.sqrt(_dot(w, w))
        if nw == 0:
            raise StudioError(f"the task vectors of {names[0]} and {names[1]} are parallel")
        v = {k: t / nw for k, t in w.items()}
        plane = Plane(models.base, u, v, models.fixed)
        pts = {"base": (0.0, 0.0), names[0]: (ni, 0.0), names[1]: (c, nw), "average": ((ni + c) / 2, nw / 2)}
        span = max(ni, math.hypot(c, nw))
        lo, hi = -0.5 * span, 1.5 * span
        xl, yl = f"along τ({short[0]}) (parameter distance)", f"orthogonal, toward τ({short[1]}) (parameter distance)"
    else:
        plane = Plane(models.base, ti, tj, models.fixed)
        pts = {"base": (0.0, 0.0), names[0]: (1.0, 0.0), names[1]: (0.0, 1.0), "average": (0.5, 0.5)}
        lo, hi = -0.5, 1.5
        xl, yl = f"α · τ({short[0]})", f"β · τ({short[1]})"
    xs = [float(a) for a in alphas] if alphas is not None else _linspace(lo, hi, steps)
    ys = [float(b) for b in betas] if betas is not None else _linspace(lo, hi, steps)
    score = _Evaluations(progress, len(xs) * len(ys) + len(pts) + (current is not None)).counted(score)
    z = _grid(plane, xs, ys, score)
    markers = [{"name": n, "x": a, "y": b, "score": score(plane.state(a, b)), "residual": 0.0}
               for n, (a, b) in pts.items()]
    cur = _current_state(current, device)
    if cur is not None:
        a, b, r = plane.project(cur)
        markers.append({"name": "current", "x": a, "y": b, "score": score(cur), "residual": r})
    trajs = _project_trajectories(plane, models, trajectories)
    return {"kind": "task_plane", "orthonormal": bool(orthonormal), "experts": list(names),
            "x": {"label": xl, "values": xs}, "y": {"label": yl, "values": ys}, "z": z,
            "score_name": _score_name(scorer, score_name), "markers": markers, "trajectories": trajs,
            "evaluations": len(xs) * len(ys) + len(markers), "seconds": time.perf_counter() - t0}


def filter_normalized_direction(center: dict, keys: Sequence[str], generator: torch.Generator) -> dict:
    """Gaussian direction scaled per output row to the row norms of ``center``; tensors with dim ≤ 1 get zeros."""
    out = {}
    for k in keys:
        c = center[k]
        if c.dim() <= 1:
            out[k] = torch.zeros_like(c)
            continue
        d = torch.randn(c.shape, generator=generator, dtype=torch.float32).to(c.device)
        rows_d = d.reshape(c.shape[0], -1)
        rows_c = c.reshape(c.shape[0], -1)
        scale = rows_c.norm(dim=1) / (rows_d.norm(dim=1) + 1e-10)
        out[k] = (rows_d * scale.unsqueeze(1)).reshape(c.shape)
    return out


def landscape_random_plane(live_or_recipe, scorer, *, span: float = 1.0, steps: int = 11, seed: int = 0,
                           trajectories=None, device: str = "cpu", score_name: str | None = None,
                           progress=None) -> dict:
    """Score θ* + a·d1 + b·d2 for a, b ∈ [−span, span] around the current merge θ* (Li et al. 2018 directions).

    ``live_or_recipe``: LiveMerger, Recipe / YAML path, or a state dict (then trajectories must be state dicts).
    The directions are drawn from ``torch.Generator().manual_seed(seed)`` (d1 then d2, tensors in key order).
    """
    t0 = time.perf_counter()
    score = as_scorer(scorer)
    dev = resolve_device(device)
    models = None
    if isinstance(live_or_recipe, dict) and live_or_recipe and all(isinstance(v, torch.Tensor)
                                                                   for v in live_or_recipe.values()):
        center_sd = live_or_recipe
    else:
        live, recipe = _live(live_or_recipe, device)
        center_sd = live.state
        if trajectories is not None:
            try:
                models = _Models(recipe, device)
            except StudioError:
                models = None
    keys = [k for k in center_sd if center_sd[k].is_floating_point() and is_mergeable(k, center_sd[k].dtype)]
    center = {k: center_sd[k].detach().to(dev, torch.float32, copy=True) for k in keys}
    fixed = {k: v for k, v in center_sd.items() if k not in center}
    g = torch.Generator().manual_seed(int(seed))
    d1 = filter_normalized_direction(center, keys, g)
    d2 = filter_normalized_direction(center, keys, g)
    plane = Plane(center, d1, d2, fixed)
    xs = ys = _linspace(-span, span, steps)
    score = _Evaluations(progress, len(xs) * len(ys) + 1).counted(score)
    z = _grid(plane, xs, ys, score)
    markers = [{"name": "current", "x": 0.0, "y": 0.0, "score": score(plane.state(0.0, 0.0)), "residual": 0.0}]
    trajs = []
    if trajectories is not None:
        if models is None:
            class _StateOnly:
                names: list = []
                keys = list(center)

                def combo(self, *a, **k):
                    raise StudioError("coefficient trajectories need a recipe with a base model; pass state dicts")
            models = _StateOnly()
        trajs = _project_trajectories(plane, models, trajectories)
    return {"kind": "random_plane", "seed": int(seed), "x": {"label": "d1 (filter-normalised)", "values": xs},
            "y": {"label": "d2 (filter-normalised)", "values": ys}, "z": z,
            "score_name": _score_name(scorer, score_name), "markers": markers, "trajectories": trajs,
            "evaluations": len(xs) * len(ys) + 1, "seconds": time.perf_counter() - t0}


def landscape_2d(live_or_recipe, scorer, *, plane: str = "task", **kwargs) -> dict:
    """One entry point for the three grids: ``plane="task"`` (kwargs of :func:`landscape_task_plane`),
    ``"params"`` (``path_x, values_x, path_y, values_y``, see :func:`landscape_params`) or ``"random"``
    (:func:`landscape_random_plane`)."""
    if plane == "task":
        return landscape_task_plane(live_or_recipe, scorer, **kwargs)
    if plane == "params":
        return landscape_params(live_or_recipe, kwargs.pop("path_x"), kwargs.pop("values_x"), kwargs.pop("path_y"),
                                kwargs.pop("values_y"), scorer, **kwargs)
    if plane == "random":
        return landscape_random_plane(live_or_recipe, scorer, **kwargs)
    raise StudioError(f"unknown landscape plane {plane!r}", hint="use task, params or random")
