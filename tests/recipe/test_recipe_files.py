"""Recipes found again in what a user drops: YAML, an output folder, a merged .safetensors (metadata or the sibling
.recipe.yml), a PNG the studio tagged — and clear refusals for files that carry none."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tinymodels import tagged_png

import studio  # noqa: F401 — registers the readers
from studio.errors import StudioError
from studio.recipe.files import RECIPE_FILE, RECIPE_KEY, read_recipe, recipe_path

RECIPE = {"merge_method": "linear", "models": [{"model": "/m/a", "parameters": {"weight": 0.25}},
                                                {"model": "/m/b", "parameters": {"weight": 0.75}}]}
YAML = "merge_method: linear\nmodels:\n  - model: /m/a\n    parameters: {weight: 0.25}\n" \
       "  - model: /m/b\n    parameters: {weight: 0.75}\n"



def test_yaml_folder_and_sibling(tmp_path):
    (tmp_path / "r.yml").write_text(YAML)
    assert read_recipe(tmp_path / "r.yml").recipe == RECIPE
    out = tmp_path / "merged"
    out.mkdir()
    (out / RECIPE_FILE).write_text(YAML)
    assert read_recipe(out).recipe == RECIPE
    single = tmp_path / "single.safetensors"
    save_file({"w": torch.zeros(2)}, str(single))
    recipe_path(single).write_text(YAML)
    assert recipe_path(single).name == "single.recipe.yml"
    assert read_recipe(single).recipe == RECIPE


def test_embedded_in_safetensors_and_png(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(f), metadata={RECIPE_KEY: json.dumps(RECIPE)})
    assert read_recipe(f).recipe == RECIPE
    png = tagged_png(tmp_path / "p.png", **{RECIPE_KEY: json.dumps(RECIPE)})
    assert read_recipe(png).recipe == RECIPE


@pytest.mark.parametrize("make, message", [
    (lambda p: tagged_png(p / "plain.png", parameters="a cat\nSteps: 20, Sampler: Euler a, Seed: 1"), "carries no merge"),
    (lambda p: (p / "x.txt").write_text("hello") and p / "x.txt", "cannot read a recipe from a '.txt'"),
    (lambda p: (p / "bad.png").write_bytes(b"\x89PNG not really") and p / "bad.png", "cannot read the image"),
    (lambda p: p / "missing.yml", "no such file"),
    (lambda p: p, f"no {RECIPE_FILE} in this folder"),
    (lambda p: tagged_png(p / "j.png", **{RECIPE_KEY: "{not json"}), "not valid JSON"),
])
def test_refusals_name_what_was_looked_for(tmp_path, make, message):
    with pytest.raises(StudioError, match=message):
        read_recipe(make(tmp_path))


def test_output_side_files_reexport_the_same_naming():
    from studio.output import RECIPE_FILE as out_name, recipe_path as out_path
    assert out_name == RECIPE_FILE and out_path is recipe_path
