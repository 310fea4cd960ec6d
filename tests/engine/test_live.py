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


def test_live_state_stays_float32_for_a_half_precision_recipe(llama_family):
    """A recipe asking for fp16 output: the live state is still float32 (previews need the exact merge), re-merges
    reuse its memory, and the values equal the float32 merge."""
    f = llama_family
    r = Recipe.from_dict({**recipe(f, 0.3).to_dict(), "dtype": "float16"})
    live = LiveMerger(r, device="cpu")
    assert all(v.dtype == torch.float32 for v in live.state.values() if v.is_floating_point())
    key = next(k for k in live.state if k.startswith("model.layers.0.") and k.endswith("proj.weight"))
    ptr = live.state[key].data_ptr()
    r2 = Recipe.from_dict({**recipe(f, 0.8).to_dict(), "dtype": "float16"})
    live.update(r2)
    assert live.state[key].data_ptr() == ptr and live.state[key].dtype == torch.float32
    expect = merge_in_memory(Recipe.from_dict({**recipe(f, 0.8).to_dict(), "dtype": "float32"}))
    torch.testing.assert_close(live.state[key], expect[key], rtol=0, atol=1e-6)
