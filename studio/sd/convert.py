"""Whole SD1 / SD2 / SDXL checkpoints renamed between the two layouts, as output entries (studio.output.forms).

A diffusers pipeline (``unet.``, ``vae.``, ``text_encoder.``, ``text_encoder_2.``) becomes an ldm single file
(``model.diffusion_model.``, ``first_stage_model.``, and ``cond_stage_model.transformer.`` for SD1's CLIP-L,
``cond_stage_model.model.`` for SD2's OpenCLIP-H, ``conditioner.embedders.0.transformer.`` / ``.1.model.`` for
SDXL's CLIP-L and OpenCLIP-bigG), and back. Names come from :mod:`studio.layout.sd_keys`; the tensors that change
shape are the VAE's mid attention (Linear ↔ 1×1 conv), OpenCLIP's fused ``in_proj`` (↔ q, k, v rows) and its
``text_projection`` (transposed). Rules: formats.md §1.3; diffusers' ``convert_open_clip_checkpoint`` (SD2's last
resblock is unused: diffusers' SD2 text encoder stops one layer short).

CLIP's ``position_ids`` are dropped (an ``arange`` buffer every loader makes itself; transformers no longer stores
it). What else has no place in the target is returned as left out: EMA copies and schedule buffers of ldm files (the
scheduler config carries the schedule), SD2's last OpenCLIP layer and projection, components an ldm file has no slot
for (a safety checker).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..engine.plan import INPUT_VIEWS
from ..errors import StudioError
from ..layout.sd import base_family, diffusion_family, layout_for
from ..layout.sd_keys import (LAYERS_PER_BLOCK, UNET_PREFIX, VAE_PREFIX, is_vae_attn_linear, openclip_from_hf,
                              openclip_to_hf, unet_from_ldm, unet_to_ldm, vae_from_ldm, vae_to_ldm)
from ..output.forms import OutputEntry, Reshape, Rows, concat, same, transposed
from ..sources import TensorInfo, TensorSource
from .vae import vae_levels

Infos = dict[str, TensorInfo]

# text encoder slots: diffusers component → (kind, ldm prefix)
TEXT_ENCODERS = {
    "sd1": {"text_encoder": ("clip", "cond_stage_model.transformer.")},
    "sd2": {"text_encoder": ("openclip", "cond_stage_model.model.")},
    "sdxl": {"text_encoder": ("clip", "conditioner.embedders.0.transformer."),
             "text_encoder_2": ("openclip", "conditioner.embedders.1.model.")},
}


@dataclass
class Converted:
    entries: list[OutputEntry] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def rename(self, key: str, info: TensorInfo, name: str | None, build=None, shape=None) -> None:
        """``key`` written as ``name`` (None: left out), optionally built into ``shape``."""
        if name is None:
            self.left_out.append(key)
            return
        entry_info = TensorInfo(tuple(shape), info.dtype) if shape is not None else info
        self.entries.append(OutputEntry(name, entry_info, (key,), build or same))


def _under(outputs: Infos, prefix: str) -> Infos:
    return {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)}


def count_indexed(keys, pattern: str) -> int:
    """1 + the largest index ``pattern``'s group 1 matches in ``keys`` (0 when none does)."""
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ------------------------------------------------------------------------------------------------ diffusers → ldm
def to_ldm(outputs: Infos, family: str) -> Converted:
    """A diffusers SD pipeline's tensors (``family``: sd1, sd2, sdxl) as an ldm single file's entries."""
    out = Converted()
    slots = TEXT_ENCODERS[family]
    for comp in sorted({k.partition(".")[0] for k in outputs}):
        sub, p = _under(outputs, comp + "."), comp + "."
        if comp == "unet":
            _unet_to_ldm(out, sub, p)
        elif comp == "vae":
            _vae_to_ldm(out, sub, p)
        elif comp in slots and slots[comp][0] == "clip":
            for k, info in sub.items():
                if not k.endswith("position_ids"):
                    out.rename(p + k, info, slots[comp][1] + _hf_text_name(k))
        elif comp in slots:
            _openclip_to_ldm(out, sub, p, slots[comp][1])
        else:
            out.left_out += [p + k for k in sub]
    return out


def _unet_to_ldm(out: Converted, sub: Infos, p: str) -> None:
    up_attn = frozenset(int(m[1]) for k in sub if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k)))
    layers = count_indexed(sub, r"down_blocks\.0\.resnets\.(\d+)\.")
    for k, info in sub.items():
        ldm = unet_to_ldm(k, up_attn, layers)
        out.rename(p + k, info, UNET_PREFIX + ldm if ldm else None)


def _vae_to_ldm(out: Converted, sub: Infos, p: str) -> None:
    levels = vae_levels(sub)
    for k, info in sub.items():
        ldm = vae_to_ldm(k, levels)
        if is_vae_attn_linear(k) and len(info.shape) == 2:
            shape = (*info.shape, 1, 1)
            out.rename(p + k, info, VAE_PREFIX + ldm, Reshape(shape), shape)
        else:
            out.rename(p + k, info, VAE_PREFIX + ldm if ldm else None)


def _hf_text_name(name: str) -> str:
    """transformers ≥ 5.6 saves CLIPTextModel without its ``text_model.`` level; ldm files always have it."""
    return name if name.startswith(("text_model.", "text_projection")) else "text_model." + name


def _openclip_to_ldm(out: Converted, sub: Infos, p: str, ldm_prefix: str) -> None:
    fused: dict[str, dict[int, str]] = {}
    for k, info in sub.items():
        hit = openclip_from_hf(_hf_text_name(k))
        if k.endswith("position_ids"):
            continue
        if hit is None:
            out.rename(p + k, info, None)
        elif hit[1] is not None:
            fused.setdefault(hit[0], {})[hit[1]] = k
        elif hit[0] == "text_projection":
            out.rename(p + k, info, ldm_prefix + hit[0], transposed, info.shape[::-1])
        else:
            out.rename(p + k, info, ldm_prefix + hit[0])
    for name, qkv in fused.items():
        if sorted(qkv) != [0, 1, 2]:
            out.left_out += [p + k for k in qkv.values()]
            continue
        parts = tuple(p + qkv[i] for i in range(3))
        info = sub[qkv[0]]
        shape = (3 * info.shape[0], *info.shape[1:])
        out.entries.append(OutputEntry(ldm_prefix + name, TensorInfo(shape, info.dtype), parts, concat))


# ------------------------------------------------------------------------------------------------ ldm → diffusers
def to_diffusers(outputs: Infos, family: str) -> Converted:
    """An ldm SD checkpoint's tensors (``family``: sd1, sd2, sdxl) as a diffusers pipeline's entries
    (``unet.…``, ``vae.…``, ``text_encoder.…``, ``text_encoder_2.…``)."""
    out = Converted()
    unet, vae = _under(outputs, UNET_PREFIX), _under(outputs, VAE_PREFIX)
    downsamplers = [int(m[1]) for k in unet if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))]
    layers = min(downsamplers) - 1 if downsamplers else LAYERS_PER_BLOCK
    for k, info in unet.items():
        name = unet_from_ldm(k, layers)
        out.rename(UNET_PREFIX + k, info, "unet." + name if name else None)
    levels = vae_levels(vae)
    for k, info in vae.items():
        name = vae_from_ldm(k, levels)
        if name and is_vae_attn_linear(name) and len(info.shape) == 4:
            out.rename(VAE_PREFIX + k, info, "vae." + name, Reshape(info.shape[:2]), info.shape[:2])
        else:
            out.rename(VAE_PREFIX + k, info, "vae." + name if name else None)
    claimed = {UNET_PREFIX + k for k in unet} | {VAE_PREFIX + k for k in vae}
    for comp, (kind, prefix) in TEXT_ENCODERS[family].items():
        sub = _under(outputs, prefix)
        claimed |= {prefix + k for k in sub}
        if kind == "clip":
            for k, info in sub.items():
                if not k.endswith("position_ids"):
                    out.rename(prefix + k, info, f"{comp}.{_hf_text_name(k)}")
        else:
            _openclip_from_ldm(out, sub, prefix, comp, last_layer=family == "sd2")
    out.left_out += [k for k in outputs if k not in claimed]
    return out


def _openclip_from_ldm(out: Converted, sub: Infos, prefix: str, comp: str, last_layer: bool) -> None:
    """``last_layer``: SD2 leaves out OpenCLIP's last resblock and its projection (diffusers' SD2 encoder is a
    CLIPTextModel one layer short: SD2 conditions on the penultimate layer)."""
    unused = "transformer.resblocks.%d." % (count_indexed(sub, r"transformer\.resblocks\.(\d+)\.") - 1)
    for k, info in sub.items():
        targets = [] if last_layer and (k.startswith(unused) or k == "text_projection") else openclip_to_hf(k)
        if not targets:
            out.rename(prefix + k, info, None)
        elif k == "text_projection":
            out.rename(prefix + k, info, f"{comp}.{targets[0][0]}", transposed, info.shape[::-1])
        elif targets[0][1] is None:
            out.rename(prefix + k, info, f"{comp}.{targets[0][0]}")
        else:
            d = info.shape[0] // 3
            for name, i in targets:
                out.rename(prefix + k, info, f"{comp}.{name}", Rows(i * d, (i + 1) * d), (d, *info.shape[1:]))


# ------------------------------------------------------------------------------------------------ inputs
def convertible_family(family: str | None) -> str | None:
    """sd1 / sd2 / sdxl (inpainting and pix2pix variants included) when ``family``'s names convert; None for any
    other (Flux, an SDXL refiner, Playground, not a diffusion model)."""
    if family is None or family in ("sdxl-refiner", "playground-v2.5"):
        return None
    base = base_family(family)
    return base if base in TEXT_ENCODERS else None


class ConvertedSource(TensorSource):
    """``source`` seen under other names: each entry's tensor is built from ``source``'s tensors when read."""

    def __init__(self, source: TensorSource, entries: list[OutputEntry]):
        super().__init__(ref=source.ref, path=source.path, kind=source.kind, config=source.config,
                         metadata=dict(source.metadata), folder=source.folder)
        self.inner = source
        self.entries = {e.name: e for e in entries}
        self._index = {e.name: e.info for e in entries}

    def _read(self, key):
        entry = self.entries[key]
        return entry.build([self.inner.get(p) for p in entry.parts])

    def release(self, key):
        for p in self.entries[key].parts:
            self.inner.release(p)

    def close(self):
        self.inner.close()


def _whole_sd(source: TensorSource):
    """(base family, naming) of a whole SD checkpoint (ldm file or diffusers pipeline), else None."""
    layout = layout_for(source) if diffusion_family(source) is not None else None
    family = convertible_family(getattr(layout, "family", None))
    if family is None or (layout.naming, layout.unet_prefix) not in (("ldm", UNET_PREFIX), ("diffusers", "unet.")):
        return None
    return family, layout.naming


def sd_input_view(reference: TensorSource, source: TensorSource) -> TensorSource | None:
    """The INPUT_VIEWS hook: an SD pipeline among ldm checkpoints is seen in ldm names, an ldm checkpoint among
    pipelines in diffusers names, so one recipe may mix both namings (the reference model's naming is the merge's)."""
    ref, src = _whole_sd(reference), _whole_sd(source)
    if ref is None or src is None or ref[0] != src[0] or ref[1] == src[1]:
        return None
    infos = {k: source.info(k) for k in source.keys()}
    convert = to_ldm if ref[1] == "ldm" else to_diffusers
    view = ConvertedSource(source, convert(infos, ref[0]).entries)
    missing = [k for k in reference.keys() if k not in view and not k.endswith("position_ids")]
    if missing:  # e.g. SD2: a pipeline has no last OpenCLIP layer for an ldm reference's
        raise StudioError(f"this {src[1]} model has no counterpart of {len(missing)} tensors of the {ref[1]} "
                          f"reference (e.g. {missing[0]})", where=source.ref,
                          hint="list this model first (or make it base_model): the merge then runs in its naming")
    return view


INPUT_VIEWS.append(sd_input_view)
