"""Differential checks against mergekit 0.1.5 on the same YAML (skipped when mergekit is not importable).

Install it with `pip install -r requirements-dev.txt` (it is in CI's install set)."""

import pytest
import torch
import yaml

from mergekit_runner import run_mergekit
from studio.engine import merge_in_memory
from studio.recipe import Recipe

mergekit = pytest.importorskip("mergekit")


def recipes(f):
    base, a, b, c = (str(f[k]) for k in ("base", "a", "b", "c"))
    return {
        "linear": {"merge_method": "linear", "models": [
            {"model": a, "parameters": {"weight": [1.0, 0.2]}}, {"model": b, "parameters": {"weight": 0.5}},
            {"model": c, "parameters": {"weight": [{"filter": "mlp", "value": 2.0}, {"value": 0.3}]}}]},
        "linear_unnormalized": {"merge_method": "linear", "parameters": {"normalize": False}, "models": [
            {"model": a, "parameters": {"weight": 0.7}}, {"model": b, "parameters": {"weight": 0.6}}]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": base, "models": [
            {"model": a, "parameters": {"weight": [0.0, 0.5, 1.0]}}, {"model": b, "parameters": {"weight": 0.4}},
            {"model": c, "parameters": {"weight": -0.3}}], "parameters": {"lambda": 1.3}},
        "task_arithmetic_normalized": {"merge_method": "task_arithmetic", "base_model": base, "models": [
            {"model": a, "parameters": {"weight": 0.3}}, {"model": b, "parameters": {"weight": 0.9}}],
            "parameters": {"normalize": True}},
        "slerp": {"merge_method": "slerp", "base_model": base, "models": [{"model": base}, {"model": a}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"value": 0.35}]}},
    }


@pytest.mark.parametrize("name", ["linear", "linear_unnormalized", "task_arithmetic", "task_arithmetic_normalized",
                                  "slerp"])
def test_equal_to_mergekit(llama_family, tmp_path, name):
    d = dict(recipes(llama_family)[name], dtype="float32")
    ours = merge_in_memory(Recipe.from_dict(d))
    theirs = run_mergekit(yaml.safe_load(yaml.safe_dump(d)), tmp_path / "mk")
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")
