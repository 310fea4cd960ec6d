"""Diffusion block layouts (SD1/SD2 26 ids, SDXL 20 ids, Flux 61 ids, each + a VAE slot) and family detection.

Groups follow SuperMerger's order so that its MBW strings and presets map one value per block (formats.md §2). The
VAE is its own group, listed last and left out of gradient positions: a 26-value list (SD1) or 20-value list (SDXL)
maps 1:1 onto the blocks and the VAE is handled by the VAE slot (copy from the first model, or bake a file).

Both namings are understood: ldm single files (``model.diffusion_model.input_blocks.4.1…``) and diffusers pipelines
(``unet.down_blocks.1.attentions.0…``); diffusers names are converted to ldm names to find their block.
"""

from __future__ import annotations

import re

from ..errors import StudioError
from .base import Layout
from .dit import UNKNOWN_DIT, DiTMatch, dit_family, dit_layout, unknown_dit
from .sd_keys import UNET_PREFIX, VAE_PREFIXES, unet_to_ldm

SD1_BLOCKS = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SDXL_BLOCKS = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
FLUX_BLOCKS = ["CLIP", "T5", "IN"] + [f"D{i:02d}" for i in range(19)] + [f"S{i:02d}" for i in range(38)] + ["OUT"]

FAMILY_BASES = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "sdxl-refiner": "sdxl", "playground-v2.5": "sdxl",
                "flux-dev": "flux", "flux-schnell": "flux", "sd3": "sd3", "sd3.5-large": "sd3",
                "sd-x4-upscaler": "sd-x4-upscaler", "sd3.5-medium": "sd3", "wan2.1": "wan", "wan2.2": "wan"}

ARCHITECTURES = {  # modelspec.architecture (KS sai_model_spec.py)
    "sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base",
    "sdxl-refiner": "stable-diffusion-xl-v1-refiner", "flux-dev": "flux-1-dev", "flux-schnell": "flux-1-schnell",
    "sd3": "stable-diffusion-3-medium", "sd3.5-large": "stable-diffusion-3.5-large",
    "playground-v2.5": "playground-v2.5",
}


def base_family(family: str | None) -> str | None:
    """``sdxl-inpaint`` → ``sdxl``; ``flux-dev-fill`` → ``flux``; None stays None."""
    if family is None:
        return None
    for suffix in ("-inpaint", "-pix2pix", "-fill", "-depth"):
        if family.endswith(suffix):
            family = family[: -len(suffix)]
    return FAMILY_BASES.get(family, family)


def _shape(source, key):
    return tuple(source.info(key).shape) if key in source else None


def _naming(keys) -> tuple[str, str] | None:
    """→ (naming, denoiser prefix): ("ldm", UNET_PREFIX), ("diffusers", "unet."/"transformer."), ("bfl", ""),
    ("diffusers", "")."""
    has = {"mdm": False, "unet": False, "transformer": False, "bare_unet": False, "bfl": False}
    for k in keys:
        if k.startswith(UNET_PREFIX):
            has["mdm"] = True
            break
        if k.startswith("unet."):
            has["unet"] = True
        elif k.startswith("transformer."):
            has["transformer"] = True
        elif k.startswith(("down_blocks.", "mid_block.", "conv_in.")) and not has["bare_unet"]:
            has["bare_unet"] = True
        elif k.startswith(("double_blocks.", "single_blocks.")):
            has["bfl"] = True
    if has["mdm"]:
        return "ldm", UNET_PREFIX
    if has["unet"]:
        return "diffusers", "unet."
    if has["transformer"]:
        return "diffusers", "transformer."
    if has["bfl"]:
        return "ldm", ""
    if has["bare_unet"]:
        return "diffusers", ""
    return None


SUPPORTED_FAMILIES = ("SD1.x, SD2.x, SDXL (base/refiner/inpaint), Flux.1 dev/schnell, Flux.2, Chroma, SD3/SD3.5, "
                      "Qwen-Image, Wan 2.1/2.2, HiDream, Lumina-Image-2/Z-Image; other DiTs merge with a layout "
                      "inferred from their block names")


def _unknown(source, why: str) -> StudioError:
    return StudioError(f"unknown diffusion family ({why})", where=getattr(source, "ref", None),
                       hint=f"supported: {SUPPORTED_FAMILIES}; "
                            "run `python -m studio inspect` to see its keys")


def detect_family(source) -> str:
    """Name the diffusion family from keys and shapes (formats.md §1.2). Raises StudioError naming an unknown family."""
    dit = dit_family(source)  # first: Flux.2 and Chroma carry Flux.1's marker keys, Qwen-Image SD3's
    if dit is not None:
        return dit.family
    keys = source.keys()
    naming = _naming(keys)
    if naming is None:
        raise _unknown(source, "no denoiser keys: neither model.diffusion_model.* nor unet.* / transformer.*")
    style, p = naming
    try:
        return _family_ldm(source, p) if style == "ldm" else _family_diffusers(source, p)
    except StudioError:
        if unknown_dit(source, p) is not None:
            return UNKNOWN_DIT
        raise


def diffusion_family(source) -> str | None:
    """detect_family for any model: None when it has no denoiser keys (an LLM, a LoRA) or its family is unknown;
    UNKNOWN_DIT ("dit") for a diffusion transformer no family matches (merged with an inferred layout)."""
    if _naming(source.keys()) is None and dit_family(source) is None:
        return None
    try:
        return detect_family(source)
    except StudioError:
        return None


def _family_ldm(source, p: str) -> str:
    inch = _shape(source, p + "input_blocks.0.0.weight")
    variant = ""
    if inch is not None and len(inch) == 4:
        variant = {9: "-inpaint", 8: "-pix2pix"}.get(inch[1], "")
    ctx = _shape(source, p + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight")
    if ctx is not None and ctx[-1] == 1024:
        return "sd2" + variant
    if "cond_stage_model.model.token_embedding.weight" in source:  # SD2's OpenCLIP-H (shrunk test models too)
        return "sd2" + variant
    if "edm_mean" in source:
        return "playground-v2.5"
    if "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias" in source:
        return "sdxl" + variant
    if "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias" in source:
        return "sdxl-refiner"
    if p + "input_blocks.10.0.skip_connection.bias" in source:
        return "sd-x4-upscaler"
    for q in (p, UNET_PREFIX, ""):  # SD3 and the other DiTs: dit.py, tried before these
        if q + "double_blocks.0.img_attn.norm.key_norm.scale" in source:
            if q + "guidance_in.in_layer.bias" not in source:
                return "flux-schnell"
            img_in = _shape(source, q + "img_in.weight")
            return "flux-dev" + {384: "-fill", 128: "-depth"}.get(img_in[1] if img_in else 64, "")
    # UNet-only files: tell SDXL apart by its cross-attention width / label embedding
    attn2 = _shape(source, p + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight")
    if attn2 is not None and attn2[-1] == 2048:
        return "sdxl" + variant
    if attn2 is not None and attn2[-1] == 1280 and p + "label_emb.0.0.weight" in source:
        return "sdxl-refiner"
    if p + "output_blocks.11.0.skip_connection.weight" in source:
        return "sd1" + variant
    raise _unknown(source, "model.diffusion_model.* present, but none of the SD1/SD2/SDXL/Flux/DiT marker keys")


def _family_diffusers(source, p: str) -> str:
    keys = source.keys()
    if p in ("transformer.", ""):
        if p + "single_transformer_blocks.0.attn.to_q.weight" in source or any(
                k.startswith(p + "single_transformer_blocks.") for k in keys):
            if not any(k.startswith(p + "time_text_embed.guidance_embedder.") for k in keys):
                return "flux-schnell"
            x = _shape(source, p + "x_embedder.weight")
            return "flux-dev" + {384: "-fill", 128: "-depth"}.get(x[1] if x else 64, "")
        if p == "transformer.":
            raise _unknown(source, "a diffusers transformer of no family this studio knows, without block runs")
    inch = _shape(source, p + "conv_in.weight")
    variant = {9: "-inpaint", 8: "-pix2pix"}.get(inch[1], "") if inch and len(inch) == 4 else ""
    ctx = None
    for k in keys:
        if k.startswith(p) and k.endswith("attn2.to_k.weight"):
            ctx = _shape(source, k)[-1]
            break
    if ctx is None:
        raise _unknown(source, "diffusers UNet without cross-attention (attn2.to_k)")
    fam = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl-refiner"}.get(ctx)
    if fam is None:
        # tiny test models and unusual widths: decide from the structure instead of the width
        # (SD2 projects into its transformers with a Linear, SD1 with a 1×1 conv; SDXL has the added embedding)
        xl = any(k.startswith(p + "add_embedding.") for k in keys)
        proj_in = next((k for k in keys if k.startswith(p) and k.endswith(".proj_in.weight")), None)
        fam = "sdxl" if xl else "sd2" if proj_in is not None and len(_shape(source, proj_in)) == 2 else "sd1"
    if fam == "sdxl" and p == "unet." and "text_encoder.text_model.final_layer_norm.weight" not in source \
            and any(k.startswith("text_encoder_2.") for k in keys):
        fam = "sdxl-refiner"
    return fam + (variant if fam != "sdxl-refiner" else "")


# --------------------------------------------------------------------------------------------- layouts
SD_LABELS = {"BASE": "text encoder(s)", "IN00": "conv_in + time/label embedding", "M00": "middle block",
             "VAE": "VAE (copied from the first model unless a VAE is baked)"}


class SDBlockLayout(Layout):
    """SD1/SD2 (26 ids) or SDXL (20 ids) blocks + VAE, for ldm or diffusers key names."""

    def __init__(self, family: str, naming: str, unet_prefix: str):
        fam = base_family(family)
        xl = fam == "sdxl"
        self.blocks = list(SDXL_BLOCKS if xl else SD1_BLOCKS)
        super().__init__(name=f"{family}-blocks", groups=self.blocks + ["VAE"], shape="unet",
                         description=f"{family}: {len(self.blocks)} SuperMerger block ids + VAE ({naming} names)")
        self.family, self.naming, self.unet_prefix = family, naming, unet_prefix
        self.up_attn = frozenset({0, 1}) if xl else frozenset({1, 2, 3})
        self.last_out = self.blocks[-1]
        n_in = 9 if xl else 12
        for i in range(n_in):
            self.labels[f"IN{i:02d}"] = "input block %d" % i
            self.labels[f"OUT{i:02d}"] = "output block %d" % i
        self.labels.update(SD_LABELS)
        self.mbw_ids = list(self.blocks)

    def group_of(self, key: str) -> str:
        if key.startswith(VAE_PREFIXES):
            return "VAE"
        p = self.unet_prefix
        if p and not key.startswith(p):
            return "BASE"
        rest = key[len(p):]
        if self.naming == "diffusers":
            conv = unet_to_ldm(rest, self.up_attn)
            if conv is None:
                return "BASE"
            rest = conv
        if rest.startswith(("time_embed.", "label_emb.")):
            return "IN00"
        if m := re.match(r"^input_blocks\.(\d+)\.", rest):
            g = f"IN{int(m[1]):02d}"
        elif rest.startswith("middle_block."):
            g = "M00"
        elif m := re.match(r"^output_blocks\.(\d+)\.", rest):
            g = f"OUT{int(m[1]):02d}"
        elif rest.startswith("out."):
            g = self.last_out
        else:
            return "BASE"
        return g if g in self.labels else "BASE"

    def group_position(self, group: str) -> float:
        # the VAE slot is left out of gradient positions: a 26 (SD1) / 20 (SDXL) value list maps 1:1 onto the blocks
        return 0.0 if group == "VAE" else self.blocks.index(group) / (len(self.blocks) - 1)


class FluxBlockLayout(Layout):
    """Flux.1: CLIP, T5, IN, D00–D18 (double), S00–S37 (single), OUT (SuperMerger BLOCKIDFLUX) + VAE."""

    def __init__(self, family: str, naming: str, prefix: str, n_double: int = 19, n_single: int = 38):
        self.blocks = ["CLIP", "T5", "IN"] + [f"D{i:02d}" for i in range(n_double)] + \
                      [f"S{i:02d}" for i in range(n_single)] + ["OUT"]
        super().__init__(name=f"{family}-blocks", groups=self.blocks + ["VAE"], shape="flat",
                         description=f"{family}: {len(self.blocks)} block ids + VAE ({naming} names)")
        self.family, self.naming, self.prefix = family, naming, prefix
        self.mbw_ids = list(self.blocks)
        self.labels.update({"CLIP": "CLIP-L text encoder", "T5": "T5-XXL text encoder", "IN": "input embedders",
                            "OUT": "final layer", "VAE": "VAE (copied from the first model)"})

    def group_of(self, key: str) -> str:
        if key.startswith(VAE_PREFIXES):
            return "VAE"
        if key.startswith(("text_encoders.clip_l.", "text_encoder.")):
            return "CLIP"
        if key.startswith(("text_encoders.t5xxl.", "text_encoder_2.")):
            return "T5"
        p = self.prefix
        if p and not key.startswith(p):
            return "CLIP" if "clip" in key else "T5" if "t5" in key else "IN"
        rest = key[len(p):]
        if m := re.match(r"^(double_blocks|transformer_blocks)\.(\d+)\.", rest):
            g = f"D{int(m[2]):02d}"
        elif m := re.match(r"^(single_blocks|single_transformer_blocks)\.(\d+)\.", rest):
            g = f"S{int(m[2]):02d}"
        elif rest.startswith(("final_layer.", "norm_out.", "proj_out.")):
            g = "OUT"
        else:
            g = "IN"
        return g if g in self.labels or g in self.blocks else "IN"

    def group_position(self, group: str) -> float:
        return 0.0 if group == "VAE" else self.blocks.index(group) / (len(self.blocks) - 1)


def layout_for(source, family: str | None = None) -> Layout | None:
    """The block layout of a diffusion source (None when it is not a diffusion model). The hand-written SD and Flux.1
    tables first; DiT families (and Flux.1 as a bare diffusers transformer) get dit.py's."""
    keys = source.keys()
    naming = _naming(keys)
    dit = dit_family(source)
    if naming is None and dit is None:
        return None
    family = family or (dit.family if dit is not None else detect_family(source))
    fam = base_family(family)
    if dit is not None and (naming is None or fam != "flux"):
        return dit_layout(source, DiTMatch(family, dit.prefix))
    if family == UNKNOWN_DIT:
        return dit_layout(source, unknown_dit(source, naming[1]))
    style, p = naming
    if fam in ("sd1", "sd2", "sdxl"):
        return SDBlockLayout(family, style, p)
    if fam == "flux":
        nd = 1 + max([int(m[2]) for k in keys if (m := re.match(r"^(?:.*\.)?(double_blocks|transformer_blocks)\.(\d+)\.", k))
                      and "text_encoder" not in k] or [18])
        ns = 1 + max([int(m[2]) for k in keys if (m := re.match(r"^(?:.*\.)?(single_blocks|single_transformer_blocks)\.(\d+)\.", k))]
                     or [37])
        return FluxBlockLayout(family, style, p, nd, ns)
    return None


def detect_sd_layout(keys, config, source):
    """Detector hook for studio.layout.DETECTORS: an SD / Flux / DiT block layout, or None for anything else."""
    if source is None or (_naming(keys) is None and dit_family(source) is None):
        return None
    try:
        return layout_for(source)
    except StudioError:
        return None
