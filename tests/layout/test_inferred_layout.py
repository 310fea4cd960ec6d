"""Layouts inferred from key names: tiny diffusers / transformers models built here, checked against the hand-written
Flux and SD1 tables."""

from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main
from studio.describe import human_count
from studio.layout import LayerStackLayout, detect_layout
from studio.layout.inferred import InferredLayout, block_map, infer_layout
from studio.layout.sd import FluxBlockLayout, SDBlockLayout
from studio.layout.sd_keys import UNET_PREFIX
from studio.sd.synth import bfl_flux_table
from studio.sources import DictSource

N_DOUBLE, N_SINGLE = 2, 3


def meta_state(module) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def flux_diffusers_keys():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=N_DOUBLE, num_single_layers=N_SINGLE, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True,
            axes_dims_rope=(2, 2, 4))
    return list(model.state_dict())


def bfl_keys(prefix=""):
    # as a safetensors file stores them: sorted, so final_layer comes before img_in and double before single
    return sorted(bfl_flux_table(double=N_DOUBLE, single=N_SINGLE, width=8, prefix=prefix))


def assert_partition_in_forward_order(layout, keys, runs):
    """Every key in exactly one of the layout's groups; groups = IN, each run's blocks by index, OUT; positions
    i / (G − 1). ``runs``: [(letter, n_blocks, key prefix of block i)] in forward order."""
    groups = layout.group_keys(keys)
    assert set(groups) == set(layout.groups) and all(groups[g] for g in layout.groups)
    assert sorted(k for ks in groups.values() for k in ks) == sorted(keys)
    expected = ["IN"] + [f"{letter}{i:02d}" for letter, n, _ in runs for i in range(n)] + ["OUT"]
    assert layout.groups == expected
    for letter, n, block_prefix in runs:
        for i in range(n):
            assert groups[f"{letter}{i:02d}"] == [k for k in keys if k.startswith(block_prefix.format(i))]
    G = len(expected)
    assert [layout.group_position(g) for g in layout.groups] == pytest.approx([i / (G - 1) for i in range(G)])
    return groups


def test_diffusers_flux(flux_diffusers_keys):
    keys = flux_diffusers_keys
    layout = infer_layout(keys)
    groups = assert_partition_in_forward_order(layout, keys, [("D", N_DOUBLE, "transformer_blocks.{}."),
                                                              ("S", N_SINGLE, "single_transformer_blocks.{}.")])
    assert sorted(groups["OUT"]) == sorted(k for k in keys if k.startswith(("norm_out.", "proj_out.")))
    assert "x_embedder.weight" in groups["IN"] and "context_embedder.weight" in groups["IN"]
    # nothing above recognises a bare diffusers Flux transformer, so the inferred layout is what a merge uses
    assert isinstance(detect_layout(DictSource({k: torch.empty(1, device="meta") for k in keys})), InferredLayout)


@pytest.mark.parametrize("prefix", ["", UNET_PREFIX])
def test_bfl_flux_sorted_keys(prefix):
    keys = bfl_keys(prefix)
    layout = infer_layout(keys)
    groups = assert_partition_in_forward_order(layout, keys, [("D", N_DOUBLE, prefix + "double_blocks.{}."),
                                                              ("S", N_SINGLE, prefix + "single_blocks.{}.")])
    assert groups["OUT"] == [k for k in keys if k.startswith(prefix + "final_layer.")]


def test_sd3_joint_blocks():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
            pos_embed_max_size=8)
    keys = list(model.state_dict())
    layout = infer_layout(keys)
    groups = assert_partition_in_forward_order(layout, keys, [("B", 3, "transformer_blocks.{}.")])
    # each joint block holds both streams (image and context) of its layer
    assert any(".attn.add_q_proj." in k for k in groups["B02"]) and any(".attn.to_q." in k for k in groups["B02"])
    assert sorted(groups["OUT"]) == sorted(k for k in keys if k.startswith(("norm_out.", "proj_out.")))


def mixtral_config():
    transformers = pytest.importorskip("transformers")
    return transformers.MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                      num_experts_per_tok=2)


def test_mixtral_experts_stay_in_their_layer():
    transformers = pytest.importorskip("transformers")
    cfg = mixtral_config()
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM(cfg)
    keys = list(model.state_dict())
    # hub checkpoints store one tensor per expert (`block_sparse_moe.experts.j.w1`): the layer stack as transformers
    # names it, plus those per-expert names built from the same config
    expert_keys = [f"model.layers.{i}.block_sparse_moe.experts.{j}.{w}.weight" for i in range(cfg.num_hidden_layers)
                   for j in range(cfg.num_local_experts) for w in ("w1", "w2", "w3")]
    for ks in (keys, [k for k in keys if ".mlp.experts." not in k] + expert_keys):
        layout = infer_layout(ks)
        groups = assert_partition_in_forward_order(layout, ks, [("B", cfg.num_hidden_layers, "model.layers.{}.")])
        assert groups["IN"] == ["model.embed_tokens.weight"]
        assert sorted(groups["OUT"]) == ["lm_head.weight", "model.norm.weight"]
    experts = [k for k in groups["B01"] if ".experts." in k]
    assert len(experts) == 3 * cfg.num_local_experts and all(k.startswith("model.layers.1.") for k in experts)
    # an LLM keeps the layer-stack layout it had before the inferred detector existed
    assert isinstance(detect_layout(DictSource({k: torch.empty(1, device="meta") for k in keys})), LayerStackLayout)


def nonempty_partition(layout, keys):
    return {g: ks for g, ks in layout.group_keys(keys).items() if ks}


def test_agrees_with_the_hand_written_flux_table(flux_diffusers_keys):
    for keys, hand in ((flux_diffusers_keys, FluxBlockLayout("flux-dev", "diffusers", "", N_DOUBLE, N_SINGLE)),
                       (bfl_keys(UNET_PREFIX), FluxBlockLayout("flux-dev", "ldm", UNET_PREFIX, N_DOUBLE, N_SINGLE))):
        inferred = infer_layout(keys)
        hand_groups = nonempty_partition(hand, keys)
        # the same partition under the same ids, in the same order (the table's empty CLIP/T5/VAE slots aside)
        assert nonempty_partition(inferred, keys) == hand_groups
        assert inferred.groups == [g for g in hand.groups if g in hand_groups]


def test_runs_agree_with_the_sd1_table(ldm_tables):
    """SD1 (ldm names, text encoder + UNet + VAE). What is asserted:
    * the inferred runs are input_blocks ×12 then output_blocks ×12 (in that order), then the text encoder's layers;
    * each SD block IN01…IN11 and OUT00…OUT10 is exactly one inferred group (I01…I11, O00…O10);
    * IN00 = I00 + time_embed.* (inferred puts those in IN), OUT11 = O11 + out.* (inferred: OUT);
    * every inferred block group lies inside one SD group (text encoder layers inside BASE).
    Not asserted: the middle block and the VAE, which are not runs (they land in IN / OUT by name)."""
    keys = list(ldm_tables["sd1"])
    inferred, hand = infer_layout(keys), SDBlockLayout("sd1", "ldm", UNET_PREFIX)
    assert [r.prefix for r in inferred.runs] == [UNET_PREFIX + "input_blocks", UNET_PREFIX + "output_blocks",
                                                 "cond_stage_model.transformer.text_model.encoder.layers"]
    ours, theirs = inferred.group_keys(keys), hand.group_keys(keys)
    block_groups = [g for g in inferred.groups if g not in ("IN", "OUT")]
    assert block_groups[:24] == [f"I{i:02d}" for i in range(12)] + [f"O{i:02d}" for i in range(12)]
    for i in range(1, 12):
        assert theirs[f"IN{i:02d}"] == ours[f"I{i:02d}"]
        assert theirs[f"OUT{i - 1:02d}"] == ours[f"O{i - 1:02d}"]
    unet = lambda part: [k for k in keys if k.startswith(UNET_PREFIX + part)]  # noqa: E731
    assert sorted(theirs["IN00"]) == sorted(ours["I00"] + unet("time_embed."))
    assert set(unet("time_embed.")) <= set(ours["IN"])
    assert sorted(theirs["OUT11"]) == sorted(ours["O11"] + unet("out."))
    assert set(unet("out.")) <= set(ours["OUT"])
    for g in block_groups:
        assert len(collections.Counter(hand.group_of(k) for k in ours[g])) == 1, g


def test_block_map_counts():
    src = DictSource({k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in
                      bfl_flux_table(double=N_DOUBLE, single=N_SINGLE, width=8, prefix="").items()})
    rows = block_map(infer_layout(src.keys()), src)
    assert [r.group for r in rows] == infer_layout(src.keys()).groups
    assert sum(r.params for r in rows) == src.num_parameters and sum(r.tensors for r in rows) == len(src)
    d1 = next(r for r in rows if r.group == "D01")
    assert d1.params == sum(src.info(k).numel for k in src.keys() if k.startswith("double_blocks.1."))
    assert all(k.startswith("double_blocks.1.") for k in d1.examples) and len(d1.examples) == 3


def test_inspect_blocks_prints_the_map(tmp_path, capsys):
    table = bfl_flux_table(double=N_DOUBLE, single=N_SINGLE, width=8, prefix="")
    path = tmp_path / "dit.safetensors"
    # bare BFL names without the Flux marker keys (no qk norms): an unknown DiT to the family detector
    save_file({k: torch.zeros(s) for k, (s, _) in table.items() if "norm" not in k}, str(path))
    assert main(["inspect", str(path), "--blocks"]) == 0
    out = capsys.readouterr().out
    s02 = [k for k in sorted(table) if k.startswith("single_blocks.2.") and "norm" not in k]
    n = sum(torch.Size(table[k][0]).numel() for k in s02)
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("S02 "))
    assert line.split() == ["S02", "single_blocks", "2", str(len(s02)), "tensors", human_count(n), "params",
                            *(k + "," for k in s02[:2]), s02[2]]


def unknown_dit(path, seed):
    """Bare BFL names without the Flux marker keys (no qk norms): a DiT no family table knows."""
    g = torch.Generator().manual_seed(seed)
    table = bfl_flux_table(double=N_DOUBLE, single=N_SINGLE, width=8, prefix="")
    save_file({k: torch.randn(s, generator=g) for k, (s, _) in sorted(table.items()) if "norm" not in k}, str(path))


def test_presets_apply_by_depth_on_an_inferred_layout(tmp_path, capsys):
    from safetensors.torch import load_file

    unknown_dit(tmp_path / "a.safetensors", 1)
    unknown_dit(tmp_path / "b.safetensors", 2)
    (tmp_path / "r.yml").write_text(f"merge_method: linear\nmodels:\n  - model: {tmp_path / 'a.safetensors'}\n"
                                    f"    parameters: {{weight: GRAD_V}}\n  - model: {tmp_path / 'b.safetensors'}\n"
                                    "    parameters: {weight: 1.0}\n")
    assert main(["merge", str(tmp_path / "r.yml"), str(tmp_path / "out.safetensors"), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    # the coverage report: the layout named, every group with its tensors, adding up to the whole model
    assert "layout: inferred from key names: double_blocks × 2, single_blocks × 3" in dry
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    layout = infer_layout(sorted(a))
    counts = {g: len(ks) for g, ks in layout.group_keys(sorted(a)).items()}
    for g in layout.groups:
        assert f"{g:>8}: {counts[g]:5d} tensors ({counts[g]} merged)" in dry
    assert main(["merge", str(tmp_path / "r.yml"), str(tmp_path / "out.safetensors"), "--quiet"]) == 0
    out = load_file(tmp_path / "out.safetensors")
    G = len(layout.groups)
    for k in a:
        d = layout.groups.index(layout.group_of(k)) / (G - 1)
        w = abs(1 - 2 * d)  # GRAD_V by depth: IN and OUT 1, the middle block 0
        torch.testing.assert_close(out[k], (w * a[k] + b[k]) / (w + 1), rtol=1e-6, atol=1e-6)


def test_diagnostics_per_inferred_block(tmp_path, capsys):
    """analyze on an unknown DiT: one row per inferred group in forward order; an expert that is twice the other's
    task vector agrees with it everywhere (cosine 1, no sign conflict)."""
    import json

    from safetensors.torch import load_file

    unknown_dit(tmp_path / "base.safetensors", 1)
    unknown_dit(tmp_path / "x.safetensors", 2)
    a, x = load_file(tmp_path / "base.safetensors"), load_file(tmp_path / "x.safetensors")
    save_file({k: a[k] + 2 * (x[k] - a[k]) for k in a}, str(tmp_path / "y.safetensors"))
    (tmp_path / "t.yml").write_text(
        f"merge_method: task_arithmetic\nbase_model: {tmp_path / 'base.safetensors'}\nmodels:\n"
        f"  - model: {tmp_path / 'x.safetensors'}\n  - model: {tmp_path / 'y.safetensors'}\n")
    assert main(["analyze", str(tmp_path / "t.yml"), "--json", "--density", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    layout = infer_layout(sorted(a))
    counts = {g: len(ks) for g, ks in layout.group_keys(sorted(a)).items()}
    assert [g["group"] for g in report["groups"]] == layout.groups
    for g in report["groups"]:
        assert g["tensors"] == counts[g["group"]]
        assert g["cosine"][0][1] == pytest.approx(1.0, abs=1e-6) and g["sign_conflict"] == 0
