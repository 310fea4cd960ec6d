"""Block layouts and family detection on real key layouts (tiny shapes)."""

from __future__ import annotations

import collections

import pytest
import torch

from studio.errors import StudioError
from studio.layout import detect_layout
from studio.layout.presets import default_presets, load_presets, lookup_preset, sd1_to_sdxl
from studio.layout.sd import SD1_BLOCKS, SDXL_BLOCKS, FluxBlockLayout, SDBlockLayout, detect_family
from studio.layout.sd_keys import UNET_PREFIX, VAE_PREFIX, unet_from_ldm, unet_to_ldm, vae_from_ldm, vae_to_ldm
from studio.sources import DictSource, open_source


def meta_source(table):
    return DictSource({k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in table.items()})


@pytest.mark.parametrize("fam,blocks", [("sd1", SD1_BLOCKS), ("sd2", SD1_BLOCKS), ("sdxl", SDXL_BLOCKS)])
def test_every_ldm_key_lands_in_exactly_one_block(ldm_tables, fam, blocks):
    src = meta_source(ldm_tables[fam])
    assert detect_family(src) == fam
    layout = detect_layout(src)
    assert isinstance(layout, SDBlockLayout)
    assert layout.groups == blocks + ["VAE"] and len(blocks) == (20 if fam == "sdxl" else 26)
    counts = collections.Counter()
    for k in src.keys():
        g = layout.group_of(k)
        assert g in layout.groups
        counts[g] += 1
    assert all(counts[g] > 0 for g in layout.groups), [g for g in layout.groups if counts[g] == 0]
    assert sum(counts.values()) == len(src.keys())
    # spot checks from formats.md §2
    assert layout.group_of(UNET_PREFIX + "time_embed.0.weight") == "IN00"
    assert layout.group_of(UNET_PREFIX + "out.2.weight") == blocks[-1]
    assert layout.group_of(VAE_PREFIX + "decoder.conv_out.weight") == "VAE"
    assert all(layout.group_of(k) == "BASE" for k in src.keys() if k.startswith(("cond_stage", "conditioner")))
    if fam == "sdxl":
        assert layout.group_of(UNET_PREFIX + "label_emb.0.0.weight") == "IN00"
        assert layout.group_of(UNET_PREFIX + "output_blocks.2.2.conv.weight") == "OUT02"
    else:
        assert layout.group_of(UNET_PREFIX + "output_blocks.2.1.conv.weight") == "OUT02"
        assert layout.group_of(UNET_PREFIX + "input_blocks.3.0.op.weight") == "IN03"
    # a list with one value per block maps 1:1 (position = index / (n − 1)), the VAE is outside it
    for i, b in enumerate(blocks):
        key = next(k for k in src.keys() if layout.group_of(k) == b)
        assert layout.position(key) * (len(blocks) - 1) == pytest.approx(i)


@pytest.mark.parametrize("fam", ["sd1", "sdxl"])
def test_diffusers_names_use_the_same_blocks(ldm_tables, pipelines, fam):
    pipe = open_source(str(pipelines[fam]))
    assert pipe.kind == "diffusers"
    assert detect_family(pipe) == fam
    layout = detect_layout(pipe)
    ldm_layout = detect_layout(meta_source(ldm_tables[fam]))
    up_attn = frozenset({0, 1}) if fam == "sdxl" else frozenset({1, 2, 3})
    counts = collections.Counter(layout.group_of(k) for k in pipe.keys())
    assert set(counts) == set(layout.groups)
    for k in pipe.keys():
        if k.startswith("unet."):
            ldm = UNET_PREFIX + unet_to_ldm(k[5:], up_attn)
            assert ldm in ldm_tables[fam], k
            assert layout.group_of(k) == ldm_layout.group_of(ldm), k
        elif k.startswith("vae."):
            assert layout.group_of(k) == "VAE"
        else:
            assert layout.group_of(k) == "BASE"


def test_name_conversions_round_trip(ldm_tables):
    for fam, table in ldm_tables.items():
        up_attn = frozenset({0, 1}) if fam == "sdxl" else frozenset({1, 2, 3})
        for k in table:
            if k.startswith(UNET_PREFIX):
                r = k[len(UNET_PREFIX):]
                assert unet_to_ldm(unet_from_ldm(r), up_attn) == r
            elif k.startswith(VAE_PREFIX):
                r = k[len(VAE_PREFIX):]
                assert vae_to_ldm(vae_from_ldm(r, 2), 2) == r


def test_family_variants_and_unknown(ldm_tables):
    t = dict(ldm_tables["sd1"])
    s, d = t[UNET_PREFIX + "input_blocks.0.0.weight"]
    t[UNET_PREFIX + "input_blocks.0.0.weight"] = ((s[0], 9, *s[2:]), d)
    assert detect_family(meta_source(t)) == "sd1-inpaint"
    xl = dict(ldm_tables["sdxl"])
    xl = {k: v for k, v in xl.items() if not k.startswith("conditioner.embedders.1.")}
    assert detect_family(meta_source(xl)) == "sdxl"        # UNet width 2048 still says SDXL
    with pytest.raises(StudioError, match="unknown diffusion family"):
        detect_family(meta_source({UNET_PREFIX + "foo.weight": ((2, 2), torch.float32)}))
    with pytest.raises(StudioError, match="unknown diffusion family"):
        detect_family(meta_source({"model.layers.0.q.weight": ((2, 2), torch.float32)}))


def test_flux_layout_and_family():
    p = UNET_PREFIX
    t = {p + "double_blocks.0.img_attn.norm.key_norm.scale": ((4,), torch.float32),
         p + "guidance_in.in_layer.bias": ((4,), torch.float32), p + "img_in.weight": ((4, 64), torch.float32),
         p + "final_layer.linear.weight": ((4, 4), torch.float32), "vae.decoder.conv_in.weight": ((4, 4), torch.float32),
         "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": ((4,), torch.float32)}
    for i in range(19):
        t[p + f"double_blocks.{i}.img_mlp.0.weight"] = ((4, 4), torch.float32)
    for i in range(38):
        t[p + f"single_blocks.{i}.linear1.weight"] = ((4, 4), torch.float32)
    src = meta_source(t)
    assert detect_family(src) == "flux-dev"
    layout = detect_layout(src)
    assert isinstance(layout, FluxBlockLayout) and len(layout.blocks) == 61
    assert layout.group_of(p + "double_blocks.18.img_mlp.0.weight") == "D18"
    assert layout.group_of(p + "single_blocks.37.linear1.weight") == "S37"
    assert layout.group_of(p + "img_in.weight") == "IN"
    assert layout.group_of(p + "final_layer.linear.weight") == "OUT"
    assert layout.group_of("vae.decoder.conv_in.weight") == "VAE"
    assert layout.group_of("text_encoders.clip_l.transformer.text_model.final_layer_norm.weight") == "CLIP"
    del t[p + "guidance_in.in_layer.bias"]
    assert detect_family(meta_source(t)) == "flux-schnell"


def test_presets():
    assert load_presets() == {k.upper(): v for k, v in default_presets().items()}  # the shipped file is current
    v = lookup_preset("grad_v", 26)
    assert len(v) == 26 and v[0] == 0 and v[1] == 1 and v[13] == 0 and v[25] == 1
    assert lookup_preset("GRAD_V", 27) == v                    # a trailing VAE group gets no value
    xl = lookup_preset("GRAD_V", 20)
    assert xl == sd1_to_sdxl(v) and len(xl) == 20 and xl[10] == 0  # M00 stays the middle
    assert lookup_preset("FLAT_25", 21)[1:] == [0.25] * 19
    assert lookup_preset("no_such_preset", 26) is None
    # any other layout gets the U-Net shape by depth: GRAD_V is |1 − 2d| at depth d = i / (n − 1)
    for n in (5, 7, 61):
        assert lookup_preset("GRAD_V", n) == pytest.approx([abs(1 - 2 * i / (n - 1)) for i in range(n)], abs=1e-9)
    assert lookup_preset("LINEAR", 3) == pytest.approx([0, 0.5, 1]) and lookup_preset("FLAT_75", 40) == [0.75] * 40
    assert lookup_preset("GRAD_V", 0) is None
    for name in ("GRAD_A", "FLAT_75", "WRAP08", "SMOOTHSTEP", "COSINE", "ALL_A", "ALL_B"):
        assert lookup_preset(name, 26) is not None
