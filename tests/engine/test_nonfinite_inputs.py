"""An input tensor holding NaN/Inf stops a merge with one StudioError naming the model, the tensor and how many
values (the streaming engine to disk and in memory, the live engine); allow_nonfinite merges it anyway. Copied
tensors pass through as they are."""

import pytest
import torch
from safetensors.torch import save_file

from badinputs import NONFINITE_ROWS, finite_model
from studio.engine import merge_in_memory, merge_to_disk
from studio.engine.live import LiveMerger
from studio.errors import StudioError
from studio.recipe.model import Recipe


def _setup(tmp_path, row, method="task_arithmetic"):
    dtype, which, spoil, counts = NONFINITE_ROWS[row]
    base, model = finite_model(0, dtype), finite_model(1, dtype)
    if which == "base":
        base = spoil(base)
    else:
        model = spoil(model)
    save_file(base, tmp_path / "base.safetensors")
    save_file(model, tmp_path / "model.safetensors")
    save_file(finite_model(2, dtype), tmp_path / "other.safetensors")
    path = tmp_path / "r.yml"
    path.write_text(f"merge_method: {method}\nbase_model: {tmp_path / 'base.safetensors'}\nmodels:\n"
                    f"  - model: {tmp_path / 'model.safetensors'}\n    parameters: {{weight: 0.5}}\n"
                    f"  - model: {tmp_path / 'other.safetensors'}\n    parameters: {{weight: 0.5}}\n")
    key = "layers.0.w" if which == "base" else "layers.1.w"
    return Recipe.load(path), tmp_path / f"{which}.safetensors", key, counts


@pytest.mark.parametrize("row", sorted(NONFINITE_ROWS))
def test_nonfinite_input_is_refused_naming_model_tensor_and_counts(tmp_path, row):
    recipe, spoiled, key, counts = _setup(tmp_path, row)
    expected = f"model {spoiled}: tensor {key!r} has {counts} values"
    for merge in (lambda: merge_to_disk(recipe, tmp_path / "out", progress=False),
                  lambda: merge_to_disk(recipe, tmp_path / "out.safetensors", progress=False),
                  lambda: merge_in_memory(recipe),
                  lambda: LiveMerger(recipe, device="cpu")):
        with pytest.raises(StudioError) as err:
            merge()
        assert str(err.value).startswith(expected) and "--allow-nonfinite" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "model.safetensors",
                                                          "other.safetensors", "r.yml"]


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_allow_nonfinite_merges_anyway_and_the_nan_reaches_the_output(tmp_path, method):
    recipe, _, key, _ = _setup(tmp_path, "one-nan", method)
    if method == "linear":
        recipe = Recipe.from_dict({**recipe.to_dict(), "base_model": None})
    state = merge_in_memory(recipe, allow_nonfinite=True)
    assert torch.isnan(state[key]).any() and torch.isfinite(state["layers.0.w"]).all()
    live = LiveMerger(recipe, device="cpu", allow_nonfinite=True)
    torch.testing.assert_close(live.state[key], state[key], equal_nan=True)
    merge_to_disk(recipe, tmp_path / "out.safetensors", progress=False, allow_nonfinite=True)
    assert (tmp_path / "out.safetensors").is_file()


def test_a_copied_buffer_passes_through_as_it_is(tmp_path):
    """Buffers copied from the base are never merged; one holding -inf on purpose (a mask) does not stop the merge."""
    recipe, _, _, _ = _setup(tmp_path, "one-nan")
    base = finite_model(0)
    base["alphas_cumprod"][0] = -float("inf")
    save_file(base, tmp_path / "base.safetensors")
    model = finite_model(1)
    save_file(model, tmp_path / "model.safetensors")
    state = merge_in_memory(recipe)
    assert torch.equal(state["alphas_cumprod"], base["alphas_cumprod"])
