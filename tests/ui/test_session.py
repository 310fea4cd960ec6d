"""The session controller without a browser: controls ↔ recipe ↔ YAML, undo and history, isolation, paths."""

from __future__ import annotations

import threading

import pytest
import torch

from studio.engine import merge_in_memory
from studio.errors import RecipeError, StudioError
from studio.recipe import Recipe
from studio.recipe import edit as E
from studio.ui.controls import controls_view
from studio.ui.exporting import export_recipe
from studio.ui.paths import AllowedRoots, PathNotAllowed


def controls(s):
    return controls_view(s.recipe, s.layout(), s.target, s.label)


def test_default_recipe_previews_numbers(env, toy_family):
    s = env.new_session()
    assert s.family == "toy"
    r = s.recipe_obj()
    assert r.merge_method == "task_arithmetic" and r.base_model == str(toy_family.base)
    pv = s.preview()
    assert set(pv.result["per_task"]) == {"alpha", "beta", "gamma"}
    assert set(pv.inputs) == {"base", "alpha", "beta", "gamma"}
    assert pv.inputs["alpha"]["per_task"]["alpha"] == 1.0  # an expert is perfect on its own task
    from studio.ui import preview_view as V

    headers, rows = V.score_table(pv)  # decimals as the numbers carry them: a fraction's three, a ratio's two
    assert headers[-1] == "vs expert" and all(v is None or round(v, 3) == v for row in rows for v in row[1:4])
    assert all(v is None or round(v, 2) == v for row in rows for v in row[5:])


def test_preview_equals_cli_merge_evaluated_the_same_way(env, toy_family):
    s = env.new_session()
    s.set_value("parameters.lambda", 0.7)
    s.set_value("models.1.weight", 0.4)
    s.set_group_value("L01", 0.2)
    pv = s.preview()
    state = merge_in_memory(Recipe.from_yaml(s.yaml()))
    expected = toy_family.evaluator().evaluate(state)
    assert pv.result["per_task"] == expected["per_task"]
    for k, v in state.items():
        assert torch.equal(v, s.live.state[k]), k


def test_slider_changes_move_the_numbers_and_only_recompute_changed_groups(env):
    s = env.new_session()
    first = s.preview()
    s.set_group_value("L02", 1.5)
    pv = s.preview()
    assert pv.changed == 2  # blocks.2.fc.weight and .bias
    assert pv.result["per_task"] != first.result["per_task"]
    assert pv.previous == first.result


def test_controls_round_trip_through_yaml(env):
    s = env.new_session()
    s.set_value("parameters.lambda", 0.8)
    s.set_group_value("L01", 0.1)
    s.set_rules_text("fc.bias: 0.25\n# comment\nembed = 0.5")
    s.set_value("models.2.weight", 0.6)
    text = s.yaml()
    other = env.new_session()
    other.set_yaml(text)
    assert other.recipe == s.recipe
    cv = controls(other)
    assert cv.group_values == [0.8, 0.8, 0.1, 0.8, 0.8]
    assert cv.rules_text == "fc.bias: 0.25\nembed: 0.5"
    assert [sl.value for sl in cv.model_rows[2].slots if sl.name == "weight"] == [0.6]
    lam = [sl for sl in cv.global_slots if sl.name == "lambda"][0]
    assert lam.value == 0.8 and lam.per_group and lam.rules
    # the resolved values are what the controls say
    plan_params = Recipe.from_yaml(text)
    from studio.engine import build_plan

    tasks = {t.out_key: t.params for t in build_plan(plan_params).tasks}
    assert tasks["blocks.1.fc.weight"]["lambda"] == pytest.approx(0.1)
    assert tasks["blocks.1.fc.bias"]["lambda"] == pytest.approx(0.25)
    assert tasks["embed.weight"]["lambda"] == pytest.approx(0.5)
    assert tasks["blocks.2.fc.weight"]["lambda"] == pytest.approx(0.8)


def test_yaml_edit_updates_controls_and_bad_yaml_is_a_message(env):
    s = env.new_session()
    text = s.yaml().replace("lambda: 0.5", "lambda: 1.25")
    s.set_yaml(text)
    assert [sl.value for sl in controls(s).global_slots if sl.name == "lambda"] == [1.25]
    before = dict(s.recipe)
    with pytest.raises(RecipeError, match="invalid YAML at line"):
        s.set_yaml("merge_method: [unclosed")
    with pytest.raises(RecipeError, match="unknown merge method"):
        s.set_yaml(text.replace("task_arithmetic", "task_arithmatic"))
    assert s.recipe == before


def test_yaml_cannot_point_outside_allowed_folders(env):
    s = env.new_session()
    with pytest.raises(PathNotAllowed):
        s.set_yaml(s.yaml().replace(s.recipe["base_model"], "/etc/passwd.safetensors"))


def test_curves_presets_and_group_values(env):
    s = env.new_session()
    s.apply_curve("ramp up", 0.0, 1.0)
    assert s.group_values() == [0.0, 0.25, 0.5, 0.75, 1.0]
    s.apply_curve("peak", 0.0, 1.0)
    assert s.group_values()[2] == 1.0 and s.group_values()[0] == 0.0
    s.apply_curve("flat", 0.0, 0.4)
    assert s.recipe["parameters"]["lambda"] == 0.4  # all equal → a plain scalar again
    s.apply_preset("GRAD_V")
    vals = s.group_values()
    assert vals[0] == pytest.approx(1.0) and vals[-1] == pytest.approx(1.0) and min(vals) < 0.5
    s.set_target("models.0.weight")
    s.set_group_value("L00", 0.0)
    assert s.recipe["models"][0]["parameters"]["weight"] == {"*": 1.0, "L00": 0.0}


def test_sd_presets_map_exactly_onto_26_blocks():
    from studio.layout.presets import lookup_preset

    groups = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)] + ["VAE"]
    vals = E.preset_values("GRAD_V", groups)
    assert vals[:26] == lookup_preset("GRAD_V", 27) and len(vals) == 27


def test_undo_and_history_restore(env):
    s = env.new_session()
    s.preview()
    s.set_value("parameters.lambda", 0.9)
    s.preview()
    s.set_method("ties")
    assert s.recipe["merge_method"] == "ties"
    assert s.undo() and s.recipe["merge_method"] == "task_arithmetic"
    assert s.undo() and s.recipe["parameters"]["lambda"] == 0.5
    rows = s.history_rows()
    assert [r[0] for r in rows] == [2, 1] and rows[0][4] is not None
    s.restore(2)
    assert s.recipe["parameters"]["lambda"] == 0.9
    with pytest.raises(StudioError, match="no history entry #99"):
        s.restore(99)
    for empty in (None, 0):  # an empty number box arrives as either
        with pytest.raises(StudioError, match="choose an entry"):
            s.restore(empty)
    # the same recipe previewed again (a re-run, a refused edit) updates its row instead of adding one
    s.preview()
    s.preview()
    assert [r[0] for r in s.history_rows()] == [2, 1]  # entry 2 restored and previewed twice: still one row


def test_method_switch_generates_the_new_controls(env):
    s = env.new_session()
    s.set_method("slerp")
    names = [sl.name for sl in controls(s).global_slots]
    assert "t" in names and s.recipe["parameters"]["t"] == 0.5
    ok, verdict = s.dry_run()
    assert not ok and "slerp" in verdict  # three experts: the dry run says why, before any tensor loads
    s.set_included([s.available[1]])  # slerp: the base and one other model
    assert s.dry_run()[0], s.dry_run()[1]
    s.preview()


def test_sessions_are_isolated(env):
    a, b = env.new_session(), env.new_session()
    a.set_value("parameters.lambda", 1.1)
    a.set_method("ties")
    assert b.recipe["merge_method"] == "task_arithmetic" and b.recipe["parameters"]["lambda"] == 0.5
    pa, pb = a.preview(), b.preview()
    assert pa.recipe != pb.recipe and a.live is not b.live
    assert len(a.history) == len(b.history) == 1


def test_newer_request_supersedes_older(env):
    s = env.new_session()
    s.preview()
    old = s.next_ticket()
    s.next_ticket()  # a newer request arrived before the old one ran
    assert s.preview(ticket=old).superseded
    results = []
    threads = [threading.Thread(target=lambda: results.append(s.preview())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(not r.superseded for r in results)


def test_export_writes_file_and_card(env, tmp_path):
    s = env.new_session()
    fracs = []
    res = export_recipe(s, str(tmp_path / "out" / "m.safetensors"), "float16", progress=fracs.append)
    assert res["bytes"] > 0 and res["path"].endswith("m.safetensors")
    assert "task_arithmetic" in res["card"] and fracs and fracs[-1] == pytest.approx(1.0)
    from safetensors.torch import load_file

    out = load_file(res["path"])
    ref = merge_in_memory(s.recipe_obj())
    assert out["blocks.0.fc.weight"].dtype == torch.float16
    assert torch.allclose(out["blocks.0.fc.weight"].float(), ref["blocks.0.fc.weight"], atol=1e-3)
    folder = export_recipe(s, str(tmp_path / "folder"), "float32")
    assert any(f.endswith("README.md") for f in folder["files"]) and "```yaml" in folder["card"]
    with pytest.raises(PathNotAllowed):
        export_recipe(s, "/tmp/not-allowed-" + tmp_path.name + "/x.safetensors")


def test_export_quantized_reports_its_error(env, tmp_path):
    from studio.sources import open_source

    s = env.new_session()
    ref = merge_in_memory(s.recipe_obj())
    res = export_recipe(s, str(tmp_path / "q" / "m.safetensors"), "fp8-scaled")
    back, q = open_source(res["path"]), res["summary"]["quantization"]
    # the error the export reports is the one between the float32 merge and the file read back
    errs = {k: (back.get(k).float() - w).abs().max().item() for k, w in ref.items()}
    assert q["scheme"] == "fp8-scaled" and q["overall"]["max_abs_error"] > 0
    assert max(errs.values()) == pytest.approx(q["overall"]["max_abs_error"], rel=1e-5)
    for k, e in errs.items():  # e4m3 keeps 3 mantissa bits: within 1/16 of the value, scaled so max |w| is 448
        assert e <= ref[k].abs().max().item() / 16 + 1e-7, k
    gg = export_recipe(s, str(tmp_path / "q" / "m.gguf"), "q8_0")
    assert gg["files"] == [gg["path"], str(tmp_path / "q" / "m.recipe.yml")]
    assert sorted(open_source(gg["path"]).keys()) == sorted(ref)
    with pytest.raises(StudioError, match="GGUF types"):
        export_recipe(s, str(tmp_path / "q" / "m16.gguf"), "float16")


def test_add_model_respects_allowed_roots(env, toy_family, tmp_path):
    import shutil

    s = env.new_session()
    mine = tmp_path / "mine.safetensors"
    shutil.copy(toy_family.experts["alpha"], mine)
    info = s.add_model(str(mine))
    assert info["parameters"] > 0 and str(mine) in s.included()
    assert s.models_table()[-1][0] == "mine"
    with pytest.raises(PathNotAllowed):
        s.add_model("/etc/hostname")


def test_allowed_roots(tmp_path):
    roots = AllowedRoots([tmp_path / "a"], include_hub_cache=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert roots.check_path(str(tmp_path / "a" / "x.safetensors")) == (tmp_path / "a" / "x.safetensors").resolve()
    for bad in (tmp_path / "b" / "x", tmp_path / "a" / ".." / "b" / "x", "/etc/passwd"):
        with pytest.raises(PathNotAllowed):
            roots.check_path(str(bad))
    (tmp_path / "a" / "link").symlink_to(tmp_path / "b")
    with pytest.raises(PathNotAllowed):
        roots.check_path(str(tmp_path / "a" / "link" / "x"))
    ok = str(tmp_path / "a" / "m.safetensors")
    assert roots.check_reference("org/model@main") == "org/model@main"
    assert roots.check_reference(f"{ok}+{tmp_path / 'a' / 'l.safetensors'}:0.5")
    with pytest.raises(PathNotAllowed):
        roots.check_reference(f"{ok}+{tmp_path / 'b' / 'l.safetensors'}")


def test_formula_fills_in_numbers(env):
    s = env.new_session()
    s.set_value("parameters.lambda", 0.3)
    s.set_value("models.0.weight", 2.0)
    f = s.formula()
    assert "0.3·(2·τ[alpha] + 1·τ[beta] + 1·τ[gamma])" in f and "alpha 0.6" in f
    s.set_method("linear")
    assert "θ = (" in s.formula()


def test_formula_names_the_models_in_the_engines_order(env, toy_family):
    """A base the method takes as an input but the recipe does not list joins last: a weighted sum of one listed
    model and the base is (1−α)·model + α·base, in the formula as in the merged tensors (#17: it called the base A)."""
    from safetensors.torch import load_file

    from studio.methods import get_method
    from studio.ui import formula

    base, alpha = str(toy_family.base), str(toy_family.experts["alpha"])
    recipe = {"merge_method": "weighted_sum", "base_model": base, "models": [{"model": alpha}],
              "parameters": {"alpha": 0.25}}
    text = formula.render(get_method("weighted_sum"), recipe, {alpha: "alpha"})
    assert "θ = 0.75·θ[alpha] + 0.25·θ[base]" in text
    merged = merge_in_memory(Recipe.from_dict(recipe))
    a, b = load_file(alpha), load_file(base)
    for k, v in merged.items():
        assert torch.allclose(v, 0.75 * a[k].float() + 0.25 * b[k].float(), atol=1e-6), k
    diff = dict(recipe, merge_method="add_difference", models=[{"model": alpha}, {"model": str(
        toy_family.experts["beta"])}], parameters={"alpha": 1.0})
    assert "θ = θ[alpha] + 1·(θ[beta] − θ[base])" in formula.render(get_method("add_difference"), diff,
                                                                     {alpha: "alpha", diff["models"][1]["model"]: "beta"})


def test_sweep_marks_current_value(env):
    s = env.new_session()
    s.preview()
    fracs = []
    data = s.landscapes.sweep("parameters.lambda", points=5, lo=0.0, hi=1.0, progress=lambda f, m: fracs.append(f))
    assert data["x"]["values"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert data["x"]["path"] == ["parameters", "lambda"] and fracs[-1] == pytest.approx(1.0)
    cur = [m for m in data["markers"] if m["name"] == "current"]
    assert cur and cur[0]["x"] == 0.5
    # the point at the current value equals the preview, per task and on average
    pv = s.preview()
    assert data["results"][2]["per_task"] == pv.result["per_task"]
    assert data["z"][2] == pytest.approx(pv.result["average"]) == pytest.approx(cur[0]["score"])
    # a per-model setting sweeps that model only
    data = s.landscapes.sweep("models.1.weight", points=3, lo=0.0, hi=2.0)
    assert data["x"]["path"] == ["models", 1, "weight"] and len(data["z"]) == 3
    assert s.recipe_obj().models[1].parameters["weight"] == 1.0  # the recipe is untouched


def test_task_plane_markers_are_the_merges_they_name(env, toy_family):
    s = env.new_session()
    alpha, beta = str(toy_family.experts["alpha"]), str(toy_family.experts["beta"])
    s.set_included([alpha, beta])
    s.preview()
    data = s.landscapes.plane(alpha, beta, steps=5)
    assert data["x"]["values"] == pytest.approx([-0.5, 0.0, 0.5, 1.0, 1.5]) and len(data["z"]) == 5
    assert data["x"]["label"] == "α · τ(alpha)" and data["y"]["label"] == "β · τ(beta)"
    marks = {m["name"]: m for m in data["markers"]}
    assert set(marks) == {"base", "alpha", "beta", "average", "current"}
    ev = toy_family.evaluator()
    from safetensors.torch import load_file

    assert marks["alpha"]["score"] == pytest.approx(ev.evaluate(load_file(alpha))["average"])
    assert data["z"][1][3] == pytest.approx(marks["alpha"]["score"])  # grid point (α=1, β=0) is the expert
    # task arithmetic with λ = 0.5 over these two experts is the point (0.5, 0.5), on the plane
    cur = marks["current"]
    assert (cur["x"], cur["y"]) == (pytest.approx(0.5, abs=1e-5), pytest.approx(0.5, abs=1e-5))
    assert cur["residual"] < 1e-3 and cur["score"] == pytest.approx(s.preview().result["average"])
    with pytest.raises(StudioError, match="two merged models"):
        s.set_included([alpha])
        s.landscapes.plane()


def test_optimize_offers_the_declared_learners_with_controls_for_their_hyperparameters(env):
    from studio.learn import get_learner, list_variants
    from studio.ui.learning import choices, drawable
    from studio.ui.panels.optimize import MAX_HPARAMS

    assert [c for _, c in choices()] == [v.name for v in list_variants()]
    assert dict((c, lab) for lab, c in choices())["adamerging_task"] == "AdaMerging · task-wise"
    for v in list_variants():
        assert sum(drawable(p) for p in get_learner(v.learner).params) <= MAX_HPARAMS, v.name
    s = env.new_session()
    s.learning.choose("adamerging_task")
    shown = {p.name: value for p, value in s.learning.params()}
    # the variant fixes the granularity (its name says so); clamp (a tuple) is not drawn
    assert shown == {"init": 0.3, "lr": 1e-3, "batch_size": 16}
    s.learning.set_param(list(shown).index("lr"), "0.05")
    s.learning.set_param(list(shown).index("batch_size"), 8.0)
    assert s.learning.settings == {"lr": 0.05, "batch_size": 8}
    with pytest.raises(RecipeError, match="batch_size"):
        s.learning.set_param(list(shown).index("batch_size"), 2.5)
    s.learning.set_param(list(shown).index("lr"), None)  # an emptied box: the method's default again
    assert s.learning.settings == {"batch_size": 8}
    s.learning.choose("samerging")
    assert s.learning.settings == {} and dict((p.name, v) for p, v in s.learning.params())["temperature"] is None


def test_an_own_model_of_another_kind_starts_its_own_recipe(env, tmp_path):
    """A model that does not fit the demo family's tensors never joins its recipe: it starts a recipe of its own,
    the family is put away, and the judge follows the models (here a Llama without a tokenizer: merge only, with the
    missing piece named)."""
    from tinymodels import make_llama

    s = env.new_session()
    own = make_llama(tmp_path / "my-llama", 0)
    s.add_model(str(own))
    assert s.family is None and s.included() == [str(own)] and s.available == [str(own)]
    assert s.recipe["name"] == "my-llama-merge" and s.dry_run()[0]
    other = make_llama(tmp_path / "my-other-llama", 1)
    s.add_model(str(other))  # same tensors: joins
    assert s.included() == [str(own), str(other)] and s.family is None
    pv = s.preview()
    assert pv.tensors > 0 and not pv.superseded
    # merged all the same; the preview says what it misses to show text (these folders have no tokenizer)
    assert pv.result["notes"][0].startswith("no preview:") and "tokenizer" in pv.result["notes"][0]
    assert s.undo() and s.included() == [str(own)]


def test_grid_cells_are_the_previews_of_their_recipes(env, toy_family, tmp_path):
    from studio.preview.grid import read_grid_recipes

    s = env.new_session()
    first = s.preview()
    assert "parameters.lambda@L01" in s.grids.axis_choices() and "merge_method" in s.grids.axis_choices()
    g = s.grids.render("parameters.lambda=0.2,0.8", "models.0.weight=0,1")
    ev = toy_family.evaluator()
    for row in g.cells:
        for cell in row:
            assert cell["result"]["per_task"] == ev.evaluate(merge_in_memory(Recipe.from_dict(cell["recipe"])))[
                "per_task"]
    path = s.grids.save(str(tmp_path / "grid"))
    assert path.endswith("grid.png") and read_grid_recipes(path)["cells"][1][0] == g.cells[1][0]["recipe"]
    with pytest.raises(StudioError, match="81 previews"):
        s.grids.render("lambda=0:1:9", "parameters.lambda@L01=0:1:9")
    with pytest.raises(PathNotAllowed):
        s.grids.save("/tmp/elsewhere-" + tmp_path.name + "/grid.png")
    assert s.preview().result["per_task"] == first.result["per_task"]  # the live merge holds the recipe again


def test_own_llms_preview_text_from_the_users_prompts_and_perplexity(env, tmp_path):
    """A user's own causal LMs: the preview pipeline (a transformers model whose parameters are the live merge) answers
    the user's prompts beside each input model, measures perplexity on pasted text, and the merged weights are the
    CLI merge's."""
    from tinymodels import WORDS, add_word_tokenizer, make_llama

    a = add_word_tokenizer(make_llama(tmp_path / "llama-a", 0))
    b = add_word_tokenizer(make_llama(tmp_path / "llama-b", 1))
    s = env.new_session()
    s.add_model(str(a))
    s.add_model(str(b))
    assert s.family is None and s.included() == [str(a), str(b)]
    first = s.preview()
    from studio.preview.llm import DEFAULT_PROMPTS
    assert list(first.result["samples"]) == list(DEFAULT_PROMPTS) and first.result["metric"] == "perplexity"
    assert {f.name for f in s.previewing.request_fields()} >= {"prompts", "text"}
    prompt = " ".join(WORDS[5:9])
    s.previewing.set_request("prompts", prompt)
    s.previewing.set_request("max_new_tokens", 4)
    s.previewing.set_request("text", " ".join(WORDS[3:40] * 3))
    pv = s.preview()
    assert pv.result["metric"] == "perplexity" and pv.result["average"] > 1
    assert list(pv.result["samples"]) == [prompt] and set(pv.inputs) == {"llama-a", "llama-b"}
    assert all(list(r["samples"]) == [prompt] for r in pv.inputs.values())
    expect = merge_in_memory(s.recipe_obj())
    for k, v in expect.items():
        assert torch.equal(s.live.state[k], v), k
    model = s.previewing.judge.previewer.model
    assert model.model.layers[0].mlp.down_proj.weight.data_ptr() == s.live.state[
        "model.layers.0.mlp.down_proj.weight"].data_ptr()  # one copy: the model's parameter is the merged tensor
    # the Analysis sweep scores own models by the same perplexity: each point is the preview of that recipe
    data = s.landscapes.sweep("models.0.weight", points=3, lo=0.0, hi=1.0)
    assert [r["metric"] for r in data["results"]] == ["perplexity"] * 3
    s.set_value("models.0.weight", 0.0)
    assert data["results"][0]["average"] == pytest.approx(s.preview().result["average"], rel=1e-5)
    with pytest.raises(PathNotAllowed):
        s.previewing.set_request("eval_set", "/etc/passwd")
    with pytest.raises(StudioError, match="max_new_tokens"):
        s.previewing.set_request("max_new_tokens", -3)


def test_own_llms_with_different_vocabularies_preview_over_their_union(env, tmp_path):
    """Two own LLMs whose tokenizers differ, merged with tokenizer_source: union (typed as published YAML): the
    preview's model has the union's rows, its tokenizer knows both models' words, each input model previews in the
    same modules through its mapped rows, and the resident weights are the CLI merge's."""
    from tinymodels import WORDS, add_tokenizer_of, make_llama

    a = add_tokenizer_of(make_llama(tmp_path / "llama-a", 0), WORDS)
    b = add_tokenizer_of(make_llama(tmp_path / "llama-b", 1, vocab=66), WORDS + ["zephyr", "quokka"])
    s = env.new_session()
    ignored = s.set_yaml(f"merge_method: linear\nmodels:\n  - model: {a}\n  - model: {b}\n"
                         "parameters: {weight: 0.5}\ntokenizer_source: union\nselect_topk: 0.5\n")
    assert len(ignored) == 1 and "select_topk" in ignored[0]
    s.preview()
    s.previewing.set_request("prompts", "w5 zephyr quokka")
    s.previewing.set_request("max_new_tokens", 2)
    pv = s.preview()
    previewer = s.previewing.judge.previewer
    assert previewer.model.get_input_embeddings().weight.shape[0] == 66
    assert {"zephyr", "quokka"} <= set(previewer.tokenizer.get_vocab())
    assert set(pv.inputs) == {"llama-a", "llama-b"} and pv.result["metric"] == "perplexity"
    expect = merge_in_memory(s.recipe_obj())
    for k, v in expect.items():
        assert torch.equal(s.live.state[k], v), k


@pytest.mark.parametrize("kind", ["slices", "modules"])
def test_own_llm_frankenmerges_and_module_recipes_preview(env, tmp_path, kind):
    """A passthrough of slices (a model with more layers than its inputs) and a modules: recipe preview too: the
    preview's model has the merge's layer count and holds every merged tensor, which are the CLI merge's."""
    from tinymodels import add_word_tokenizer, make_llama

    a = add_word_tokenizer(make_llama(tmp_path / "llama-a", 0))
    b = add_word_tokenizer(make_llama(tmp_path / "llama-b", 1))
    s = env.new_session()
    s.set_yaml(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 3]}}]\n"
               f"  - sources: [{{model: {b}, layer_range: [1, 3]}}]\n" if kind == "slices" else
               f"merge_method: linear\nmodules:\n  default:\n    models: [{{model: {a}}}, {{model: {b}}}]\n"
               "parameters: {weight: 0.5}\n")
    pv = s.preview()
    assert pv.result["metric"] == "perplexity" and pv.result["average"] > 1
    previewer = s.previewing.judge.previewer
    assert len(previewer.model.model.layers) == (5 if kind == "slices" else 3) and previewer.unused == []
    expect = merge_in_memory(s.recipe_obj())
    for k, v in expect.items():
        assert torch.equal(s.live.state[k], v), k


def test_own_sd_pipelines_preview_images_that_follow_the_block_sliders(env, tmp_path):
    """Two of a user's own SD1 pipeline folders: the preview draws images from the user's prompt with the live merge
    inside the pipeline (no copy of the UNet), a block slider changes the image, the merged weights are the CLI
    merge's, and each input model is drawn the same way beside it."""
    import numpy as np

    from studio.sd import synth

    a = synth.write_random_pipeline(tmp_path / "sd-a", "sd1", seed=1, tiny=True, runnable=True)
    b = synth.write_random_pipeline(tmp_path / "sd-b", "sd1", seed=2, tiny=True, runnable=True)
    s = env.new_session()
    s.add_model(str(a))
    s.add_model(str(b))
    assert s.family is None and s.layout().name == "sd1-blocks"
    assert s.preview().result["metric"] == "image"
    fields = {f.name: f.value for f in s.previewing.request_fields()}
    assert fields["steps"] == 8 and fields["width"] == fields["height"] == 8  # half the tiny model's 16 px on a CPU
    s.previewing.set_request("prompts", "a red fox in the snow")
    s.previewing.set_request("steps", 2)
    first = s.preview()
    assert len(first.result["samples"]) == 1
    assert set(first.inputs) == {"sd-a", "sd-b"} and all(len(r["samples"]) == 1 for r in first.inputs.values())
    unet = s.previewing.judge.previewer.pipe.unet
    key = next(k for k in s.live.state if k.endswith("down_blocks.0.resnets.0.conv1.weight"))
    assert unet.down_blocks[0].resnets[0].conv1.weight.data_ptr() == s.live.state[key].data_ptr()

    s.set_target("models.0.weight")
    assert s.group_values()[s.layout().groups.index("IN01")] == 1.0
    s.set_group_value("IN01", 0.0)  # that block from sd-b alone
    pv = s.preview()
    assert pv.changed == sum(s.layout().group_of(k) == "IN01" for k in s.live.state) > 0  # only that block again
    s.set_group_values([0.0] * (len(s.layout().groups) - 1) + [1.0])  # the whole UNet from sd-b (the VAE is sd-a's)
    pv = s.preview()
    before, after = (np.asarray(r["samples"][0], dtype=float) for r in (first.result, pv.result))
    assert np.abs(before - after).max() > 0
    for k, v in merge_in_memory(Recipe.from_yaml(s.yaml())).items():
        assert torch.equal(s.live.state[k], v), k
    # the merge's image, saved as the page saves it (PNG), carries its prompt and seed for A1111's PNG Info and
    # its recipe for the studio: dropped on a new tab, it opens that recipe
    from studio.sd.infotext import parse_infotext
    from studio.ui import preview_view as V
    img, caption = V.images(pv)[0]
    assert caption == "merge · 1"
    from gradio.processing_utils import save_pil_to_cache  # what the gallery (format="png") does with the image
    shot = save_pil_to_cache(img, str(tmp_path), format="png")
    prompt, _, params = parse_infotext(img.info["parameters"])
    assert (prompt, params["Seed"], params["Steps"], params["Size"]) == ("a red fox in the snow", "0", "2", "8x8")
    fresh = env.new_session()
    fresh.files.drop(shot)
    assert fresh.recipe == pv.recipe



def test_a_first_preview_tells_its_progress_and_later_ones_stay_quiet(env):
    """Loading a family merges everything and scores every input model (a minute for the diffusion demo): each step
    is announced with a growing fraction; a slider's re-merge is not."""
    s = env.new_session()
    heard = []
    s.preview(progress=lambda f, msg: heard.append((f, msg)))
    fractions = [f for f, _ in heard]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] < 1
    assert heard[0][1] == "loading the models and merging them" and heard[1][1].startswith("judging the merge")
    n = 1 + len(s.experts())  # the base and each expert
    assert [m.split(" (")[0] for _, m in heard[2:]] == [f"scoring input model {i} of {n}" for i in range(1, n + 1)]
    heard.clear()
    s.set_value("parameters.lambda", 0.6)
    s.preview(progress=lambda f, msg: heard.append((f, msg)))
    assert heard == []


def test_block_map_of_the_reference_model(env, toy_family):
    s = env.new_session()
    title, rows = s.block_map()
    layout = s.layout()
    src = env.opener(str(toy_family.base))
    assert title.startswith("Block map of ") and f"({len(layout.groups)} groups)" in title
    assert [r[0] for r in rows] == layout.groups
    # every tensor of the model is counted in exactly one row, each row's examples are keys of its group
    assert sum(r[2] for r in rows) == len(src.keys())
    for g, _, n, _, examples in rows:
        keys = [k for k in src.keys() if layout.group_of(k) == g]
        assert n == len(keys) and examples == ", ".join(keys[:3])
