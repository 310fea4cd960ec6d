"""Bad recipes end as one RecipeError — never a TypeError, a hang or a traceback: malformed shapes, values outside a
parameter's bounds, NaN and infinity, text that is not UTF-8, YAML alias bombs, oversized or over-nested text, and
the same recipes carried as JSON in a PNG or a .safetensors header. Through the CLI: exit 2, one stderr line, no
output left behind, inputs untouched."""

import copy
import hashlib
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tinymodels import make_llama, tagged_png

import studio  # noqa: F401 — registers the methods and the recipe readers
from studio.cli import main
from studio.errors import RecipeError, StudioError
from studio.methods import get_method
from studio.recipe import Recipe
from studio.recipe.files import RECIPE_KEY, read_recipe
from studio.recipe.limits import MAX_DEPTH, MAX_NODES, MAX_RECIPE_BYTES

TA = {"merge_method": "task_arithmetic", "base_model": "/m/base",
      "models": [{"model": "/m/a", "parameters": {"weight": 1.0}}]}
TIES = {"merge_method": "ties", "base_model": "/m/base",
        "models": [{"model": "/m/a", "parameters": {"weight": 1.0, "density": 0.5}}]}
PASS = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "/m/a", "layer_range": [0, 2]}]}]}


def ta(**top):
    return {**TA, **top}


def ta_model(entry):
    return {**TA, "models": [entry]}


def ta_params(**params):
    return ta_model({"model": "/m/a", "parameters": {"weight": 1.0, **params}})


def passthrough(slice_):
    return {**PASS, "slices": [slice_]}


MALFORMED = {
    "a list at top level": [TA],
    "a string at top level": "merge_method: linear",
    "a number at top level": 42,
    "nothing at all": None,
    "no merge_method": {"models": ["/m/a", "/m/b"]},
    "models a string": ta(models="/m/a"),
    "models a mapping": ta(models={"model": "/m/a"}),
    "models empty": ta(models=[]),
    "a model entry that is a number": ta(models=[5]),
    "a model entry that is a list": ta(models=[["/m/a"]]),
    "a model entry that is null": ta(models=[None]),
    "model key a number": ta_model({"model": 5}),
    "model key a list": ta_model({"model": ["/m/a"]}),
    "model key blank": ta_model({"model": "   "}),
    "parameters a list": ta_model({"model": "/m/a", "parameters": [1.0]}),
    "parameters a string": ta_model({"model": "/m/a", "parameters": "weight=1"}),
    "top-level parameters a list": ta(parameters=[1, 2]),
    "a parameter named by a number": ta(parameters={1: 1}),
    "a filter rule outside a list": ta(parameters={"lambda": {"filter": "mlp", "value": 1}}),
    "a filter that is a number": ta(parameters={"lambda": [{"filter": 5, "value": 1}]}),
    "a filter that is a list": ta(parameters={"lambda": [{"filter": ["mlp"], "value": 1}]}),
    "a filter rule without value": ta(parameters={"lambda": [{"filter": "mlp"}]}),
    "a gradient holding a list": ta(parameters={"lambda": [[1, 2], 3]}),
    "an empty gradient": ta(parameters={"lambda": []}),
    "a word as a number": ta(parameters={"lambda": "plenty"}),
    "a boolean as a number": ta_params(weight=True),
    "a number where a boolean goes": ta(parameters={"normalize": [1, [2]]}),
    "merge_method a list": ta(merge_method=["ties"]),
    "merge_method unknown": ta(merge_method="tie"),
    "base_model a number": ta(base_model=5),
    "base_model a list": ta(base_model=["/m/base"]),
    "slices a string": {**PASS, "slices": "0-2"},
    "a slice that is a number": {**PASS, "slices": [5]},
    "sources a number": passthrough({"sources": 5}),
    "sources a string": passthrough({"sources": "/m/a"}),
    "a source that is a number": passthrough({"sources": [5]}),
    "layer_range of booleans": passthrough({"sources": [{"model": "/m/a", "layer_range": [True, True]}]}),
    "layer_range a string": passthrough({"sources": [{"model": "/m/a", "layer_range": "0-2"}]}),
    "layer_range of fractions": passthrough({"sources": [{"model": "/m/a", "layer_range": [0.5, 2]}]}),
    "layer_range backwards": passthrough({"sources": [{"model": "/m/a", "layer_range": [3, 1]}]}),
    "slice base_model a number": passthrough({"base_model": 5, "sources": [{"model": "/m/a", "layer_range": [0, 2]}]}),
    "slice parameters a list": passthrough({"parameters": [1], "sources": [{"model": "/m/a", "layer_range": [0, 2]}]}),
    "dtype a number": ta(dtype=16),
    "dtype a list": ta(dtype=["float16"]),
    "seed a fraction": ta(seed=1.5),
    "seed a string": ta(seed="1"),
    "seed a boolean": ta(seed=True),
    "vae a number": ta(vae=5),
    "vae a list": ta(vae=["/m/vae.safetensors"]),
    "tokenizer_source a number": ta(tokenizer_source=5),
    "tokenizer_source a mapping": ta(tokenizer_source={"model": "/m/a"}),
    "tokenizer a list": ta(tokenizer=["union"]),
    "chat_template a number": ta(chat_template=5),
    "name a list": ta(name=["merged"]),
    "both models and slices": {**TA, "slices": PASS["slices"]},
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_recipe_is_a_recipe_error(data):
    with pytest.raises(RecipeError):
        Recipe.from_dict(data)
    with pytest.raises(RecipeError):   # the same shape written as YAML
        Recipe.from_yaml(yaml.safe_dump(data))


# keys that have no effect: mergekit drops them silently; we drop them with one warning each, and refuse them when
# strict — (recipe, words of the warning)
NO_EFFECT = {
    "a method parameter in a model entry": (ta_model({"model": "/m/a", "weight": 1}),
                                            ["key 'weight'", "put it under this entry's parameters"]),
    "an unknown parameter": (ta(parameters={"nope": 1}), ["parameter 'nope'", "its parameters:"]),
    "an unknown top-level key": (ta(foo=1), ["key 'foo'"]),
    "a misspelt top-level key": (ta(base_modle="/m/b"), ["key 'base_modle'", "did you mean 'base_model'?"]),
    "a global parameter per model": (ta_params(**{"lambda": 0.5}), ["'lambda' per model", "top-level parameters"]),
    "a top-level parameter": ({**TA, "merge_method": "sce", "models": ["/m/a"], "select_topk": 0.5},
                              ["key 'select_topk'", "put it under parameters:"]),
    "padding outside tokenizer": (ta(pad_to_multiple_of=64), ["key 'pad_to_multiple_of'", "under tokenizer:"]),
    "int8_mask on linear": ({"merge_method": "linear", "models": ["/m/a", "/m/b"], "parameters": {"int8_mask": True}},
                            ["parameter 'int8_mask'", "float32"]),
    "normalize on multislerp": ({"merge_method": "multislerp", "models": ["/m/a", "/m/b"],
                                 "parameters": {"normalize": True}}, ["did you mean 'normalize_weights'?"]),
    "a slice's residual_weight": ({**PASS, "slices": [{**PASS["slices"][0], "residual_weight": 0.5}]},
                                  ["key 'residual_weight'"]),
}


@pytest.mark.parametrize("data, words", NO_EFFECT.values(), ids=NO_EFFECT.keys())
def test_keys_without_effect_warn_once_and_strict_refuses_them(data, words):
    r = Recipe.from_dict(copy.deepcopy(data), where="r.yml")
    assert len(r.warnings) == 1, r.warnings
    assert r.warnings[0].startswith("r.yml") and "has no effect and is ignored" in r.warnings[0]
    for w in words:
        assert w in r.warnings[0]
    assert r.to_dict() == Recipe.from_dict(r.to_dict()).to_dict() and not Recipe.from_dict(r.to_dict()).warnings
    with pytest.raises(RecipeError, match="not allowed here"):
        Recipe.from_dict(copy.deepcopy(data), strict=True)
    with pytest.raises(RecipeError, match="not allowed here"):
        Recipe.from_yaml(yaml.safe_dump(data), strict=True)


# parameter spellings that break a hard bound: (recipe, words the message must hold)
OUT_OF_BOUNDS = {
    "density above 1": (ta_params(density=1.5) | {"merge_method": "ties"}, ["density", "/m/a", "1.5", "[0, 1]"]),
    "density below 0": (ta_params(density=-0.1) | {"merge_method": "dare_ties"}, ["density", "/m/a", "-0.1"]),
    "density in a gradient": (ta_params(density=[0.2, 1.3]) | {"merge_method": "ties"}, ["density", "1.3"]),
    "density in a group mapping": (ta_params(density={"*": 0.5, "L01": 2.0}) | {"merge_method": "ties"},
                                   ["density", "L01", "2.0", "[0, 1]"]),
    "density in a block-weight string": (ta_params(density="0.5, 0.5, 1.5") | {"merge_method": "ties"},
                                         ["density", "1.5"]),
    "density in a filter rule": (ta_params(density=[{"filter": "mlp", "value": 3}, {"value": 0.5}])
                                 | {"merge_method": "ties"}, ["density", "3"]),
    "density at top level": ({**TIES, "parameters": {"density": 7}}, ["density", "7", "[0, 1]"]),
    "epsilon above 1": (ta_params(epsilon=1.5) | {"merge_method": "della"}, ["epsilon", "1.5"]),
    "gamma negative": (ta_params(gamma=-0.5) | {"merge_method": "breadcrumbs"}, ["gamma", "-0.5"]),
    "select_topk above 1": ({**TA, "merge_method": "sce", "parameters": {"select_topk": 1.01}}, ["select_topk"]),
    "slerp t above 1": ({"merge_method": "slerp", "base_model": "/m/base", "models": [{"model": "/m/a"}],
                         "parameters": {"t": 1.5}}, ["'t'", "1.5", "[0, 1]"]),
    "nearswap t negative": ({"merge_method": "nearswap", "base_model": "/m/base", "models": [{"model": "/m/a"}],
                             "parameters": {"t": -1}}, ["'t'", "at least 0"]),
    "weighted_sum alpha above 1": ({"merge_method": "weighted_sum", "models": ["/m/a", "/m/b"],
                                    "parameters": {"alpha": 1.2}}, ["alpha", "1.2"]),
    "triple_sum beta negative": ({"merge_method": "triple_sum", "models": ["/m/a", "/m/b", "/m/c"],
                                  "parameters": {"beta": -0.2}}, ["beta", "-0.2"]),
    "karcher max_iter 0": ({"merge_method": "karcher", "models": ["/m/a", "/m/b"], "parameters": {"max_iter": 0}},
                           ["max_iter", "at least 1"]),
    "density in a slice source": ({"merge_method": "ties", "slices": [{"base_model": "/m/base", "sources": [
        {"model": "/m/a", "layer_range": [0, 2], "parameters": {"weight": 1, "density": 9}}]}]}, ["density", "9"]),
}


@pytest.mark.parametrize("data, words", OUT_OF_BOUNDS.values(), ids=OUT_OF_BOUNDS.keys())
def test_values_outside_bounds_are_refused_naming_parameter_model_value_and_bounds(data, words):
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict(data)
    for w in words:
        assert w in str(e.value)


def test_bounds_are_inclusive_and_soft_ranges_stay_soft():
    Recipe.from_dict(ta_params(density=[0, 1]) | {"merge_method": "ties"})
    Recipe.from_dict({**TA, "models": [{"model": "/m/a", "parameters": {"weight": 3.0}}],
                      "parameters": {"lambda": 5.0}})   # beyond the sliders' range: extrapolation is a use
    Recipe.from_dict({"merge_method": "add_difference", "models": ["/m/a", "/m/b", "/m/c"],
                      "parameters": {"alpha": 1.5}})     # a multiplier, not a share


def test_every_range_lies_within_its_bounds():
    from studio.methods import list_methods
    bounded = [(s.name, p) for s in list_methods() for p in s.params if p.bounds]
    assert {p.name for _, p in bounded} >= {"density", "epsilon", "gamma", "select_topk", "t", "alpha"}
    for name, p in bounded:
        if p.range:
            assert p.within_bounds(p.range[0]) and p.within_bounds(p.range[1]), (name, p.name)
    assert get_method("ties").param("density").describe()["bounds"] == [0.0, 1.0]
    assert get_method("ties").param("weight").bounds is None


NON_FINITE = {
    "NaN weight": ta_params(weight=math.nan),
    "inf weight": ta_params(weight=math.inf),
    "-inf lambda": ta(parameters={"lambda": -math.inf}),
    "NaN in a gradient": ta(parameters={"lambda": [0.5, math.nan]}),
    "inf in a group mapping": ta_params(weight={"*": 1.0, "L02": math.inf}),
    "NaN in a filter rule": ta(parameters={"lambda": [{"filter": "mlp", "value": math.nan}]}),
    "'nan' in a block-weight string": ta_params(weight="nan, 1, 1"),
    "'inf' in a block-weight string": ta_params(weight="1, inf"),
    "'nan' alone": ta_params(weight="nan"),
    "inf where an integer goes": {"merge_method": "karcher", "models": ["/m/a", "/m/b"],
                                  "parameters": {"max_iter": math.inf}},
    "inf in an integer gradient": {"merge_method": "karcher", "models": ["/m/a", "/m/b"],
                                   "parameters": {"max_iter": [1, 1e400]}},
}


@pytest.mark.parametrize("data", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_nan_and_infinity_are_refused(data):
    with pytest.raises(RecipeError, match="finite|must be|neither a number"):
        Recipe.from_dict(data)
    with pytest.raises(RecipeError):
        Recipe.from_yaml(yaml.safe_dump(data))   # .nan / .inf in YAML


def test_yaml_spellings_of_nan_and_infinity():
    for text in (".nan", ".NaN", ".inf", "-.Inf", "[0.5, .nan]", "{'*': .inf}"):
        with pytest.raises(RecipeError, match="finite"):
            Recipe.from_yaml(f"merge_method: linear\nmodels: [/m/a, /m/b]\nparameters: {{weight: {text}}}\n")


def alias_bomb(levels: int, width: int = 10, key: str = "tokenizer") -> str:
    """Nested anchors under an accepted key: ``width``**``levels`` values once expanded, a few hundred bytes."""
    lines = [f"  l0: &l0 [{', '.join(['1'] * width)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return f"merge_method: linear\nmodels: [/m/a, /m/b]\n{key}:\n" + "\n".join(lines) + "\n"


def merge_key_bomb(levels: int) -> str:
    """YAML merge keys doubling a mapping at every level (a bomb made of ``<<``)."""
    lines = ["  m0: &m0 {a: 1, b: 2}"]
    lines += [f"  m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, levels + 1)]
    return "merge_method: linear\nmodels: [/m/a, /m/b]\ntokenizer:\n" + "\n".join(lines) + "\n"


BAD_TEXT = {
    "alias bomb, a million values": (alias_bomb(6), "aliases are expanded"),
    "alias bomb, a billion values": (alias_bomb(9), "aliases are expanded"),
    "alias bomb under parameters": (alias_bomb(9, key="parameters:\n  weight"), "aliases are expanded"),
    "merge-key bomb": (merge_key_bomb(40), "aliases are expanded"),
    "an alias inside its own value": ("merge_method: linear\nmodels: [/m/a, /m/b]\ntokenizer: &t {again: *t}\n",
                                      "contains itself"),
    "nested deeper than the limit": ("merge_method: linear\nmodels: [/m/a, /m/b]\nname: " + "[" * (MAX_DEPTH + 1)
                                     + "]" * (MAX_DEPTH + 1) + "\n", "nested more than"),
    "nested ten thousand deep": ("merge_method: linear\nname: " + "[" * 10_000 + "]" * 10_000, "nested more than"),
    "over the size limit": ("merge_method: linear\nmodels: [/m/a, /m/b]\nname: " + "x" * MAX_RECIPE_BYTES,
                            "at most 1,000,000"),
    "too many values": ("merge_method: linear\nmodels: [/m/a, /m/b]\nname: [" + "1," * MAX_NODES + "1]",
                        "more than 100,000 values"),
    "invalid YAML": ("merge_method: linear\nmodels: [/m/a, /m/b\n", "invalid YAML at line"),
    "a control character": ("merge_method: linear\nname: a\x00b\n", "invalid YAML"),
    "a python tag": ("merge_method: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
}


@pytest.mark.parametrize("text, message", BAD_TEXT.values(), ids=BAD_TEXT.keys())
def test_bad_yaml_text_is_refused_before_it_is_walked(text, message):
    with pytest.raises(RecipeError, match=message) as e:
        Recipe.from_yaml(text)
    assert "\n" not in str(e.value)


def test_a_recipe_file_over_the_limit_is_refused_unread(tmp_path, monkeypatch):
    big = tmp_path / "big.yml"
    with open(big, "wb") as f:
        f.write(b"merge_method: linear\nname: x\n")
        f.truncate(50 * 1024 * 1024)   # a 50 MB file (sparse): refused from its size
    read = []
    real_open = open

    def counting_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if str(path) == str(big):
            real_read = f.read
            f.read = lambda n=-1: read.append(n) or real_read(n)
        return f

    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.raises(RecipeError, match="52,428,800 bytes"):
        Recipe.load(big)
    assert read == []


@pytest.mark.parametrize("raw", [b"merge_method: linear\nname: caf\xe9\n",          # Latin-1
                                 b"\xff\xfem\x00e\x00r\x00",                         # UTF-16
                                 b"merge_method: linear\nname: \xc3\n"])               # a cut sequence
def test_non_utf8_recipe_names_the_byte(tmp_path, raw):
    byte = next(i for i, b in enumerate(raw) if b >= 0x80)
    p = tmp_path / "latin1.yml"
    p.write_bytes(raw)
    with pytest.raises(RecipeError, match=f"not UTF-8 text, at byte {byte}"):
        Recipe.load(p)
    with pytest.raises(RecipeError, match="not UTF-8"):
        read_recipe(p)


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    p = tmp_path / "bom.yml"
    p.write_bytes("\ufeffmerge_method: linear\nmodels: [/m/a, /m/b]\nparameters: {weight: 1}\n".encode())
    assert Recipe.load(p).merge_method == "linear"


# the same checks for recipes carried as JSON (a PNG chunk, a .safetensors header)
def carried(tmp_path, how: str, text: str):
    if how == "png":
        return tagged_png(tmp_path / "r.png", **{RECIPE_KEY: text})
    if how == "a1111":
        save_file({"w": torch.zeros(1)}, str(tmp_path / "a.safetensors"), metadata={"sd_merge_recipe": text})
        return tmp_path / "a.safetensors"
    save_file({"w": torch.zeros(1)}, str(tmp_path / "m.safetensors"), metadata={RECIPE_KEY: text})
    return tmp_path / "m.safetensors"


def a1111(multiplier) -> str:
    return json.dumps({"interp_method": "Weighted sum", "multiplier": multiplier,
                       "primary_model_hash": "aaaa", "secondary_model_hash": "bbbb"})


CARRIED = {
    "density above 1 in a PNG": ("png", json.dumps(ta_params(density=1.5) | {"merge_method": "ties"}), "density"),
    "NaN weight in a PNG": ("png", json.dumps(ta_params(weight=math.nan)), "finite"),
    "Infinity in safetensors metadata": ("safetensors", json.dumps(ta(parameters={"lambda": math.inf})), "finite"),
    "a list in safetensors metadata": ("safetensors", json.dumps([TA]), "mapping"),
    "nested too deep in a PNG": ("png", "[" * 5000 + "]" * 5000, "nested more than"),
    "over the size limit in safetensors": ("safetensors", json.dumps(ta(name="x" * MAX_RECIPE_BYTES)), "at most"),
    "A1111 multiplier NaN": ("a1111", a1111("nan"), "finite"),
    "A1111 multiplier above 1": ("a1111", a1111(1.7), "alpha"),
    "A1111 hash that is a list": ("a1111", json.dumps({"interp_method": "Weighted sum", "multiplier": 0.5,
                                                       "primary_model_hash": ["x"], "secondary_model_hash": {}}),
                                  None),
    "A1111 recipe over the size limit": ("a1111", json.dumps({"pad": "x" * MAX_RECIPE_BYTES}), "at most"),
}


@pytest.mark.parametrize("how, text, message", CARRIED.values(), ids=CARRIED.keys())
def test_recipes_carried_as_json_pass_the_same_checks(tmp_path, how, text, message):
    path = carried(tmp_path, how, text)
    if message is None:   # malformed but readable: the names become references, nothing crashes
        assert read_recipe(path).recipe["merge_method"] == "weighted_sum"
        return
    with pytest.raises(StudioError, match=message):
        read_recipe(path)


def test_model_mixer_infotext_over_the_size_limit(tmp_path):
    text = "a cat\nModelMixer model b: x, ModelMixer alpha b: 0.5, Steps: 20, Pad: " + "x" * MAX_RECIPE_BYTES
    from studio.sd.infotext import read_model_mixer
    with pytest.raises(RecipeError, match="at most"):
        read_model_mixer(tmp_path / "p.png", {"parameters": text}, {})


# through the CLI: exit 2, one line on stderr, nothing written, inputs untouched
def sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


CLI = {
    "density above 1": lambda m: (f"merge_method: ties\nbase_model: {m['base']}\nmodels:\n"
                                  f"  - model: {m['a']}\n    parameters: {{weight: 1, density: 1.5}}\n").encode(),
    "NaN weight": lambda m: (f"merge_method: linear\nmodels:\n  - model: {m['a']}\n    parameters: {{weight: .nan}}\n"
                             f"  - model: {m['base']}\n    parameters: {{weight: 1}}\n").encode(),
    "alias bomb": lambda m: alias_bomb(9).replace("/m/a", str(m["a"])).encode(),
    "not UTF-8": lambda m: f"merge_method: linear\nname: caf\xe9\nmodels: [{m['a']}, {m['base']}]\n".encode("latin-1"),
    "a list at top level": lambda m: f"- merge_method: linear\n- models: [{m['a']}]\n".encode(),
    "models a number": lambda m: b"merge_method: linear\nmodels: 5\n",
    "sources a number": lambda m: b"merge_method: passthrough\nslices:\n  - sources: 5\n",
    "over the size limit": lambda m: b"merge_method: linear\nname: " + b"x" * MAX_RECIPE_BYTES,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_recipe_models")
    return {"base": make_llama(root / "base", 0, layers=2, hidden=16), "a": make_llama(root / "a", 1, layers=2, hidden=16)}


@pytest.mark.parametrize("write", CLI.values(), ids=CLI.keys())
def test_cli_refuses_bad_recipe_in_one_line(models, tmp_path, capsys, write):
    recipe = tmp_path / "r.yml"
    recipe.write_bytes(write(models))
    before = {k: sha(v) for k, v in models.items()}
    out = tmp_path / "out"
    assert main(["merge", str(recipe), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]   # no target, no .partial-* sibling
    assert {k: sha(v) for k, v in models.items()} == before
