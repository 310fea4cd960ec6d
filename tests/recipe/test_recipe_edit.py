"""studio.recipe.edit: setting paths, pure recipe edits, per-group values equal to what the engine resolves, --set."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from studio.engine import build_plan, merge_in_memory
from studio.errors import RecipeError
from studio.layout import FlatLayout, LayerStackLayout, Layout, detect_layout
from studio.recipe import Recipe
from studio.recipe import edit as E
from studio.recipe.edit import SettingPath
from studio.sources import open_source

ROOT = Path(__file__).resolve().parents[2]


def ta(f, **params) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": str(f["base"]),
            "models": [{"model": str(f["a"]), "parameters": {"weight": 1.0}},
                       {"model": str(f["b"]), "parameters": {"weight": 0.5}}],
            "parameters": {"lambda": 0.8, **params}, "dtype": "float32"}


def test_setting_paths_parse_print_and_expand():
    cases = {"parameters.lambda": SettingPath("lambda"), "lambda": SettingPath("lambda"),
             "models.2.weight": SettingPath("weight", 2), "models.*.density": SettingPath("density", "*"),
             "models.2.density@IN04": SettingPath("density", 2, "IN04"),
             "parameters.lambda@L00..L02": SettingPath("lambda", None, "L00", "L02"),
             "alpha@IN00..OUT11": SettingPath("alpha", None, "IN00", "OUT11")}
    for text, want in cases.items():
        assert SettingPath.parse(text) == want
        assert SettingPath.parse(str(want)) == want
    assert str(SettingPath.parse("lambda")) == "parameters.lambda"
    assert SettingPath("weight", 1).parts == ["models", 1, "weight"]
    assert SettingPath.parse("models.0.weight@L01").setting == SettingPath("weight", 0)
    for bad in ("models.weight", "parameters.0.weight", "two words", "models.x.weight", ""):
        with pytest.raises(RecipeError, match="bad setting path"):
            SettingPath.parse(bad)
    lay = LayerStackLayout(3)
    assert SettingPath.parse("lambda@L00..L02").groups(lay) == ["L00", "L01", "L02"]
    assert SettingPath.parse("lambda@HEAD").groups(lay) == ["HEAD"]
    assert SettingPath.parse("lambda").groups(lay) == lay.groups
    with pytest.raises(RecipeError, match="no group 'IN04'"):
        SettingPath.parse("lambda@IN04").groups(lay)
    with pytest.raises(RecipeError, match="comes before"):
        SettingPath.parse("lambda@L02..L00").groups(lay)
    r = {"merge_method": "ties", "models": [{"model": "a"}, {"model": "b"}, {"model": "c"}]}
    assert [str(p) for p in SettingPath.parse("models.*.weight").expand(r)] == [
        "models.0.weight", "models.1.weight", "models.2.weight"]


@pytest.mark.parametrize("setting", [[0.0, 1.0], [0.2, 0.9, 0.4, 1.5], {"*": 0.3, "L01": 0.9, "HEAD": 2.0},
                                     "0.1,0.2,0.3,0.4,0.5", 0.7])
def test_group_values_are_what_the_engine_resolves(llama_family, setting):
    """Every tensor the plan merges gets exactly the value group_values shows for its group (same resolver)."""
    r = ta(llama_family)
    r["parameters"]["lambda"] = setting
    r["models"][1]["parameters"]["weight"] = setting
    layout = detect_layout(open_source(str(llama_family["base"])))
    shown = {p: dict(zip(layout.groups, E.group_values(r, SettingPath.parse(p), layout)))
             for p in ("parameters.lambda", "models.1.weight", "models.0.weight")}
    plan = build_plan(Recipe.from_dict(r))
    merged = [t for t in plan.tasks if t.op == "merge"]
    assert merged
    for t in merged:
        assert t.params["lambda"] == pytest.approx(shown["parameters.lambda"][t.group]), t.out_key
        assert t.params["weight"] == pytest.approx([shown["models.0.weight"][t.group],
                                                    shown["models.1.weight"][t.group]]), t.out_key


def test_edits_are_pure_and_keep_what_they_do_not_touch():
    lay = LayerStackLayout(3)
    r = {"merge_method": "task_arithmetic", "base_model": "base",
         "models": [{"model": "a", "parameters": {"weight": 1.0}}, {"model": "b"}],
         "parameters": {"lambda": [{"filter": "mlp", "value": 0.25}, {"value": 0.5}]}}
    before = copy.deepcopy(r)
    one = E.set_group_values(r, SettingPath("lambda"), lay, {"L01": 0.9})
    assert r == before  # the input is never changed, nor shared with the result
    assert one["parameters"]["lambda"][0] is not r["parameters"]["lambda"][0]
    ruled_same = E.set_rules(r, SettingPath("lambda"), [{"filter": "x", "value": 1.0}])
    ruled_same["parameters"]["lambda"][-1]["value"] = 99.0
    assert r == before
    assert one["parameters"]["lambda"] == [{"filter": "mlp", "value": 0.25}, {"value": {"*": 0.5, "L01": 0.9}}]
    # single groups change around the setting's default, even when most groups end up elsewhere
    most = E.set_group_values(one, SettingPath("lambda"), lay, {"L00": 0.9, "L02": 0.9, "HEAD": 0.9})
    assert most["parameters"]["lambda"][-1] == {"value": {"*": 0.5, "L00": 0.9, "L01": 0.9, "L02": 0.9, "HEAD": 0.9}}
    flat = E.set_group_values(one, SettingPath("lambda"), lay, [0.4] * 5)
    assert flat["parameters"]["lambda"] == [{"filter": "mlp", "value": 0.25}, {"value": 0.4}]  # all equal → scalar
    # the plain control sets the default; a group with its own value keeps it (#17: it used to be erased)
    scalar = E.set_scalar(one, SettingPath("lambda"), 0.6)
    assert scalar["parameters"]["lambda"] == [{"filter": "mlp", "value": 0.25}, {"value": {"*": 0.6, "L01": 0.9}}]
    assert E.rules_of(scalar, SettingPath("lambda")) == [{"filter": "mlp", "value": 0.25}]
    assert E.set_scalar(one, SettingPath("lambda"), 0.9)["parameters"]["lambda"][-1] == {"value": 0.9}
    grad = E.set_value(r, "lambda", [0.0, 1.0])
    assert E.set_scalar(grad, SettingPath("lambda"), 0.3)["parameters"]["lambda"][-1] == {"value": 0.3}
    ruled = E.set_rules(r, SettingPath("weight", 1), E.parse_rules("attn: 0.1 # comment\n\nmlp = 2"))
    assert ruled["models"][1]["parameters"]["weight"] == [{"filter": "attn", "value": 0.1}, {"filter": "mlp",
                                                                                            "value": 2}, {"value": 1.0}]
    assert E.rules_to_text(E.rules_of(ruled, SettingPath("weight", 1))) == "attn: 0.1\nmlp: 2"
    with pytest.raises(RecipeError, match="rule line 1"):
        E.parse_rules("no separator here")
    with pytest.raises(RecipeError, match="no model #5"):
        E.set_scalar(r, SettingPath("weight", 5), 1.0)
    with pytest.raises(RecipeError, match="has no parameter 'epsilon'"):
        E.set_scalar(r, SettingPath("epsilon", 0), 0.5)
    with pytest.raises(RecipeError, match="global parameter"):
        E.set_scalar(r, SettingPath("lambda", 0), 0.5)


def test_set_value_groups_wildcards_and_whole_settings():
    lay = LayerStackLayout(3)
    r = {"merge_method": "ties", "base_model": "base",
         "models": [{"model": "a", "parameters": {"weight": 1.0, "density": 0.5}}, {"model": "b"}]}
    out = E.set_value(r, "models.*.density@L00..L01", 0.2, lay)
    assert out["models"][0]["parameters"]["density"] == {"*": 0.5, "L00": 0.2, "L01": 0.2}
    assert out["models"][1]["parameters"]["density"] == {"*": 1.0, "L00": 0.2, "L01": 0.2}  # from its default
    grad = E.set_value(r, "models.0.weight", [0.0, 1.0])
    assert grad["models"][0]["parameters"]["weight"] == [0.0, 1.0]
    assert E.group_values(grad, SettingPath("weight", 0), lay) == [0.0, 0.0, 0.5, 1.0, 0.0]  # EMB/HEAD: t = 0
    # one group of a gradient: the others keep their values around the mean the plain slider shows (0.5)
    one = E.set_value(grad, "models.0.weight@L00", 0.25, lay)
    assert one["models"][0]["parameters"]["weight"] == {"*": 0.5, "EMB": 0.0, "L00": 0.25, "L02": 1.0, "HEAD": 0.0}
    assert E.scalar_value(one, SettingPath("weight", 0))[0] == E.scalar_value(grad, SettingPath("weight", 0))[0]
    # integer settings are checked like any value (2.5 is no integer, "abc" no number)
    ca = {"merge_method": "consensus_ta", "base_model": "b", "models": [{"model": "a"}, {"model": "c"}]}
    assert E.set_value(ca, "min_agree@L01", 3, lay)["parameters"]["min_agree"] == {"*": 2, "L01": 3}
    for bad in (2.5, "abc"):
        with pytest.raises(RecipeError, match="min_agree"):
            E.set_value(ca, "min_agree@L01", bad, lay)
    # every model's value where they share one; none where they differ
    same = E.set_value(r, "models.*.weight", 0.7)
    assert E.plain_value(same, SettingPath.parse("models.*.weight")) == 0.7
    assert E.plain_value(E.set_value(same, "models.1.weight", 0.2), SettingPath.parse("models.*.weight")) is None
    with pytest.raises(RecipeError, match="need the model's layout"):
        E.set_value(r, "models.0.weight@L00", 0.3)
    path, value = E.parse_assignment("parameters.normalize=false")
    assert path == SettingPath("normalize") and value is False
    with pytest.raises(RecipeError, match="needs PATH=VALUE"):
        E.parse_assignment("models.0.weight")


def test_curves_presets_and_start_values():
    lay = LayerStackLayout(3)
    r = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}],
         "parameters": {"lambda": 0.5}}
    up = E.apply_curve(r, SettingPath("lambda"), lay, "ramp up", 0.0, 1.0)
    assert E.group_values(up, SettingPath("lambda"), lay) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert E.curve("peak", 5, 0.0, 1.0)[2] == 1.0 and E.curve("flat", 3, 0.0, 0.4) == [0.4] * 3
    with pytest.raises(RecipeError, match="unknown curve"):
        E.curve("zigzag", 3, 0, 1)
    with pytest.raises(RecipeError, match="two numbers"):
        E.apply_curve(r, SettingPath("lambda"), lay, "ramp up", None, 1.0)
    v = E.group_values(E.apply_preset(r, SettingPath("lambda"), lay, "GRAD_V"), SettingPath("lambda"), lay)
    assert v[0] == pytest.approx(1.0) and v[-1] == pytest.approx(1.0) and min(v) < 0.5
    # an unset required per-model weight shows (and starts at) its declared start value
    assert E.scalar_value(r, SettingPath("weight", 0)) == (1.0, False, False)
    assert E.group_values(r, SettingPath("weight", 1), FlatLayout()) == [1.0]


def test_switch_method_models_and_base():
    r = {"merge_method": "task_arithmetic", "base_model": "base",
         "models": [{"model": "a", "parameters": {"weight": 0.7}}, {"model": "b", "parameters": {"weight": 0.3}}],
         "parameters": {"lambda": 0.5}}
    ties = E.switch_method(r, "ties")
    assert ties["models"][0]["parameters"] == {"weight": 0.7} and ties["parameters"] == {"lambda": 0.5}
    slerp = E.switch_method(r, "slerp")
    assert slerp["parameters"] == {"t": 0.5} and "parameters" not in slerp["models"][0]
    linear = E.switch_method(E.set_base(r, None), "linear")
    assert "base_model" not in linear and linear["models"][1]["parameters"] == {"weight": 0.3}
    assert E.switch_method(E.set_base(r, None), "ties", fallback_base="base")["base_model"] == "base"
    added = E.set_models(r, ["c", "a"])
    assert added["models"] == [{"model": "c", "parameters": {"weight": 1.0}},
                               {"model": "a", "parameters": {"weight": 0.7}}]
    with pytest.raises(RecipeError, match="at least one model"):
        E.set_models(r, [])
    assert [str(p) for p in E.numeric_paths(r)] == ["parameters.lambda", "models.0.weight", "models.1.weight"]
    assert E.default_path(r) == SettingPath("lambda") and E.default_path(slerp) == SettingPath("t")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_cli_set_changes_the_merge_exactly_like_the_edited_recipe(llama_family, tmp_path):
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump(ta(llama_family)))
    r = run_cli("merge", recipe, tmp_path / "out", "--set", "models.1.weight=0.25", "--set",
                "parameters.lambda@L01..L02=1.5", "--set", "models.*.density=1")
    assert r.returncode == 0, r.stderr
    by_hand = ta(llama_family)
    by_hand["models"][1]["parameters"]["weight"] = 0.25
    by_hand["parameters"]["lambda"] = {"*": 0.8, "L01": 1.5, "L02": 1.5}
    expected = merge_in_memory(Recipe.from_dict(by_hand))
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(got) == set(expected)
    for k in got:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
    written = yaml.safe_load((tmp_path / "out" / "mergekit_config.yml").read_text())
    assert written["parameters"]["lambda"] == {"*": 0.8, "L01": 1.5, "L02": 1.5}
    bad = run_cli("merge", recipe, tmp_path / "out2", "--set", "models.7.weight=1")
    assert bad.returncode == 2 and "no model #7" in bad.stderr and bad.stderr.strip().count("\n") == 0
    bad = run_cli("merge", recipe, tmp_path / "out2", "--set", "parameters.lambda@IN04=1", "--dry-run")
    assert bad.returncode == 2 and "no group 'IN04'" in bad.stderr and "Traceback" not in bad.stderr


def test_setting_helpers():
    assert E.compress_groups({"A": 1, "B": 1}, ["A", "B"]) == 1
    assert E.compress_groups({"A": 1, "B": 2, "C": 2}, ["A", "B", "C"]) == {"*": 2, "A": 1}
    assert E.split_setting([{"filter": "x", "value": 1}, {"value": 2}]) == ([{"filter": "x", "value": 1}], 2)
    abc = Layout(name="abc", groups=["A", "B", "C"])  # a block layout: group i sits at t = i / 2
    r = {"merge_method": "task_arithmetic", "base_model": "b", "models": [{"model": "a"}],
         "parameters": {"lambda": [0, 1]}}
    assert E.group_values(r, SettingPath("lambda"), abc) == [0, 0.5, 1]
    with pytest.raises(RecipeError):
        E.parse_rules("no separator here")


def test_presets_and_curves_refuse_a_one_group_layout():
    """GRAD_V over one group would silently become one number (issue: it collapsed to λ = 1.0)."""
    from studio.layout import FlatLayout
    from studio.recipe.edit import SettingPath, apply_curve, apply_preset
    from studio.errors import RecipeError
    r = {"merge_method": "task_arithmetic", "base_model": "a", "models": [{"model": "b", "parameters": {"weight": 1}}],
         "parameters": {"lambda": 0.5}}
    path = SettingPath.parse("parameters.lambda")
    with pytest.raises(RecipeError, match="flat layout has one group"):
        apply_preset(r, path, FlatLayout(), "GRAD_V")
    with pytest.raises(RecipeError, match="a curve needs"):
        apply_curve(r, path, FlatLayout(), "ramp up", 0, 1)
