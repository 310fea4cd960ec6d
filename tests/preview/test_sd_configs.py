"""The shipped configs and tokenizers are the published ones; at full size (meta tensors, no memory) every pipeline
parameter is fed by the merge, and only diffusers' split/transposed outputs are converted rather than bound."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from studio.errors import StudioError
from studio.preview import DiffusionPreviewer
from studio.preview.diffusion import build_model
from studio.preview.sd_configs import (CLIP_BPE, CLIP_MERGES, build_clip_bpe, clip_tokenizer, component_config,
                                       shipped_folder, write_config_folder)
from studio.sd import synth
from studio.sources import DictSource

# parameter counts of the published models (diffusers / transformers classes built from the shipped configs)
PUBLISHED = {("sd1", "unet"): 859_520_964, ("sd1", "vae"): 83_653_863, ("sd1", "text_encoder"): 123_060_480,
             ("sd2", "unet"): 865_910_724, ("sd2", "text_encoder"): 340_387_840,
             ("sdxl", "unet"): 2_567_463_684, ("sdxl", "text_encoder_2"): 694_659_840,
             ("flux-dev", "transformer"): 11_901_408_320, ("flux-schnell", "transformer"): 11_891_178_560,
             ("flux-dev", "vae"): 83_819_683}


@pytest.mark.parametrize("fam,comp", sorted(PUBLISHED))
def test_shipped_configs_build_the_published_architectures(fam, comp):
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "transformer": FluxTransformer2DModel,
           "text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}[comp]
    model = build_model(cls, component_config(shipped_folder(fam), comp))
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[(fam, comp)]


def test_clip_tokenizers_give_clips_ids_and_their_own_padding():
    sd1 = clip_tokenizer(None, shipped_folder("sd1") / "tokenizer")
    ids = sd1("a photo of a cat", padding="max_length", max_length=10).input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, 49407, 49407, 49407]  # CLIP's published ids
    assert sd1.model_max_length == 77 and len(sd1) == 49408
    for fam, tok in (("sd2", "tokenizer"), ("sdxl", "tokenizer_2")):  # OpenCLIP's tokenizers pad with "!" (id 0)
        t = clip_tokenizer(None, shipped_folder(fam) / tok)
        assert t("a photo of a cat", padding="max_length", max_length=10).input_ids[-3:] == [0, 0, 0]
    assert clip_tokenizer(None, shipped_folder("sdxl") / "tokenizer").pad_token_id == 49407


def test_a_written_config_folder_loads_with_transformers_and_carries_overrides(tmp_path):
    from transformers import CLIPTokenizer

    folder = write_config_folder(tmp_path / "cfg", "sdxl", {"unet": {"sample_size": 16}})
    assert json.loads((folder / "unet" / "config.json").read_text())["sample_size"] == 16
    assert json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"] == 2048
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))
    assert tok("a cat").input_ids == [49406, 320, 2368, 49407] and tok.pad_token == "!"
    with pytest.raises(StudioError, match="no shipped configs for the sd3 family"):
        shipped_folder("sd3")


def test_build_clip_bpe_lays_out_clips_vocabulary(tmp_path):
    merges = [f"t{i} x{i}" for i in range(CLIP_MERGES)]
    gz = tmp_path / "bpe.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *merges, "not a merge beyond the vocabulary"]))
    vocab_file, merges_file = build_clip_bpe(gz, tmp_path / "out")
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["t0x0"] == 512 and vocab[f"t{CLIP_MERGES - 1}x{CLIP_MERGES - 1}"] == 49405
    assert vocab["Ā"] == 188  # byte 0, the first byte outside the 188 printable ones
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and lines[1:] == merges
    # the shipped files are this function's output for OpenAI's list: the same layout
    shipped = json.loads((CLIP_BPE / "vocab.json").read_text(encoding="utf-8"))
    assert len(shipped) == 49408 and shipped["!"] == 0 and shipped["Ā"] == 188 and shipped["a</w>"] == 320
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\nonly three words here\n")
    with pytest.raises(StudioError, match="not CLIP's BPE merge list"):
        build_clip_bpe(gz, tmp_path / "bad")


def meta_source(table, **kw):
    return DictSource({k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in table.items()}, **kw)


# converted (not bound) at full size: OpenCLIP's fused in_proj split into q/k/v (SD2: 23 layers of 1024; SDXL bigG:
# 32 layers of 1280, and its transposed text projection)
CONVERTED = {"sd1": 0, "sd2": 23 * (3 * 1024 * 1024 + 3 * 1024),
             "sdxl": 32 * (3 * 1280 * 1280 + 3 * 1280) + 1280 * 1280}


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_full_size_single_files_bind_all_but_the_split_text_projections(fam):
    table = synth.ldm_table(fam, tiny=False)
    src = meta_source(table, ref=f"{fam}.safetensors")
    p = DiffusionPreviewer(src, device="meta")  # the shipped configs, no memory
    state = {k: src.get(k) for k in src.keys()}
    total = bound = converted = 0
    for comp in p.components:
        b, c, missing = p.classify(comp, state)
        assert missing == []
        params = comp.params()
        total += sum(t.numel() for t in params.values())
        bound += sum(params[n].numel() for n in b)
        converted += sum(params[n].numel() for n in c)
        assert all(n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "k_proj.bias",
                               "v_proj.bias", "text_projection.weight")) for n in c), comp.name
    assert bound + converted == total and converted == CONVERTED[fam]
    # the VAE's 1×1-conv attention weights are bound through a reshape, not converted
    vae = next(c for c in p.components if c.name == "vae")
    assert p.classify(vae, state)[0]["decoder.mid_block.attentions.0.to_q.weight"] == \
        "first_stage_model.decoder.mid.attn_1.q.weight"


def test_a_full_size_flux_single_file_binds_all_but_its_fused_projections(tiny_flux):
    src = meta_source(synth.bfl_flux_table(), ref="flux1-dev.safetensors")
    # the T5, CLIP-L and VAE come from a components folder (here a tiny one: they are loaded, not merged)
    p = DiffusionPreviewer(src, device="meta", components=tiny_flux["a"])
    assert p.family == "flux-dev" and [c.name for c in p.components if c.select is None] == \
        ["vae", "text_encoder", "text_encoder_2"]
    comp = p.components[0]
    b, c, missing = p.classify(comp, {k: src.get(k) for k in src.keys()})
    assert missing == []
    params = comp.params()
    conv = sum(params[n].numel() for n in c)
    w = 3072
    assert conv == 19 * 2 * (3 * w * w + 3 * w) + 38 * (7 * w * w + 7 * w) + 2 * w * w + 2 * w
    assert sum(params[n].numel() for n in b) + conv == 11_901_408_320
