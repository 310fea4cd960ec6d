import pytest
import yaml

from studio.errors import RecipeError
from studio.layout.llm import LayerStackLayout
from studio.recipe import Recipe, evaluate_setting, interpolate

YAML = """
merge_method: task_arithmetic
base_model: org/base
models:
  - model: org/a
    parameters:
      weight: [0, 0.5, 1]
  - model: org/b+org/lora
    parameters:
      weight:
        - {filter: self_attn, value: 0.3}
        - {value: [1, 0]}
parameters:
  lambda: 1.2
  normalize: true
dtype: float16
out_dtype: bfloat16
tokenizer_source: base
"""


def test_yaml_round_trip_is_stable():
    r = Recipe.from_yaml(YAML)
    once = r.to_yaml()
    assert Recipe.from_yaml(once).to_yaml() == once
    assert yaml.safe_load(once) == yaml.safe_load(YAML)


def test_slices_round_trip():
    text = """
slices:
  - sources:
      - {model: m1, layer_range: [0, 4]}
  - sources:
      - {model: m2, layer_range: [2, 6]}
merge_method: passthrough
dtype: float32
"""
    r = Recipe.from_yaml(text)
    assert r.slices[1].sources[0].layer_range == (2, 6)
    assert yaml.safe_load(r.to_yaml()) == yaml.safe_load(text)


@pytest.mark.parametrize("text, needle", [
    ("merge_method: nope\nmodels: [a]", "unknown merge method 'nope'"),
    ("merge_method: linear\nmodels: [a]\nbogus: 1", "key 'bogus' is not allowed here"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weigth: 1}}]", "has no such parameter"),
    ("merge_method: linear\nmodels: [{model: a, colour: red}]", "key 'colour' is not allowed here"),
    ("merge_method: task_arithmetic\nmodels: [{model: a, parameters: {weight: 1}}]", "needs a base_model"),
    ("merge_method: slerp\nbase_model: a\nmodels: [a, b, c]\nparameters: {t: 0.5}", "exactly 1"),
    ("merge_method: linear\nmodels: [a]\ndtype: float8", "dtype must be"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: abc}}]", "neither a number"),
    ("merge_method: linear\nmodels: [a]\nparameters: {normalize: [1, {x: 1}]}", "plain values"),
    ("merge_method: linear\nmodels: [a\n", "invalid YAML at line"),
    ("merge_method: task_arithmetic\nbase_model: a\nmodels: [b]\nparameters: {lambda: [{filter: x}]}",
     "filter rules"),
])
def test_bad_recipes_name_the_problem(text, needle):
    with pytest.raises(RecipeError) as e:
        Recipe.from_yaml(text, strict=True)
    assert needle in str(e.value)


def test_gradient_interpolation_matches_mergekit_rule():
    # formats.md §3: t: [0, 0.5, 1] over 32 layers → layers 0/1/15/16/31 → 0, 0.0323, 0.4839, 0.5161, 1.0
    layout = LayerStackLayout(32, "model.layers")
    got = [evaluate_setting([0, 0.5, 1], f"model.layers.{i}.mlp.up_proj.weight",
                            layout.position(f"model.layers.{i}.mlp.up_proj.weight")) for i in (0, 1, 15, 16, 31)]
    assert got == pytest.approx([0, 1 / 31, 15 / 31, 16 / 31, 1.0], abs=1e-12)
    # [0, 1, 0] peaks mid-stack; embeddings and head take s[0]
    assert evaluate_setting([0, 1, 0], "model.embed_tokens.weight", layout.position("model.embed_tokens.weight")) == 0
    assert interpolate([0, 1, 0], 0.5) == 1
    assert interpolate([2, 4, 8], 0.75) == pytest.approx(6.0)
    assert interpolate(["a", "b", "c"], 0.9) == "b"  # non-numeric: s[int(t·(n−1))]


def test_filters_dicts_and_strings():
    rules = [{"filter": "self_attn", "value": 0.3}, {"filter": "mlp", "value": [0, 1]}, {"value": 7}]
    assert evaluate_setting(rules, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.3
    assert evaluate_setting(rules, "model.layers.3.mlp.up_proj.weight", 0.25) == 0.25
    assert evaluate_setting(rules, "lm_head.weight", 0) == 7
    assert evaluate_setting([{"filter": "x", "value": 1}], "y", 0) is None
    by_group = {"L03": 0.9, "*": 0.1}
    assert evaluate_setting(by_group, "k", 0, group="L03") == 0.9
    assert evaluate_setting(by_group, "k", 0, group="L04") == 0.1
    assert evaluate_setting("0, 0.5, 1", "k", 0.5) == 0.5  # SuperMerger-style string = list


def test_parameter_precedence_in_plan(llama_family, tmp_path):
    from studio.engine import build_plan

    f = llama_family
    r = Recipe.from_dict({
        "merge_method": "task_arithmetic", "base_model": str(f["base"]),
        "models": [{"model": str(f["a"]), "parameters": {"weight": 0.25}}, {"model": str(f["b"])}],
        "parameters": {"weight": 0.75, "lambda": [{"filter": "lm_head", "value": 2.0}, {"value": 1.0}]},
    })
    plan = build_plan(r)
    by_key = {t.out_key: t for t in plan.tasks}
    assert by_key["lm_head.weight"].params == {**by_key["lm_head.weight"].params, "weight": [0.25, 0.75], "lambda": 2.0}
    assert by_key["model.norm.weight"].params["lambda"] == 1.0


def test_a_preset_name_is_a_valid_block_setting_and_merges_as_its_row(tmp_path):
    """``alpha: GRAD_V`` (a SuperMerger preset by name, as the README promises) validates and resolves per block."""
    from studio.layout.presets import load_presets
    from studio.recipe.resolve import expand_string
    r = Recipe.from_dict({"merge_method": "weighted_sum", "models": [{"model": "a"}, {"model": "b"}],
                          "parameters": {"alpha": "GRAD_V"}})
    assert r.parameters["alpha"] == "GRAD_V"
    row = load_presets()["GRAD_V"]
    assert expand_string("GRAD_V", 26) == [float(v) for v in row]
    with pytest.raises(RecipeError, match="known preset"):
        Recipe.from_dict({"merge_method": "weighted_sum", "models": [{"model": "a"}, {"model": "b"}],
                          "parameters": {"alpha": "NOT_A_PRESET"}})


def test_numbers_yaml_leaves_as_text_are_read_as_mergekit_reads_them():
    """YAML 1.1 reads ``1e-5`` (no dot) as a string, and published recipes quote numbers; mergekit's schema converts
    them, and so do we — in plain values, gradients, per-group mappings and rules (#19 item 3)."""
    text = """
merge_method: ties
base_model: a
models:
  - model: b
    parameters: {weight: "0.5", density: 1e-1}
  - model: c
    parameters:
      weight: [1e-1, "0.25", 1]
      density: {"*": "0.5", L01: 2e-1}
parameters:
  lambda: [{filter: mlp, value: 1e0}, {value: "2"}]
  normalize: "false"
"""
    r = Recipe.from_yaml(text)
    d = r.to_dict()
    assert d["models"][0]["parameters"] == {"weight": 0.5, "density": 0.1}
    assert d["models"][1]["parameters"] == {"weight": [0.1, 0.25, 1], "density": {"*": 0.5, "L01": 0.2}}
    assert d["parameters"] == {"lambda": [{"filter": "mlp", "value": 1.0}, {"value": 2.0}], "normalize": False}
    with pytest.raises(RecipeError, match="finite"):
        Recipe.from_yaml(text.replace('"0.5", density: 1e-1', '"nan", density: 1e-1'))
