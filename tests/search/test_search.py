"""Searches over recipe settings: a quadratic toy objective (a callable on the merged state) whose optimum is known
in closed form, seeded repeatability, resuming from storage, a trial's recipe reproducing its score through the CLI,
and bad ranges, paths and evaluators ending as clear errors with the storage left consistent."""

import pytest
import yaml

from search_toys import TARGET, make_search, recipe
from tinymodels import load_state

import studio  # noqa: F401 — registers the methods and evaluators
from studio.cli import main
from studio.engine import merge_in_memory
from studio.errors import RecipeError, StudioError
from studio.recipe import Recipe
from studio.search import (LocalBackend, Objective, Scorer, finished, open_study, prepare, run_search, search_space,
                           trial_rows)
from studio.search.study import best_trials, search_layout

pytest.importorskip("optuna")


def run(search, storage=None, name="search"):
    evaluators = prepare(search)
    study = open_study(search, storage, name)
    run_search(search, study, LocalBackend(Scorer(search, evaluators)))
    return study


@pytest.mark.parametrize("sampler, trials, tol", [("cmaes", 60, 0.05), ("tpe", 60, 0.12), ("grid", 36, 1e-9)])
def test_a_search_finds_the_known_optimum(family, sampler, trials, tol):
    search = make_search(family, sampler, trials)
    if sampler == "grid":
        search.grid_points = 6        # 0, 0.2, …, 1 holds the optimum exactly
    study = run(search)
    best = best_trials(study, search)[0]
    assert best.params["models.0.weight"] == pytest.approx(TARGET[0], abs=tol)
    assert best.params["models.1.weight"] == pytest.approx(TARGET[1], abs=tol)
    if sampler == "grid":
        assert best.values[0] == pytest.approx(0.0, abs=1e-9)


def test_seeded_searches_repeat_exactly_and_other_seeds_differ(family):
    one, two = (run(make_search(family, "tpe", 12, seed=5)) for _ in range(2))
    other = run(make_search(family, "tpe", 12, seed=6))
    params = [[t.params for t in s.trials] for s in (one, two, other)]
    assert params[0] == params[1] and params[0] != params[2]
    assert [t.values for t in one.trials] == [t.values for t in two.trials]


def test_a_resumed_search_continues_from_its_storage(family, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    search = make_search(family, "random", 8)
    study = run(search, url)
    assert finished(study) == 8
    first = [t.params["models.0.weight"] for t in study.trials]
    longer = make_search(family, "random", 14)
    again = run(longer, url)
    rows = trial_rows(again, longer)
    assert len(rows) == 14 and [r["trial"] for r in rows] == list(range(14))
    assert [r["models.0.weight"] for r in rows[:8]] == first and len(set(r["models.0.weight"] for r in rows)) == 14
    with pytest.raises(StudioError, match="another search"):
        run(make_search(family, "tpe", 14), url)


def test_a_trials_recipe_merged_by_the_cli_reproduces_its_score(family, tmp_path):
    search = make_search(family, "random", 4)
    study = run(search)
    best = best_trials(study, search)[0]
    (tmp_path / "best.yml").write_text(best.user_attrs["recipe"])
    assert main(["merge", str(tmp_path / "best.yml"), str(tmp_path / "out"), "--quiet"]) == 0
    import toy_objective
    assert toy_objective.score(load_state(tmp_path / "out")) == pytest.approx(best.values[0], rel=1e-6)
    merged = merge_in_memory(Recipe.from_dict(yaml.safe_load(best.user_attrs["recipe"])))
    assert toy_objective.score(merged) == pytest.approx(best.values[0], rel=1e-6)


def test_bad_ranges_paths_and_evaluators_are_clear_errors(family, tmp_path):
    r = recipe(family)
    layout = search_layout(r)
    for spec, words in [("models.*.weight=1:0", "LO < HI"), ("models.*.weight=a:b", "LO:HI numbers"),
                        ("parameters.nope", "no parameter"), ("models.*.weight@L99", "no group"),
                        ("lambda=-1:nan", "LO < HI"), ("normalize", "not a number")]:
        with pytest.raises(RecipeError, match=words):
            search_space(r, [spec], layout)
    with pytest.raises(StudioError, match="unknown evaluator"):
        Objective.parse("nonsense:x")
    with pytest.raises(StudioError, match="cannot import"):
        prepare(make_search(family, objective="python:no_such_module:f"))
    with pytest.raises(StudioError, match="CMA-ES optimises one objective"):
        s = make_search(family, "cmaes")
        s.objectives.append(Objective.parse("python:toy_objective:score,min"))
        prepare(s)
    url = f"sqlite:///{tmp_path / 'failing.db'}"
    for fn, words in [("broken", "ValueError"), ("words", "returned str")]:
        search = make_search(family, "random", 6, objective=f"python:toy_objective:{fn}")
        with pytest.raises(StudioError, match=f"trial 0 failed: .*{words}"):
            run(search, url, name=fn)
        study = open_study(search, url, fn)      # consistent: the failed trial is stored as failed, nothing runs on
        assert [t.state.name for t in study.trials] == ["FAIL"] * search.batch or \
            [t.state.name for t in study.trials][0] == "FAIL"


def test_a_scorer_file_is_read_by_its_path(family):
    """``python:FILE.py:FUNCTION`` reads a file on no import path: the same trials and scores as the module form."""
    by_name = run(make_search(family, "random", 4))
    by_file = run(make_search(family, "random", 4, objective=f"python:{family['root'] / 'toy_objective.py'}:score"))
    assert [t.values for t in by_name.trials] == [t.values for t in by_file.trials]
    with pytest.raises(StudioError, match="cannot import"):
        prepare(make_search(family, objective=f"python:{family['root'] / 'missing.py'}:score"))
