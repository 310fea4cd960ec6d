"""`python -m studio learn`: recipe, weights and trajectory written; --set and the shortcut flags checked against the
learners' declarations before any model is loaded; one-line errors; --help lists every declared hyperparameter."""

from __future__ import annotations

import json

import pytest

from studio.cli import main
from studio.learn import list_learners


def test_cli_writes_recipe_weights_and_trajectory(vision_zoo, tmp_path, capsys):
    out = tmp_path / "learned"
    rc = main(["learn", "samerging", "--base", vision_zoo["base"], "--experts", *vision_zoo["experts"],
               "--data", "zoo:vision", "--out", str(out), "--device", "cpu", "--steps", "5", "--quiet", "--json",
               "--set", "max_items=32"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == vision_zoo["tasks"]
    assert (out / "recipe.yml").exists() and (out / "merged.safetensors").exists()
    traj = json.loads((out / "trajectory.json").read_text())
    assert len(traj["history"]) == 5 and traj["trajectory"][-1]["step"] == 5
    # the written recipe runs through `studio merge`
    rc = main(["merge", str(out / "recipe.yml"), str(tmp_path / "merged"), "--device", "cpu", "--quiet"])
    assert rc == 0


def test_cli_bad_input_is_one_line(vision_zoo, tmp_path, capsys):
    rc = main(["learn", "adamerging", "--base", vision_zoo["base"], "--experts", *vision_zoo["experts"],
               "--data", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "data entries for 3 experts" in err and "\n" not in err


def test_cli_refuses_an_output_inside_an_input_before_learning(tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"not read: the output is refused first")
    rc = main(["learn", "regmean", "--base", str(base), "--experts", str(base), "--out", str(base / "learned"),
               "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "inside an input model's folder" in err and "\n" not in err
    assert not (base / "learned").exists()


@pytest.mark.parametrize("method,extra,message", [
    ("fisher", ["--set", "rho=0.1"], "learned method 'fisher' has no hyperparameter 'rho'"),
    ("fisher", ["--task-wise"], "no hyperparameter 'granularity'"),
    ("fisher", ["--set", "examples=many"], "parameter 'examples' must be int"),
    ("fisher", ["--set", "max_items=some"], "parameter 'max_items' must be int"),
    ("adamerging", ["--init", "tsv_m"], "parameter 'init' must be float"),
    ("fda", ["--init", "0.3"], "parameter 'init' must be one of ['base', 'task_arithmetic', 'tsv_m', 'wudi']"),
])
def test_cli_set_is_checked_against_the_declaration_before_loading(tmp_path, capsys, method, extra, message):
    rc = main(["learn", method, "--base", str(tmp_path / "missing.safetensors"), "--experts",
               str(tmp_path / "also-missing.safetensors"), "--out", str(tmp_path / "o"), "--quiet", *extra])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_cli_help_lists_every_declared_hyperparameter(capsys):
    with pytest.raises(SystemExit):
        main(["learn", "--help"])
    out = capsys.readouterr().out
    for s in list_learners():
        assert f"  {s.name} ({s.label}; {s.produces}; {s.ref})" in out
        for p in s.params:
            assert f"      {p.name}=" in out
    assert "max_items=None" in out and "seq_len=64" in out
