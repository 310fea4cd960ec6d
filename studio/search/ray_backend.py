"""Scoring a search's trials on Ray workers: one actor per worker, each holding its own resident :class:`Scorer`.

The driver (:func:`studio.search.run_search`) asks and tells Optuna exactly as with the local backend; this backend
only scores a batch on several workers at once and hands the results back in the batch's order. A worker builds its
scorer from a plain description of the search (:func:`describe_for_workers`) — the recipe as a dict, the settings,
the objectives as text — and keeps its inputs resident across trials, as the live merger does in the studio. A trial's
score depends only on its settings (the live merger re-merges what changed from the inputs, never from the previous
trial), so which worker ran it does not matter: with the same seed the trials and their values are the local
backend's.

Workers see the driver's files by the same paths (shared storage, or hub ids in each node's HF cache): a worker
starts in the driver's folder when that folder exists on its node, and imports from the driver's ``sys.path`` (a
``python:module:function`` objective's module) besides its own.

Ray is an optional dependency (requirements-distributed.txt) and is imported only here.
"""

from __future__ import annotations

import os
import sys

from ..errors import StudioError
from ..recipe import Recipe
from ..recipe.edit import SettingPath
from .objectives import Objective
from .space import Dimension
from .study import Scorer, Search, TrialResult

INSTALL_HINT = "pip install -r requirements-distributed.txt"


def _ray():
    try:  # optional and heavy: only a search on Ray needs it
        import ray
    except ImportError:
        raise StudioError("searching on Ray needs ray", where="--backend ray", hint=INSTALL_HINT) from None
    return ray


# ------------------------------------------------------------------------------------------------ the description
def describe_for_workers(search: Search, device: str) -> dict:
    """What a worker needs to build its scorer, as plain picklable data (no tensors, no open files)."""
    return {"recipe": search.recipe.to_dict(), "dims": [d.to_dict() for d in search.dims],
            "objectives": [o.name for o in search.objectives], "directions": list(search.directions),
            "device": device, "cwd": os.getcwd(),
            "import_paths": [os.path.abspath(p or os.curdir) for p in sys.path]}


def search_from_description(desc: dict) -> Search:
    """The search a worker scores, rebuilt from :func:`describe_for_workers`'s description."""
    dims = [Dimension(SettingPath.parse(d["path"]), float(d["low"]), float(d["high"]), bool(d["integer"]))
            for d in desc["dims"]]
    objectives = [Objective.parse(name) for name in desc["objectives"]]
    if desc["directions"]:
        objectives = [Objective(o.source, o.key, d) for o, d in zip(objectives, desc["directions"])]
    return Search(Recipe.from_dict(desc["recipe"], where="search on a Ray worker"), dims, objectives,
                  device=desc["device"], directions=list(desc["directions"]))


def _enter_drivers_world(desc: dict) -> None:
    """Relative paths and user modules resolve on a worker as on the driver (where the node has the same folders)."""
    if os.path.isdir(desc["cwd"]):
        os.chdir(desc["cwd"])
    for p in desc["import_paths"]:
        if p not in sys.path:
            sys.path.append(p)


class TrialWorker:
    """A Ray actor's state (wrapped by :class:`RayBackend`): the search's scorer, resident between trials."""

    def __init__(self, desc: dict):
        self.scorer, self.problem = None, None
        try:
            _enter_drivers_world(desc)
            self.scorer = Scorer(search_from_description(desc))
        except StudioError as e:
            self.problem = str(e)
        except Exception as e:  # noqa: BLE001 — said on the driver in one line, not as a dead actor's traceback
            self.problem = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"

    def ready(self) -> str | None:
        """None once the scorer is built; else why it could not be."""
        return self.problem

    def score(self, values: dict[str, float]) -> TrialResult:
        return self.scorer.score(values)


# ------------------------------------------------------------------------------------------------ the backend
class RayBackend:
    """Scores each batch on ``workers`` Ray actors (``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each; a GPU
    worker merges and evaluates on ``cuda``, its own GPU). ``address``: a running cluster's (``HEAD:6379``, or
    ``auto``); None starts a local Ray of ``workers * cpus_per_worker`` CPUs — unless Ray is already initialised in
    this process, which is then used as it is. Raises StudioError when a worker cannot build the search's scorer."""

    def __init__(self, search: Search, workers: int = 2, address: str | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0):
        if workers < 1 or cpus_per_worker < 0 or gpus_per_worker < 0:
            raise StudioError("a Ray search needs at least one worker and no negative CPUs or GPUs per worker",
                              where="--workers")
        ray = _ray()
        self.ray, self.started = ray, False
        self.actors: list = []
        if not ray.is_initialized():
            self._start(address, workers * cpus_per_worker)
        try:
            self._check_room(workers, cpus_per_worker, gpus_per_worker)
            actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(TrialWorker)
            desc = describe_for_workers(search, "cuda" if gpus_per_worker > 0 else "cpu")
            self.actors = [actor.remote(desc) for _ in range(workers)]
            self._check_ready()
        except BaseException:
            self.close()
            raise

    def _start(self, address: str | None, cpus: float) -> None:
        ray = self.ray
        try:
            if address is None:
                ray.init(num_cpus=max(1, int(round(cpus))), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise StudioError(f"cannot reach Ray ({first})", where=address or "local Ray",
                              hint="start the head with `ray start --head` and give --address HEAD:6379; a head "
                                   "with token authentication needs its token here (~/.ray/auth_token, "
                                   "RAY_AUTH_MODE=token)") from None
        self.started = True

    def _check_room(self, workers: int, cpus: float, gpus: float) -> None:
        """Workers the cluster can never hold would wait for resources forever: refuse them now."""
        have = self.ray.cluster_resources()
        for name, each, flag in (("CPU", cpus, "--cpus-per-worker"), ("GPU", gpus, "--gpus-per-worker")):
            need, total = workers * each, have.get(name, 0.0)
            if need > total + 1e-9:
                raise StudioError(f"{workers} workers need {need:g} {name}s; the Ray cluster has {total:g}",
                                  where=flag, hint="give fewer --workers, fewer per worker, or add nodes "
                                                   "(ray start --address HEAD:6379 on each)")

    def _check_ready(self) -> None:
        ray = self.ray
        for i, actor in enumerate(self.actors):
            try:
                problem = ray.get(actor.ready.remote())
            except ray.exceptions.RayError as e:
                problem = _ray_failure(e)
            if problem is not None:
                raise StudioError(f"Ray worker {i} cannot load the search: {problem}", where="--backend ray",
                                  hint="every node needs the inputs at the same paths (shared storage) or the hub "
                                       "ids in its HF cache, and the objective's modules importable")

    def score(self, batch: list[dict[str, float]]) -> list[TrialResult]:
        """Each trial on the next idle worker; the results in the batch's order. A trial whose worker raises or dies
        fails with the reason (as the local backend's failed trials; the driver stores it and stops); a dead worker
        takes no more trials."""
        ray = self.ray
        results: list[TrialResult | None] = [None] * len(batch)
        todo = list(enumerate(batch))[::-1]
        idle = list(self.actors)
        running: dict = {}  # object ref → (trial index, actor)
        while todo or running:
            while todo and idle:
                i, values = todo.pop()
                actor = idle.pop(0)
                running[actor.score.remote(values)] = (i, actor)
            if not running:  # every worker died: the rest cannot run
                for i, _ in todo:
                    results[i] = TrialResult(error="no Ray worker is left to score this trial")
                break
            done, _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(done[0])
            try:
                results[i] = ray.get(done[0])
                idle.append(actor)
            except ray.exceptions.RayTaskError as e:  # the scorer raised past its own errors: the worker lives on
                results[i] = TrialResult(error=f"the Ray worker raised {_ray_failure(e)}")
                idle.append(actor)
            except ray.exceptions.RayError as e:  # the worker died (out of memory, its node lost)
                results[i] = TrialResult(error=f"the Ray worker died: {_ray_failure(e)}")
                self.actors.remove(actor)
        return results

    def close(self) -> None:
        """Kill the workers; shut Ray down when this backend started it."""
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 — an actor already gone is what close wants
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False


def _ray_failure(e: BaseException) -> str:
    """A Ray error's cause in one line (a task's exception, or why an actor died)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(e)):
        e = cause
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
