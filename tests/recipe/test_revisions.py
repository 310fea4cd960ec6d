"""Model revisions as recipes publish them — ``org/name@rev``, ``revision:`` beside a model, ``{path, revision}`` —
resolved through the Hugging Face cache (offline here: the cache is written in the test, in huggingface_hub's own
layout), and ``path@rev`` on a local folder (one revision: the folder, as mergekit reads it)."""

import pytest
import torch

from tinymodels import load_state, make_llama

import studio  # noqa: F401 — registers the methods
from studio.engine import merge_in_memory
from studio.errors import RecipeError
from studio.recipe import Recipe

MAIN = "0123456789abcdef0123456789abcdef01234567"
V2 = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """acme/tiny in a local cache: main and the branch v2 are different weights."""
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny"
    states = {}
    for rev, commit, seed in (("main", MAIN, 0), ("v2", V2, 1)):
        states[rev] = load_state(make_llama(repo / "snapshots" / commit, seed))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return states


@pytest.mark.parametrize("second", [
    "acme/tiny@v2",
    {"model": "acme/tiny", "revision": "v2"},
    {"model": {"path": "acme/tiny", "revision": "v2"}},
    f"acme/tiny@{V2}",
])
def test_a_revision_picks_its_snapshot(hub, second):
    entry = {"model": second} if isinstance(second, str) or "revision" not in second else second
    r = Recipe.from_dict({"merge_method": "linear", "models": [{"model": "acme/tiny"}, entry],
                          "parameters": {"weight": 1.0}})
    assert r.warnings == [] and r.models[1].model in ("acme/tiny@v2", f"acme/tiny@{V2}")
    out = merge_in_memory(r)
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(hub["main"][key], hub["v2"][key])
    torch.testing.assert_close(out[key], (hub["main"][key] + hub["v2"][key]) / 2)


def test_a_local_folder_with_a_revision_is_the_folder(tmp_path):
    a, b = make_llama(tmp_path / "a", 0), make_llama(tmp_path / "b", 1)
    r = Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(a), "revision": "dpo-v0"}, {"model": f"{b}@main"}], "parameters": {"weight": 1.0}})
    out = merge_in_memory(r)
    sa, sb = load_state(a), load_state(b)
    torch.testing.assert_close(out["model.norm.weight"], (sa["model.norm.weight"] + sb["model.norm.weight"]) / 2)


def test_two_revisions_for_one_model_are_refused():
    with pytest.raises(RecipeError, match="second"):
        Recipe.from_dict({"merge_method": "linear", "models": [{"model": "acme/tiny@v1", "revision": "v2"}]})
