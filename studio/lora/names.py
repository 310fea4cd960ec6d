"""LoRA module name → target tensor, built from the *target's* key names (never by splitting kohya names on "_").

For every weight of the target we register every name a LoRA may use for it (formats.md §4.1):
kohya ``lora_unet_<ldm or diffusers path>``, ``lora_te_/lora_te1_/lora_te2_/lora_te3_<HF CLIP path>``, diffusers
``unet.<path>`` / ``text_encoder.<path>``, and the PEFT module path itself. OpenCLIP's fused ``attn.in_proj_weight``
(SD2, SDXL's second encoder) is registered three times, as the q/k/v row blocks.

DiTs (Flux, SD3, Wan, Qwen-Image and any other ``<stack>.<i>.`` transformer): every denoiser module ``X`` answers to
``lora_unet_<X with . → _>``, ``lora_transformer_…``, ``lycoris_…``, ``diffusion_model.X``, ``transformer.X`` and
``X``; and, where the family has a second spelling (:mod:`studio.lora.dit_names`), so do its names in the other one.
A LoRA module fused where the target is split (kohya Flux ``img_attn_qkv`` on a diffusers model) maps to several
targets, each taking a row block of ΔW; a split module onto a fused target fills a row block of the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..layout.sd_keys import UNET_PREFIX, openclip_to_hf, unet_from_ldm, unet_to_ldm
from .dit_names import ADALN, QKV_MLP, part_rows, spelling_groups

Rows = tuple[int, int]


@dataclass(frozen=True)
class Target:
    weight: str                   # tensor key in the target
    bias: str | None = None       # its bias key, when present
    rows: Rows | None = None      # [start, stop) rows of the target that ΔW fills (a fused qkv / in_proj), else all
    delta_rows: Rows | None = None  # [start, stop) rows of the module's ΔW that go here (a fused LoRA, split target)

    @property
    def part(self) -> int | None:
        """q/k/v index of an equal-thirds row block (OpenCLIP in_proj), else None."""
        if self.rows is None or self.delta_rows is not None:
            return None
        n = self.rows[1] - self.rows[0]
        return self.rows[0] // n if n else None


def _u(path: str) -> str:
    return path.replace(".", "_")


def _hf_variants(hf_module: str) -> list[str]:
    return [hf_module] if hf_module.startswith("text_model.") else [hf_module, "text_model." + hf_module]


def target_index(source) -> dict[str, tuple[Target, ...]]:
    """alias → the Target(s) a LoRA module of that name patches, for every weight tensor of ``source``."""
    keys = source.keys()
    kset = set(keys)
    up_attn = frozenset(int(m[1]) for k in keys if (m := re.match(r"^unet\.up_blocks\.(\d+)\.attentions\.", k)))
    has_te2 = any(k.startswith("text_encoder_2.") for k in keys)
    flux = any(".single_transformer_blocks." in k or "single_blocks." in k for k in keys[:5000])
    out: dict[str, tuple[Target, ...]] = {}

    def add(alias: str, t: Target):
        out.setdefault(alias, (t,))

    for k in keys:
        if k.endswith("attn.in_proj_weight"):
            mod = k[: -len("_weight")]                     # ...attn.in_proj
            bias = mod + "_bias" if mod + "_bias" in kset else None
            for prefix, te in (("cond_stage_model.model.", "te"), ("conditioner.embedders.1.model.", "te2"),
                               ("conditioner.embedders.0.model.", "te2")):
                if k.startswith(prefix):
                    n = int(source.info(k).shape[0]) // 3
                    for hf, part in openclip_to_hf(k[len(prefix):]):
                        hf_mod = hf[: -len(".weight")]
                        t = Target(k, bias, (part * n, (part + 1) * n))
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
    _add_dit(source, keys, kset, out)
    return out


DIT_PREFIXES = (UNET_PREFIX, "transformer.", "diffusion_model.", "")
NOT_DENOISER = ("text_encoder", "text_encoders.", "cond_stage_model.", "conditioner.", "first_stage_model.", "vae.",
                "model.", "unet.", "transformer.", "diffusion_model.")
_STACK = re.compile(r"^[A-Za-z_]*(blocks|layers)\.\d+\.")


def dit_prefix(keys) -> str | None:
    """The denoiser prefix of a DiT (``model.diffusion_model.``, ``transformer.``, ``diffusion_model.`` or none), or
    None when ``keys`` are not a DiT's (a UNet, an LLM)."""
    for p in DIT_PREFIXES:
        rel = [k[len(p):] for k in keys if k.startswith(p) and (p or not k.startswith(NOT_DENOISER))]
        if not rel:
            continue
        if any(r.startswith(("input_blocks.", "down_blocks.", "output_blocks.", "up_blocks.")) for r in rel):
            return None
        if any(_STACK.match(r) for r in rel):
            return p
    return None


def dit_aliases(mod: str) -> list[str]:
    """Every name a LoRA may give the denoiser module ``mod`` (its path without the model's prefix)."""
    u = _u(mod)
    return ["lora_unet_" + u, "lora_transformer_" + u, "lycoris_" + u, "diffusion_model." + mod, "transformer." + mod,
            mod]


def _add_dit(source, keys, kset: set[str], out: dict[str, tuple[Target, ...]]) -> None:
    p = dit_prefix(keys)
    if p is None:
        return

    def target(mod: str, rows=None, delta_rows=None) -> Target:
        return Target(p + mod + ".weight", p + mod + ".bias" if p + mod + ".bias" in kset else None, rows, delta_rows)

    rel = {k[len(p):] for k in keys if k.startswith(p) and (p or not k.startswith(NOT_DENOISER))}
    for r in sorted(rel):
        if r.endswith(".weight"):
            for a in dit_aliases(r[:-7]):
                out.setdefault(a, (target(r[:-7]),))

    def rows_of(mod: str) -> int:
        return int(source.info(p + mod + ".weight").shape[0])

    groups, hidden = spelling_groups(rel, rows_of)
    for g in groups:
        if g.orig + ".weight" in rel:                        # original spelling: diffusers names fill row blocks
            total = rows_of(g.orig)
            rows = part_rows(g, total, hidden)
            if rows is None:
                continue
            for i, name in enumerate(g.parts):
                mine = rows if g.kind == ADALN else [rows[i]]
                size = total if g.kind == ADALN else rows[i][1][1] - rows[i][1][0]   # the part's own ΔW rows
                ts = tuple(target(g.orig, None if o == (0, total) else o, None if d == (0, size) else d)
                           for o, d in mine)
                for a in dit_aliases(name):
                    out.setdefault(a, ts)
        elif all(d + ".weight" in rel for d in g.parts):   # diffusers spelling: an original name spans the parts
            total = sum(rows_of(d) for d in g.parts)
            rows = part_rows(g, total, rows_of(g.parts[0]) if g.kind == QKV_MLP else hidden)
            if rows is None or (g.kind != ADALN and [b - a for _, (a, b) in rows] != [rows_of(d) for d in g.parts]):
                continue
            parts = g.parts if g.kind != ADALN else g.parts * len(rows)
            ts = tuple(target(d, None if dr == (0, rows_of(d)) else dr, None if o == (0, total) else o)
                       for d, (o, dr) in zip(parts, rows))
            for a in dit_aliases(g.orig):
                out.setdefault(a, ts)
