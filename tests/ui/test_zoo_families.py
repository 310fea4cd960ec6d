"""The session controller on the real demo zoo (skipped when it is not built): learned merges from the Optimize
panel (coefficients loaded into the recipe, merged weights previewed and exported, trajectories on the landscape),
switching to the text and diffusion families, and a PEFT LoRA applied to the text base."""

from __future__ import annotations

import pytest
import torch

from studio.errors import StudioError
from studio.ui import preview_view as V

pytest.importorskip("studio.learn")


@pytest.fixture(scope="module")
def zoo_env(tmp_path_factory):
    from studio.ui.catalog import Catalog, zoo_families
    from studio.ui.paths import AllowedRoots
    from studio.ui.env import StudioEnv

    families = zoo_families()
    if not {"vision", "text", "diffusion"} <= set(families):
        pytest.skip("the demo zoo is not built (python -m studio zoo build)")
    out = tmp_path_factory.mktemp("zoo-exports")
    env = StudioEnv(Catalog(families), AllowedRoots([out]), device="cpu", export_dir=str(out))
    env.out = out
    return env


def test_learned_coefficients_load_into_the_recipe_and_move_the_preview(zoo_env):
    s = zoo_env.new_session("vision")
    first = s.preview()
    fracs = []
    lr = s.learning.learn("adamerging_task", steps=6, progress=lambda f, m: fracs.append(f), lr=0.05)
    assert fracs[0] == 0.0 and fracs[-1] == pytest.approx(1.0)
    assert lr.recipe is not None and len(lr.result.history) == 6
    assert s.recipe["merge_method"] == "task_arithmetic" and s.recipe["parameters"] == {"lambda": 0.3}  # not yet
    s.learning.load()
    assert s.recipe == lr.recipe and s.recipe["name"].startswith("adamerging")
    weights = [m["parameters"]["weight"] for m in s.recipe["models"]]
    assert len(set(weights)) > 1  # learned, one coefficient per task
    pv = s.preview()
    assert pv.result["per_task"] != first.result["per_task"]
    # the recipe replayed by the live engine is the model the learner produced, scored the same way
    assert pv.result["average"] == pytest.approx(lr.scores["average"], abs=0.6)
    assert s.history[-1].method == "task_arithmetic" and s.history[-1].recipe == lr.recipe
    # its trajectory is drawn on the task-vector plane of the same models
    data = s.landscapes.plane(steps=5)
    assert len(data["trajectories"]) == 1 and len(data["trajectories"][0]["x"]) >= 2
    assert "trajectory" in data["trajectories"][0]["name"] and "projected" in data["note"]
    assert s.undo() and s.recipe["parameters"] == {"lambda": 0.3}


def test_learned_weights_are_previewed_and_exported_not_recorded(zoo_env):
    from safetensors.torch import load_file

    s = zoo_env.new_session("vision")
    s.preview()
    n_hist = len(s.history)
    lr = s.learning.learn("regmean")
    assert lr.recipe is None and lr.result.state_dict
    with pytest.raises(StudioError, match="merged weights"):
        s.learning.load()
    pv = s.learning.preview()
    assert pv.source and "RegMean" in pv.source and pv.result == lr.scores
    assert "RegMean" in V.latency_text(pv) and len(s.history) == n_hist
    res = s.learning.export(str(zoo_env.out / "regmean.safetensors"), "float32")
    sd = load_file(res["path"])
    key = next(k for k in sd if k.endswith("fc1.weight"))
    assert torch.equal(sd[key], lr.result.state_dict[key].float().cpu())
    with pytest.raises(StudioError, match="exists"):
        s.learning.export(str(zoo_env.out / "regmean.safetensors"))
    assert s.preview().source is None  # the next preview is the recipe's again


def test_text_family_perplexity_generations_and_lora(zoo_env):
    s = zoo_env.new_session("vision")
    s.load_family("text")
    pv = s.preview()
    assert pv.result["metric"] == "perplexity" and set(pv.result["per_task"]) == {"prose", "code", "tables"}
    md = V.samples_markdown(pv)
    assert "#### Generations" in md and md.count("```text") == 3 and "\n\n\n" not in md
    headers, rows = V.score_table(pv)
    assert headers[3] == "merge" and rows[-1][0] == "average" and rows[0][3] == round(pv.result["per_task"]["prose"], 2)
    # a PEFT LoRA applied to the base, merged as one more model
    base = s.recipe["base_model"]
    lora = dict(s.lora_choices())["prose"]
    s.add_lora(base, lora, 1.0)
    ref = s.included()[-1]
    assert ref == f"{base}+{lora}" and s.labels[ref] == "base+prose"
    assert s.dry_run()[0]
    pv2 = s.preview()
    assert "base+prose" in pv2.inputs and pv2.result["per_task"] != pv.result["per_task"]
    assert pv2.inputs["base+prose"]["per_task"]["prose"] != pv2.inputs["base"]["per_task"]["prose"]
    assert s.models_table()[-1][:2] == ["base+prose", "merged"]


def test_diffusion_family_images_and_style_scores(zoo_env):
    s = zoo_env.new_session("diffusion")
    pv = s.preview()
    assert pv.result["metric"] == "style" and set(pv.result["per_task"]) == {"ember", "bold", "stripes"}
    imgs = V.images(pv)
    assert len(imgs) == 1 and V.samples_markdown(pv) == ""
    assert imgs[0][0].size == (2 * (4 * 65 + 1), 2 * (2 * 65 + 1))  # 8 tiles of 64 px rewrapped 4 per row, ×2
    with pytest.raises(StudioError, match="no task data"):
        s.learning.learn("adamerging_task", steps=2)


def test_optimize_learns_on_the_users_own_models_and_data_folder(tmp_path):
    """No demo family: the user's models (the text zoo's folders, opened by path) learn from a folder with a subfolder
    of .txt per model; nothing evaluates them, so the result shows the objective, and the coefficients load."""
    import inspect
    import json as _json

    import pydoc_data.topics

    from studio.ui.learning import learned_markdown
    from studio.ui.catalog import Catalog
    from studio.ui.paths import AllowedRoots, PathNotAllowed
    from studio.ui.env import StudioEnv
    from studio.zoo import get_family

    fam = get_family("text")
    from pathlib import Path

    root = Path(fam.base).parent
    env = StudioEnv(Catalog({}), AllowedRoots([root, tmp_path]), device="cpu", export_dir=str(tmp_path))
    s = env.new_session()
    assert s.family is None
    s.add_model(str(fam.base))
    s.set_base(str(fam.base))
    for t in ("prose", "code"):
        s.add_model(str(fam.experts[t]))
    assert "Give a folder of **unlabeled data** above" in s.learning.readiness()
    with pytest.raises(StudioError, match="needs unlabeled data"):
        s.learning.learn("adamerging_task", steps=2)
    with pytest.raises(PathNotAllowed):
        s.learning.learn("adamerging_task", steps=2, data="/etc")
    data = tmp_path / "data"
    (data / "prose").mkdir(parents=True)
    (data / "code").mkdir()
    (data / "prose" / "a.txt").write_text(" ".join(list(pydoc_data.topics.topics.values())[:20]))
    (data / "code" / "a.txt").write_text(inspect.getsource(_json.decoder) + inspect.getsource(_json.encoder))
    lr = s.learning.learn("adamerging_task", steps=4, data=str(data), lr=0.05)
    assert lr.scores == {} and lr.recipe is not None
    assert lr.result.metrics["objective_end"] < lr.result.metrics["objective_start"]
    assert "no evaluator for these models" in learned_markdown(lr)
    s.learning.load()
    weights = [m["parameters"]["weight"] for m in s.recipe["models"]]
    assert len(set(map(str, weights))) == 2 and all(w != 1.0 for w in weights)


def test_family_about_describes_the_tasks_with_a_picture_for_vision(zoo_env):
    import numpy as np

    md, sheet = zoo_env.catalog.about("vision")
    sheet = np.asarray(sheet)
    fam = zoo_env.catalog.get("vision")
    assert all(f"`{t}`" in md for t in fam.tasks) and "house numbers" in md
    # one row of ten 32-pixel tiles per task, dark strokes on white
    assert isinstance(sheet, np.ndarray) and sheet.dtype == np.uint8
    assert sheet.shape == (len(fam.tasks) * 34 + 2, 10 * 34 + 2)
    assert sheet[0].min() == 255 and sheet[2:34, 2:34].min() < 128
    md, sheet = zoo_env.catalog.about("text")
    assert sheet is None and "`prose`" in md
    md, sheet = zoo_env.catalog.about(None)
    assert sheet is None and "own models" in md
