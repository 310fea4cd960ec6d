"""The Optimize panel's search on the session level: a search of the toy family against an objective with a known
optimum finds it, its best trial loaded into the sliders is the recipe it scored, Stop ends a run early with the
storage consistent, and bad evaluators are clear messages before anything runs."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from studio.engine import merge_in_memory
from studio.errors import StudioError
from studio.recipe import Recipe
from studio.ui.searching import progress_markdown

optuna = pytest.importorskip("optuna")
KEY = "embed.weight"
LAMBDA = 0.4


@pytest.fixture()
def objective(env, toy_family, tmp_path):
    """A module in the allowed folder scoring a merge by its distance from task arithmetic with λ = 0.4 (0 there)."""
    base = load_file(str(toy_family.base))[KEY]
    target = base + LAMBDA * sum(load_file(str(p))[KEY] - base for p in toy_family.experts.values())
    torch.save(target, tmp_path / "target.pt")
    (tmp_path / "search_ui_objective.py").write_text(textwrap.dedent(f"""
        import time
        import torch
        TARGET = torch.load({str(tmp_path / 'target.pt')!r})

        def score(state):
            return -float(((state[{KEY!r}].float() - TARGET) ** 2).sum())

        def slow(state):
            time.sleep(0.05)
            return score(state)

        def broken(state):
            raise ValueError("no")
    """))
    sys.path.insert(0, str(tmp_path))
    sys.modules.pop("search_ui_objective", None)
    yield "python:search_ui_objective"
    sys.path.remove(str(tmp_path))


def finished(s, timeout=60):
    run = s.searching.wait(timeout)
    assert run.finished, "the search did not end"
    return run


def test_a_grid_search_finds_the_known_optimum_and_loads_it_into_the_sliders(env, objective):
    s = env.new_session()
    choices = dict((v, k) for k, v in s.searching.setting_choices())
    assert choices["parameters.lambda"] == "λ (lambda) (all models) [0, 3]"  # the declared range
    assert "every group" in choices["parameters.lambda@EMB..HEAD"] and "models.2.weight@L01" not in choices
    s.searching.choose(["parameters.lambda"])
    s.searching.start(ranges="parameters.lambda=0:1", own=f"{objective}:score", sampler="grid", trials=50,
                      grid_points=11)
    run = finished(s)
    assert run.error is None and not run.stopped
    p = s.searching.progress()
    assert p["done"] == 11 and p["directions"] == ["maximize"] and "Finished" in progress_markdown(p)
    headers, rows = s.searching.best_rows()
    assert headers == ["trial", f"{objective}:score", "parameters.lambda"]
    best = rows[0]
    assert best[2] == pytest.approx(LAMBDA) and best[1] == pytest.approx(0.0, abs=1e-9)
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    fig = s.searching.figure()
    values = [v[0] for _, v in p["points"]]
    assert list(fig.data[0].y) == values and list(fig.data[1].y) == [max(values[:k + 1]) for k in range(11)]
    # the stored study says the same: best trial, 11 complete trials
    study = optuna.load_study(study_name=run.name, storage=run.storage)
    assert study.best_trial.number == best[0] and len(study.trials) == 11

    before = s.recipe
    s.searching.load(best[0])
    assert s.recipe["parameters"]["lambda"] == pytest.approx(LAMBDA) and s.recipe != before
    trial_recipe = Recipe.from_yaml(study.best_trial.user_attrs["recipe"])
    assert s.recipe == trial_recipe.to_dict()
    merged = merge_in_memory(s.recipe_obj())
    import search_ui_objective
    assert search_ui_objective.score(merged) == pytest.approx(study.best_trial.value, abs=1e-9)
    s.preview()
    for k, v in merge_in_memory(trial_recipe).items():
        assert torch.equal(v, s.live.state[k]), k
    assert s.undo() and s.recipe == before


def test_trials_become_a_trajectory_over_two_searched_settings(env, objective):
    s = env.new_session()
    s.searching.start(["parameters.lambda", "models.0.weight"], ranges="models.0.weight=0.5:1.5",
                      own=f"{objective}:score", sampler="random", trials=5, seed=3)
    run = finished(s)
    assert run.error is None
    tr = s.searching.trajectory("models.0.weight", "parameters.lambda")
    rows = [r for r in run.rows if r["state"] == "complete"]
    assert [(pt["x"], pt["y"], pt["score"]) for pt in tr["points"]] == \
        [(r["models.0.weight"], r["parameters.lambda"], r[f"{objective}:score"]) for r in rows]
    assert all(0.5 <= pt["x"] <= 1.5 and 0 <= pt["y"] <= 3 for pt in tr["points"]) and len(rows) == 5
    assert s.searching.trajectory("models.1.weight", "parameters.lambda") is None
    data = s.landscapes.params_plane("models.0.weight", "parameters.lambda", steps=3)
    assert data["trajectories"][0]["x"] == [pt["x"] for pt in tr["points"]]
    assert data["x"]["values"][0] <= 0.5 and data["x"]["values"][-1] >= 1.5


def test_stop_ends_a_run_early_and_the_storage_stays_consistent(env, objective):
    s = env.new_session()
    s.searching.start(["parameters.lambda"], own=f"{objective}:slow", sampler="random", trials=400)
    for _ in range(400):
        if s.searching.progress()["done"] >= 2:
            break
        s.searching.wait(0.05)
    assert s.searching.stop()
    run = finished(s)
    assert run.stopped and run.error is None and 2 <= len(run.points) < 400
    assert "Stopped" in progress_markdown(s.searching.progress())
    study = optuna.load_study(study_name=run.name, storage=run.storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * len(run.points)
    assert [t.number for t in study.trials] == [n for n, _ in run.points]
    assert not s.searching.stop()  # nothing runs any more


def test_bad_evaluators_and_settings_are_clear_messages(env, objective):
    s = env.new_session()
    for kwargs, words in [(dict(own="python:no_such_module_here:f"), "cannot find the module"),
                          (dict(own="python:/etc/no_scores.py:f"), "outside the folders"),
                          (dict(own="python:os:getcwd"), "outside the folders"),
                          (dict(own="nonsense:x"), "unknown evaluator"),
                          (dict(own=f"{objective}:score", settings=[]), "at least one setting"),
                          (dict(own=f"{objective}:score", ranges="parameters.lambda=1:0"), "LO < HI"),
                          (dict(own=f"{objective}:score", sampler="annealing"), "unknown sampler"),
                          (dict(own=f"{objective}:score", trials=0), "trials")]:
        kwargs.setdefault("settings", ["parameters.lambda"])
        with pytest.raises(StudioError, match=words):
            s.searching.start(**kwargs)
        assert not s.searching.running
    s.searching.start(["parameters.lambda"], own=f"{objective}:broken", sampler="random", trials=5)
    run = finished(s)
    assert "trial 0 failed" in run.error and "ValueError" in run.error
    assert "Search ended" in progress_markdown(s.searching.progress())
    with pytest.raises(StudioError, match="not completed"):
        s.searching.load(0)
    study = optuna.load_study(study_name=run.name, storage=run.storage)
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_a_scorer_beside_the_models_is_found_without_an_import_path(env, tmp_path):
    """``python:MODULE:FUNCTION`` with MODULE.py in an allowed folder (not on sys.path), and the same as
    ``python:FILE.py:FUNCTION``: both read the file there and score the same."""
    (tmp_path / "beside_scores.py").write_text("def total(state):\n    return float(sum(v.float().sum() for v in "
                                               "state.values()))\n")
    values = []
    for own in ("python:beside_scores:total", f"python:{tmp_path / 'beside_scores.py'}:total"):
        s = env.new_session()
        s.searching.start(["parameters.lambda"], own=own, sampler="grid", trials=3, grid_points=3)
        run = finished(s)
        assert run.error is None and len(run.points) == 3
        values.append([v for _, v in run.points])
    assert values[0] == values[1]
