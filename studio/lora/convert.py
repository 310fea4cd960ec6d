"""Rewrite a LoRA in a DiT's own spelling, exactly: e.g. a diffusers / AI-Toolkit Flux LoRA (split to_q/to_k/to_v)
→ a kohya sd-scripts LoRA on BFL names (fused ``img_attn.qkv``), or the reverse.

Per target tensor, each LoRA module that lands there contributes its down matrix (scaled by α/r) and an up matrix
whose rows are placed where the module's ΔW rows go (zeros elsewhere); the contributions are stacked on the rank
axis with alpha = the total rank. So ΔW of the written module equals the sum of what the modules put there, row for
row — a split q/k/v trio becomes one fused module of rank 3r (block-diagonal up), and a fused module split over
q/k/v targets becomes three modules of rank r that share its down (what diffusers' kohya converter also does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..devices import parse_dtype
from ..errors import StudioError
from ..sources import open_source
from .apply import match_network
from .io import check_output
from .names import dit_prefix, target_index
from .network import read_lora
from .write import LoraOut, write_lora

FORMATS = {"kohya": "lora_unet_", "diffusers": "transformer."}


def _module_name(weight_key: str, prefix: str, fmt: str) -> str:
    path = weight_key[len(prefix):-len(".weight")]
    return FORMATS[fmt] + (path.replace(".", "_") if fmt == "kohya" else path)


def convert_modules(net, base) -> dict[str, LoraOut]:
    """module name in the base's spelling (kohya names) → exact LoRA factors; plain linear LoRAs only."""
    prefix = dit_prefix(base.keys())
    if prefix is None:
        raise StudioError("`lora convert` rewrites LoRAs for diffusion transformers (Flux, SD3, Wan, …); this base "
                          "is not one", where=getattr(base, "ref", None), hint="use `lora bake` for other models")
    odd = [n for n, m in net.modules.items() if m.algo != "lora" or m.has_bias or "dora" in m.keys
           or m.fan_in_fan_out or len(m.shapes.get("down", ())) != 2]
    if odd:
        raise StudioError(f"{len(odd)} modules are not plain linear LoRAs (e.g. {odd[0]}): they have no exact "
                          "low-rank form in another spelling", where=net.ref,
                          hint="bake the LoRA into the model instead (`python -m studio lora bake`)")
    pieces: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    by_module: dict[tuple[str, str], torch.Tensor] = {}
    for mod, t in match_network(net, base, target_index(base)):
        down = net.source.get(mod.keys["down"]).to(torch.float32) * mod.scale
        up = net.source.get(mod.keys["up"]).to(torch.float32)
        rows = int(base.info(t.weight).shape[0])
        key = (t.weight, mod.name)
        if key not in by_module:
            by_module[key] = torch.zeros(rows, up.shape[1])
            pieces.setdefault(t.weight, []).append((by_module[key], down))
        a, b = t.rows or (0, rows)
        c, d = t.delta_rows or (0, up.shape[0])
        by_module[key][a:b] = up[c:d]
    return {_module_name(w, prefix, "kohya"): LoraOut(up=torch.cat([u for u, _ in ps], 1).contiguous(),
                                                      down=torch.cat([dn for _, dn in ps], 0).contiguous(),
                                                      alpha=float(sum(dn.shape[0] for _, dn in ps)))
            for w, ps in pieces.items()}


def convert(lora_ref: str, base_ref: str, out: str | Path, fmt: str = "kohya", dtype: str | None = None,
            overwrite: bool = False) -> dict:
    """Write ``lora_ref`` re-spelt for ``base_ref``'s module names (kohya ``lora_unet_…`` or diffusers
    ``transformer.…``). Returns a summary."""
    if fmt not in FORMATS:
        raise StudioError(f"unknown LoRA format {fmt!r}", hint=f"choose one of {', '.join(FORMATS)}")
    base = open_source(base_ref)
    net = read_lora(open_source(lora_ref))
    out = check_output(Path(out), [base, net.source], overwrite)
    mods = convert_modules(net, base)
    if fmt == "diffusers":
        prefix = dit_prefix(base.keys())
        names = {_module_name(w, prefix, "kohya"): _module_name(w, prefix, "diffusers")
                 for w in base.keys() if w.startswith(prefix) and w.endswith(".weight")}
        mods = {names[n]: m for n, m in mods.items()}
    write_lora(out, mods, style="kohya" if fmt == "kohya" else "diffusers", dtype=parse_dtype(dtype),
               overwrite=overwrite)
    net.source.close()
    base.close()
    return {"output": str(out), "format": fmt, "modules_in": len(net.modules), "modules_out": len(mods),
            "ranks": sorted({int(m.down.shape[0]) for m in mods.values()})}
