"""Extract a LoRA from (tuned − base) by truncated SVD per module (kohya extract_lora_from_models semantics:
rank for linear and 1×1 modules, conv rank for k×k convs; kohya's clamp of the factors at a quantile only when asked:
by default the extraction is exact up to the rank), reporting the relative error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tqdm import tqdm

from ..devices import parse_dtype
from ..errors import StudioError
from ..layout.sd import base_family, diffusion_family
from ..layout.sd_keys import UNET_PREFIX, unet_from_ldm, unet_to_ldm
from ..sources import PrefixedSource, open_source
from .combine import SvdReport, svd_factor
from .io import check_output, root_source
from .names import target_index
from .write import LoraOut, write_lora

SKIP = re.compile(r"(^|\.)(first_stage_model|vae)\.|embed|position|token_embedding|positional_embedding|"
                  r"text_projection|logit_scale|(^|\.)lm_head\.|(^|\.)norm(\.|$)|_norm|ln_|layer_norm|norm\d")


def _kohya_names(base, family: str | None) -> dict[tuple[str, int | None], str]:
    """(weight key, q/k/v part) → the kohya module name a trainer would use for it."""
    index = target_index(base)
    up_attn = frozenset(int(m[1]) for k in base.keys() if (m := re.match(r"^unet\.up_blocks\.(\d+)\.attentions\.", k)))
    xl = family == "sdxl"
    names: dict[tuple[str, int | None], str] = {}
    for alias, ts in index.items():
        t = ts[0]
        if len(ts) != 1 or t.delta_rows is not None:
            continue                    # a fused name spread over split targets: the split ones have names of their own
        key = (t.weight, t.part)
        if family is not None and alias.startswith("lora_unet_") and names.get(key, "").startswith("lora_te_"):
            names[key] = alias          # a DiT's own modules outside its blocks (time_in, guidance_in …): the denoiser's
            continue
        if not alias.startswith("lora_") or key in names:
            if alias.startswith("lora_te_") and key in names and not xl and names[key].startswith("lora_te1_"):
                names[key] = alias      # SD1/SD2 diffusers: lora_te_, not lora_te1_
            continue
        names[key] = alias
    # the UNet: SD1/SD2 kohya LoRAs use diffusers names, SDXL ones use sgm (ldm) names
    for (w, part), _ in list(names.items()):
        mod = w[:-7]
        if w.startswith(UNET_PREFIX):
            r = mod[len(UNET_PREFIX):]
            d = None if xl else unet_from_ldm(r)
            names[(w, part)] = "lora_unet_" + (d or r).replace(".", "_")
        elif w.startswith("unet."):
            r = mod[5:]
            ldm = unet_to_ldm(r, up_attn) if xl else None
            names[(w, part)] = "lora_unet_" + (ldm or r).replace(".", "_")
    return names


def _peft_name(key: str) -> str:
    return key[:-7]


def extract(base_ref: str, tuned_ref: str, out: str | Path, rank: int, conv_rank: int | None = None,
            clamp_quantile: float | None = None, fmt: str = "kohya", min_diff: float = 1e-6,
            dtype: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    base, tuned = open_source(base_ref), open_source(tuned_ref)
    out = check_output(Path(out), [base, tuned], overwrite)
    if rank < 1:
        raise StudioError("--rank must be at least 1")
    family = base_family(diffusion_family(base))
    missing = [k for k in base.keys() if k not in tuned]
    if missing:
        raise StudioError(f"{len(missing)} tensors of the base are missing from the tuned model (e.g. {missing[0]})",
                          where=str(tuned_ref), hint="both models must have the same architecture and naming")
    kohya = _kohya_names(base, family) if fmt == "kohya" else {}
    is_pipeline = isinstance(root_source(base), PrefixedSource)
    if fmt == "peft" and family is not None and not is_pipeline:
        raise StudioError("PEFT format needs a diffusers or transformers base (module names a PEFT model can load)",
                          hint="use --format kohya for single-file checkpoints")
    work = []
    for k in base.keys():
        info = base.info(k)
        if not info.dtype.is_floating_point or len(info.shape) not in (2, 4) or SKIP.search(k):
            continue
        if tuple(info.shape) != tuple(tuned.info(k).shape):
            raise StudioError(f"tensor {k}: shapes differ ({info.shape} vs {tuned.info(k).shape})", where=str(tuned_ref))
        if k.endswith("attn.in_proj_weight"):
            if fmt != "kohya":
                continue
            work.extend((k, p) for p in range(3))
        elif k.endswith(".weight"):
            work.append((k, None))
    report = SvdReport()
    mods: dict[str, LoraOut] = {}
    skipped = 0
    it = work
    if progress:
        it = tqdm(work, desc="extracting", unit="module", leave=False)
    for k, part in it:
        d = tuned.get(k).to(torch.float32) - base.get(k).to(torch.float32)
        if part is not None:
            n = d.shape[0] // 3
            d = d[part * n:(part + 1) * n]
        if d.abs().max().item() <= min_diff:
            skipped += 1
            continue
        kxk = d.dim() == 4 and tuple(d.shape[2:]) != (1, 1)
        r = conv_rank if (kxk and conv_rank is not None) else rank
        if r <= 0:
            continue
        name = kohya.get((k, part)) if fmt == "kohya" else _peft_name(k)
        if name is None:
            continue
        up, down, err2, norm2 = svd_factor(d, r, clamp_quantile)
        report.add(name, err2, norm2)
        mods[name] = LoraOut(up=up.contiguous(), down=down.contiguous(), alpha=float(down.shape[0]))
    if not mods:
        raise StudioError("the two models do not differ (every delta is below --min-diff)", where=str(tuned_ref))
    meta = {"studio_recipe": json.dumps({"type": "lora-extract", "base": str(base_ref), "tuned": str(tuned_ref),
                                         "rank": rank, "conv_rank": conv_rank, "clamp_quantile": clamp_quantile}),
            "studio_svd_rel_error": f"{report.overall:.6g}"}
    style = "kohya" if fmt == "kohya" else ("diffusers" if is_pipeline else "peft")
    write_lora(out, mods, style=style, family=family, dtype=parse_dtype(dtype), metadata=meta,
               base_model=str(base_ref), overwrite=overwrite)
    base.close()
    tuned.close()
    return {"output": str(out), "format": style, "modules": len(mods), "unchanged_skipped": skipped,
            "overall_rel_error": report.overall, "module_errors": report.errors, "worst": report.worst()}
