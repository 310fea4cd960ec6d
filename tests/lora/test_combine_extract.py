"""Combine (exact concat / SVD) and extract, checked by baking the results."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from studio.cli import main
from studio.lora import apply_lora_source, read_lora
from studio.lora.combine import combine
from studio.lora.extract import extract
from studio.sources import open_source

MDM = "model.diffusion_model."
MODS = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (32, 32),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (64, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (32, 16)}
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"


def _lora(path, seed, rank, alpha, conv=True):
    g = torch.Generator().manual_seed(seed)
    L = {}
    for n, (o, i) in MODS.items():
        L[f"{n}.lora_down.weight"] = torch.randn(rank, i, generator=g)
        L[f"{n}.lora_up.weight"] = torch.randn(o, rank, generator=g)
        L[f"{n}.alpha"] = torch.tensor(float(alpha))
    if conv:
        L[f"{CONV}.lora_down.weight"] = torch.randn(rank, 32, 3, 3, generator=g)
        L[f"{CONV}.lora_up.weight"] = torch.randn(32, rank, 1, 1, generator=g)
        L[f"{CONV}.alpha"] = torch.tensor(float(alpha))
    save_file(L, path)
    return str(path)


def test_concat_combine_then_bake_equals_baking_each(tmp_path, ldm_files):
    a = _lora(tmp_path / "a.safetensors", 1, 2, 1.0)
    b = _lora(tmp_path / "b.safetensors", 2, 3, 6.0)
    s = combine(tmp_path / "c.safetensors", [(a, 0.7), (b, -0.4)], progress=False)
    assert s["method"] == "concat"
    c = load_file(tmp_path / "c.safetensors")
    n = next(iter(MODS))
    assert c[f"{n}.lora_down.weight"].shape[0] == 5 and float(c[f"{n}.alpha"]) == 5.0
    base = open_source(str(ldm_files["sd1"]))
    from studio.lora.apply import LoraAppliedSource

    each = LoraAppliedSource(base, [(read_lora(open_source(a)), 0.7, None), (read_lora(open_source(b)), -0.4, None)])
    once = apply_lora_source(base, open_source(str(tmp_path / "c.safetensors")), 1.0)
    assert set(each.patches) == set(once.patches) and len(once.patches) == 4
    for k in once.patches:
        torch.testing.assert_close(once.get(k), each.get(k), rtol=1e-5, atol=1e-5)


def test_svd_combine_reports_its_error(tmp_path, ldm_files):
    a = _lora(tmp_path / "a.safetensors", 1, 4, 2.0)
    b = _lora(tmp_path / "b.safetensors", 2, 4, 4.0)
    rc = main(["lora", "combine", str(tmp_path / "c.safetensors"), "--lora", f"{a}:0.5", "--lora", b, "--rank", "3"])
    assert rc == 0
    s = combine(tmp_path / "d.safetensors", [(a, 0.5), (b, 1.0)], rank=3, progress=False)
    assert s["method"] == "svd" and 0 < s["overall_rel_error"] < 1
    base = open_source(str(ldm_files["sd1"]))
    from studio.lora.apply import LoraAppliedSource

    each = LoraAppliedSource(base, [(read_lora(open_source(a)), 0.5, None), (read_lora(open_source(b)), 1.0, None)])
    once = apply_lora_source(base, open_source(str(tmp_path / "d.safetensors")), 1.0)
    num = den = 0.0
    for k in each.patches:
        w = base.get(k).float()
        d_true, d_svd = each.get(k) - w, once.get(k) - w
        num += float((d_true - d_svd).pow(2).sum())
        den += float(d_true.pow(2).sum())
    assert abs((num / den) ** 0.5 - s["overall_rel_error"]) < 1e-3
    # full rank: exact up to float error
    s = combine(tmp_path / "e.safetensors", [(a, 0.5), (b, 1.0)], rank=64, progress=False)
    assert s["overall_rel_error"] < 1e-5


def test_loha_combines_only_through_svd(tmp_path):
    n = next(iter(MODS))
    g = torch.Generator().manual_seed(0)
    save_file({f"{n}.hada_w1_a": torch.randn(32, 2, generator=g), f"{n}.hada_w1_b": torch.randn(2, 32, generator=g),
               f"{n}.hada_w2_a": torch.randn(32, 2, generator=g), f"{n}.hada_w2_b": torch.randn(2, 32, generator=g)},
              tmp_path / "h.safetensors")
    s = combine(tmp_path / "c.safetensors", [(str(tmp_path / "h.safetensors"), 1.0)], progress=False)
    assert s["method"] == "svd" and s["overall_rel_error"] > 0.01    # default rank = the input's 2 < rank of ΔW
    s = combine(tmp_path / "d.safetensors", [(str(tmp_path / "h.safetensors"), 1.0)], rank=4, progress=False)
    assert s["overall_rel_error"] < 1e-5                             # (A1B1)⊙(A2B2) has rank ≤ 2·2
    net = read_lora(open_source(str(tmp_path / "d.safetensors")))
    assert net.is_plain_lora()


def test_extract_then_bake_reproduces_the_difference(tmp_path, ldm_files):
    base_p = ldm_files["sd1"]
    lora = _lora(tmp_path / "a.safetensors", 3, 4, 4.0)
    tuned = tmp_path / "tuned.safetensors"
    assert main(["lora", "bake", str(base_p), str(tuned), "--lora", f"{lora}:0.1"]) == 0
    s = extract(str(base_p), str(tuned), tmp_path / "x.safetensors", rank=4, progress=False)
    assert s["modules"] == 4 and s["overall_rel_error"] < 1e-4  # the difference has rank 4: recovered (exact default)
    clamped = extract(str(base_p), str(tuned), tmp_path / "c.safetensors", rank=4, clamp_quantile=0.99, progress=False)
    assert clamped["overall_rel_error"] > 10 * s["overall_rel_error"]  # kohya's clamp, on request, costs accuracy
    s2 = extract(str(base_p), str(tuned), tmp_path / "y.safetensors", rank=2, conv_rank=1, progress=False)
    assert s2["overall_rel_error"] > 0.05
    base, tun = open_source(str(base_p)), open_source(str(tuned))
    for out, rep in ((tmp_path / "x.safetensors", s), (tmp_path / "y.safetensors", s2)):
        meta = open_source(str(out)).metadata
        assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
        baked = apply_lora_source(base, open_source(str(out)), 1.0)
        num = den = 0.0
        for k in baked.patches:
            d_true = tun.get(k).float() - base.get(k).float()
            num += float((baked.get(k).float() - tun.get(k).float()).pow(2).sum())
            den += float(d_true.pow(2).sum())
        assert (num / den) ** 0.5 <= rep["overall_rel_error"] + 1e-4
    # PEFT / diffusers-format extraction from a diffusers pipeline round-trips too
    assert set(read_lora(open_source(str(tmp_path / "x.safetensors"))).modules) == set(MODS) | {CONV}
