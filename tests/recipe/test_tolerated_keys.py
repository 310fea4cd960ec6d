"""Recipes with keys that have no effect, as they are published: the merge equals mergekit 0.1.5's on the same YAML
(which drops such keys silently), the CLI prints one warning line per key, and ``--strict`` refuses — in a dry run
as in a merge, one stderr line, exit 2, nothing written."""

import pytest
import torch
import yaml

from mergekit_runner import run_mergekit
from tinymodels import load_state

import studio  # noqa: F401 — registers the methods
from studio.cli import main
from studio.engine import merge_in_memory
from studio.recipe import Recipe


def recipes(f):
    base, a, b, c = (str(f[k]) for k in ("base", "a", "b", "c"))
    return {  # name: (recipe, how many keys have no effect)
        "sce, select_topk at the top and a typo": ({
            "merge_method": "sce", "base_model": base, "models": [{"model": a}, {"model": b}],
            "select_topk": 0.5, "dype": "bfloat16", "dtype": "float32"}, 2),
        "multislerp normalize": ({
            "merge_method": "multislerp", "models": [{"model": a, "parameters": {"weight": 0.3}},
                                                     {"model": b, "parameters": {"weight": 0.9}}],
            "parameters": {"normalize": False}, "dtype": "float32"}, 1),
        "model_stock weights": ({
            "merge_method": "model_stock", "base_model": base,
            "models": [{"model": a, "parameters": {"weight": 0.4}}, {"model": b, "parameters": {"weight": 1.0}},
                       {"model": c, "parameters": {"weight": 0.7}}], "dtype": "float32"}, 3),
        "linear with padding and int8_mask": ({
            "merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 0.6}},
                                                 {"model": b, "parameters": {"weight": 0.4}}],
            "pad_to_multiple_of": 64, "parameters": {"int8_mask": True}, "dtype": "float32"}, 2),
        "task arithmetic lambda per model": ({
            "merge_method": "task_arithmetic", "base_model": base,
            "models": [{"model": a, "parameters": {"weight": 0.5, "lambda": 3.0}}, {"model": b}],
            "parameters": {"weight": 0.5}, "dtype": "float32"}, 1),
    }


NAMES = list(recipes({k: "" for k in ("base", "a", "b", "c")}))


@pytest.mark.parametrize("name", NAMES)
def test_tolerated_keys_merge_as_mergekit_merges_them(llama_family, tmp_path, name):
    pytest.importorskip("mergekit")
    d, n = recipes(llama_family)[name]
    r = Recipe.from_dict(yaml.safe_load(yaml.safe_dump(d)))
    assert len(r.warnings) == n
    ours = merge_in_memory(r)
    theirs = run_mergekit(yaml.safe_load(yaml.safe_dump(d)), tmp_path / "mk")
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")


@pytest.mark.parametrize("name", NAMES[:2])
def test_cli_warns_once_per_key_and_strict_refuses(llama_family, tmp_path, capsys, name):
    d, n = recipes(llama_family)[name]
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(d))
    assert main(["merge", str(path), str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("warning:")]
    assert len(warned) == n and all("has no effect and is ignored" in w for w in warned)
    for extra in ([], ["--dry-run"]):
        assert main(["merge", str(path), str(tmp_path / "strict"), "--strict", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not allowed here" in err[0] and "--strict" in err[0]
        assert not (tmp_path / "strict").exists()
    merged, want = load_state(tmp_path / "out"), merge_in_memory(Recipe.from_dict(d))
    assert all(torch.equal(merged[k], want[k]) for k in want)
