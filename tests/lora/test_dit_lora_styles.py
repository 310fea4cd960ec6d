"""LoRAs for diffusion transformers apply exactly in every key style: kohya fused Flux names onto BFL- and
diffusers-named Flux, diffusers/PEFT/AI-Toolkit split names onto both, LoKr/LoHa, SD3 / Wan / Qwen-Image names on tiny
diffusers models of those classes, and per-block weights. Checked against closed forms W + s·B·A per (row block of
a) target, against diffusers' own Flux single-file converter (the BFL bake converted must equal the diffusers bake)
and against diffusers' own LoRA loading + fuse_lora."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.errors import StudioError
from studio.layout import detect_layout
from studio.lora import apply_lora_source
from studio.lora.bake import LoraSpec, bake
from studio.sources import open_source

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

ND, NS, D = 2, 2, 16            # double blocks, single blocks, hidden size of the tiny Flux


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_flux():
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=ND, num_single_layers=NS,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                            pooled_projection_dim=10, guidance_embeds=True, axes_dims_rope=(2, 2, 4))


def to_bfl(sd: dict) -> dict:
    """The test's own diffusers → BFL names (checked below against diffusers' converter, BFL → diffusers)."""
    ren = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear"}
    for a, b in (("timestep_embedder", "time_in"), ("text_embedder", "vector_in"), ("guidance_embedder", "guidance_in")):
        ren[f"time_text_embed.{a}.linear_1"] = f"{b}.in_layer"
        ren[f"time_text_embed.{a}.linear_2"] = f"{b}.out_layer"
    for i in range(ND):
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        ren.update({d + "norm1.linear": o + "img_mod.lin", d + "norm1_context.linear": o + "txt_mod.lin",
                    d + "attn.to_out.0": o + "img_attn.proj", d + "attn.to_add_out": o + "txt_attn.proj",
                    d + "ff.net.0.proj": o + "img_mlp.0", d + "ff.net.2": o + "img_mlp.2",
                    d + "ff_context.net.0.proj": o + "txt_mlp.0", d + "ff_context.net.2": o + "txt_mlp.2"})
    for i in range(NS):
        ren.update({f"single_transformer_blocks.{i}.norm.linear": f"single_blocks.{i}.modulation.lin",
                    f"single_transformer_blocks.{i}.proj_out": f"single_blocks.{i}.linear2"})
    norms = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
             "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
             "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale"}
    out = {}
    for suf in ("weight", "bias"):
        for d, o in ren.items():
            if f"{d}.{suf}" in sd:
                out[f"{o}.{suf}"] = sd[f"{d}.{suf}"]
        for i in range(ND):
            d = f"transformer_blocks.{i}.attn."
            out[f"double_blocks.{i}.img_attn.qkv.{suf}"] = torch.cat([sd[f"{d}to_{c}.{suf}"] for c in "qkv"])
            out[f"double_blocks.{i}.txt_attn.qkv.{suf}"] = torch.cat([sd[f"{d}add_{c}_proj.{suf}"] for c in "qkv"])
        for i in range(NS):
            s = f"single_transformer_blocks.{i}."
            out[f"single_blocks.{i}.linear1.{suf}"] = torch.cat([sd[f"{s}attn.to_{c}.{suf}"] for c in "qkv"]
                                                                 + [sd[f"{s}proj_mlp.{suf}"]])
        h = sd[f"norm_out.linear.{suf}"].chunk(2)
        out[f"final_layer.adaLN_modulation.1.{suf}"] = torch.cat([h[1], h[0]])
    for i in range(ND):
        for d, o in norms.items():
            out[f"double_blocks.{i}.{o}"] = sd[f"transformer_blocks.{i}.{d}"]
    for i in range(NS):
        for c, n in (("q", "query"), ("k", "key")):
            out[f"single_blocks.{i}.norm.{n}_norm.scale"] = sd[f"single_transformer_blocks.{i}.attn.norm_{c}.weight"]
    return out


def bfl_to_diffusers(sd: dict) -> dict:
    """diffusers' own converter. It hard-codes Flux.1's width (linear1 split as 3072, 3072, 3072, 12288 rows): only
    that split is given the tiny model's sizes, everything else is the converter's."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    real_split = torch.split

    def split(t, sizes, dim=0):
        if tuple(sizes) == (3072, 3072, 3072, 12288):
            sizes = (D, D, D, t.shape[0] - 3 * D)
        return real_split(t, sizes, dim)
    with mock.patch.object(torch, "split", split):
        return convert_flux_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in sd.items()})


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    model = tiny_flux()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    bfl = to_bfl(sd)
    back = bfl_to_diffusers(bfl)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)   # the test's mapping is right
    save_file(sd, root / "flux_diffusers.safetensors")
    save_file(bfl, root / "flux_bfl.safetensors")
    # as found in a diffusers pipeline folder's transformer and in a single-file (ComfyUI / Forge) checkpoint
    save_file({"transformer." + k: v for k, v in sd.items()}, root / "flux_diffusers_prefixed.safetensors")
    save_file({"model.diffusion_model." + k: v for k, v in bfl.items()}, root / "flux_bfl_prefixed.safetensors")
    return {"root": root, "model": model, "sd": sd, "bfl": bfl,
            "diffusers": str(root / "flux_diffusers.safetensors"), "bfl_path": str(root / "flux_bfl.safetensors")}


def baked(base: str, lora: dict, path, strength=1.0, blocks=None) -> dict:
    save_file({k: v.contiguous() for k, v in lora.items()}, path)
    src = apply_lora_source(open_source(base), open_source(str(path)), strength, blocks=blocks)
    out = {k: src.get(k) for k in src.keys()}
    src.close()
    return out


def kohya(name: str, out: int, inp: int, r: int, seed: int, alpha: float | None = None) -> dict:
    t = {f"{name}.lora_down.weight": rnd(r, inp, seed=seed), f"{name}.lora_up.weight": rnd(out, r, seed=seed + 1)}
    if alpha is not None:
        t[f"{name}.alpha"] = torch.tensor(alpha)
    return t


def kohya_delta(lora: dict, name: str) -> torch.Tensor:
    down, up = lora[f"{name}.lora_down.weight"], lora[f"{name}.lora_up.weight"]
    alpha = float(lora[f"{name}.alpha"]) if f"{name}.alpha" in lora else down.shape[0]
    return alpha / down.shape[0] * up @ down


def flux_kohya_lora(bfl: dict) -> dict:
    """A kohya / sd-scripts Flux LoRA on every linear of the BFL model (fused qkv, linear1, the final modulation)."""
    lora = {}
    mods = sorted({k[:-7] for k in bfl if k.endswith(".weight") and bfl[k].dim() == 2})
    for i, m in enumerate(mods):
        out, inp = bfl[m + ".weight"].shape
        lora.update(kohya("lora_unet_" + m.replace(".", "_"), out, inp, 2 + i % 3, seed=10 * i, alpha=1.0 + i % 4))
    return lora


def unprefixed(state: dict, prefix: str) -> dict:
    assert all(k.startswith(prefix) for k in state)
    return {k[len(prefix):]: v for k, v in state.items()}


@pytest.mark.parametrize("bfl_prefix,diff_prefix", [("", ""), ("model.diffusion_model.", "transformer.")])
def test_kohya_flux_onto_bfl_and_diffusers_names(flux, tmp_path, bfl_prefix, diff_prefix):
    lora = flux_kohya_lora(flux["bfl"])
    m = 0.8
    bfl_file, diff_file = flux["bfl_path"], flux["diffusers"]
    if bfl_prefix:
        bfl_file, diff_file = (str(flux["root"] / "flux_bfl_prefixed.safetensors"),
                               str(flux["root"] / "flux_diffusers_prefixed.safetensors"))
    on_bfl = unprefixed(baked(bfl_file, lora, tmp_path / "k.safetensors", m), bfl_prefix)
    # (a) closed form per BFL tensor: W + m·α/r·U·D, the fused qkv / linear1 / modulation whole
    for k, w in flux["bfl"].items():
        name = "lora_unet_" + k[:-7].replace(".", "_")
        want = w + m * kohya_delta(lora, name) if k.endswith(".weight") and f"{name}.lora_up.weight" in lora else w
        torch.testing.assert_close(on_bfl[k], want, rtol=0, atol=1e-5)
    # the same LoRA on the diffusers-named model: split rows (q/k/v, proj_mlp), swapped final modulation — equal to
    # diffusers' own converter run on the BFL result
    on_diff = unprefixed(baked(diff_file, lora, tmp_path / "k.safetensors", m), diff_prefix)
    want = bfl_to_diffusers(on_bfl)
    assert set(on_diff) == set(want)
    for k in want:
        torch.testing.assert_close(on_diff[k], want[k], rtol=0, atol=1e-5)
    changed = [k for k in want if not torch.equal(on_diff[k], flux["sd"][k])]
    assert "single_transformer_blocks.1.proj_mlp.weight" in changed and "norm_out.linear.weight" in changed


def test_kohya_flux_equals_diffusers_own_conversion_and_fuse(flux, tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
    # that converter splits linear1 at Flux.1's full width (3072, …, 12288 rows), so the tiny model's linear1 is left
    # out here; test_kohya_flux_onto_bfl_and_diffusers_names checks its split against the single-file converter
    lora = {k: v for k, v in flux_kohya_lora(flux["bfl"]).items() if "_linear1." not in k}
    assert any("img_attn_qkv" in k for k in lora) and any("final_layer_adaLN" in k for k in lora)
    # it also drops the final layer's alphas (kohya applies them): give those modules α = r, where both agree
    for k in [k for k in lora if k.startswith("lora_unet_final_layer") and k.endswith(".alpha")]:
        lora[k] = torch.tensor(float(lora[k[:-6] + ".lora_down.weight"].shape[0]))
    ours = baked(flux["diffusers"], lora, tmp_path / "k.safetensors")
    model = tiny_flux()
    model.load_state_dict(flux["sd"])
    converted = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in lora.items()})
    # it leaves the embedders and the final layer without the ``transformer.`` root its loader selects on
    converted = {k if k.startswith("transformer.") else "transformer." + k: v for k, v in converted.items()}
    model.load_lora_adapter(converted, adapter_name="k", prefix="transformer")
    model.fuse_lora(lora_scale=1.0)
    theirs = model.state_dict()
    for k, w in flux["sd"].items():
        got = theirs.get(k, theirs.get(k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")))
        torch.testing.assert_close(ours[k], got, rtol=0, atol=1e-5)


def peft_lora(sd: dict, prefix: str, seed: int) -> tuple[dict, dict]:
    """diffusers / PEFT LoRA (``lora_A``/``lora_B``, no alpha: scale 1) on every 2-D weight; → (file, ΔW by module)."""
    lora, deltas = {}, {}
    for i, k in enumerate(sorted(k for k in sd if k.endswith(".weight") and sd[k].dim() == 2)):
        mod = k[:-7]
        out, inp = sd[k].shape
        a, b = rnd(3, inp, seed=seed + 2 * i), rnd(out, 3, seed=seed + 2 * i + 1)
        lora[f"{prefix}{mod}.lora_A.weight"], lora[f"{prefix}{mod}.lora_B.weight"] = a, b
        deltas[mod] = b @ a
    return lora, deltas


def test_diffusers_split_lora_onto_diffusers_and_fused_bfl(flux, tmp_path):
    lora, deltas = peft_lora(flux["sd"], "transformer.", seed=100)
    on_diff = baked(flux["diffusers"], lora, tmp_path / "d.safetensors", 0.5)
    for k, w in flux["sd"].items():
        want = w + 0.5 * deltas[k[:-7]] if k[:-7] in deltas else w
        torch.testing.assert_close(on_diff[k], want, rtol=0, atol=1e-5)
    # diffusers' own loader + fuse on the same file
    model = tiny_flux()
    model.load_state_dict(flux["sd"])
    model.load_lora_adapter(dict(lora), adapter_name="d", prefix="transformer")
    model.fuse_lora(lora_scale=0.5)
    theirs = model.state_dict()
    for k in deltas:
        got = theirs.get(k + ".weight", theirs.get(k + ".base_layer.weight"))
        torch.testing.assert_close(on_diff[k + ".weight"], got, rtol=0, atol=1e-5)
    # onto BFL names: each split ΔW fills its row block of the fused tensor; converted back, the same model
    on_bfl = baked(flux["bfl_path"], lora, tmp_path / "d.safetensors", 0.5)
    back = bfl_to_diffusers(on_bfl)
    for k in on_diff:
        torch.testing.assert_close(back[k], on_diff[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("prefix,down,up", [("diffusion_model.", "lora_A.weight", "lora_B.weight"),
                                            ("transformer.", "lora_A.weight", "lora_B.weight"),
                                            ("lora_transformer_", "lora_down.weight", "lora_up.weight")])
def test_ai_toolkit_and_other_prefixes_on_both_spellings(flux, tmp_path, prefix, down, up):
    """AI-Toolkit / ComfyUI ``diffusion_model.<BFL name>`` and ``transformer.<BFL name>`` LoRAs; kohya-style names
    with a ``lora_transformer_`` prefix."""
    bfl = flux["bfl"]
    sep = "_" if prefix.endswith("_") else "."
    lora, deltas = {}, {}
    for i, m in enumerate(("double_blocks.1.img_attn.qkv", "single_blocks.0.linear1", "double_blocks.0.txt_mlp.2")):
        out, inp = bfl[m + ".weight"].shape
        a, b = rnd(2, inp, seed=300 + i), rnd(out, 2, seed=400 + i)
        name = prefix + (m.replace(".", "_") if sep == "_" else m)
        lora[f"{name}.{down}"], lora[f"{name}.{up}"] = a, b
        deltas[m] = b @ a
    on_bfl = baked(flux["bfl_path"], lora, tmp_path / "a.safetensors")
    for m, d in deltas.items():
        torch.testing.assert_close(on_bfl[m + ".weight"], bfl[m + ".weight"] + d, rtol=0, atol=1e-5)
    on_diff = baked(flux["diffusers"], lora, tmp_path / "a.safetensors")
    want = bfl_to_diffusers(on_bfl)
    for k in want:
        torch.testing.assert_close(on_diff[k], want[k], rtol=0, atol=1e-5)


def test_lokr_and_loha_split_and_fused(flux, tmp_path):
    """LyCORIS on a DiT: a kohya-named LoKr on the fused qkv spread over diffusers' to_q/k/v, and a ``lycoris_``
    LoHa on diffusers' to_k filling the k rows of BFL's fused qkv."""
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    w1, w2a, w2b = rnd(3, 2, seed=1), rnd(16, 2, seed=2), rnd(2, 8, seed=3)       # kron → (48, 16)
    lokr = {f"{qkv}.lokr_w1": w1, f"{qkv}.lokr_w2_a": w2a, f"{qkv}.lokr_w2_b": w2b, f"{qkv}.alpha": torch.tensor(1.0)}
    d_lokr = 0.5 * torch.kron(w1, w2a @ w2b)                                       # α / r = 1 / 2
    on_diff = baked(flux["diffusers"], lokr, tmp_path / "lokr.safetensors")
    for j, c in enumerate("qkv"):
        k = f"transformer_blocks.0.attn.to_{c}.weight"
        torch.testing.assert_close(on_diff[k], flux["sd"][k] + d_lokr[16 * j:16 * (j + 1)], rtol=0, atol=1e-5)
    hk = "lycoris_transformer_blocks_1_attn_to_k"
    h = {f"{hk}.hada_w1_a": rnd(16, 2, seed=4), f"{hk}.hada_w1_b": rnd(2, 16, seed=5),
         f"{hk}.hada_w2_a": rnd(16, 2, seed=6), f"{hk}.hada_w2_b": rnd(2, 16, seed=7), f"{hk}.alpha": torch.tensor(4.0)}
    d_loha = 2.0 * (h[f"{hk}.hada_w1_a"] @ h[f"{hk}.hada_w1_b"]) * (h[f"{hk}.hada_w2_a"] @ h[f"{hk}.hada_w2_b"])
    on_bfl = baked(flux["bfl_path"], h, tmp_path / "loha.safetensors", 0.25)
    w = flux["bfl"]["double_blocks.1.img_attn.qkv.weight"]
    want = w.clone()
    want[16:32] += 0.25 * d_loha
    torch.testing.assert_close(on_bfl["double_blocks.1.img_attn.qkv.weight"], want, rtol=0, atol=1e-5)
    assert torch.equal(on_bfl["double_blocks.1.img_attn.qkv.bias"], flux["bfl"]["double_blocks.1.img_attn.qkv.bias"])


def test_bias_deltas_follow_the_row_split(flux, tmp_path):
    """A LyCORIS full-diff module (``diff``/``diff_b``) on BFL linear1 splits both weight and bias rows."""
    name = "lora_unet_single_blocks_1_linear1"
    diff, diff_b = rnd(112, 16, seed=8), rnd(112, seed=9)
    on_diff = baked(flux["diffusers"], {f"{name}.diff": diff, f"{name}.diff_b": diff_b}, tmp_path / "f.safetensors")
    s = "single_transformer_blocks.1."
    for mod, (a, b) in (("attn.to_q", (0, 16)), ("attn.to_k", (16, 32)), ("attn.to_v", (32, 48)), ("proj_mlp", (48, 112))):
        torch.testing.assert_close(on_diff[s + mod + ".weight"], flux["sd"][s + mod + ".weight"] + diff[a:b])
        torch.testing.assert_close(on_diff[s + mod + ".bias"], flux["sd"][s + mod + ".bias"] + diff_b[a:b])


@pytest.mark.parametrize("file,state,prefix", [("flux_bfl", "bfl", ""), ("flux_diffusers", "sd", ""),
                                               ("flux_bfl_prefixed", "bfl", "model.diffusion_model."),
                                               ("flux_diffusers_prefixed", "sd", "transformer.")])
def test_block_weights_scale_exactly_one_block(flux, tmp_path, file, state, prefix):
    """``D01=0`` on a Flux LoRA: whatever layout the model gets (the 61-id Flux one, or one inferred from a bare
    diffusers transformer's keys), that block keeps the base's weights and every other gets its full ΔW."""
    lora = flux_kohya_lora(flux["bfl"])
    base = str(flux["root"] / f"{file}.safetensors")
    layout = detect_layout(open_source(base))
    assert "D01" in layout.groups
    full = baked(base, lora, tmp_path / "b.safetensors")
    zero = baked(base, lora, tmp_path / "b.safetensors", blocks="D01=0")
    orig = {prefix + k: v for k, v in flux[state].items()}
    in_d01 = [k for k in orig if layout.group_of(k) == "D01"]
    assert in_d01 and any(not torch.equal(full[k], orig[k]) for k in in_d01)
    for k in orig:
        if layout.group_of(k) == "D01":
            assert torch.equal(zero[k], orig[k]), k
        else:
            assert torch.equal(zero[k], full[k]), k
    half = baked(base, lora, tmp_path / "b.safetensors", blocks="D01=0.5")
    for k in in_d01:
        torch.testing.assert_close(half[k], orig[k] + 0.5 * (full[k] - orig[k]), rtol=0, atol=1e-5)


def test_unmatched_and_misfit_modules_are_reported(flux, tmp_path):
    lora = kohya("lora_unet_double_blocks_0_img_attn_qkv", 48, 16, 2, seed=1)
    lora.update(kohya("lora_unet_double_blocks_7_img_attn_qkv", 48, 16, 2, seed=2))
    save_file(lora, tmp_path / "u.safetensors")
    with pytest.raises(StudioError, match="double_blocks_7_img_attn_qkv"):
        apply_lora_source(open_source(flux["diffusers"]), open_source(str(tmp_path / "u.safetensors")))
    bad = kohya("lora_unet_double_blocks_0_img_attn_qkv", 40, 16, 2, seed=3)      # 40 rows: not q/k/v of 16
    save_file(bad, tmp_path / "m.safetensors")
    with pytest.raises(StudioError, match="do not fit"):
        apply_lora_source(open_source(flux["diffusers"]), open_source(str(tmp_path / "m.safetensors")))


def test_cli_bake_kohya_onto_diffusers_flux(flux, tmp_path):
    from studio.cli import main
    lora = flux_kohya_lora(flux["bfl"])
    save_file(lora, tmp_path / "k.safetensors")
    out = tmp_path / "o.safetensors"
    assert main(["lora", "bake", flux["diffusers"], str(out), "--lora", f"{tmp_path / 'k.safetensors'}:0.8"]) == 0
    got = load_file(out)
    want = bfl_to_diffusers(baked(flux["bfl_path"], lora, tmp_path / "k2.safetensors", 0.8))
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)


# ---- SD3, Wan, Qwen-Image ----------------------------------------------------------------------------------------


def save_model(model, path) -> dict:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path)
    return sd


def tiny_sd3():
    torch.manual_seed(1)
    return diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                           caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
                                           pos_embed_max_size=8)


def sd3_original_names(sd: dict, layers: int = 2) -> dict:
    """The test's own diffusers → SD3 MMDiT names (checked against diffusers' converter, MMDiT → diffusers)."""
    def swap(t):
        a, b = t.chunk(2)
        return torch.cat([b, a])
    ren = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
           "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
           "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2"}
    for i in range(layers):
        d, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        ren.update({d + "attn.to_out.0": x + "attn.proj", d + "attn.to_add_out": c + "attn.proj",
                    d + "norm1.linear": x + "adaLN_modulation.1", d + "ff.net.0.proj": x + "mlp.fc1",
                    d + "ff.net.2": x + "mlp.fc2", d + "ff_context.net.0.proj": c + "mlp.fc1",
                    d + "ff_context.net.2": c + "mlp.fc2"})
    out = {"pos_embed": sd["pos_embed.pos_embed"]}
    for suf in ("weight", "bias"):
        for d, o in ren.items():
            if f"{d}.{suf}" in sd:
                out[f"{o}.{suf}"] = sd[f"{d}.{suf}"]
        for i in range(layers):
            d = f"transformer_blocks.{i}."
            out[f"joint_blocks.{i}.x_block.attn.qkv.{suf}"] = torch.cat([sd[f"{d}attn.to_{c}.{suf}"] for c in "qkv"])
            out[f"joint_blocks.{i}.context_block.attn.qkv.{suf}"] = torch.cat(
                [sd[f"{d}attn.add_{c}_proj.{suf}"] for c in "qkv"])
            ctx = sd[f"{d}norm1_context.linear.{suf}"]
            out[f"joint_blocks.{i}.context_block.adaLN_modulation.1.{suf}"] = swap(ctx) if i == layers - 1 else ctx
        out[f"final_layer.adaLN_modulation.1.{suf}"] = swap(sd[f"norm_out.linear.{suf}"])
    return out


def test_sd3_diffusers_lora_onto_mmdit_names_equals_diffusers_converter(tmp_path):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers as to_diffusers
    sd = save_model(tiny_sd3(), tmp_path / "sd3.safetensors")
    orig = sd3_original_names(sd)
    back = to_diffusers(dict(orig))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    save_file(orig, tmp_path / "sd3_mmdit.safetensors")
    lora, _ = peft_lora(sd, "transformer.", seed=800)             # every linear, split names
    on_orig = baked(str(tmp_path / "sd3_mmdit.safetensors"), lora, tmp_path / "l.safetensors")
    on_diff = baked(str(tmp_path / "sd3.safetensors"), lora, tmp_path / "l.safetensors")
    want = to_diffusers(dict(on_orig))
    for k in sd:
        torch.testing.assert_close(want[k], on_diff[k], rtol=0, atol=1e-5)
    assert not torch.equal(on_diff["transformer_blocks.1.norm1_context.linear.weight"],
                           sd["transformer_blocks.1.norm1_context.linear.weight"])


def test_sd3_kohya_mmdit_names_onto_diffusers(tmp_path):
    model = tiny_sd3()
    sd = save_model(model, tmp_path / "sd3.safetensors")
    lora = {}
    names = {"x": "lora_unet_joint_blocks_0_x_block_attn_qkv", "c": "lora_unet_joint_blocks_1_context_block_attn_qkv",
             "ada": "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1", "fc": "lora_unet_joint_blocks_0_x_block_mlp_fc2",
             "fin": "lora_unet_final_layer_adaLN_modulation_1"}
    lora.update(kohya(names["x"], 48, 16, 2, seed=1, alpha=1.0))
    lora.update(kohya(names["c"], 48, 16, 2, seed=3, alpha=2.0))
    lora.update(kohya(names["ada"], 32, 16, 2, seed=5))       # last block: (shift, scale), swapped by diffusers
    lora.update(kohya(names["fc"], 16, 64, 3, seed=7, alpha=1.5))
    lora.update(kohya(names["fin"], 32, 16, 2, seed=9))
    lora.update(kohya("lora_unet_transformer_blocks_1_attn_to_out_0", 16, 16, 2, seed=11))  # diffusers-named kohya
    got = baked(str(tmp_path / "sd3.safetensors"), lora, tmp_path / "l.safetensors", 0.7)
    m = 0.7
    d = {n: kohya_delta(lora, v) for n, v in names.items()}
    want = {}
    for j, c in enumerate("qkv"):
        want[f"transformer_blocks.0.attn.to_{c}.weight"] = d["x"][16 * j:16 * (j + 1)]
        want[f"transformer_blocks.1.attn.add_{c}_proj.weight"] = d["c"][16 * j:16 * (j + 1)]
    want["transformer_blocks.1.norm1_context.linear.weight"] = torch.cat([d["ada"][16:], d["ada"][:16]])
    want["norm_out.linear.weight"] = torch.cat([d["fin"][16:], d["fin"][:16]])
    want["transformer_blocks.0.ff.net.2.weight"] = d["fc"]
    want["transformer_blocks.1.attn.to_out.0.weight"] = kohya_delta(lora, "lora_unet_transformer_blocks_1_attn_to_out_0")
    assert model.transformer_blocks[1].context_pre_only
    for k, w in sd.items():
        torch.testing.assert_close(got[k], w + m * want[k] if k in want else w, rtol=0, atol=1e-5)


def tiny_wan():
    torch.manual_seed(2)
    return diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                           in_channels=4, out_channels=4, text_dim=12, freq_dim=8, ffn_dim=32,
                                           num_layers=2, rope_max_seq_len=32)


def test_wan_original_and_diffusers_names(tmp_path):
    model = tiny_wan()
    sd = save_model(model, tmp_path / "wan.safetensors")
    pairs = {"blocks.0.self_attn.q": "blocks.0.attn1.to_q", "blocks.1.cross_attn.o": "blocks.1.attn2.to_out.0",
             "blocks.1.ffn.0": "blocks.1.ffn.net.0.proj", "head.head": "proj_out",
             "text_embedding.0": "condition_embedder.text_embedder.linear_1"}
    lora, want = {}, {}
    for i, (orig, diff) in enumerate(pairs.items()):
        out, inp = sd[diff + ".weight"].shape
        name = "lora_unet_" + orig.replace(".", "_")                   # musubi-tuner / kohya: original Wan names
        lora.update(kohya(name, out, inp, 2, seed=20 + 2 * i, alpha=1.0))
        want[diff + ".weight"] = kohya_delta(lora, name)
    out, inp = sd["blocks.0.attn1.to_v.weight"].shape
    a, b = rnd(2, inp, seed=50), rnd(out, 2, seed=51)
    lora["diffusion_model.blocks.0.self_attn.v.lora_A.weight"], lora["diffusion_model.blocks.0.self_attn.v.lora_B.weight"] = a, b
    want["blocks.0.attn1.to_v.weight"] = b @ a
    got = baked(str(tmp_path / "wan.safetensors"), lora, tmp_path / "l.safetensors")
    for k, w in sd.items():
        torch.testing.assert_close(got[k], w + want[k] if k in want else w, rtol=0, atol=1e-5)
    # block weights use whatever ids the layout gives this model (here not Flux's D/S ids)
    layout = detect_layout(open_source(str(tmp_path / "wan.safetensors")))
    block1 = layout.group_of("blocks.1.attn2.to_out.0.weight")
    assert block1 != layout.group_of("blocks.0.attn1.to_q.weight")
    zero = baked(str(tmp_path / "wan.safetensors"), lora, tmp_path / "l.safetensors", blocks=f"{block1}=0")
    for k, w in sd.items():
        assert torch.equal(zero[k], w if layout.group_of(k) == block1 else got[k]), k


def test_wan_ai_toolkit_lora_equals_diffusers_conversion_and_fuse(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
    model = tiny_wan()
    sd = save_model(model, tmp_path / "wan.safetensors")
    lora = {}
    for i, orig in enumerate(("blocks.0.self_attn.q", "blocks.0.self_attn.k", "blocks.1.cross_attn.v", "blocks.1.ffn.2")):
        diff = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "cross_attn.v": "attn2.to_v",
                "ffn.2": "ffn.net.2"}[orig.split(".", 2)[2]]
        out, inp = sd[f"blocks.{orig.split('.')[1]}.{diff}.weight"].shape
        lora[f"diffusion_model.{orig}.lora_A.weight"] = rnd(2, inp, seed=60 + 2 * i)
        lora[f"diffusion_model.{orig}.lora_B.weight"] = rnd(out, 2, seed=61 + 2 * i)
    ours = baked(str(tmp_path / "wan.safetensors"), lora, tmp_path / "l.safetensors")
    converted = _convert_non_diffusers_wan_lora_to_diffusers({k: v.clone() for k, v in lora.items()})
    model.load_lora_adapter(dict(converted), adapter_name="w", prefix="transformer")
    model.fuse_lora(lora_scale=1.0)
    theirs = model.state_dict()
    for k in sd:
        got = theirs.get(k, theirs.get(k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")))
        torch.testing.assert_close(ours[k], got, rtol=0, atol=1e-5)


def test_qwen_image_kohya_and_diffusers_names(tmp_path):
    torch.manual_seed(3)
    model = diffusers.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                                  axes_dims_rope=(2, 2, 4))
    sd = save_model(model, tmp_path / "qwen.safetensors")
    lora, want = {}, {}
    for i, mod in enumerate(("transformer_blocks.0.attn.to_q", "transformer_blocks.1.img_mlp.net.0.proj",
                             "transformer_blocks.1.attn.add_k_proj")):
        out, inp = sd[mod + ".weight"].shape
        name = "lora_unet_" + mod.replace(".", "_")
        lora.update(kohya(name, out, inp, 2, seed=70 + 2 * i, alpha=3.0))
        want[mod + ".weight"] = kohya_delta(lora, name)
    mod = "transformer_blocks.1.img_mlp.net.2"
    out, inp = sd[mod + ".weight"].shape
    a, b = rnd(2, inp, seed=90), rnd(out, 2, seed=91)
    lora[f"transformer.{mod}.lora_A.weight"], lora[f"transformer.{mod}.lora_B.weight"] = a, b
    want[mod + ".weight"] = b @ a
    got = baked(str(tmp_path / "qwen.safetensors"), lora, tmp_path / "l.safetensors", 1.5)
    for k, w in sd.items():
        torch.testing.assert_close(got[k], w + 1.5 * want[k] if k in want else w, rtol=0, atol=1e-5)


# ---- lora convert: re-spelling a LoRA exactly --------------------------------------------------------------------


def test_convert_diffusers_flux_lora_to_kohya_bfl_and_back(flux, tmp_path):
    from studio.cli import main
    from studio.lora.convert import convert
    lora, _ = peft_lora(flux["sd"], "transformer.", seed=500)
    save_file(lora, tmp_path / "d.safetensors")
    assert main(["lora", "convert", str(tmp_path / "d.safetensors"), str(tmp_path / "k.safetensors"),
                 "--base", flux["bfl_path"]]) == 0
    k = load_file(tmp_path / "k.safetensors")
    # split q/k/v (rank 3 each) fused into one BFL module of rank 9; linear1 from q/k/v/proj_mlp: rank 12
    assert k["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (9, D)
    assert k["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape == (3 * D + 4 * D, 12)
    assert not any(n.startswith("lora_unet_transformer_blocks") for n in k)
    # the converted kohya LoRA bakes to the same BFL model as the original
    a = baked(flux["bfl_path"], lora, tmp_path / "x.safetensors", 0.9)
    b = baked(flux["bfl_path"], k, tmp_path / "y.safetensors", 0.9)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
    # back to diffusers names: the same diffusers model as the original LoRA baked there
    convert(str(tmp_path / "k.safetensors"), flux["diffusers"], tmp_path / "d2.safetensors", fmt="diffusers")
    d2 = load_file(tmp_path / "d2.safetensors")
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in d2
    c = baked(flux["diffusers"], lora, tmp_path / "x.safetensors", 0.9)
    e = baked(flux["diffusers"], d2, tmp_path / "y.safetensors", 0.9)
    for key in c:
        torch.testing.assert_close(e[key], c[key], rtol=0, atol=1e-5)


def test_convert_refuses_what_has_no_exact_low_rank_form(flux, tmp_path):
    from studio.lora.convert import convert
    n = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{n}.lokr_w1": rnd(3, 2, seed=1), f"{n}.lokr_w2": rnd(16, 8, seed=2)}, tmp_path / "l.safetensors")
    with pytest.raises(StudioError, match="not plain linear LoRAs"):
        convert(str(tmp_path / "l.safetensors"), flux["diffusers"], tmp_path / "o.safetensors")


def wan_original_names(sd: dict) -> dict:
    """The test's own diffusers → original Wan names (checked against diffusers' converter, original → diffusers)."""
    ren = [("condition_embedder.time_embedder.linear_", "time_embedding.L"),
           ("condition_embedder.text_embedder.linear_", "text_embedding.L"),
           ("condition_embedder.time_proj", "time_projection.1"), ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
           (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), ("ffn.net.0.proj", "ffn.0"),
           ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"), (".norm2.", ".norm3.")]
    out = {}
    for k, v in sd.items():
        n = k
        for a, b in ren:
            n = n.replace(a, b)
        n = n.replace("embedding.L1", "embedding.0").replace("embedding.L2", "embedding.2")
        n = "head.modulation" if n == "scale_shift_table" else n.replace(".scale_shift_table", ".modulation")
        out[n] = v
    return out


def test_wan_lora_onto_original_names_equals_diffusers_converter(tmp_path):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    sd = save_model(tiny_wan(), tmp_path / "wan.safetensors")
    orig = wan_original_names(sd)
    back = convert_wan_transformer_to_diffusers(dict(orig))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    save_file(orig, tmp_path / "wan_orig.safetensors")
    lora = {}
    for i, mod in enumerate(("blocks.0.attn1.to_q", "blocks.1.attn2.to_out.0", "blocks.1.ffn.net.2", "proj_out",
                             "condition_embedder.time_proj")):
        out, inp = sd[mod + ".weight"].shape
        lora[f"transformer.{mod}.lora_A.weight"] = rnd(2, inp, seed=600 + 2 * i)
        lora[f"transformer.{mod}.lora_B.weight"] = rnd(out, 2, seed=601 + 2 * i)
    lora.update(kohya("lora_unet_blocks_0_attn1_to_v", 16, 16, 2, seed=700, alpha=1.0))
    lora["lora_unet_blocks_1_norm2.w_norm"] = rnd(16, seed=710)      # diffusers norm2 is the original norm3
    on_orig = baked(str(tmp_path / "wan_orig.safetensors"), lora, tmp_path / "l.safetensors")
    on_diff = baked(str(tmp_path / "wan.safetensors"), lora, tmp_path / "l.safetensors")
    want = convert_wan_transformer_to_diffusers(dict(on_orig))
    changed = [k for k in sd if not torch.equal(on_diff[k], sd[k])]
    assert len(changed) == 7 and "blocks.1.norm2.weight" in changed
    for k in sd:
        torch.testing.assert_close(want[k], on_diff[k], rtol=0, atol=1e-5)


def test_sd3_lora_with_text_encoders_is_an_sd3_lora(tmp_path):
    """kohya SD3 LoRAs name CLIP-L/G and T5 lora_te1_/te2_/te3_ like SDXL and Flux do: the MMDiT names decide."""
    from studio.lora import detect_lora_family, read_lora
    lora = kohya("lora_unet_joint_blocks_0_x_block_attn_qkv", 48, 16, 2, seed=1)
    lora.update(kohya("lora_te3_encoder_block_0_layer_0_SelfAttention_q", 8, 8, 2, seed=2))
    lora.update(kohya("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 8, 8, 2, seed=3))
    save_file(lora, tmp_path / "l.safetensors")
    assert detect_lora_family(read_lora(open_source(str(tmp_path / "l.safetensors")))) == "sd3"


def test_dora_on_a_fused_module_splits_per_row(flux, tmp_path):
    """DoRA norms each output row (PEFT, LyCORIS wd_on_out), so a fused qkv DoRA on split q/k/v targets is exact:
    the diffusers bake equals diffusers' converter run on the BFL bake. Per-column magnitudes are refused."""
    n = "lora_unet_double_blocks_1_txt_attn_qkv"
    lora = kohya(n, 48, 16, 2, seed=900, alpha=1.0)
    lora[f"{n}.dora_scale"] = rnd(48, 1, seed=901).abs() + 0.5
    on_bfl = baked(flux["bfl_path"], lora, tmp_path / "d.safetensors", 0.6)
    on_diff = baked(flux["diffusers"], lora, tmp_path / "d.safetensors", 0.6)
    want = bfl_to_diffusers(on_bfl)
    for k in want:
        torch.testing.assert_close(on_diff[k], want[k], rtol=0, atol=1e-5)
    assert not torch.equal(on_diff["transformer_blocks.1.attn.add_v_proj.weight"],
                           flux["sd"]["transformer_blocks.1.attn.add_v_proj.weight"])
    lora[f"{n}.dora_scale"] = rnd(1, 16, seed=902).abs() + 0.5
    save_file(lora, tmp_path / "c.safetensors")
    with pytest.raises(StudioError, match="per-column"):
        apply_lora_source(open_source(flux["diffusers"]), open_source(str(tmp_path / "c.safetensors")))


def test_flux_named_loras_are_not_refused_by_family_on_flux_derived_dits():
    from studio.lora.apply import check_family
    from studio.lora.network import read_lora
    from studio.sources import DictSource

    net = read_lora(DictSource({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
                                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(24, 2)}))
    for family in ("flux", "chroma", "flux2", "qwen-image", "wan"):  # Chroma's and Flux.2's LoRAs use Flux.1's names
        check_family(net, None, family)
    with pytest.raises(StudioError, match=r"made for Flux\.1 but the model is SDXL"):
        check_family(net, None, "sdxl")


def test_extract_from_a_bfl_flux_names_every_denoiser_module_as_kohya_does(tmp_path):
    from studio.lora.extract import extract
    from studio.sd.synth import bfl_flux_table

    table = bfl_flux_table(double=1, single=1, width=32, prefix="")
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        save_file({k: torch.randn(s, generator=g) for k, (s, _) in table.items()}, tmp_path / f"f{seed}.safetensors")
    extract(str(tmp_path / "f1.safetensors"), str(tmp_path / "f2.safetensors"), tmp_path / "x.safetensors", rank=4)
    modules = {k.split(".")[0] for k in load_file(tmp_path / "x.safetensors")}
    # time_in, vector_in, guidance_in sit outside the blocks: kohya's Flux LoRAs still call them lora_unet_
    assert {"lora_unet_time_in_in_layer", "lora_unet_vector_in_out_layer", "lora_unet_guidance_in_in_layer"} <= modules
    assert all(m.startswith("lora_unet_") for m in modules)
