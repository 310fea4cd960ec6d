"""The learn CLI, data specs and the causal-LM adapter."""

from __future__ import annotations

import json

import pytest
import torch

from studio.cli import main
from studio.errors import StudioError
from studio.learn import run_learned
from studio.learn.data import resolve_data


def test_cli_writes_recipe_weights_and_trajectory(vision_zoo, tmp_path, capsys):
    out = tmp_path / "learned"
    rc = main(["learn", "samerging", "--base", vision_zoo["base"], "--experts", *vision_zoo["experts"],
               "--data", "zoo:vision", "--out", str(out), "--device", "cpu", "--steps", "5", "--quiet", "--json",
               "--set", "max_items=32"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == vision_zoo["tasks"]
    assert (out / "recipe.yml").exists() and (out / "merged.safetensors").exists()
    traj = json.loads((out / "trajectory.json").read_text())
    assert len(traj["history"]) == 5 and traj["trajectory"][-1]["step"] == 5
    # the written recipe runs through `studio merge`
    rc = main(["merge", str(out / "recipe.yml"), str(tmp_path / "merged"), "--device", "cpu", "--quiet"])
    assert rc == 0


def test_cli_bad_input_is_one_line(vision_zoo, tmp_path, capsys):
    rc = main(["learn", "adamerging", "--base", vision_zoo["base"], "--experts", *vision_zoo["experts"],
               "--data", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "data entries for 3 experts" in err and "\n" not in err


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
