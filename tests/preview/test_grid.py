"""XY grids: cells equal single merges of their recipes, the live merger is restored, the PNG carries each cell's
recipe; axes parse as people write them."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from studio.engine import merge_in_memory
from studio.engine.live import LiveMerger
from studio.errors import RecipeError, StudioError
from studio.evaluate.common import result
from studio.preview.grid import METHOD_AXIS, Axis, read_grid_recipes, render_grid, save_grid
from studio.recipe import Recipe


def recipe(f) -> Recipe:
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(f["base"]),
                             "models": [{"model": str(f["a"]), "parameters": {"weight": 0.5}},
                                        {"model": str(f["b"]), "parameters": {"weight": 0.5}}],
                             "parameters": {"lambda": 1.0}, "dtype": "float32"})


def judge_state(state: dict) -> dict:
    """A number that moves with every weight: the summed norm of the layer weights."""
    return result("norm", {"layers": sum(float(v.float().norm()) for k, v in state.items() if "layers" in k)}, None)


def test_axes_parse_lists_ranges_and_methods():
    assert Axis.parse("alpha@IN04=0,0.5,1") == Axis("alpha@IN04", [0.0, 0.5, 1.0])
    assert Axis.parse("parameters.lambda=0:1:5").values == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert Axis.parse("merge_method=ties, dare_ties").values == ["ties", "dare_ties"]
    for bad, match in (("lambda", "PATH=VALUES"), ("lambda=a,b", "numbers"), ("lambda=0:1", "lo:hi:n"),
                       ("models.weight=1", "bad setting path")):
        with pytest.raises(RecipeError, match=match):
            Axis.parse(bad)


def test_cells_equal_single_merges_and_the_live_merger_is_restored(llama_family):
    r = recipe(llama_family)
    live = LiveMerger(r, device="cpu")
    before = {k: v.clone() for k, v in live.state.items()}
    x, y = Axis.parse("models.0.weight=0,1"), Axis.parse("parameters.lambda@L01..L02=0.5:1.5:3")
    seen = []
    grid = render_grid(live, x, y, lambda lv, changed: judge_state(lv.state),
                       progress=lambda f, m: seen.append(f), restored=lambda changed: seen.append(len(changed)))
    assert len(grid.cells) == 3 and all(len(row) == 2 for row in grid.cells)
    for row in grid.cells:
        for cell in row:
            direct = judge_state(merge_in_memory(Recipe.from_dict(cell["recipe"])))
            assert cell["result"]["average"] == pytest.approx(direct["average"], rel=1e-6)
    assert grid.cells[2][1]["recipe"]["parameters"]["lambda"] == {"*": 1.0, "L01": 1.5, "L02": 1.5}
    assert seen[:6] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0]) and seen[-1] > 0
    for k, v in before.items():
        assert torch.equal(live.state[k], v), k


def test_a_method_axis_and_the_png_with_every_cells_recipe(llama_family, tmp_path):
    live = LiveMerger(recipe(llama_family), device="cpu")
    grid = render_grid(live, Axis.parse(f"{METHOD_AXIS}=task_arithmetic,ties"), Axis.parse("lambda=0.5,1"),
                       lambda lv, changed: judge_state(lv.state))
    assert [c["recipe"]["merge_method"] for c in grid.cells[0]] == ["task_arithmetic", "ties"]
    out = save_grid(grid, tmp_path / "grid.png")
    meta = read_grid_recipes(out)
    assert meta["x"] == {"path": "merge_method", "values": ["task_arithmetic", "ties"]}
    assert meta["cells"][1][1] == grid.cells[1][1]["recipe"]
    with Image.open(out) as img:
        assert img.width > 2 * 200 and img.height > 2 * 200
    with pytest.raises(StudioError, match="already exists"):
        save_grid(grid, out)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # nothing half-written beside it
