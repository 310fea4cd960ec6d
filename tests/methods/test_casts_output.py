"""Methods declaring ``casts_output`` return ``out_dtype`` directly, rounded block by block: the values must equal
their float32 result cast once (``.to(out_dtype)``), bit for bit, whatever the block size."""

from __future__ import annotations

import pytest
import torch

from studio.engine import build_plan, merge_in_memory
from studio.methods import basic, cache_blocks, get_method
from studio.recipe import Recipe


def _family(shape, dtype, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).to(dtype)
    models = [(base.float() + 0.003 * torch.randn(shape, generator=g)).to(dtype) for _ in range(n)]
    return base, models


KW = {
    "linear": dict(weight=[0.2, 0.5, 0.3], normalize=True),
    "task_arithmetic": dict(weight=[0.3, -0.4, 0.7], normalize=False, lambda_=0.9),
    "ties": dict(weight=[0.3, 0.5, 1.0], density=[0.3, 0.5, 0.9], normalize=True, rescale=False, lambda_=1.0),
    "dare_ties": dict(weight=[0.3, 0.5, 1.0], density=[0.3, 0.5, 0.9], normalize=False, rescale=True, lambda_=1.0),
}


@pytest.mark.parametrize("block", [1024, 1 << 18])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(KW))
def test_cast_blocks_equal_whole_cast(monkeypatch, name, out_dtype, block):
    monkeypatch.setattr(cache_blocks, "BLOCK", block)
    monkeypatch.setattr(cache_blocks, "SERIAL_BLOCK", block)
    spec = get_method(name)
    assert spec.casts_output
    base, models = _family((37, 1001), torch.float16)
    kw = dict(KW[name])
    if spec.random:
        kw_a = dict(kw, generator=torch.Generator().manual_seed(3))
        kw_b = dict(kw, generator=torch.Generator().manual_seed(3))
    else:
        kw_a = kw_b = kw
    ref = spec.fn(base, models, **kw_a)
    got = spec.fn(base, models, out_dtype=out_dtype, **kw_b)
    assert ref.dtype == torch.float32 and got.dtype == out_dtype and got.shape == base.shape
    assert torch.equal(got, ref.to(out_dtype))
    # float32 asked for: the float32 result itself
    f32 = spec.fn(base, models, out_dtype=torch.float32, **(dict(kw, generator=torch.Generator().manual_seed(3))
                                                          if spec.random else kw))
    assert torch.equal(f32, ref)


def test_engine_output_dtype_matches_float32_merge(tmp_path):
    """Through the engine: an fp16 merge equals the float32 merge of the same recipe cast to fp16."""
    from safetensors.torch import save_file

    base, models = _family((64, 300), torch.float16, seed=4)
    paths = []
    for i, t in enumerate([base, *models]):
        p = tmp_path / f"m{i}.safetensors"
        save_file({"w": t.contiguous(), "n": torch.arange(4)}, str(p))
        paths.append(str(p))

    def recipe(dtype):
        return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": paths[0], "dtype": dtype,
                                 "models": [{"model": p, "parameters": {"weight": 0.4}} for p in paths[1:]]})

    plan = build_plan(recipe("float16"))
    assert plan.spec.casts_output
    half, single = merge_in_memory(recipe("float16")), merge_in_memory(recipe("float32"))
    assert half["w"].dtype == torch.float16 and torch.equal(half["w"], single["w"].to(torch.float16))
    assert torch.equal(half["n"], torch.arange(4))


@pytest.mark.parametrize("block", [1000, 1 << 15])
@pytest.mark.parametrize("name", ["linear", "task_arithmetic"])
def test_float32_from_half_inputs_in_blocks_equals_the_upcast_merge(monkeypatch, name, block):
    """Half-precision inputs, float32 result (the live engine's ``out`` buffer, or a fresh tensor): computed in
    cache-sized blocks, bit-equal to the same method on the inputs upcast to float32 first."""
    monkeypatch.setattr(cache_blocks, "BLOCK", block)
    monkeypatch.setattr(cache_blocks, "SERIAL_BLOCK", block)
    calls = []
    monkeypatch.setattr(basic, "blocked_cast", lambda *a, **k: calls.append(1) or cache_blocks.blocked_cast(*a, **k))
    spec = get_method(name)
    base, models = _family((37, 1001), torch.bfloat16, seed=7)
    kw = {k: v for k, v in KW[name].items()}
    ref = spec.fn(base.float(), [m.float() for m in models], **kw)
    assert calls == []  # float32 inputs: one pass over whole tensors
    fresh = spec.fn(base, models, **kw)
    out = torch.full(base.shape, float("nan"))
    written = spec.fn(base, models, out=out, **kw)
    assert written is out and fresh.dtype == torch.float32 and calls == [1, 1]
    assert torch.equal(fresh, ref) and torch.equal(out, ref)
