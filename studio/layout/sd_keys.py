"""Name conversions between the ldm / sgm single-file layout and diffusers / transformers names.

Used only at boundaries: to match LoRA module names against a checkpoint in either naming, to read a VAE file written in
the other naming, and to build real-shaped key tables for tests and benchmarks. Merging itself happens in the inputs'
own layout. Rules: formats.md §1.3 and §2.1/§2.2 (ldm ``input_blocks.k`` ↔ diffusers ``down_blocks.i``).

All functions work on *module-level or parameter-level names without the component prefix* (no
``model.diffusion_model.`` / ``unet.``) and return ``None`` for names they do not know.
"""

from __future__ import annotations

import re

LAYERS_PER_BLOCK = 2  # SD1/SD2/SDXL all use 2 resnets per down level (3 per up level)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
VAE_PREFIXES = (VAE_PREFIX, "vae.")  # where a whole checkpoint keeps its VAE: ldm single file, diffusers pipeline

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
RESNET_FROM_LDM = {v: k for k, v in RESNET_TO_LDM.items()}
UNET_TOP_TO_LDM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                   "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
                   "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
UNET_TOP_FROM_LDM = {v: k for k, v in UNET_TOP_TO_LDM.items()}


def _split(name: str, table: dict[str, str]) -> tuple[str, str] | None:
    """Longest table entry that prefixes ``name`` at a dot boundary → (mapped, rest-with-leading-dot-or-empty)."""
    best = None
    for src in table:
        if name == src or name.startswith(src + "."):
            if best is None or len(src) > len(best):
                best = src
    if best is None:
        return None
    return table[best], name[len(best):]


def _resnet_rest(rest: str, table: dict[str, str]) -> str | None:
    """``.norm1.weight`` → ``.in_layers.0.weight`` (or back); '' stays ''."""
    if not rest:
        return rest
    hit = _split(rest[1:], table)
    if hit is None:
        return None
    return "." + hit[0] + hit[1]


_D_RES = re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)(.*)$")
_D_ATT = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)(.*)$")
_D_DS = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$")
_U_RES = re.compile(r"^up_blocks\.(\d+)\.resnets\.(\d+)(.*)$")
_U_ATT = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)(.*)$")
_U_US = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)$")
_M = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(.*)$")


def unet_to_ldm(name: str, up_attn: set[int] | frozenset[int] = frozenset({1, 2, 3}),
                layers: int = LAYERS_PER_BLOCK) -> str | None:
    """diffusers UNet name → ldm name. ``up_attn``: up-block indices that hold attentions (decides whether the
    upsampler sits at ``output_blocks.k.2`` or ``.1``); SD1/2: {1, 2, 3}, SDXL: {0, 1}."""
    hit = _split(name, UNET_TOP_TO_LDM)
    if hit:
        return hit[0] + hit[1]
    n = layers + 1
    if m := _D_RES.match(name):
        i, j, rest = int(m[1]), int(m[2]), _resnet_rest(m[3], RESNET_TO_LDM)
        return None if rest is None else f"input_blocks.{1 + n * i + j}.0{rest}"
    if m := _D_ATT.match(name):
        return f"input_blocks.{1 + n * int(m[1]) + int(m[2])}.1{m[3]}"
    if m := _D_DS.match(name):
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op{m[2]}"
    if m := _M.match(name):
        idx = {"resnets": {0: 0, 1: 2}, "attentions": {0: 1}}[m[1]].get(int(m[2]))
        if idx is None:
            return None
        rest = _resnet_rest(m[3], RESNET_TO_LDM) if m[1] == "resnets" else m[3]
        return None if rest is None else f"middle_block.{idx}{rest}"
    if m := _U_RES.match(name):
        i, j, rest = int(m[1]), int(m[2]), _resnet_rest(m[3], RESNET_TO_LDM)
        return None if rest is None else f"output_blocks.{n * i + j}.0{rest}"
    if m := _U_ATT.match(name):
        return f"output_blocks.{n * int(m[1]) + int(m[2])}.1{m[3]}"
    if m := _U_US.match(name):
        i = int(m[1])
        return f"output_blocks.{n * i + layers}.{2 if i in up_attn else 1}.conv{m[2]}"
    return None


_L_IN = re.compile(r"^input_blocks\.(\d+)\.(\d+)(.*)$")
_L_MID = re.compile(r"^middle_block\.(\d+)(.*)$")
_L_OUT = re.compile(r"^output_blocks\.(\d+)\.(\d+)(.*)$")


def unet_from_ldm(name: str, layers: int = LAYERS_PER_BLOCK) -> str | None:
    """ldm UNet name → diffusers name (inverse of :func:`unet_to_ldm`)."""
    hit = _split(name, UNET_TOP_FROM_LDM)
    if hit:
        return hit[0] + hit[1]
    n = layers + 1
    if m := _L_IN.match(name):
        k, sub, rest = int(m[1]), int(m[2]), m[3]
        if k == 0:
            return None
        i, j = divmod(k - 1, n)
        if j == layers:  # downsampler: input_blocks.k.0.op
            return f"down_blocks.{i}.downsamplers.0.conv{rest[3:]}" if sub == 0 and rest.startswith(".op") else None
        if sub == 0:
            r = _resnet_rest(rest, RESNET_FROM_LDM)
            return None if r is None else f"down_blocks.{i}.resnets.{j}{r}"
        return f"down_blocks.{i}.attentions.{j}{rest}" if sub == 1 else None
    if m := _L_MID.match(name):
        idx, rest = int(m[1]), m[2]
        if idx == 1:
            return f"mid_block.attentions.0{rest}"
        r = _resnet_rest(rest, RESNET_FROM_LDM)
        return None if r is None or idx not in (0, 2) else f"mid_block.resnets.{idx // 2}{r}"
    if m := _L_OUT.match(name):
        k, sub, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(k, n)
        if sub == 0:
            r = _resnet_rest(rest, RESNET_FROM_LDM)
            return None if r is None else f"up_blocks.{i}.resnets.{j}{r}"
        if rest.startswith(".conv") and (rest == ".conv" or rest.startswith(".conv.")):
            return f"up_blocks.{i}.upsamplers.0.conv{rest[5:]}"
        return f"up_blocks.{i}.attentions.{j}{rest}" if sub == 1 else None
    return None


# --------------------------------------------------------------------------------------------- VAE
VAE_RESNET_FROM_LDM = {"nin_shortcut": "conv_shortcut"}
VAE_ATTN_FROM_LDM = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
VAE_ATTN_TO_LDM = {v: k for k, v in VAE_ATTN_FROM_LDM.items()}


def vae_from_ldm(name: str, num_levels: int = 4) -> str | None:
    """ldm VAE name (without ``first_stage_model.``) → diffusers AutoencoderKL name."""
    for side in ("encoder", "decoder"):
        if not name.startswith(side + "."):
            continue
        r = name[len(side) + 1:]
        if m := re.match(r"^(down|up)\.(\d+)\.block\.(\d+)\.(\w+)(.*)$", r):
            i = int(m[2]) if m[1] == "down" else num_levels - 1 - int(m[2])
            kind = "down_blocks" if m[1] == "down" else "up_blocks"
            return f"{side}.{kind}.{i}.resnets.{m[3]}.{VAE_RESNET_FROM_LDM.get(m[4], m[4])}{m[5]}"
        if m := re.match(r"^down\.(\d+)\.downsample\.conv(.*)$", r):
            return f"{side}.down_blocks.{m[1]}.downsamplers.0.conv{m[2]}"
        if m := re.match(r"^up\.(\d+)\.upsample\.conv(.*)$", r):
            return f"{side}.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv{m[2]}"
        if m := re.match(r"^mid\.block_(\d)\.(\w+)(.*)$", r):
            return f"{side}.mid_block.resnets.{int(m[1]) - 1}.{VAE_RESNET_FROM_LDM.get(m[2], m[2])}{m[3]}"
        if m := re.match(r"^mid\.attn_1\.(\w+)(.*)$", r):
            return f"{side}.mid_block.attentions.0.{VAE_ATTN_FROM_LDM.get(m[1], m[1])}{m[2]}"
        if r.startswith("norm_out"):
            return f"{side}.conv_norm_out{r[8:]}"
        return name  # conv_in, conv_out
    if name.startswith(("quant_conv", "post_quant_conv")):
        return name
    return None


def vae_to_ldm(name: str, num_levels: int = 4) -> str | None:
    """diffusers AutoencoderKL name → ldm VAE name."""
    for side in ("encoder", "decoder"):
        if not name.startswith(side + "."):
            continue
        r = name[len(side) + 1:]
        if m := re.match(r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)(.*)$", r):
            i = int(m[2]) if m[1] == "down" else num_levels - 1 - int(m[2])
            part = "nin_shortcut" if m[4] == "conv_shortcut" else m[4]
            return f"{side}.{m[1]}.{i}.block.{m[3]}.{part}{m[5]}"
        if m := re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)$", r):
            return f"{side}.down.{m[1]}.downsample.conv{m[2]}"
        if m := re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)$", r):
            return f"{side}.up.{num_levels - 1 - int(m[1])}.upsample.conv{m[2]}"
        if m := re.match(r"^mid_block\.resnets\.(\d)\.(\w+)(.*)$", r):
            part = "nin_shortcut" if m[2] == "conv_shortcut" else m[2]
            return f"{side}.mid.block_{int(m[1]) + 1}.{part}{m[3]}"
        if m := re.match(r"^mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)(.*)$", r):
            return f"{side}.mid.attn_1.{VAE_ATTN_TO_LDM[m[1]]}{m[2]}"
        if r.startswith("conv_norm_out"):
            return f"{side}.norm_out{r[13:]}"
        return name
    if name.startswith(("quant_conv", "post_quant_conv")):
        return name
    return None


def is_vae_attn_linear(diffusers_name: str) -> bool:
    """VAE mid attention q/k/v/out: Linear [C, C] in diffusers, 1×1 conv [C, C, 1, 1] in ldm."""
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", diffusers_name))


# --------------------------------------------------------------------------------------------- text encoders
OPENCLIP_FROM_HF = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
OPENCLIP_TO_HF = {v: k for k, v in OPENCLIP_FROM_HF.items()}
QKV = ("q", "k", "v")


def openclip_to_hf(name: str) -> list[tuple[str, int | None]]:
    """OpenCLIP (ldm) text-encoder name → [(HF CLIP name, q/k/v index or None)]. A fused ``attn.in_proj_weight``
    yields three names (its rows [0:d], [d:2d], [2d:3d])."""
    if m := re.match(r"^transformer\.resblocks\.(\d+)\.(.*)$", name):
        layer, rest = m[1], m[2]
        base = f"text_model.encoder.layers.{layer}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            suffix = "weight" if rest.endswith("weight") else "bias"
            return [(f"{base}self_attn.{p}_proj.{suffix}", i) for i, p in enumerate(QKV)]
        hit = _split(rest, OPENCLIP_TO_HF)
        return [(base + hit[0] + hit[1], None)] if hit else []
    simple = {v: k for k, v in OPENCLIP_SIMPLE_FROM_HF.items()}
    return [(simple[name], None)] if name in simple else []


OPENCLIP_SIMPLE_FROM_HF = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                           "text_model.embeddings.position_embedding.weight": "positional_embedding",
                           "text_model.final_layer_norm.weight": "ln_final.weight",
                           "text_model.final_layer_norm.bias": "ln_final.bias",
                           "text_projection.weight": "text_projection"}
_HF_QKV = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.*)$")


def openclip_from_hf(name: str) -> tuple[str, int | None] | None:
    """HF CLIP text-encoder name (with ``text_model.``) → (OpenCLIP / ldm name, q/k/v index or None): q, k and v
    go to rows [0:d], [d:2d], [2d:3d] of the layer's fused ``attn.in_proj_weight`` / ``in_proj_bias``
    (inverse of :func:`openclip_to_hf`; ``text_projection.weight`` is the transpose of ``text_projection``)."""
    if m := _HF_QKV.match(name):
        return f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}", QKV.index(m[2])
    if m := _HF_LAYER.match(name):
        hit = _split(m[2], OPENCLIP_FROM_HF)
        return (f"transformer.resblocks.{m[1]}.{hit[0]}{hit[1]}", None) if hit else None
    return (OPENCLIP_SIMPLE_FROM_HF[name], None) if name in OPENCLIP_SIMPLE_FROM_HF else None


def openclip_text_keys(layers: int, width: int, heads_mlp: int, vocab: int = 49408, ctx: int = 77,
                       proj: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key → shape table of an OpenCLIP text tower as stored in ldm checkpoints (SD2: H/1024, SDXL: bigG/1280)."""
    t: dict[str, tuple[int, ...]] = {"positional_embedding": (ctx, width), "token_embedding.weight": (vocab, width)}
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        t.update({b + "ln_1.weight": (width,), b + "ln_1.bias": (width,),
                  b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                  b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                  b + "ln_2.weight": (width,), b + "ln_2.bias": (width,),
                  b + "mlp.c_fc.weight": (heads_mlp, width), b + "mlp.c_fc.bias": (heads_mlp,),
                  b + "mlp.c_proj.weight": (width, heads_mlp), b + "mlp.c_proj.bias": (width,)})
    t["ln_final.weight"] = (width,)
    t["ln_final.bias"] = (width,)
    if proj:
        t["text_projection"] = (width, proj)
    return t
