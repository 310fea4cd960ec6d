"""The file browser and the drop zone: what each entry is, what opening it does, that nothing outside the allowed
folders is listed or opened, and the tab's recipe and history coming back after a page reload."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import add_word_tokenizer, make_llama, tagged_png  # noqa: E402

from studio.errors import StudioError
from studio.recipe.files import RECIPE_KEY
from studio.ui.paths import PathNotAllowed



@pytest.fixture()
def own(tmp_path, toy_family):
    """An allowed folder with a Llama folder, two toy checkpoints, a recipe, a tagged PNG, data and a stray file."""
    for name in ("llama-a", "llama-b"):
        add_word_tokenizer(make_llama(tmp_path / "models" / name, seed=len(name)))
    for t in ("alpha", "beta"):
        shutil.copy(toy_family.experts[t], tmp_path / "models" / f"{t}.safetensors")
    recipe = {"merge_method": "linear", "models": [
        {"model": str(tmp_path / "models" / "alpha.safetensors"), "parameters": {"weight": 0.3}},
        {"model": str(tmp_path / "models" / "beta.safetensors"), "parameters": {"weight": 0.7}}]}
    (tmp_path / "models" / "mine.yml").write_text(json.dumps(recipe))
    tagged_png(tmp_path / "models" / "shot.png", **{RECIPE_KEY: json.dumps(recipe)})
    tagged_png(tmp_path / "models" / "plain.png")
    (tmp_path / "models" / "eval.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    (tmp_path / "models" / "notes.odt").write_text("x")
    return tmp_path / "models", recipe


def test_entries_say_what_each_file_is(env, own):
    folder, _ = own
    s = env.new_session()
    assert str(folder.parent) in [p for _, p in s.files.places()]
    s.files.go(str(folder))
    seen = {e.name: (e.action, e.label) for e in s.files.entries}
    assert seen == {"llama-a": ("model", "transformers model"), "llama-b": ("model", "transformers model"),
                    "alpha.safetensors": ("model", "checkpoint"), "beta.safetensors": ("model", "checkpoint"),
                    "mine.yml": ("recipe", "recipe"), "shot.png": ("recipe", "image with merge settings"),
                    "eval.jsonl": ("eval_set", "evaluation set (JSONL)")}   # plain.png and notes.odt: no use
    assert s.files.place == str(folder.parent)


def test_nothing_outside_the_allowed_folders(env, own):
    s = env.new_session()
    with pytest.raises(PathNotAllowed):
        s.files.go("/etc")
    s.files.go(str(own[0].parent))
    s.files.up()                       # the top of an allowed folder: back to the places, not its parent
    assert s.files.cwd is None and s.files.entries == []
    with pytest.raises(StudioError, match="choose a file first"):
        s.files.open()


def test_open_a_model_then_start_a_recipe_with_another(env, own):
    folder, _ = own
    s = env.new_session()
    assert s.family == "toy"
    s.files.go(str(folder))
    s.files.select([e.name for e in s.files.entries].index("llama-a"))
    assert s.files.open_label() == "Add to recipe"
    s.files.open()                      # does not fit the demo's tensors: starts the user's own recipe
    assert s.family is None and s.included() == [str(folder / "llama-a")]
    s.files.select([e.name for e in s.files.entries].index("llama-b"))
    s.files.open()
    assert s.included() == [str(folder / "llama-a"), str(folder / "llama-b")]
    s.files.start_with()                # a new recipe of the selected model alone; Undo brings the two back
    assert s.included() == [str(folder / "llama-b")]
    assert s.undo() and len(s.included()) == 2


def test_open_and_drop_recipes(env, own, tmp_path_factory):
    folder, recipe = own
    s = env.new_session()
    s.files.go(str(folder))
    s.files.select([e.name for e in s.files.entries].index("mine.yml"))
    s.files.open()
    assert s.recipe == recipe and s.family is None
    # a dropped image is an upload's copy outside the allowed folders: its recipe is read, its models checked
    s2 = env.new_session()
    up = tmp_path_factory.mktemp("upload")
    s2.files.drop(str(shutil.copy(folder / "shot.png", up / "shot.png")))
    assert s2.recipe == recipe
    outside = dict(recipe, models=[{"model": "/etc/passwd"}, {"model": recipe["models"][1]["model"]}])
    before = s2.recipe
    with pytest.raises(PathNotAllowed):
        s2.files.drop(str(tagged_png(up / "evil.png", **{RECIPE_KEY: json.dumps(outside)})))
    assert s2.recipe == before
    with pytest.raises(StudioError, match="no recipe to open"):
        s2.files.drop(str(folder / "eval.jsonl"))


def test_a_multi_step_recipe_opens_its_output_step_over_merged_steps(env, own, tmp_path):
    """Opening a mergekit-multi file merges its earlier steps into the workspace's steps/ folder (once: opened again,
    they are reused) and opens the output step live, reading them; its merge equals the CLI's of the whole file; a
    step reading a model outside the allowed folders is refused before anything is merged."""
    from studio.cli import main
    from studio.engine import merge_in_memory
    from tinymodels import load_state

    folder, _ = own
    a, b = folder / "llama-a", folder / "llama-b"
    text = (f"name: first\nmerge_method: linear\nmodels: [{{model: {a}}}, {{model: {b}}}]\n"
            "parameters: {weight: [1, 0.2]}\ndtype: float32\n---\n"
            f"merge_method: slerp\nbase_model: first\nmodels: [{{model: first}}, {{model: {b}}}]\n"
            "parameters: {t: 0.3}\ndtype: float32\n")
    (folder / "steps.yml").write_text(text)
    s = env.new_session()
    s.files.open_recipe(folder / "steps.yml")
    assert "merged first into" in s.files.message
    steps = Path(env.default_dir("steps")) / "steps"
    assert s.recipe["base_model"] == str(steps / "01-first") and (steps / "01-first" / "config.json").is_file()
    assert main(["merge", str(folder / "steps.yml"), str(tmp_path / "cli"), "--quiet"]) == 0
    cli, ours = load_state(tmp_path / "cli"), merge_in_memory(s.recipe_obj())
    assert set(cli) == set(ours) and all(torch.equal(cli[k], ours[k]) for k in cli)
    s.files.open_recipe(folder / "steps.yml")
    assert "merged" not in s.files.message and "earlier steps are in" in s.files.message
    (folder / "evil.yml").write_text(text.replace(str(a), "/etc/passwd", 1))
    with pytest.raises(PathNotAllowed):
        s.files.open_recipe(folder / "evil.yml")


def test_data_needs_a_preview_that_takes_it(env, own):
    folder, _ = own
    s = env.new_session()                # the demo family's evaluator judges: no evaluation set to set
    s.files.go(str(folder))
    s.files.select([e.name for e in s.files.entries].index("eval.jsonl"))
    with pytest.raises(StudioError, match="takes no evaluation set"):
        s.files.open()


def test_a_reload_comes_back_to_the_recipe_and_history(env, own):
    folder, recipe = own
    s = env.new_session()
    s.set_value("parameters.lambda", 0.7)
    s.preview()
    s.set_value("parameters.lambda", 0.9)
    s.preview()
    kept = json.loads(json.dumps(s.snapshot()))    # what the browser stores is JSON
    again = env.new_session()
    assert again.resume(kept)
    assert again.recipe == s.recipe and again.family == "toy"
    assert again.history_rows() == s.history_rows()
    again.restore(again.history[0].id)
    assert again.recipe["parameters"]["lambda"] == 0.7
    # the page's data is not trusted: a recipe reading outside the allowed folders is refused as if typed
    bad = dict(kept, recipe=dict(recipe, models=[{"model": "/etc/passwd"}, recipe["models"][0]]))
    with pytest.raises(PathNotAllowed):
        env.new_session().resume(bad)
    assert not env.new_session().resume({"v": 1, "recipe": {}}) and not env.new_session().resume("junk")
    tampered = dict(kept, history=[{"id": "x"}, {**json.loads(json.dumps(s.snapshot()))["history"][0]}])
    t = env.new_session()
    assert t.resume(tampered) and len(t.history) == 1


def test_a_gguf_file_is_a_model_the_studio_opens(env, own):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    folder, _ = own
    w = gguf.GGUFWriter(str(folder / "tiny.gguf"), "studio")
    w.add_tensor("blocks.0.proj.weight", np.arange(64, dtype=np.float32).reshape(2, 32),
                 raw_dtype=gguf.GGMLQuantizationType.F32)
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    s = env.new_session()
    s.files.go(str(folder))
    entry = next(e for e in s.files.entries if e.name == "tiny.gguf")
    assert (entry.action, entry.label) == ("model", "GGUF checkpoint (dequantized to float32 when read)")
    t = env.opener(str(folder / "tiny.gguf")).get("blocks.0.proj.weight")
    assert torch.equal(t, torch.arange(64, dtype=torch.float32).reshape(2, 32))
