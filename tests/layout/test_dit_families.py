"""DiT families (studio/layout/dit.py): tiny diffusers transformers built here (their key names are the real ones) and
tables of the original single-file names (BFL, Stability, Wan, Lumina repositories; shapes tiny except where detection
reads them). Checked: the family detected, groups in forward order, each key in exactly one group, block counts; a
per-block gradient merge through the CLI against its closed form, loaded back with the diffusers class; inspect."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main
from studio.describe import describe
from studio.layout import detect_layout
from studio.layout.dit import DiTLayout
from studio.layout.inferred import InferredLayout, infer_layout
from studio.layout.sd import FluxBlockLayout, detect_family, diffusion_family
from studio.layout.sd_keys import UNET_PREFIX
from studio.sd.synth import bfl_flux_table
from studio.sources import DictSource, open_source

diffusers = pytest.importorskip("diffusers")

ROPE3 = (2, 2, 4)


def build(name: str, **over):
    """A tiny diffusers transformer of family ``name`` (real key names, small widths, 2–3 blocks per stack)."""
    d = diffusers
    configs = {
        "flux": (d.FluxTransformer2DModel, dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
                                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                                 pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=ROPE3)),
        "chroma": (d.ChromaTransformer2DModel, dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=3,
                                                     attention_head_dim=8, num_attention_heads=2,
                                                     joint_attention_dim=16, axes_dims_rope=ROPE3,
                                                     approximator_num_channels=8, approximator_hidden_dim=16,
                                                     approximator_layers=2)),
        "flux2": (d.Flux2Transformer2DModel, dict(patch_size=1, in_channels=8, num_layers=2, num_single_layers=3,
                                                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                                   timestep_guidance_channels=8, axes_dims_rope=(2, 2, 2, 2))),
        "sd3": (d.SD3Transformer2DModel, dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3,
                                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                               caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
                                               pos_embed_max_size=8)),
        "qwen": (d.QwenImageTransformer2DModel, dict(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
                                                      attention_head_dim=8, num_attention_heads=2,
                                                      joint_attention_dim=16, axes_dims_rope=ROPE3)),
        "wan": (d.WanTransformer3DModel, dict(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                               out_channels=4, text_dim=16, freq_dim=8, ffn_dim=16, num_layers=3)),
        "hidream": (d.HiDreamImageTransformer2DModel, dict(patch_size=2, in_channels=4, num_layers=2,
                                                            num_single_layers=3, attention_head_dim=8,
                                                            num_attention_heads=2, caption_channels=[8, 8],
                                                            text_emb_dim=8, num_routed_experts=2,
                                                            num_activated_experts=1, axes_dims_rope=(4, 4),
                                                            llama_layers=[0, 1, 2, 3])),
        "lumina": (d.Lumina2Transformer2DModel, dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=16,
                                                      num_layers=3, num_refiner_layers=2, num_attention_heads=2,
                                                      num_kv_heads=1, multiple_of=8, axes_dim_rope=ROPE3,
                                                      axes_lens=(8, 8, 8), cap_feat_dim=8)),
        "zimage": (d.ZImageTransformer2DModel, dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16,
                                                     n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                                     cap_feat_dim=8, axes_dims=[2, 2, 4], axes_lens=[8, 8, 8])),
    }
    cls, cfg = configs[name]
    return cls(**{**cfg, **over})


def meta_state(name: str, **over) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(build(name, **over).state_dict())


# family → (detected family, [(block letter, stack name, blocks)] in forward order, OUT name starts)
FLUX_OUT = ("norm_out.", "proj_out.")
DIFFUSERS = {
    "flux": ("flux-dev", [("D", "transformer_blocks", 2), ("S", "single_transformer_blocks", 3)], FLUX_OUT),
    "chroma": ("chroma", [("D", "transformer_blocks", 2), ("S", "single_transformer_blocks", 3)], FLUX_OUT),
    "flux2": ("flux2", [("D", "transformer_blocks", 2), ("S", "single_transformer_blocks", 3)], FLUX_OUT),
    "sd3": ("sd3", [("J", "transformer_blocks", 3)], FLUX_OUT),
    "qwen": ("qwen-image", [("B", "transformer_blocks", 3)], FLUX_OUT),
    "wan": ("wan", [("B", "blocks", 3)], ("proj_out.", "scale_shift_table")),
    "hidream": ("hidream", [("D", "double_stream_blocks", 2), ("S", "single_stream_blocks", 3)], ("final_layer.",)),
    "lumina": ("lumina2", [("N", "noise_refiner", 2), ("C", "context_refiner", 2), ("L", "layers", 3)],
               ("norm_out.",)),
    "zimage": ("z-image", [("N", "noise_refiner", 1), ("C", "context_refiner", 1), ("L", "layers", 2)],
               ("all_final_layer.",)),
}


def source_of(state: dict) -> DictSource:
    return DictSource({k: torch.empty(v.shape, device="meta") for k, v in state.items()})


def assert_layout(src, family: str, runs, out_starts, prefix: str = ""):
    """The family, groups IN + each run's blocks + OUT, every key in exactly one group, each block exactly the keys of
    its stack index, OUT exactly the final layer, positions i / (G − 1)."""
    keys = src.keys()
    assert detect_family(src) == family and diffusion_family(src) == family
    layout = detect_layout(src)
    assert isinstance(layout, DiTLayout) and layout.name == f"{family}-blocks"
    expected = ["IN"] + [f"{letter}{i:02d}" for letter, _, n in runs for i in range(n)] + ["OUT"]
    assert layout.groups == expected
    groups = layout.group_keys(keys)
    assert set(groups) == set(expected) and all(groups[g] for g in expected)
    assert sorted(k for ks in groups.values() for k in ks) == sorted(keys)
    for letter, stack, n in runs:
        for i in range(n):
            assert groups[f"{letter}{i:02d}"] == [k for k in keys if k.startswith(f"{prefix}{stack}.{i}.")]
    assert sorted(groups["OUT"]) == sorted(k for k in keys if k[len(prefix):].startswith(out_starts))
    G = len(expected)
    assert [layout.group_position(g) for g in expected] == pytest.approx([i / (G - 1) for i in range(G)])
    return layout, groups


@pytest.mark.parametrize("prefix", ["", "transformer.", UNET_PREFIX])
@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_diffusers_transformers(name, prefix):
    family, runs, out = DIFFUSERS[name]
    state = {prefix + k: v for k, v in meta_state(name).items()}
    src = source_of(state)
    if name == "flux" and prefix:
        # a prefixed Flux.1 keeps the hand-written 61-id table (CLIP, T5 and VAE slots included)
        assert detect_family(src) == family and isinstance(detect_layout(src), FluxBlockLayout)
        return
    assert_layout(src, family, runs, out, prefix)


@pytest.mark.parametrize("name", ["flux", "flux2", "qwen", "hidream", "sd3"])
def test_where_key_names_suffice_the_family_layout_is_the_inferred_one(name):
    """The same partition as the layout inferred from key names (SD3: under J ids where inference says B);
    bare diffusers Flux.1 also as the hand-written table's blocks."""
    state = meta_state(name)
    src = source_of(state)
    ours, inferred = detect_layout(src).group_keys(src.keys()), infer_layout(src.keys()).group_keys(src.keys())
    assert sorted(ours.values()) == sorted(inferred.values())
    if name != "sd3":
        assert ours == inferred
    if name == "flux":
        hand = FluxBlockLayout("flux-dev", "diffusers", "", 2, 3).group_keys(src.keys())
        assert ours == {g: ks for g, ks in hand.items() if ks}


def test_chroma_approximator_stays_in_the_inputs():
    src = source_of(meta_state("chroma"))
    groups = detect_layout(src).group_keys(src.keys())
    approx = [k for k in src.keys() if k.startswith("distilled_guidance_layer.")]
    assert approx and set(approx) <= set(groups["IN"])
    # inference alone would have made the approximator's layers blocks of their own
    assert len(infer_layout(src.keys()).groups) > len(detect_layout(src).groups)


# ------------------------------------------------------------------------------------------ original names
def lin(t: dict, name: str, out_f: int = 4, in_f: int = 4, bias: bool = True):
    t[name + ".weight"] = (out_f, in_f)
    if bias:
        t[name + ".bias"] = (out_f,)


def chroma_bfl(double=2, single=3) -> dict:
    t = {k: s for k, (s, _) in bfl_flux_table(double=double, single=single, width=8, prefix="").items()
         if not k.startswith(("vector_in.", "guidance_in.", "final_layer.adaLN")) and "mod" not in k}
    lin(t, "distilled_guidance_layer.in_proj")
    lin(t, "distilled_guidance_layer.out_proj")
    for j in range(2):
        lin(t, f"distilled_guidance_layer.layers.{j}.in_layer")
        lin(t, f"distilled_guidance_layer.layers.{j}.out_layer")
        t[f"distilled_guidance_layer.norms.{j}.scale"] = (4,)
    return t


def flux2_bfl(double=2, single=3) -> dict:
    t = {k: s for k, (s, _) in bfl_flux_table(double=double, single=single, width=8, prefix="").items()
         if not k.startswith("vector_in.") and "mod" not in k and not k.endswith(".bias")}
    for name in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
        lin(t, name + ".lin", bias=False)
    return t


def sd3_original(blocks=3, mmdit_x=False) -> dict:
    t = {"pos_embed": (1, 16, 4)}
    lin(t, "x_embedder.proj")
    lin(t, "context_embedder")
    for emb in ("t_embedder", "y_embedder"):
        lin(t, f"{emb}.mlp.0")
        lin(t, f"{emb}.mlp.2")
    for i in range(blocks):
        for side in ("x_block", "context_block"):
            b = f"joint_blocks.{i}.{side}."
            for m in ("adaLN_modulation.1", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                lin(t, b + m)
            if mmdit_x and side == "x_block":
                lin(t, b + "attn2.qkv")
    lin(t, "final_layer.linear")
    lin(t, "final_layer.adaLN_modulation.1")
    return t


def wan_original(blocks=3, dim=8, in_ch=16, image=False) -> dict:
    t = {"patch_embedding.weight": (dim, in_ch, 1, 2, 2), "patch_embedding.bias": (dim,), "head.modulation": (1, 2, 4)}
    for m in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
              "head.head"):
        lin(t, m)
    if image:
        for j in (0, 1, 3, 4):
            lin(t, f"img_emb.proj.{j}")
    for i in range(blocks):
        b = f"blocks.{i}."
        t[b + "modulation"] = (1, 6, 4)
        for attn in ("self_attn", "cross_attn"):
            for m in "qkvo":
                lin(t, f"{b}{attn}.{m}")
            t[f"{b}{attn}.norm_q.weight"] = t[f"{b}{attn}.norm_k.weight"] = (4,)
        if image:
            lin(t, b + "cross_attn.k_img")
            lin(t, b + "cross_attn.v_img")
            t[b + "cross_attn.norm_k_img.weight"] = (4,)
        lin(t, b + "norm3")
        lin(t, b + "ffn.0")
        lin(t, b + "ffn.2")
    return t


def lumina_original(refiners=2, layers=3) -> dict:
    t = {"norm_final.weight": (4,)}
    for m in ("x_embedder", "cap_embedder.1", "t_embedder.mlp.0", "t_embedder.mlp.2", "final_layer.linear",
              "final_layer.adaLN_modulation.1"):
        lin(t, m)
    t["cap_embedder.0.weight"] = (4,)
    for stack, n in (("noise_refiner", refiners), ("context_refiner", refiners), ("layers", layers)):
        for i in range(n):
            b = f"{stack}.{i}."
            for m in ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
                lin(t, b + m, bias=False)
            for m in ("attention.q_norm", "attention.k_norm", "attention_norm1", "attention_norm2", "ffn_norm1",
                      "ffn_norm2"):
                t[b + m + ".weight"] = (4,)
            if stack != "context_refiner":
                lin(t, b + "adaLN_modulation.1")
    return t


BFL_DS = [("D", "double_blocks", 2), ("S", "single_blocks", 3)]
ORIGINAL = {
    "chroma": (chroma_bfl, "chroma", BFL_DS, ("final_layer.",)),
    "flux2": (flux2_bfl, "flux2", BFL_DS, ("final_layer.",)),
    "sd3": (sd3_original, "sd3", [("J", "joint_blocks", 3)], ("final_layer.",)),
    "sd3.5-medium": (lambda: sd3_original(mmdit_x=True), "sd3.5-medium", [("J", "joint_blocks", 3)],
                     ("final_layer.",)),
    "sd3.5-large": (lambda: sd3_original(blocks=38), "sd3.5-large", [("J", "joint_blocks", 38)], ("final_layer.",)),
    "wan2.1-1.3B": (lambda: wan_original(dim=1536), "wan2.1", [("B", "blocks", 3)], ("head.",)),
    "wan2.1-i2v": (lambda: wan_original(in_ch=36, image=True), "wan2.1", [("B", "blocks", 3)], ("head.",)),
    "wan2.2-5B": (lambda: wan_original(in_ch=48), "wan2.2", [("B", "blocks", 3)], ("head.",)),
    "wan2.2-i2v": (lambda: wan_original(in_ch=36), "wan2.2", [("B", "blocks", 3)], ("head.",)),
    "wan-14B-t2v": (lambda: wan_original(dim=5120), "wan", [("B", "blocks", 3)], ("head.",)),
    "lumina2": (lumina_original, "lumina2", [("N", "noise_refiner", 2), ("C", "context_refiner", 2),
                                             ("L", "layers", 3)], ("final_layer.", "norm_final.")),
}


@pytest.mark.parametrize("prefix", ["", UNET_PREFIX])
@pytest.mark.parametrize("name", list(ORIGINAL))
def test_original_single_file_names(name, prefix):
    make, family, runs, out = ORIGINAL[name]
    # as a safetensors file stores them: sorted (final_layer before the blocks, double before single)
    table = {prefix + k: s for k, s in sorted(make().items())}
    assert_layout(DictSource({k: torch.empty(s, device="meta") for k, s in table.items()}), family, runs, out, prefix)


@pytest.mark.parametrize("name", ["qwen", "hidream"])
def test_qwen_image_and_hidream_keep_their_diffusers_names_in_comfyui_files(name):
    """Their original checkpoints use the diffusers names (diffusers' converters only strip ComfyUI's prefix)."""
    family, runs, out = DIFFUSERS[name]
    state = {UNET_PREFIX + k: v for k, v in sorted(meta_state(name).items())}
    assert_layout(source_of(state), family, runs, out, UNET_PREFIX)


def test_diffusers_wan_variants_from_shapes():
    assert detect_family(source_of(meta_state("wan", in_channels=48))) == "wan2.2"
    assert detect_family(source_of(meta_state("wan", in_channels=36))) == "wan2.2"
    assert detect_family(source_of(meta_state("wan", in_channels=36, image_dim=12, added_kv_proj_dim=16))) == "wan2.1"
    assert detect_family(source_of(meta_state("wan"))) == "wan"


def test_a_whole_single_file_keeps_text_encoders_and_vae_out_of_gradient_positions():
    table = {UNET_PREFIX + k: s for k, s in sd3_original().items()}
    table["text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight"] = (4, 4)
    table["first_stage_model.decoder.conv_in.weight"] = (4, 4, 3, 3)
    src = DictSource({k: torch.empty(s, device="meta") for k, s in table.items()})
    layout = detect_layout(src)
    assert layout.groups == ["IN", "J00", "J01", "J02", "OUT", "TE", "VAE"]
    groups = layout.group_keys(src.keys())
    assert groups["TE"] == ["text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight"]
    assert groups["VAE"] == ["first_stage_model.decoder.conv_in.weight"]
    assert [layout.group_position(g) for g in layout.groups] == [0, 0.25, 0.5, 0.75, 1, 0, 0]


def unknown_dit_table(prefix: str) -> dict:
    t = {}
    lin(t, prefix + "patchify_proj")
    lin(t, prefix + "adaln_single.linear")
    for i in range(3):
        lin(t, f"{prefix}transformer_blocks.{i}.attn1.to_q")
        lin(t, f"{prefix}transformer_blocks.{i}.ff.net.0.proj")
    lin(t, prefix + "proj_out")
    return t


@pytest.mark.parametrize("prefix", ["transformer.", UNET_PREFIX])
def test_an_unknown_dit_merges_with_the_inferred_layout_and_says_so(prefix):
    src = DictSource({k: torch.empty(s, device="meta") for k, s in unknown_dit_table(prefix).items()})
    assert detect_family(src) == "dit" and describe(src)["family"] == "dit"
    layout = detect_layout(src)
    assert isinstance(layout, InferredLayout) and layout.name == "unknown-dit-inferred"
    assert layout.description.startswith("unknown DiT, layout inferred")
    assert layout.groups == ["IN", "B00", "B01", "B02", "OUT"]
    assert layout.group_keys(src.keys())["OUT"] == [prefix + "proj_out.weight", prefix + "proj_out.bias"]


def test_bare_unknown_names_are_no_diffusion_family():
    src = DictSource({k: torch.empty(s, device="meta") for k, s in unknown_dit_table("").items()})
    assert diffusion_family(src) is None
    assert detect_layout(src).name == "inferred"


# ------------------------------------------------------------------------------------------ merges
MERGED = ["qwen", "wan", "sd3", "flux2", "chroma", "hidream", "lumina", "flux"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    made = {}

    def make(name):
        if name not in made:
            d = tmp_path_factory.mktemp(name)
            for seed in (1, 2):
                torch.manual_seed(seed)
                build(name).save_pretrained(str(d / f"m{seed}"))
            made[name] = d
        return made[name]

    torch.set_num_threads(1)
    return make


@pytest.mark.parametrize("name", MERGED)
def test_per_block_gradient_merge_closed_form_and_from_pretrained(name, saved, tmp_path):
    d = saved(name)
    (tmp_path / "r.yaml").write_text(
        f"merge_method: linear\nmodels:\n  - model: {d / 'm1'}\n    parameters: {{weight: [1.0, 0.0]}}\n"
        f"  - model: {d / 'm2'}\n    parameters: {{weight: [0.0, 1.0]}}\n")
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out")]) == 0
    a, b = open_source(str(d / "m1")), open_source(str(d / "m2"))
    layout = detect_layout(a)
    family = DIFFUSERS[name][0]
    assert isinstance(layout, DiTLayout) and layout.family == family
    G = len(layout.groups)
    cls = type(build(name))
    loaded = cls.from_pretrained(str(tmp_path / "out")).state_dict()
    assert set(loaded) == set(a.keys())
    blocks_seen = set()
    for k in a.keys():
        g = layout.group_of(k)
        t = layout.groups.index(g) / (G - 1)  # the gradient [1, 0] / [0, 1] at the block's position
        want = (1 - t) * a.get(k) + t * b.get(k)
        torch.testing.assert_close(loaded[k], want, rtol=1e-6, atol=1e-6, msg=k)
        blocks_seen.add(g)
    assert blocks_seen == set(layout.groups)
    # the ends are the models themselves: IN from the first, OUT from the second
    k_in = next(k for k in a.keys() if layout.group_of(k) == "IN" and a.get(k).abs().sum() > 0)
    k_out = next(k for k in a.keys() if layout.group_of(k) == "OUT" and b.get(k).abs().sum() > 0)
    assert torch.equal(loaded[k_in], a.get(k_in)) and torch.equal(loaded[k_out], b.get(k_out))


def test_inspect_prints_the_family_and_block_map(saved, capsys):
    d = saved("qwen")
    assert main(["inspect", str(d / "m1"), "--blocks"]) == 0
    out = capsys.readouterr().out
    assert "architecture QwenImageTransformer2DModel · family qwen-image" in out
    assert "layout qwen-image-blocks (5 groups)" in out
    src = open_source(str(d / "m1"))
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("    ")}
    assert list(rows) == ["IN", "B00", "B01", "B02", "OUT"]
    b01 = [k for k in src.keys() if k.startswith("transformer_blocks.1.")]
    assert rows["B01"][1:4] == ["block", "1", str(len(b01))]


@pytest.mark.parametrize("name", ["sd3", "wan2.2-5B", "lumina2"])
def test_original_single_files_merge_per_block_into_one_file(name, tmp_path):
    make, family, runs, _ = ORIGINAL[name]
    paths = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        paths.append(tmp_path / f"m{seed}.safetensors")
        save_file({UNET_PREFIX + k: torch.randn(s, generator=g) for k, s in make().items()}, str(paths[-1]))
    (tmp_path / "r.yaml").write_text(
        f"merge_method: linear\nmodels:\n  - model: {paths[0]}\n    parameters: {{weight: [1.0, 0.0]}}\n"
        f"  - model: {paths[1]}\n    parameters: {{weight: [0.0, 1.0]}}\n")
    assert main(["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out.safetensors")]) == 0
    a, b, out = (open_source(str(p)) for p in (*paths, tmp_path / "out.safetensors"))
    assert detect_family(out) == family and out.keys() == a.keys()
    layout = detect_layout(a)
    G = len(layout.groups)
    for k in a.keys():
        t = layout.groups.index(layout.group_of(k)) / (G - 1)
        torch.testing.assert_close(out.get(k), (1 - t) * a.get(k) + t * b.get(k), rtol=1e-6, atol=1e-6, msg=k)
    # modelspec: SD3's architecture; no one training resolution for a video model
    assert out.metadata.get("modelspec.architecture") == ("stable-diffusion-3-medium" if name == "sd3" else None)
    assert out.metadata.get("modelspec.resolution") == (None if family.startswith("wan") else "1024x1024")
