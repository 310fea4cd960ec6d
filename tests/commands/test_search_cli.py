"""``python -m studio search`` on tiny llamas with a quadratic objective whose optimum is known: the files it writes
(best recipe, trials, report), the best recipe merged by ``merge`` reproducing its score, the --json contract,
resuming through the CLI, a Pareto front that no trial dominates, Ctrl-C keeping the trials, and bad input as one
stderr line with the storage untouched."""

import csv
import json
import sys

import pytest
import yaml

from search_toys import TARGET, build_family
from search_toys import recipe as toy_recipe
from tinymodels import load_state

import studio  # noqa: F401 — registers the methods and evaluators
from studio.cli import main

pytest.importorskip("optuna")
SCORE = "python:cli_search_toy:score"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_cli")
    f = build_family(root, module="cli_search_toy")
    (root / "recipe.yml").write_text(toy_recipe(f).to_yaml())
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def search(toy, out, *extra, trials=12, evals=(SCORE,)):
    args = ["search", str(toy / "recipe.yml"), "--set-range", "models.*.weight=0:1", "--trials", str(trials),
            "--quiet"]
    for e in evals:
        args += ["--eval", e]
    return main(args + (["--out", str(out)] if out else []) + list(extra))


def rows_of(out):
    return json.loads((out / "trials.json").read_text())


def test_a_search_writes_its_best_recipe_trials_and_report_and_the_recipe_reproduces_its_score(toy, tmp_path):
    out = tmp_path / "out"
    assert search(toy, out, "--sampler", "tpe", "--batch", "3") == 0
    rows = rows_of(out)
    assert [r["trial"] for r in rows] == list(range(12)) and {r["state"] for r in rows} == {"complete"}
    with open(out / "trials.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r[SCORE]) for r in table] == pytest.approx([r[SCORE] for r in rows])
    assert float(table[3]["models.1.weight"]) == pytest.approx(rows[3]["models.1.weight"])
    best = max(rows, key=lambda r: r[SCORE])
    recipe = yaml.safe_load((out / "best.yml").read_text())
    assert [m["parameters"]["weight"] for m in recipe["models"]] == \
        pytest.approx([best["models.0.weight"], best["models.1.weight"]])
    assert main(["merge", str(out / "best.yml"), str(tmp_path / "merged"), "--quiet"]) == 0
    import cli_search_toy
    assert cli_search_toy.score(load_state(tmp_path / "merged")) == pytest.approx(best[SCORE], rel=1e-6)
    report = (out / "report.html").read_text()
    assert "Convergence: " + SCORE in report and "Setting importance" in report and "plotly" in report
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]   # no temporary sibling left


def test_json_output_is_the_whole_stdout_and_names_the_best_trial(toy, tmp_path, capsys):
    out = tmp_path / "out"
    assert search(toy, out, "--json", "--sampler", "cmaes", trials=30) == 0
    got = json.loads(capsys.readouterr().out)
    rows = rows_of(out)
    assert got["trials"] == got["complete"] == got["ran"] == 30 and got["failed"] == 0 and not got["interrupted"]
    assert got["objectives"] == [{"name": SCORE, "direction": "maximize"}] and got["sampler"] == "cmaes"
    assert got["storage"] == f"sqlite:///{(out / 'search.db').resolve()}" and got["study"] == "search"
    (best,) = got["best"]
    top = max(rows, key=lambda r: r[SCORE])
    assert best["trial"] == top["trial"] and best["values"] == {SCORE: top[SCORE]}
    assert best["params"] == {"models.0.weight": top["models.0.weight"], "models.1.weight": top["models.1.weight"]}
    assert best["recipe"] == got["files"]["best"] == str(out / "best.yml")
    # CMA-ES on the quadratic: near the known optimum after 30 trials
    assert best["params"]["models.0.weight"] == pytest.approx(TARGET[0], abs=0.1)
    assert best["params"]["models.1.weight"] == pytest.approx(TARGET[1], abs=0.1)


def test_the_same_command_with_more_trials_resumes_the_stored_search(toy, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    common = ("--storage", url, "--study", "mine", "--sampler", "random", "--json")
    assert search(toy, None, *common, trials=8) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["ran"] == 8 and first["files"] == {}       # no --out: only the storage is written
    out = tmp_path / "out"
    assert search(toy, out, *common, trials=14) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["trials"] == 14 and again["ran"] == 6 and again["storage"] == url
    rows = rows_of(out)
    assert [r["trial"] for r in rows] == list(range(14))
    assert len({r["models.0.weight"] for r in rows}) == 14   # resumed with the seed moved on: no trial drawn twice
    assert not (out / "search.db").exists()


def test_several_objectives_write_a_pareto_front_no_trial_dominates(toy, tmp_path):
    out = tmp_path / "out"
    size = "python:cli_search_toy:size"
    assert search(toy, out, trials=16, evals=(SCORE, size + ",min")) == 0     # nsga2 by default
    rows = rows_of(out)
    front = sorted((out / "pareto").iterdir())
    assert front and (out / "best.yml").read_text() == front[0].read_text()

    def dominates(p, q):
        return p[SCORE] >= q[SCORE] and p[size] <= q[size] and (p[SCORE] > q[SCORE] or p[size] < q[size])

    weights = [[m["parameters"]["weight"] for m in yaml.safe_load(f.read_text())["models"]] for f in front]
    # the recipes carry 6 significant digits
    on = [r for r in rows if any([r["models.0.weight"], r["models.1.weight"]] == pytest.approx(w, rel=1e-5)
                                 for w in weights)]
    assert len(on) == len(front) >= 2
    assert not any(dominates(r, p) for p in on for r in rows)
    assert all(any(dominates(p, r) for p in on) for r in rows if r not in on)
    assert "Pareto front" in (out / "report.html").read_text()


def test_ctrl_c_keeps_the_trials_so_far_writes_the_files_and_says_how_to_resume(toy, tmp_path, capsys):
    out = tmp_path / "out"
    stop = "python:cli_search_toy:ctrl_c_at_6"
    assert search(toy, out, "--sampler", "random", evals=(stop,)) == 130
    err = capsys.readouterr().err
    assert "interrupted after 4 of 12 trials" in err and "resume" in err and "--study search" in err
    rows = rows_of(out)     # batch 1 scored; the 2nd stopped at its 2nd trial: its trials failed, none left running
    assert [r["state"] for r in rows] == ["complete"] * 4 + ["fail"] * 4
    assert {r.get("error") for r in rows[4:]} == {"interrupted"} and (out / "best.yml").exists()
    assert search(toy, out, "--sampler", "random", evals=(stop,), trials=14) == 0
    # the interrupted trials do not count: the resume runs on to 14 scored trials
    assert [r["state"] for r in rows_of(out)] == ["complete"] * 4 + ["fail"] * 4 + ["complete"] * 10


@pytest.mark.parametrize("change, words", [
    (["--set-range", "models.*.weight=1:0"], "LO < HI"),
    (["--set-range", "models.7.weight=0:1"], "models"),
    (["--eval", "nonsense:x"], "unknown evaluator"),
    (["--eval", "python:no_such_module_here:f"], "cannot import"),
    (["--sampler", "annealing"], "unknown sampler"),
    (["--backend", "spark"], "unknown backend"),
    (["--trials", "0"], "at least one trial"),
])
def test_bad_input_is_one_stderr_line_and_leaves_the_stored_search_as_it_was(toy, tmp_path, capsys, change, words):
    out = tmp_path / "out"
    assert search(toy, out, "--sampler", "random", trials=4) == 0
    before = rows_of(out)
    capsys.readouterr()
    args = ["search", str(toy / "recipe.yml"), "--set-range", "models.*.weight=0:1", "--eval", SCORE,
            "--sampler", "random", "--trials", "8", "--out", str(out), "--quiet"]
    for flag in dict.fromkeys(change[::2]):            # the bad value replaces the good one
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
    assert main(args + change) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and words in err[0]
    assert rows_of(out) == before
    assert search(toy, out, "--sampler", "random", "--json", trials=4) == 0     # the storage opens as it was
    assert json.loads(capsys.readouterr().out)["ran"] == 0


def test_a_search_without_out_or_storage_is_refused(toy, capsys):
    assert search(toy, None) == 2
    assert "--out" in capsys.readouterr().err
