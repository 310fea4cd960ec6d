"""Bake LoRAs into a checkpoint (SD single file, diffusers pipeline, transformers folder), streaming tensor by tensor."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..devices import parse_dtype
from ..errors import StudioError
from ..layout.sd import diffusion_family
from ..sd.metadata import sd_output_metadata
from ..sources import open_source
from .apply import LoraAppliedSource, block_weight_fn
from .io import check_output, save_like
from .network import read_lora


@dataclass
class LoraSpec:
    ref: str
    strength: float = 1.0
    blocks: str | None = None

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``FILE[:STRENGTH[:BLOCKS]]``; BLOCKS is a preset name, 26/20 comma-separated values or BLOCK=v pairs."""
        parts = text.split(":")
        # from the right: ...:strength  or  ...:strength:blocks  (paths may contain ':' on Windows)
        if len(parts) >= 3 and _is_float(parts[-2]):
            return cls(":".join(parts[:-2]), float(parts[-2]), parts[-1])
        if len(parts) >= 2 and _is_float(parts[-1]):
            return cls(":".join(parts[:-1]), float(parts[-1]))
        return cls(text)


def _is_float(s: str) -> bool:
    return bool(re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", s))


def bake(base_ref: str, out: str | Path, loras: list[LoraSpec], blocks=None, dtype: str | None = None,
         overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``base + Σ strengthᵢ·ΔWᵢ`` to ``out``. Returns a summary (modules and tensors patched per LoRA)."""
    if not loras:
        raise StudioError("no LoRA given", hint="add --lora FILE[:STRENGTH]")
    base = open_source(base_ref)
    nets = [read_lora(open_source(spec.ref)) for spec in loras]
    applied = LoraAppliedSource(base, [(net, spec.strength, block_weight_fn(spec.blocks or blocks, base))
                                       for net, spec in zip(nets, loras)], ref=f"{base_ref}+lora")
    out = check_output(Path(out), [base] + [n.source for n in nets], overwrite)
    family = diffusion_family(base)
    recipe = {"type": "lora-bake", "base": str(base_ref), "blocks": blocks,
              "loras": [{"model": s.ref, "strength": s.strength, "blocks": s.blocks} for s in loras]}
    metadata: dict[str, str] = {}
    if family is not None and out.suffix == ".safetensors":
        metadata = sd_output_metadata(recipe, [base] + [n.source for n in nets], family)
    else:
        metadata = {"studio_recipe": json.dumps(recipe)}
    save_like(applied, out, dtype=parse_dtype(dtype), metadata=metadata, overwrite=overwrite, progress=progress)
    summary = {"output": str(out), "family": family, "tensors_patched": len(applied.patches), "loras": []}
    for net, spec in zip(nets, loras):
        summary["loras"].append({"lora": spec.ref, "flavour": net.flavour, "modules": len(net.modules),
                                 "strength": spec.strength})
    applied.close()
    return summary
