import torch

from studio.engine import merge_in_memory
from studio.engine.live import LiveMerger
from studio.recipe import Recipe


def recipe(f, w_a, lam=1.0):
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(f["base"]),
                             "models": [{"model": str(f["a"]), "parameters": {"weight": w_a}},
                                        {"model": str(f["b"]), "parameters": {"weight": 0.5}}],
                             "parameters": {"lambda": lam}})


def test_live_remerges_only_changed_groups_and_matches_stream(llama_family):
    f = llama_family
    live = LiveMerger(recipe(f, 0.3), device="cpu")
    assert len(live.last_changed) == len(live.state)
    # change layer 1's weight only: a per-group dict
    r2 = recipe(f, {"L01": 0.9, "*": 0.3})
    changed = live.update(r2)
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    expect = merge_in_memory(r2)
    for k, v in expect.items():
        torch.testing.assert_close(live.state[k], v, rtol=0, atol=1e-6)
    assert live.update(r2) == []  # nothing changed, nothing recomputed
    live.update(recipe(f, 0.3, lam=0.5))
    assert len(live.last_changed) == len(live.state)


def test_load_into_module(llama_family):
    from transformers import AutoModelForCausalLM

    f = llama_family
    model = AutoModelForCausalLM.from_pretrained(f["base"])
    live = LiveMerger(recipe(f, 1.0), device="cpu")
    live.load_into(model)
    sd = model.state_dict()
    for k, v in live.state.items():
        torch.testing.assert_close(sd[k], v)
