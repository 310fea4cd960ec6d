"""The Ray backend against the local one on the toy search: the same trials and values with two workers (results in
the batch's order whatever worker ran them), the same clear error and stored failed trial for a failing evaluator,
a worker that cannot load the search said on the driver, and no actors left once closed."""

import pickle
import sys
import time

import pytest

from search_toys import make_search

from studio.errors import StudioError
from studio.search import LocalBackend, Scorer, open_study, prepare, run_search
from studio.search.ray_backend import RayBackend, describe_for_workers, search_from_description

pytest.importorskip("optuna")
ray = pytest.importorskip("ray")
SLOW = "python:toy_objective:slow_score"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(search, backend_for, storage=None, name="search"):
    """The search run to its end on the backend ``backend_for(search, evaluators)`` builds; the study, and the
    StudioError it ended with (None when it ran through)."""
    evaluators = prepare(search)
    study = open_study(search, storage, name)
    backend = backend_for(search, evaluators)
    try:
        run_search(search, study, backend)
        return study, None
    except StudioError as e:
        return study, e
    finally:
        backend.close()


def local(search, evaluators):
    return LocalBackend(Scorer(search, evaluators))


def on_ray(search, evaluators):
    return RayBackend(search, workers=2)


def trials(study):
    return [(t.number, t.state.name, t.params, t.values, t.user_attrs.get("error")) for t in study.trials]


def free_cpus(expected: float, within: float = 15.0) -> float:
    """Ray's free CPUs once they reach ``expected`` (freed resources are reported a moment later), else the last."""
    end = time.monotonic() + within
    while True:
        got = ray.available_resources().get("CPU", 0.0)
        if got == expected or time.monotonic() > end:
            return got
        time.sleep(0.2)


def test_the_description_a_worker_gets_is_plain_and_rebuilds_the_search(family):
    search = make_search(family, objective="python:toy_objective:score,min")
    prepare(search)
    desc = pickle.loads(pickle.dumps(describe_for_workers(search, "cpu")))
    again = search_from_description(desc)
    assert again.recipe.to_dict() == search.recipe.to_dict()
    assert again.dims == search.dims and again.objectives == search.objectives
    assert again.directions == search.directions == ["minimize"] and again.device == "cpu"


def test_ray_workers_score_the_same_trials_as_the_local_backend_and_leave_no_actors(family, local_ray):
    # 12 TPE trials in batches of 4: the last two are drawn from the values told before them, in trial order; trials
    # of uneven length end out of order on two workers
    at_home, error = run(make_search(family, "tpe", 12, seed=3, batch=4, objective=SLOW), local)
    assert error is None
    held = []

    def watched(search, evaluators):
        backend = RayBackend(search, workers=2)
        held.append((backend, free_cpus(0.0)))      # one CPU held by each worker while it lives
        return backend

    on_cluster, error = run(make_search(family, "tpe", 12, seed=3, batch=4, objective=SLOW), watched)
    assert error is None
    assert trials(on_cluster) == trials(at_home)
    assert len({t.params["models.0.weight"] for t in on_cluster.trials}) == 12
    (backend, cpus_while_open), = held
    assert cpus_while_open == 0.0
    assert backend.actors == [] and free_cpus(2.0) == 2.0   # closed by run()
    from ray._private import state       # no public listing of actors without the dashboard
    assert {a["State"] for a in state.actors().values()} <= {"DEAD"}
    assert ray.is_initialized()          # this backend did not start Ray: it leaves it running


def test_a_failing_evaluator_on_ray_ends_as_it_does_locally(family, local_ray, tmp_path):
    url = f"sqlite:///{tmp_path / 'failing.db'}"
    results = [run(make_search(family, "random", 6, objective="python:toy_objective:broken"), backend, url, name)
               for backend, name in [(local, "local"), (on_ray, "ray")]]
    (at_home, local_error), (on_cluster, ray_error) = results
    assert ray_error is not None and str(ray_error) == str(local_error)
    assert "trial 0 failed: " in str(ray_error) and "ValueError: no" in str(ray_error)
    search = make_search(family, "random", 6, objective="python:toy_objective:broken")
    prepare(search)
    stored = open_study(search, url, "ray")
    assert trials(stored) == trials(at_home)
    assert [t.state.name for t in stored.trials] == ["FAIL"] * 4


def test_a_worker_that_cannot_load_the_search_is_said_on_the_driver(family, local_ray):
    search = make_search(family, objective="python:toy_objective:missing")  # unprepared: only the workers see it
    with pytest.raises(StudioError, match="Ray worker 0 cannot load the search: .*'toy_objective' has no 'missing'"):
        RayBackend(search, workers=2)
    assert free_cpus(2.0) == 2.0


def test_more_workers_than_the_cluster_holds_are_refused_before_any_starts(family, local_ray):
    with pytest.raises(StudioError, match="3 workers need 3 CPUs; the Ray cluster has 2"):
        RayBackend(make_search(family), workers=3)
    with pytest.raises(StudioError, match="2 workers need 2 GPUs; the Ray cluster has 0"):
        RayBackend(make_search(family), workers=2, gpus_per_worker=1)
    assert free_cpus(2.0) == 2.0


def test_without_ray_the_error_says_what_to_install(family, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(StudioError, match="requirements-distributed.txt"):
        RayBackend(make_search(family))
