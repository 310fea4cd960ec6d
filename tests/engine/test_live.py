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


def _fp16_family(llama_family, tmp_path):
    """The llama family's three models saved as fp16 safetensors (the stored dtype most checkpoints have)."""
    from safetensors.torch import save_file

    from tinymodels import load_state

    out = {}
    for name in ("base", "a", "b"):
        out[name] = tmp_path / f"{name}.safetensors"
        save_file({k: v.half().contiguous() for k, v in load_state(llama_family[name]).items()}, str(out[name]))
    return out


def test_inputs_stay_in_their_files_and_the_state_is_one_model(llama_family, tmp_path):
    """No float32 copy of any input is kept: the merged state is the only model-sized memory the merger holds."""
    f = _fp16_family(llama_family, tmp_path)
    live = LiveMerger(recipe(f, 0.3), device="cpu")
    assert live.resident_bytes == 0 and live.memory_budget == 0
    numel = sum(v.numel() for v in live.state.values())
    assert sum(v.nbytes for v in live.state.values()) == 4 * numel  # float32, one copy
    assert all(v.untyped_storage().resizable() for v in live.state.values())  # owned memory, never a mapped view
    expect = merge_in_memory(recipe(f, 0.3))  # the CLI's merge, cast once to the stored fp16
    for k, v in expect.items():
        torch.testing.assert_close(live.state[k].to(v.dtype), v, rtol=0, atol=0)


def test_a_memory_budget_bounds_what_stays_resident(llama_family, tmp_path):
    f = _fp16_family(llama_family, tmp_path)
    some = 3 * 32 * 64 * 2  # about three of the model's larger fp16 tensors
    live = LiveMerger(recipe(f, 0.3), device="cpu", memory_budget=some)
    assert 0 < live.resident_bytes <= some
    assert all(t.dtype == torch.float16 for t in live._resident.values())  # kept as stored, not in float32
    live.update(recipe(f, 0.7))
    expect = merge_in_memory(recipe(f, 0.7))
    for k, v in expect.items():
        torch.testing.assert_close(live.state[k].to(v.dtype), v, rtol=0, atol=0)


def test_bound_module_parameters_are_the_merged_state_and_are_updated_in_place(llama_family):
    from transformers import AutoModelForCausalLM

    f = llama_family
    model = AutoModelForCausalLM.from_pretrained(f["base"])
    params = dict(model.named_parameters())
    live = LiveMerger(recipe(f, 0.3), device="cpu")
    live.bind({k: p.data for k, p in params.items() if k in live.state})
    key = "model.layers.1.mlp.down_proj.weight"
    ptr = params[key].data_ptr()
    assert live.state[key].data_ptr() == ptr
    changed = live.update(recipe(f, {"L01": 0.9, "*": 0.3}))
    assert key in changed and params[key].data_ptr() == ptr
    expect = merge_in_memory(recipe(f, {"L01": 0.9, "*": 0.3}))
    for k, p in params.items():
        torch.testing.assert_close(p.data, expect[k], rtol=0, atol=1e-6)


def test_workers_merge_the_same_bits_in_plan_order_and_restore_torch_threads(llama_family, tmp_path):
    """Two workers (one intra-op thread each) give the one-worker result bit for bit, in the checkpoint's order, and
    leave torch's thread count as they found it (the preview renders with it)."""
    f = _fp16_family(llama_family, tmp_path)
    threads = torch.get_num_threads()
    one = LiveMerger(recipe(f, 0.3), device="cpu", workers=1)
    two = LiveMerger(recipe(f, 0.3), device="cpu", workers=2)
    assert torch.get_num_threads() == threads
    assert list(two.state) == list(one.state) == list(merge_in_memory(recipe(f, 0.3)))
    r2 = recipe(f, {"L01": 0.9, "*": 0.3})
    assert one.update(r2) == two.update(r2)
    assert torch.get_num_threads() == threads
    for k, v in one.state.items():
        assert torch.equal(two.state[k], v), k


def test_whole_model_statistics_recompute_every_tensor_on_every_update(llama_family):
    """A global top-k method: any update may move every tensor's mask, so each update recomputes them all (each
    update's statistics are told apart by the update, not by the id of a context object that Python may reuse)."""
    f = llama_family
    r = Recipe.from_dict({"merge_method": "ties_paper", "base_model": str(f["base"]),
                          "models": [{"model": str(f["a"])}, {"model": str(f["b"])}],
                          "parameters": {"density": 0.5}})
    live = LiveMerger(r, device="cpu")
    merged = [t.out_key for t in live.plan.tasks if t.op == "merge"]
    for _ in range(3):
        assert live.update(r) == merged
    expect = merge_in_memory(r)
    for k, v in expect.items():
        assert torch.equal(live.state[k], v), k


def test_the_first_merge_returns_freed_memory_as_it_goes_and_a_slider_in_place_does_not(llama_family, monkeypatch):
    """Freed heap memory goes back to the system every TRIM_EVERY bytes the merge allocates and once the first merge
    is done; an in-place re-merge allocates nothing and returns nothing."""
    from studio import devices

    calls = []
    monkeypatch.setattr(devices, "return_freed_memory", lambda: calls.append(1) or 0)
    f = llama_family
    live = LiveMerger(recipe(f, 0.3), device="cpu")
    assert live.memory_returns == len(calls) == 1  # the whole tiny model is below 256 MiB: once, at the end
    monkeypatch.setattr(devices, "TRIM_EVERY", 4096)
    live2 = LiveMerger(recipe(f, 0.3), device="cpu")
    over = sum(v.nbytes > 4096 for v in live2.state.values())  # each of these passes the threshold alone
    assert over > 0 and over <= live2.memory_returns <= len(live2.state) + 1
    before = live2.memory_returns
    assert live2.update(recipe(f, {"L01": 0.9, "*": 0.3}))  # task arithmetic writes into the state itself
    assert live2.memory_returns == before


def test_a_copied_tensor_leaves_no_input_pages_mapped(llama_family, tmp_path, monkeypatch):
    """Tensors copied, not merged (integer buffers, an SD VAE): the state owns its copy and the input's mapped pages
    are released, as merged tensors' inputs are."""
    import dataclasses

    from studio.engine import plan as plan_module
    from studio.sources import open_source

    released = []

    def opener(ref):
        src = open_source(ref)
        release = src.release
        src.release = lambda key: (released.append((ref, key)), release(key))
        return src

    def copy_first(plan):  # the tiny llama has no integer buffer: one task becomes a copy, as the SD VAE slot does
        t = plan.tasks[0]
        plan.tasks[0] = dataclasses.replace(t, op="copy", inputs=[(0, t.out_key)], base=None, params={})

    monkeypatch.setattr(plan_module, "PLAN_HOOKS", [*plan_module.PLAN_HOOKS, copy_first])
    f = _fp16_family(llama_family, tmp_path)
    live = LiveMerger(recipe(f, 0.3), device="cpu", opener=opener)
    copy = live.plan.tasks[0]
    assert copy.op == "copy" and (live.plan.sources[0].ref, copy.out_key) in released
    assert live.state[copy.out_key].untyped_storage().resizable()  # its own memory, not the file's
