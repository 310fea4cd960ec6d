"""The VAE slot (copy from the reference model, or bake a diffusers-named VAE file) and SD output metadata."""

from __future__ import annotations

import json

import pytest
import torch

from studio.cli import main
from studio.sd import synth
from studio.layout.sd_keys import vae_from_ldm
from studio.sources import open_source


def test_vae_copied_or_baked_and_metadata(tmp_path, ldm_tables):
    table = dict(ldm_tables["sd1"])  # includes 0-dim EMA scalars (model_ema.decay), copied not averaged
    a = synth.write_random(tmp_path / "a.safetensors", table, seed=1)
    b = synth.write_random(tmp_path / "b.safetensors", table, seed=2)
    vae = {}
    for k, (shape, dt) in table.items():
        if k.startswith("first_stage_model."):
            d = vae_from_ldm(k[len("first_stage_model."):], 2)
            vae[d] = (shape[:2] if "mid_block.attentions.0.to_" in d and d.endswith("weight") else shape, dt)
    v = synth.write_random(tmp_path / "vae.safetensors", vae, seed=9)
    recipe = ("merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
              "  - model: {b}\n    parameters: {{weight: 0.5}}\n")
    (tmp_path / "r1.yaml").write_text(recipe.format(a=a, b=b))
    (tmp_path / "r2.yaml").write_text(recipe.format(a=a, b=b) + f"vae: {v}\n")
    assert main(["merge", str(tmp_path / "r1.yaml"), str(tmp_path / "m1.safetensors")]) == 0
    assert main(["merge", str(tmp_path / "r2.yaml"), str(tmp_path / "m2.safetensors")]) == 0
    A, B, V = open_source(str(a)), open_source(str(b)), open_source(str(v))
    m1, m2 = open_source(str(tmp_path / "m1.safetensors")), open_source(str(tmp_path / "m2.safetensors"))
    k = "first_stage_model.decoder.mid.attn_1.q.weight"
    assert torch.equal(m1.get(k), A.get(k))                                  # copied, not averaged
    assert torch.equal(m2.get(k), V.get("decoder.mid_block.attentions.0.to_q.weight").reshape(16, 16, 1, 1))
    u = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    torch.testing.assert_close(m1.get(u), (A.get(u) + B.get(u)) / 2)
    meta = m2.metadata
    assert meta["format"] == "pt" and meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.merged_from"] == "a, b"
    rec = json.loads(meta["sd_merge_recipe"])
    assert rec["merge_method"] == "linear" and rec["bake_in_vae"] and rec["primary_model_hash"]
    assert len(json.loads(meta["sd_merge_models"])) == 2


def test_vae_file_missing_tensors_is_an_error(tmp_path, ldm_tables):
    table = {k: v for k, v in ldm_tables["sd1"].items() if v[0] != ()}
    a = synth.write_random(tmp_path / "a.safetensors", table, seed=1)
    v = synth.write_random(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": ((16, 4, 3, 3), torch.float32)})
    (tmp_path / "r.yaml").write_text(f"merge_method: linear\nmodels:\n  - model: {a}\n  - model: {a}\nvae: {v}\n")
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "m.safetensors")]) == 2
    assert not (tmp_path / "m.safetensors").exists()
