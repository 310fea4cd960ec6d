"""Baking kohya / LyCORIS / diffusers LoRAs equals the hand computation of formats.md §4.2; bad LoRAs are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.cli import main
from studio.errors import StudioError
from studio.lora import apply_lora_source, read_lora
from studio.lora.bake import LoraSpec, bake
from studio.sources import open_source

MDM = "model.diffusion_model."
Q1 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
Q1_KEY = MDM + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
CONV_KEY = MDM + "input_blocks.1.0.in_layers.2.weight"
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def test_kohya_lora_locon_tucker_full(tmp_path, ldm_files):
    base = open_source(str(ldm_files["sd1"]))
    W = {k: base.get(k).float().clone() for k in (Q1_KEY, CONV_KEY, "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                                                    MDM + "input_blocks.2.0.in_layers.2.weight",
                                                    MDM + "input_blocks.4.0.out_layers.3.weight",
                                                    MDM + "input_blocks.4.0.out_layers.3.bias")}
    d1, u1 = rnd(4, 32, seed=1), rnd(32, 4, seed=2)
    cd, cu = rnd(3, 32, 3, 3, seed=3), rnd(32, 3, 1, 1, seed=4)
    td, tu = rnd(4, 16, seed=5), rnd(16, 4, seed=6)
    mid, md, mu = rnd(2, 2, 3, 3, seed=7), rnd(2, 32, 1, 1, seed=8), rnd(32, 2, 1, 1, seed=9)
    diff, diff_b = rnd(32, 32, 3, 3, seed=10), rnd(32, seed=11)
    tuck = "lora_unet_down_blocks_0_resnets_1_conv1"
    full = "lora_unet_down_blocks_1_resnets_0_conv2"
    L = {f"{Q1}.lora_down.weight": d1, f"{Q1}.lora_up.weight": u1, f"{Q1}.alpha": torch.tensor(2.0),
         f"{CONV}.lora_down.weight": cd, f"{CONV}.lora_up.weight": cu, f"{CONV}.alpha": torch.tensor(1.5, dtype=torch.bfloat16),
         f"{TE_Q}.lora_down.weight": td.half(), f"{TE_Q}.lora_up.weight": tu.half(),     # no alpha → α = r
         f"{tuck}.lora_down.weight": md, f"{tuck}.lora_up.weight": mu, f"{tuck}.lora_mid.weight": mid,
         f"{tuck}.alpha": torch.tensor(1.0), f"{full}.diff": diff, f"{full}.diff_b": diff_b}
    save_file(L, tmp_path / "l.safetensors")
    out = tmp_path / "o.safetensors"
    bake(str(ldm_files["sd1"]), out, [LoraSpec(str(tmp_path / "l.safetensors"), 0.7)], progress=False)
    o = load_file(out)
    m = 0.7
    torch.testing.assert_close(o[Q1_KEY], W[Q1_KEY] + m * (2 / 4) * u1 @ d1)
    conv = (cu.flatten(1) @ cd.flatten(1)).view(32, 32, 3, 3)
    torch.testing.assert_close(o[CONV_KEY], W[CONV_KEY] + m * (1.5 / 3) * conv)
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(o[te], W[te] + m * tu.half().float() @ td.half().float())
    tk = MDM + "input_blocks.2.0.in_layers.2.weight"
    tucker = torch.einsum("ijkl,pi,jr->prkl", mid, mu.flatten(1), md.flatten(1))
    torch.testing.assert_close(o[tk], W[tk] + m * 0.5 * tucker)
    fk = MDM + "input_blocks.4.0.out_layers.3.weight"
    torch.testing.assert_close(o[fk], W[fk] + m * diff)
    torch.testing.assert_close(o[fk[:-6] + "bias"], W[fk[:-6] + "bias"] + m * diff_b)
    # untouched tensors are bit-identical, non-float buffers too
    pid = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert torch.equal(o[pid], base.get(pid))
    k = MDM + "middle_block.1.proj_in.weight"
    assert torch.equal(o[k], base.get(k))


def test_loha_lokr_dora(tmp_path, ldm_files):
    base = open_source(str(ldm_files["sd1"]))
    k_lin = MDM + "input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight"      # [32, 32]
    k_conv = MDM + "input_blocks.4.0.in_layers.2.weight"                         # [32, 32, 3, 3]
    k_ff = MDM + "input_blocks.4.1.transformer_blocks.0.ff.net.2.weight"         # [32, 128]
    k_dora = MDM + "input_blocks.5.1.transformer_blocks.0.attn1.to_v.weight"
    W = {k: base.get(k).float().clone() for k in (k_lin, k_conv, k_ff, k_dora)}
    n_lin = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k"
    n_conv = "lora_unet_down_blocks_1_resnets_0_conv1"
    n_ff = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2"
    n_dora = "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_v"
    a1, b1, a2, b2 = rnd(32, 4, seed=1), rnd(4, 32, seed=2), rnd(32, 4, seed=3), rnd(4, 32, seed=4)
    ta, tb, t1 = rnd(2, 32, seed=5), rnd(2, 32, seed=6), rnd(2, 2, 3, 3, seed=7)
    ta2, tb2, t2 = rnd(2, 32, seed=8), rnd(2, 32, seed=9), rnd(2, 2, 3, 3, seed=10)
    kw1, kw2a, kw2b = rnd(4, 8, seed=11), rnd(8, 2, seed=12), rnd(2, 16, seed=13)
    dd, du, mag = rnd(4, 32, seed=14), rnd(32, 4, seed=15), rnd(32, 1, seed=16).abs() + 0.5
    L = {f"{n_lin}.hada_w1_a": a1, f"{n_lin}.hada_w1_b": b1, f"{n_lin}.hada_w2_a": a2, f"{n_lin}.hada_w2_b": b2,
         f"{n_lin}.alpha": torch.tensor(2.0),
         f"{n_conv}.hada_w1_a": ta, f"{n_conv}.hada_w1_b": tb, f"{n_conv}.hada_t1": t1,
         f"{n_conv}.hada_w2_a": ta2, f"{n_conv}.hada_w2_b": tb2, f"{n_conv}.hada_t2": t2, f"{n_conv}.alpha": torch.tensor(2.0),
         f"{n_ff}.lokr_w1": kw1, f"{n_ff}.lokr_w2_a": kw2a, f"{n_ff}.lokr_w2_b": kw2b, f"{n_ff}.alpha": torch.tensor(1.0),
         f"{n_dora}.lora_down.weight": dd, f"{n_dora}.lora_up.weight": du, f"{n_dora}.alpha": torch.tensor(4.0),
         f"{n_dora}.dora_scale": mag}
    save_file(L, tmp_path / "ly.safetensors")
    net = read_lora(open_source(str(tmp_path / "ly.safetensors")))
    assert net.algos() == {"loha": 2, "lokr": 1, "lora+dora": 1}
    src = apply_lora_source(base, open_source(str(tmp_path / "ly.safetensors")), 0.8)
    m = 0.8
    torch.testing.assert_close(src.get(k_lin), W[k_lin] + m * 0.5 * (a1 @ b1) * (a2 @ b2))
    w1 = torch.einsum("ijkl,ip,jr->prkl", t1, ta, tb)
    w2 = torch.einsum("ijkl,ip,jr->prkl", t2, ta2, tb2)
    torch.testing.assert_close(src.get(k_conv), W[k_conv] + m * 1.0 * w1 * w2)
    torch.testing.assert_close(src.get(k_ff), W[k_ff] + m * 0.5 * torch.kron(kw1, kw2a @ kw2b))
    merged = W[k_dora] + du @ dd
    dora = mag * merged / merged.norm(dim=1, keepdim=True)
    torch.testing.assert_close(src.get(k_dora), W[k_dora] + m * (dora - W[k_dora]))


def test_sd2_openclip_fused_qkv(tmp_path, ldm_files):
    base = open_source(str(ldm_files["sd2"]))
    key = "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"
    W = base.get(key).float().clone()
    L = {}
    for i, p in enumerate("qkv"):
        n = f"lora_te_text_model_encoder_layers_1_self_attn_{p}_proj"
        L[f"{n}.lora_down.weight"], L[f"{n}.lora_up.weight"] = rnd(2, 16, seed=i), rnd(16, 2, seed=10 + i)
    fc1 = "lora_te_text_model_encoder_layers_1_mlp_fc1"
    L[f"{fc1}.lora_down.weight"], L[f"{fc1}.lora_up.weight"] = rnd(2, 16, seed=20), rnd(32, 2, seed=21)
    save_file(L, tmp_path / "te.safetensors")
    src = apply_lora_source(base, open_source(str(tmp_path / "te.safetensors")), 1.0)
    got = src.get(key)
    for i, p in enumerate("qkv"):
        n = f"lora_te_text_model_encoder_layers_1_self_attn_{p}_proj"
        exp = W[16 * i:16 * (i + 1)] + L[f"{n}.lora_up.weight"] @ L[f"{n}.lora_down.weight"]
        torch.testing.assert_close(got[16 * i:16 * (i + 1)], exp)
    fc = "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.weight"
    torch.testing.assert_close(src.get(fc), base.get(fc) + L[f"{fc1}.lora_up.weight"] @ L[f"{fc1}.lora_down.weight"])


def _sdxl_lora(path):
    L = {}
    n = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"   # sgm names, width 2048
    L[f"{n}.lora_down.weight"], L[f"{n}.lora_up.weight"], L[f"{n}.alpha"] = rnd(2, 2048), rnd(64, 2), torch.tensor(1.0)
    n = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    L[f"{n}.lora_down.weight"], L[f"{n}.lora_up.weight"] = rnd(2, 16), rnd(16, 2)
    n = "lora_te2_text_model_encoder_layers_3_self_attn_v_proj"
    L[f"{n}.lora_down.weight"], L[f"{n}.lora_up.weight"] = rnd(2, 16, seed=1), rnd(16, 2, seed=1)
    save_file(L, path)
    return L


def test_sdxl_lora_on_sd1_is_refused(tmp_path, ldm_files, capsys):
    _sdxl_lora(tmp_path / "xl.safetensors")
    with pytest.raises(StudioError, match=r"made for SDXL but the model is SD1\.x"):
        apply_lora_source(open_source(str(ldm_files["sd1"])), open_source(str(tmp_path / "xl.safetensors")))
    rc = main(["lora", "bake", str(ldm_files["sd1"]), str(tmp_path / "o.safetensors"), "--lora", str(tmp_path / "xl.safetensors")])
    assert rc == 2 and "made for SDXL" in capsys.readouterr().err and not (tmp_path / "o.safetensors").exists()


def test_unmatched_keys_are_listed(tmp_path, ldm_files):
    L = {f"{Q1}.lora_down.weight": rnd(4, 32), f"{Q1}.lora_up.weight": rnd(32, 4),
         "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": rnd(2, 32),
         "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": rnd(32, 2)}
    save_file(L, tmp_path / "bad.safetensors")
    with pytest.raises(StudioError, match="1 of 2 LoRA modules match no tensor.*down_blocks_9_attentions_0_proj_in"):
        apply_lora_source(open_source(str(ldm_files["sd1"])), open_source(str(tmp_path / "bad.safetensors")))
    # wrong width for a matched module → a shape error, not a silent skip
    save_file({f"{Q1}.lora_down.weight": rnd(4, 48), f"{Q1}.lora_up.weight": rnd(32, 4)}, tmp_path / "w.safetensors")
    with pytest.raises(StudioError, match="do not fit"):
        apply_lora_source(open_source(str(ldm_files["sd1"])), open_source(str(tmp_path / "w.safetensors")))


def test_sdxl_lora_on_sdxl_single_file_and_diffusers_pipeline(tmp_path, ldm_files, pipelines):
    L = _sdxl_lora(tmp_path / "xl.safetensors")
    k_unet = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    dW = L[f"{k_unet}.lora_up.weight"] @ L[f"{k_unet}.lora_down.weight"] * 0.5
    te2 = "lora_te2_text_model_encoder_layers_3_self_attn_v_proj"
    dv = L[f"{te2}.lora_up.weight"] @ L[f"{te2}.lora_down.weight"]
    # single file: sgm names are the file's own; te2 → rows [2d:3d] of the fused in_proj
    src = apply_lora_source(open_source(str(ldm_files["sdxl"])), open_source(str(tmp_path / "xl.safetensors")), 1.0)
    base = src.base
    k = MDM + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    torch.testing.assert_close(src.get(k), base.get(k) + dW)
    ip = "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight"
    torch.testing.assert_close(src.get(ip)[32:], base.get(ip)[32:] + dv)
    torch.testing.assert_close(src.get(ip)[:32], base.get(ip)[:32])
    # diffusers pipeline: the sgm name is converted to down_blocks.1.attentions.0
    out = tmp_path / "pipe_out"
    bake(str(pipelines["sdxl"]), out, [LoraSpec(str(tmp_path / "xl.safetensors"))], progress=False)
    pipe = open_source(str(pipelines["sdxl"]))
    o = open_source(str(out))
    assert o.kind == "diffusers" and set(o.keys()) == set(pipe.keys())
    assert (out / "scheduler" / "scheduler_config.json").is_file() and (out / "unet" / "config.json").is_file()
    k = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    torch.testing.assert_close(o.get(k), pipe.get(k) + dW)
    k = "text_encoder_2.text_model.encoder.layers.3.self_attn.v_proj.weight"
    torch.testing.assert_close(o.get(k), pipe.get(k) + dv)


def test_diffusers_lora_file_and_block_weights(tmp_path, pipelines, ldm_files):
    mod = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    up_mod = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"   # OUT03
    A, B, A2, B2 = rnd(4, 32), rnd(32, 4), rnd(4, 64, seed=1), rnd(64, 4, seed=1)
    save_file({f"{mod}.lora_A.weight": A, f"{mod}.lora_B.weight": B,
               f"{up_mod}.lora_A.weight": A2, f"{up_mod}.lora_B.weight": B2}, tmp_path / "pytorch_lora_weights.safetensors")
    lora = str(tmp_path / "pytorch_lora_weights.safetensors")
    pipe = open_source(str(pipelines["sd1"]))
    src = open_source(f"{pipelines['sd1']}+{lora}:0.5")
    torch.testing.assert_close(src.get(mod + ".weight"), pipe.get(mod + ".weight") + 0.5 * B @ A)
    # same diffusers-named LoRA on the ldm single file, with per-block weights (IN01 → 0, OUT03 → 2)
    blocks = ",".join(["1"] * 2 + ["0"] + ["1"] * 14 + ["2"] + ["1"] * 8)  # BASE, IN00, IN01=0, …, OUT03=2
    sf = open_source(str(ldm_files["sd1"]))
    src = apply_lora_source(sf, open_source(lora), 1.0, blocks=blocks)
    assert Q1_KEY not in src.patches
    k = MDM + "output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"
    torch.testing.assert_close(src.get(k), sf.get(k) + 2 * B2 @ A2)
    src = apply_lora_source(sf, open_source(lora), 1.0, blocks="IN=0,OUT03=3")
    torch.testing.assert_close(src.get(k), sf.get(k) + 3 * B2 @ A2)
    with pytest.raises(StudioError, match="3 block weights given"):
        apply_lora_source(sf, open_source(lora), 1.0, blocks="1,2,3")


def test_cli_bake_forms(tmp_path, ldm_files, capsys):
    L = {f"{Q1}.lora_down.weight": rnd(4, 32), f"{Q1}.lora_up.weight": rnd(32, 4), f"{Q1}.alpha": torch.tensor(4.0)}
    save_file(L, tmp_path / "a.safetensors")
    save_file({k: v * 2 for k, v in L.items() if "alpha" not in k}, tmp_path / "b.safetensors")
    out = tmp_path / "o.safetensors"
    cmd = [sys.executable, "-m", "studio", "lora", "bake", str(ldm_files["sd1"]), str(out),
           "--lora", f"{tmp_path / 'a.safetensors'}:0.5", "--lora", str(tmp_path / "b.safetensors"), "--dtype", "fp16"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    o = load_file(out)
    base = open_source(str(ldm_files["sd1"]))
    exp = base.get(Q1_KEY).float() + 0.5 * L[f"{Q1}.lora_up.weight"] @ L[f"{Q1}.lora_down.weight"] \
        + (2 * L[f"{Q1}.lora_up.weight"]) @ (2 * L[f"{Q1}.lora_down.weight"])
    assert o[Q1_KEY].dtype == torch.float16
    torch.testing.assert_close(o[Q1_KEY].float(), exp, atol=2e-2, rtol=1e-2)
    meta = open_source(str(out)).metadata
    assert meta["format"] == "pt" and meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert "sd_merge_recipe" in meta
    assert main(cmd[3:]) == 2 and "--overwrite" in capsys.readouterr().err    # refuses to overwrite
