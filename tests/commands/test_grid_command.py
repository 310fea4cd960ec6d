"""`python -m studio grid`: the zoo's vision family previews each cell with its evaluator; the PNG holds every
cell's recipe; bad axes are one line."""

from __future__ import annotations

import pytest
import yaml
from PIL import Image

from studio.cli import main
from studio.preview.grid import read_grid_recipes
from studio.recipe import Recipe
from studio.zoo import get_family, list_families


@pytest.fixture()
def vision_recipe(tmp_path):
    if "vision" not in list_families():
        pytest.skip("the demo zoo is not built")
    fam = get_family("vision")
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(fam.base),
                                    "models": [{"model": str(fam.experts[t]), "parameters": {"weight": 1.0}}
                                               for t in ("digits", "letters")],
                                    "parameters": {"lambda": 0.3}}))
    return fam, path


def test_cli_grid_writes_cells_that_are_the_recipes_merges(vision_recipe, tmp_path, capsys):
    fam, path = vision_recipe
    out = tmp_path / "g.png"
    assert main(["grid", str(path), "--x", "lambda=0.2,0.6", "--y", "models.0.weight=0,1", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    assert "2 × 2 cells" in capsys.readouterr().out
    meta = read_grid_recipes(out)
    assert meta["x"] == {"path": "lambda", "values": [0.2, 0.6]}
    cells = [[Recipe.from_dict(c) for c in row] for row in meta["cells"]]
    assert [(c.parameters["lambda"], c.models[0].parameters["weight"]) for row in cells for c in row] == [
        (0.2, 0.0), (0.6, 0.0), (0.2, 1.0), (0.6, 1.0)]
    with Image.open(out) as img:  # four cells of the evaluator's numbers, labelled
        assert img.width > 2 * 256 and img.height > 2 * 256
    assert main(["grid", str(path), "--x", "lambda=0.2", "--y", "lambda=0.3", "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_grid_bad_axis_is_one_line(vision_recipe, tmp_path, capsys):
    _, path = vision_recipe
    assert main(["grid", str(path), "--x", "lambda", "--y", "lambda=1", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "PATH=VALUES" in err and "\n" not in err
