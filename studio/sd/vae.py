"""The VAE slot of SD merges: never averaged. By default every VAE tensor is copied from the reference model (the base,
else the first model); with a recipe-level ``vae: PATH`` the VAE is baked from that file, which may be an ldm file
(``first_stage_model.…`` or bare ``encoder.down.0…``), a diffusers AutoencoderKL file/folder (``encoder.down_blocks…``)
or a whole checkpoint/pipeline; names and the attention 1×1-conv ↔ Linear shapes are converted as needed."""

from __future__ import annotations

import math
import re

from ..engine.plan import PLAN_HOOKS
from ..errors import StudioError
from ..sources import TensorInfo, TensorSource, open_source
from ..layout.sd_keys import VAE_PREFIX, VAE_PREFIXES, vae_from_ldm, vae_to_ldm


def vae_levels(keys) -> int:
    """How many resolution levels a VAE has, from its keys in either naming (the encoder's down blocks)."""
    found = {int(m[1]) for k in keys if (m := re.search(r"encoder\.down(?:_blocks)?\.(\d+)\.", k))}
    return max(found) + 1 if found else 4


class VaeSource(TensorSource):
    """A VAE file seen under the output's key names (and shapes)."""

    def __init__(self, vae: TensorSource, wanted: dict[str, TensorInfo]):
        super().__init__(ref=vae.ref, path=vae.path, kind=vae.kind, config=vae.config, metadata=dict(vae.metadata),
                         folder=vae.folder)
        self.vae = vae
        levels = vae_levels(vae.keys())
        self._map: dict[str, str] = {}
        missing = []
        for out_key, info in wanted.items():
            pre = next(p for p in VAE_PREFIXES if out_key.startswith(p))
            r = out_key[len(pre):]
            ldm, diff = (r, vae_from_ldm(r, levels)) if pre == VAE_PREFIX else (vae_to_ldm(r, levels), r)
            cands = [c for c in (VAE_PREFIX + (ldm or ""), ldm, "vae." + (diff or ""), diff) if c]
            hit = next((c for c in cands if c in vae), None)
            if hit is None or math.prod(vae.info(hit).shape) != info.numel:
                missing.append(out_key)
                continue
            self._map[out_key] = hit
            self._index[out_key] = info
        if missing:
            raise StudioError(f"the VAE file lacks {len(missing)} of the model's {len(wanted)} VAE tensors "
                              f"(e.g. {missing[0]})", where=vae.ref, hint="give an SD/SDXL VAE matching this model family")

    def _read(self, key):
        info = self._index[key]
        return self.vae.get(self._map[key]).reshape(info.shape).to(info.dtype)


def apply_vae(tasks: list, recipe, sources: list) -> None:
    """Edit the plan's tasks in place: VAE tasks become copies (from ``recipe.vae`` when set, appended to
    ``sources``; else from source 0, the reference model)."""
    vae_tasks = [t for t in tasks if t.group == "VAE"]
    if not vae_tasks:
        return
    vae_ref = getattr(recipe, "vae", None)
    idx = 0
    if vae_ref:
        src = VaeSource(open_source(str(vae_ref)), {t.out_key: t.info for t in vae_tasks})
        sources.append(src)
        idx = len(sources) - 1
    for t in vae_tasks:
        t.op = "copy"
        t.inputs = [(idx, t.out_key)]
        t.base = None
        t.params = {}


def vae_plan_hook(plan) -> None:
    """A ``studio.engine.plan.PLAN_HOOKS`` entry: plans whose layout has a VAE slot get it filled by apply_vae."""
    if "VAE" in getattr(plan.layout, "groups", ()):
        apply_vae(plan.tasks, plan.recipe, plan.sources)


PLAN_HOOKS.append(vae_plan_hook)
