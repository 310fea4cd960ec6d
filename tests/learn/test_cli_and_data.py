"""Data specs and the causal-LM adapter."""

from __future__ import annotations

import pytest
import torch

from studio.errors import StudioError
from studio.learn import run_learned
from studio.learn.data import resolve_data


def test_data_folder_of_images(vision_adapter, tmp_path):
    from PIL import Image

    for t in vision_adapter.tasks:
        d = tmp_path / t
        d.mkdir()
        for i in range(3):
            Image.fromarray((torch.rand(16, 16) * 255).byte().numpy()).save(d / f"{i}.png")
    data = resolve_data(str(tmp_path), vision_adapter)
    assert set(data) == set(vision_adapter.tasks)
    x = data[vision_adapter.tasks[0]]
    assert x.shape == (3, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(StudioError):
        resolve_data([str(tmp_path / t) for t in vision_adapter.tasks[:2]], vision_adapter)  # 2 entries, 3 experts
    per_expert = resolve_data([str(tmp_path / t) for t in vision_adapter.tasks], vision_adapter)
    torch.testing.assert_close(per_expert[vision_adapter.tasks[2]], data[vision_adapter.tasks[2]])
    # max_items caps what is decoded, not only what is kept (a CLIP-sized folder must not fill the memory first)
    decoded = []
    real = vision_adapter.load_data
    try:
        vision_adapter.load_data = lambda t, items: decoded.append(len(items)) or real(t, items)
        capped = resolve_data(str(tmp_path), vision_adapter, max_items=2)
    finally:
        del vision_adapter.load_data
    assert decoded == [2, 2, 2] and all(len(v) == 2 for v in capped.values())
    torch.testing.assert_close(capped[vision_adapter.tasks[0]], x[:2])


def test_causal_lm_adapter_learns_on_tokens(llama_family):
    base = str(llama_family["base"])
    experts = [str(llama_family["a"]), str(llama_family["b"])]
    g = torch.Generator().manual_seed(0)
    data = {"a": torch.randint(0, 64, (8, 12), generator=g), "b": torch.randint(0, 64, (8, 12), generator=g)}
    res = run_learned("samerging", base, experts, data, steps=6, lr=1e-2, batch_size=4)
    assert res.metrics["objective_end"] < res.metrics["objective_start"]
    assert res.recipe is not None and len(res.coefficients["a"]) == len(res.state_dict)
    from studio.engine import merge_in_memory

    merged = merge_in_memory(res.recipe, device="cpu")
    for k, v in res.state_dict.items():
        torch.testing.assert_close(merged[k], v, rtol=1e-5, atol=1e-6)
    reg = run_learned("regmean", base, experts, data)
    assert reg.metrics["objective_end"] < reg.metrics["objective_start"]
