"""LoRA module name → target tensor, built from the *target's* key names (never by splitting kohya names on "_").

For every weight of the target we register every name a LoRA may use for it (formats.md §4.1):
kohya ``lora_unet_<ldm or diffusers path>``, ``lora_te_/lora_te1_/lora_te2_/lora_te3_<HF CLIP path>``, diffusers
``unet.<path>`` / ``text_encoder.<path>``, and the PEFT module path itself. OpenCLIP's fused ``attn.in_proj_weight``
(SD2, SDXL's second encoder) is registered three times, as the q/k/v row blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..layout.sd_keys import UNET_PREFIX, openclip_to_hf, unet_from_ldm, unet_to_ldm


@dataclass(frozen=True)
class Target:
    weight: str                 # tensor key in the target
    bias: str | None = None     # its bias key, when present
    part: int | None = None     # q/k/v row block of a fused in_proj (0, 1, 2), else None


def _u(path: str) -> str:
    return path.replace(".", "_")


def _hf_variants(hf_module: str) -> list[str]:
    return [hf_module] if hf_module.startswith("text_model.") else [hf_module, "text_model." + hf_module]


def target_index(source) -> dict[str, Target]:
    """alias → Target for every weight tensor of ``source``."""
    keys = source.keys()
    kset = set(keys)
    up_attn = frozenset(int(m[1]) for k in keys if (m := re.match(r"^unet\.up_blocks\.(\d+)\.attentions\.", k)))
    has_te2 = any(k.startswith("text_encoder_2.") for k in keys)
    flux = any(".single_transformer_blocks." in k or "single_blocks." in k for k in keys[:5000])
    out: dict[str, Target] = {}

    def add(alias: str, t: Target):
        out.setdefault(alias, t)

    for k in keys:
        if k.endswith("attn.in_proj_weight"):
            mod = k[: -len("_weight")]                     # ...attn.in_proj
            bias = mod + "_bias" if mod + "_bias" in kset else None
            for prefix, te in (("cond_stage_model.model.", "te"), ("conditioner.embedders.1.model.", "te2"),
                               ("conditioner.embedders.0.model.", "te2")):
                if k.startswith(prefix):
                    for hf, part in openclip_to_hf(k[len(prefix):]):
                        hf_mod = hf[: -len(".weight")]
                        t = Target(k, bias, part)
                        add(f"lora_{te}_" + _u(hf_mod), t)
                        add(("text_encoder." if te == "te" else "text_encoder_2.") + hf_mod, t)
            continue
        if not k.endswith(".weight"):
            continue
        mod = k[:-7]
        t = Target(k, mod + ".bias" if mod + ".bias" in kset else None)
        add(mod, t)                                        # PEFT module path / diffusers LoRA path
        if k.startswith(UNET_PREFIX):
            r = mod[len(UNET_PREFIX):]
            add("lora_unet_" + _u(r), t)
            d = unet_from_ldm(r)
            if d is not None:
                add("lora_unet_" + _u(d), t)
                add("unet." + d, t)
            add("transformer." + r, t)
        elif k.startswith("unet."):
            r = mod[5:]
            add(r, t)                                      # a PEFT adapter trained on the UNet module alone
            add("lora_unet_" + _u(r), t)
            ldm = unet_to_ldm(r, up_attn or frozenset({1, 2, 3}))
            if ldm is not None:
                add("lora_unet_" + _u(ldm), t)
        elif k.startswith("transformer."):
            add("lora_unet_" + _u(mod[12:]), t)
            add("lora_transformer_" + _u(mod[12:]), t)
        elif k.startswith("cond_stage_model.transformer."):       # SD1 HF CLIP (NAI files lack text_model.)
            r = mod[len("cond_stage_model.transformer."):]
            for v in _hf_variants(r):
                add("lora_te_" + _u(v), t)
                add("text_encoder." + v, t)
        elif k.startswith("cond_stage_model.model."):             # SD2 OpenCLIP-H (non-fused parts)
            for hf, _ in openclip_to_hf(k[len("cond_stage_model.model."):]):
                add("lora_te_" + _u(hf[:-7]), t)
                add("text_encoder." + hf[:-7], t)
        elif k.startswith("conditioner.embedders.0.transformer."):  # SDXL CLIP-L
            r = mod[len("conditioner.embedders.0.transformer."):]
            add("lora_te1_" + _u(r), t)
            add("text_encoder." + r, t)
        elif k.startswith(("conditioner.embedders.1.model.", "conditioner.embedders.0.model.")):  # SDXL OpenCLIP-bigG
            pre = "conditioner.embedders.1.model." if k.startswith("conditioner.embedders.1.") else \
                "conditioner.embedders.0.model."
            for hf, _ in openclip_to_hf(k[len(pre):]):
                add("lora_te2_" + _u(hf[:-7]), t)
                add("text_encoder_2." + hf[:-7], t)
        elif k.startswith("text_encoders.clip_l.transformer."):   # Flux single file
            add("lora_te1_" + _u(mod[len("text_encoders.clip_l.transformer."):]), t)
        elif k.startswith("text_encoders.t5xxl.transformer."):
            add("lora_te3_" + _u(mod[len("text_encoders.t5xxl.transformer."):]), t)
        elif k.startswith("text_encoder."):
            r = mod[len("text_encoder."):]
            add("lora_te1_" + _u(r), t)
            if not has_te2 or flux:
                add("lora_te_" + _u(r), t)
        elif k.startswith("text_encoder_2."):
            r = mod[len("text_encoder_2."):]
            add(("lora_te3_" if flux else "lora_te2_") + _u(r), t)
        elif k.startswith(("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "final_layer.")):
            add("lora_unet_" + _u(mod), t)
        else:                                              # transformers text encoders / LLMs
            add("lora_te_" + _u(mod), t)
    return out
