"""A LoRA in a recipe (``BASE+LORA:strength``) reaches the merge at strength × weight × λ (÷ the summed weights when
the method normalises); effective_lora_scales says so in numbers and in a line (#17: 0.8 became 0.4 silently)."""

from __future__ import annotations

import pytest
import torch

from studio.engine import merge_in_memory
from studio.recipe import Recipe, effective_lora_scales
from studio.sources import open_source
from studio.zoo import get_family


def recipe(method: str, parameters: dict, weights: list, lora: str = "/l/ink.safetensors:0.8") -> Recipe:
    refs = [f"/m/base.safetensors+{lora}" if lora else "/m/one.safetensors", "/m/other.safetensors"]
    return Recipe.from_dict({"merge_method": method, "base_model": "/m/base.safetensors", "parameters": parameters,
                             "models": [{"model": r, "parameters": {"weight": w}} for r, w in zip(refs, weights)]})


def test_strength_times_weight_times_lambda():
    (s,) = effective_lora_scales(recipe("task_arithmetic", {"lambda": 0.5}, [1.0, 1.0]))
    assert (s.lora, s.strength, s.weight, s.lambda_, s.total_weight) == ("/l/ink.safetensors", 0.8, 1.0, 0.5, None)
    assert s.effective == pytest.approx(0.4)
    assert s.explanation == "LoRA ink at strength 0.8 × weight 1 × λ 0.5 = 0.4 effective"
    (s,) = effective_lora_scales(recipe("task_arithmetic", {"lambda": 1.5, "normalize": True}, [0.6, 0.9]))
    assert s.effective == pytest.approx(0.8 * 0.6 * 1.5 / 1.5) and s.total_weight == pytest.approx(1.5)
    (s,) = effective_lora_scales(recipe("linear", {}, [1.0, 3.0], lora="/l/ink.safetensors"))
    assert (s.strength, s.effective) == (1.0, pytest.approx(0.25))
    assert s.explanation == "LoRA ink at strength 1 × weight 1 ÷ summed weights 4 = 0.25 effective"


def test_what_one_number_cannot_say_is_said_in_words():
    (s,) = effective_lora_scales(recipe("ties", {"lambda": 0.5}, [1.0, 1.0]))
    assert s.effective == pytest.approx(0.2) and "up to 0.4 where ties keeps this model's entry alone" in s.explanation
    (s,) = effective_lora_scales(recipe("task_arithmetic", {"lambda": 0.5}, [[0.0, 1.0], 1.0]))
    assert s.effective is None and s.explanation.endswith("× weight per layer × λ 0.5: the effective scale differs "
                                                          "by layer")
    slerp = Recipe.from_dict({"merge_method": "slerp", "base_model": "/m/base.safetensors", "parameters": {"t": 0.3},
                              "models": [{"model": "/m/base.safetensors+/l/ink.safetensors:0.8"}]})
    (s,) = effective_lora_scales(slerp)
    assert s.effective is None and "enters slerp as a whole model" in s.explanation
    assert effective_lora_scales(recipe("task_arithmetic", {}, [1.0, 1.0], lora="")) == []  # no LoRA: nothing to say


def test_the_merge_moves_the_base_by_the_effective_scale_of_the_lora():
    """Differential: task arithmetic over the zoo's text base + its PEFT LoRA at 0.8, λ 0.5, weight 1 → the output is
    the base plus 0.4 × the LoRA's full ΔW."""
    text = get_family("text")
    lora = f"{text.base}+{text.loras['code']}:0.8"
    r = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": text.base, "parameters": {"lambda": 0.5},
                          "models": [{"model": lora, "parameters": {"weight": 1.0}}]})
    (s,) = effective_lora_scales(r)
    assert s.effective == pytest.approx(0.4)
    merged, base, full = merge_in_memory(r), open_source(text.base), open_source(f"{text.base}+{text.loras['code']}")
    moved = 0
    for k in base.keys():
        w, delta = base.get(k).float(), full.get(k).float() - base.get(k).float()
        assert torch.allclose(merged[k].float() - w, s.effective * delta, atol=1e-6), k
        moved += bool(delta.abs().max() > 0)
    assert moved > 0
