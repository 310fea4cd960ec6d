"""Multi-step recipes (mergekit-multi's ``---`` documents): parsing, names, order, cycles, the limits, substitution;
a one-document file stays a plain recipe."""

from __future__ import annotations

import pytest

from studio.errors import RecipeError, StudioError
from studio.recipe import Recipe
from studio.recipe.files import read_recipe
from studio.recipe.limits import MAX_NODES, parse_yaml, parse_yaml_documents
from studio.recipe.multi import MultiRecipe, load_multi, step_name, substitute


@pytest.fixture()
def models(tmp_path):
    """Three folders standing for models (parsing looks at whether a reference exists, never inside)."""
    out = {}
    for n in ("base", "a", "b"):
        (tmp_path / n).mkdir()
        out[n] = str(tmp_path / n)
    return out


def doc(name, method="linear", refs=(), base=None, **extra):
    lines = [f"name: {name}"] if name else []
    lines.append(f"merge_method: {method}")
    if base:
        lines.append(f"base_model: {base}")
    lines.append("models:")
    lines += [f"  - model: {r}\n    parameters: {{weight: 1.0}}" for r in refs]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def multi(*docs):
    return "---\n".join(docs)


def test_steps_come_after_what_they_read_in_file_order_otherwise(models):
    m = models
    text = multi(doc(None, refs=["mid", "two", "one"]),     # the output, first in the file
                 doc("two", refs=["one", m["b"]]),
                 doc("one", refs=[m["a"], m["b"]]),
                 doc("side", refs=[m["a"], m["base"]]),
                 doc("mid", refs=["side", "two"]))
    mr = MultiRecipe.from_yaml(text, "m.yml")
    assert [s.label for s in mr.steps] == ["one", "two", "side", "mid", "document 1"]
    assert [s.document for s in mr.steps] == [3, 2, 4, 5, 1]
    assert mr.final.name is None and mr.final.reads == ["mid", "two", "one"]
    assert mr.steps[1].reads == ["one"] and mr.steps[0].reads == []
    assert {n: [s.label for s in readers] for n, readers in mr.uses().items()} == {
        "one": ["two", "document 1"], "two": ["mid", "document 1"], "side": ["mid"], "mid": ["document 1"]}


def test_a_named_output_and_empty_documents(models):
    m = models
    text = "---\n" + multi(doc("first", refs=[m["a"], m["b"]]), doc("final", refs=["first", m["base"]])) + "---\n"
    mr = MultiRecipe.from_yaml(text, "m.yml")
    assert [(s.name, s.document) for s in mr.steps] == [("first", 1), ("final", 2)]
    assert mr.final.recipe.models[0].model == "first"   # the recipes keep the names; substitute() swaps them


def test_a_lora_after_a_step_name_reads_the_step(models):
    m = models
    mr = MultiRecipe.from_yaml(multi(doc("s", refs=[m["a"], m["b"]]), doc(None, refs=["s+ink.safetensors:0.5",
                                                                                      m["base"]])), "m.yml")
    assert mr.final.reads == ["s"]
    assert step_name("s+ink.safetensors:0.5", {"s"}) == "s" and step_name("base", {"base"}) is None


@pytest.mark.parametrize("case, message, where", [
    ("cycle", "steps read each other in a circle: one → two → one", "m.yml"),
    ("self", "the step reads itself ('one')", "m.yml: document 1 (one)"),
    ("unknown", "'tow' is neither a step of this file, a file or folder, nor a hub id", "m.yml: document 3"),
    ("duplicate", "the name 'one' is also document 1's", "m.yml: document 2 (one)"),
    ("two_unnamed", "only the output may go without a name", "m.yml: document 3"),
    ("unread", "no step reads 'side', and a multi-step recipe has one output (side, document 3 are read by none)",
     "m.yml: document 2 (side)"),
    ("plus", "step name 'a+b' cannot be read back", "m.yml: document 1 (a+b)"),
    ("bad_step", "'plenty' is neither a number, a comma-separated list nor a known preset",
     "m.yml: document 2 (two): one: parameters.weight"),
])
def test_a_bad_multi_recipe_says_what_and_where(models, case, message, where):
    m = models
    docs = {
        "cycle": [doc("one", refs=["two", m["a"]]), doc("two", refs=["one", m["b"]]), doc(None, refs=["two", m["a"]])],
        "self": [doc("one", refs=["one", m["a"]]), doc(None, refs=["one", m["a"]])],
        "unknown": [doc("one", refs=[m["a"], m["b"]]), doc("two", refs=["one", m["b"]]), doc(None, refs=["tow", "one"])],
        "duplicate": [doc("one", refs=[m["a"], m["b"]]), doc("one", refs=[m["a"], m["b"]]),
                      doc(None, refs=["one", m["a"]])],
        "two_unnamed": [doc("one", refs=[m["a"], m["b"]]), doc(None, refs=["one", m["a"]]),
                        doc(None, refs=["one", m["b"]])],
        "unread": [doc("one", refs=[m["a"], m["b"]]), doc("side", refs=[m["a"], m["b"]]),
                   doc(None, refs=["one", m["b"]])],
        "plus": [doc("a+b", refs=[m["a"], m["b"]]), doc(None, refs=[m["a"], m["b"]])],
        "bad_step": [doc("one", refs=[m["a"], m["b"]]),
                     doc("two", refs=["one", m["b"]]).replace("weight: 1.0", "weight: plenty", 1),
                     doc(None, refs=["two", m["a"]])],
    }[case]
    with pytest.raises(RecipeError) as e:
        MultiRecipe.from_yaml(multi(*docs), "m.yml")
    assert (e.value.what, e.value.where) == (message, where)
    assert e.value.hint


def test_a_one_document_file_stays_a_plain_recipe(models, tmp_path):
    m = models
    path = tmp_path / "one.yml"
    path.write_text(doc("solo", refs=[m["a"], m["b"]]))
    assert load_multi(path) is None
    assert read_recipe(path).recipe == Recipe.load(path).to_dict()
    assert Recipe.load(path).name == "solo"
    assert load_multi(tmp_path / "a") is None   # a folder is not a YAML of several recipes


def test_read_recipe_sends_a_multi_document_file_to_the_merge_command(models, tmp_path):
    m = models
    path = tmp_path / "steps.yaml"
    path.write_text(multi(doc("s", refs=[m["a"], m["b"]]), doc(None, refs=["s", m["base"]])))
    with pytest.raises(StudioError) as e:
        read_recipe(path)
    assert e.value.what == "this file holds 2 recipes, the steps of a multi-step merge"
    assert f"python -m studio merge {path} OUT" in e.value.hint
    assert [s.name for s in load_multi(path).steps] == ["s", None]
    with pytest.raises(RecipeError) as e:   # where one recipe is read from text (the studio's YAML view)
        Recipe.from_yaml(path.read_text(), "YAML view")
    assert (e.value.where, e.value.what) == ("YAML view", "the text holds more than one YAML document ('---' starts "
                                                          "another)")
    assert "python -m studio merge" in e.value.hint


def test_substitute_swaps_every_reference_to_a_step_and_nothing_else(models):
    m = models
    text = f"""name: s
merge_method: task_arithmetic
base_model: {m['base']}
models: [{{model: {m['a']}}}, {{model: {m['b']}}}]
---
merge_method: slerp
base_model: s
slices:
  - sources: [{{model: s, layer_range: [0, 2]}}, {{model: s+lora.safetensors:0.5, layer_range: [1, 3]}}]
    base_model: s
parameters: {{t: 0.5}}
tokenizer_source: s
"""
    mr = MultiRecipe.from_yaml(text, "m.yml")
    before = mr.final.recipe.to_dict()
    r = substitute(mr.final.recipe, {"s": "/out/.steps/01-s"})
    assert r.base_model == "/out/.steps/01-s" and r.tokenizer_source == "/out/.steps/01-s"
    assert [x.model for x in r.slices[0].sources] == ["/out/.steps/01-s", "/out/.steps/01-s+lora.safetensors:0.5"]
    assert r.slices[0].base_model == "/out/.steps/01-s"
    assert mr.final.recipe.to_dict() == before                # the step's recipe is left as it was
    first = substitute(mr.steps[0].recipe, {"s": "/elsewhere"})
    assert first.to_dict() == mr.steps[0].recipe.to_dict()   # references to models are not steps'
    assert substitute(mr.final.recipe, {}).to_dict() == before


def test_the_limits_hold_for_the_whole_file_not_each_document():
    values = MAX_NODES // 2 + 10
    one = "[" + ",".join(["0"] * values) + "]\n"
    assert len(parse_yaml(one)) == values                    # one document alone passes
    with pytest.raises(RecipeError, match=f"more than {MAX_NODES:,} values"):
        parse_yaml_documents(one + "---\n" + one)
    assert parse_yaml_documents("a: &x [1, 2]\nb: *x\n---\nc: 3\n---\n") == [{"a": [1, 2], "b": [1, 2]}, {"c": 3},
                                                                            None]
    with pytest.raises(RecipeError, match="invalid YAML at line 3"):
        parse_yaml_documents("a: 1\n---\nb: *nowhere\n")
