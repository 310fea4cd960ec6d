"""A base model seen through one or more LoRAs: ``get(key)`` returns W + Σ strengthᵢ·blockᵢ(key)·ΔWᵢ, lazily.

All matching and checking happens at construction from headers only: a LoRA module that matches nothing in the
base, a LoRA made for another family (SDXL LoRA on an SD1 checkpoint), or a ΔW whose shape does not fit its target
is an error listing the offending names — never a silent no-op (peers.md: SuperMerger #412).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import StudioError
from ..layout import detect_layout
from ..layout.presets import lookup_preset
from ..layout.sd import base_family, diffusion_family
from ..sources import REFERENCE_MODIFIERS, TensorSource, open_source
from ..sources.resolve import split_strength
from .names import Target, target_index
from .network import LoraModule, LoraNetwork, detect_lora_family, read_lora

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "Flux.1", "sd": "SD1.x/SD2.x", "sd3": "SD3"}
# DiT families whose LoRAs use Flux.1's module names (kohya ``lora_unet_double_blocks_…``): a LoRA read as "flux" may
# be theirs, and the modules' shapes decide (a misfit is reported module by module)
FLUX_NAMED = {"chroma": "flux", "flux2": "flux"}


@dataclass
class Patch:
    module: LoraModule
    net: LoraNetwork
    strength: float
    target: Target
    bias: bool = False


def check_family(net: LoraNetwork, base, target_family: str | None = None) -> None:
    """Refuse a LoRA made for another diffusion family than ``base``'s (``target_family``: its base family, known)."""
    lf = detect_lora_family(net)
    tf = target_family if target_family is not None else base_family(diffusion_family(base))
    tf = FLUX_NAMED.get(tf, tf)
    if lf is None or tf not in FAMILY_NAMES:
        return  # other DiTs: a LoRA's names alone do not tell their families apart; unmatched modules are reported
    ok = lf == tf or (lf == "sd" and tf in ("sd1", "sd2"))
    if not ok:
        raise StudioError(
            f"this LoRA was made for {FAMILY_NAMES.get(lf, lf)} but the model is {FAMILY_NAMES.get(tf, tf)}",
            where=net.ref, hint=f"use a {FAMILY_NAMES.get(tf, tf)} LoRA with this checkpoint (or the matching base model)")


def _extent(rows, n: int) -> int:
    return n if rows is None else rows[1] - rows[0]


def _fits(mod: LoraModule, t: Target, base) -> str | None:
    """None when ΔW (its ``delta_rows`` block) fits the target (its ``rows`` block), else a short reason."""
    shape = tuple(base.info(t.weight).shape)
    shape = (_extent(t.rows, shape[0]), *shape[1:])
    if mod.has_weight:
        ds = mod.delta_shape()
        if ds is not None and t.delta_rows is not None and t.delta_rows[1] > ds[0]:
            return f"ΔW {tuple(ds)} has no rows {t.delta_rows[0]}:{t.delta_rows[1]}"
        if ds is not None and t.delta_rows is not None and "dora" in mod.shapes and \
                math.prod(mod.shapes["dora"]) != ds[0]:
            return "a DoRA with per-column magnitudes cannot be split into row blocks"
        if ds is not None:
            ds = (_extent(t.delta_rows, ds[0]), *ds[1:])
        if ds is not None and (math.prod(ds) != math.prod(shape) or ds[0] != shape[0]):
            return f"ΔW {tuple(ds)} vs {shape}"
    if mod.has_bias and t.bias is None:
        return "bias delta but the target has no bias"
    return None


def _uncovered(mod: LoraModule, targets: tuple[Target, ...]) -> str | None:
    """A fused module split over several targets must be used whole: why not, or None."""
    split = [t.delta_rows for t in targets if t.delta_rows is not None]
    ds = mod.delta_shape() if split else None
    if not split or ds is None:
        return None
    taken = sorted(split)
    if len(split) != len(targets) or taken[0][0] != 0 or taken[-1][1] != ds[0] or \
            any(a[1] != b[0] for a, b in zip(taken, taken[1:])):
        return f"ΔW has {ds[0]} rows, the targets take {', '.join(f'{a}:{b}' for a, b in taken)}"
    return None


def match_network(net: LoraNetwork, base, index: dict[str, tuple[Target, ...]] | None = None
                  ) -> list[tuple[LoraModule, Target]]:
    """Match every LoRA module to its target tensor(s) (a fused module may feed several row blocks); raise listing
    the unmatched / misfitting ones."""
    index = index if index is not None else target_index(base)
    matched, unmatched, misfit = [], [], []
    for name, mod in net.modules.items():
        ts = index.get(name)
        if ts is None:
            unmatched.append(name)
            continue
        whys = [(t, why) for t in ts if (why := _fits(mod, t, base))]
        if not whys and (why := _uncovered(mod, ts)):
            whys = [(ts[0], why)]
        if whys:
            t, why = whys[0]
            misfit.append(f"{name} → {t.weight} ({why})")
            continue
        matched.extend((mod, t) for t in ts)
    if unmatched:
        show = ", ".join(unmatched[:12]) + (f", … ({len(unmatched)} in all)" if len(unmatched) > 12 else "")
        raise StudioError(f"{len(unmatched)} of {len(net.modules)} LoRA modules match no tensor of the model: {show}",
                          where=net.ref, hint=f"the model is {getattr(base, 'ref', '?')}; check that the LoRA was made "
                                               "for this architecture (`python -m studio lora inspect LORA --base MODEL`)")
    if misfit:
        show = "; ".join(misfit[:8]) + (f"; … ({len(misfit)} in all)" if len(misfit) > 8 else "")
        raise StudioError(f"{len(misfit)} LoRA modules do not fit their target tensors: {show}", where=net.ref,
                          hint="this LoRA was made for a different model size or family")
    return matched


def apply_dora(w: torch.Tensor, delta: torch.Tensor, mag: torch.Tensor, strength: float, fan_in_fan_out: bool = False):
    """W + m·(mag·(W+ΔW)/‖W+ΔW‖ − W) (PEFT dora.py; LyCORIS wd_on_out). Norm per output row when ``mag`` has one
    value per output (PEFT, LyCORIS), per input column when it has one per input (older A1111 loader)."""
    wl, dl = (w.T, delta.T) if fan_in_fan_out else (w, delta)
    merged = wl + dl
    out_dim = merged.shape[0]
    if mag.numel() == out_dim and (mag.dim() == 1 or mag.shape[0] == out_dim):
        norm = merged.reshape(out_dim, -1).norm(dim=1).reshape(out_dim, *([1] * (merged.dim() - 1)))
        new = merged * (mag.reshape(out_dim, *([1] * (merged.dim() - 1))) / norm)
    elif merged.dim() >= 2 and mag.numel() == merged.shape[1]:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        shape = [1, merged.shape[1]] + [1] * (merged.dim() - 2)
        new = merged * (mag.reshape(shape) / norm.reshape(shape))
    else:
        raise StudioError(f"DoRA magnitude of shape {tuple(mag.shape)} fits neither rows nor columns of {tuple(merged.shape)}")
    res = wl + strength * (new - wl)
    return res.T if fan_in_fan_out else res


def _rows(t: torch.Tensor, rows) -> torch.Tensor:
    return t if rows is None else t[rows[0]:rows[1]]


def _dora_rows(mag: torch.Tensor, rows, p: Patch) -> torch.Tensor:
    """The magnitudes of a row block: exact when DoRA norms each output row (PEFT, LyCORIS); a per-column norm
    spans the whole fused matrix and cannot be split."""
    if rows is None:
        return mag
    full = (p.module.delta_shape() or (0,))[0]
    if mag.dim() >= 1 and mag.shape[0] == full and mag.numel() == full:
        return mag.reshape(-1)[rows[0]:rows[1]]
    raise StudioError(f"LoRA module {p.module.name}: a DoRA with per-column magnitudes cannot be split over "
                      f"{p.target.weight}'s row blocks", where=p.net.ref,
                      hint="apply it to a model in the LoRA's own spelling (fused or split as it was trained)")


class LoraAppliedSource(TensorSource):
    """``base`` with LoRAs applied on read. Keys, shapes and dtypes are the base's."""

    def __init__(self, base: TensorSource, loras: list[tuple[LoraNetwork, float, Callable[[str], float] | None]],
                 ref: str | None = None):
        super().__init__(ref=ref or base.ref, path=base.path, kind=base.kind, config=base.config,
                         metadata=dict(base.metadata), folder=base.folder)
        self.base = base
        self._index = {k: base.info(k) for k in base.keys()}
        self.loras = loras
        self.patches: dict[str, list[Patch]] = {}
        index = target_index(base)
        tf = base_family(diffusion_family(base))
        for net, strength, block_fn in loras:
            check_family(net, base, tf)
            for mod, t in match_network(net, base, index):
                s = strength * (block_fn(t.weight) if block_fn is not None else 1.0)
                if s == 0.0:
                    continue
                if mod.has_weight:
                    self.patches.setdefault(t.weight, []).append(Patch(mod, net, s, t))
                if mod.has_bias:
                    self.patches.setdefault(t.bias, []).append(Patch(mod, net, s, t, bias=True))

    def _read(self, key: str) -> torch.Tensor:
        plist = self.patches.get(key)
        if not plist:
            return self.base.get(key)
        orig = self.base.get(key)
        w = orig.to(torch.float32, copy=True)
        for p in plist:
            rows, drows = p.target.rows, p.target.delta_rows
            view = w if rows is None else w[rows[0]:rows[1]]
            src = p.net.source
            keys = p.module.keys
            if p.bias:
                if "replace_b" in keys:  # whole tensor saved by PEFT: move toward it by the strength
                    view.add_(_rows(src.get(keys["replace_b"]).to(torch.float32), drows) - view, alpha=p.strength)
                else:
                    view.add_(_rows(p.module.bias_delta(src), drows).reshape(view.shape), alpha=p.strength)
                continue
            if "replace" in keys:
                whole = _rows(src.get(keys["replace"]).to(torch.float32), drows)
                view.add_(whole.reshape(view.shape) - view, alpha=p.strength)
                if p.module.algo == "replace":
                    continue
            d = p.module.delta(src, tuple(view.shape), drows)
            mag = p.module.magnitude(src)
            if mag is not None:
                view.copy_(apply_dora(view, d, _dora_rows(mag, drows, p), p.strength, p.module.fan_in_fan_out))
            else:
                view.add_(d, alpha=p.strength)
        return w.to(orig.dtype)

    def close(self):
        self.base.close()
        for net, _, _ in self.loras:
            net.source.close()


def block_weight_fn(spec, base) -> Callable[[str], float] | None:
    """Per-block LoRA weights: a preset name, "v1,v2,…" (one value per block in SuperMerger order, 26 SD1 / 20
    SDXL), "IN04=0.5,OUT=0,*=1" (block ids or prefixes; * is the default), a list, or a dict."""
    if spec is None or spec == "":
        return None
    layout = detect_layout(base)
    blocks = list(getattr(layout, "mbw_ids", layout.groups))
    values: dict[str, float] = {}
    default = 1.0
    if isinstance(spec, str):
        text = spec.strip()
        preset = lookup_preset(text, len(blocks))
        if preset is not None:
            spec = preset
        elif "=" in text or ":" in text:
            spec = {}
            for item in text.split(","):
                k, _, v = item.replace(":", "=").partition("=")
                spec[k.strip()] = v
        else:
            try:
                spec = [float(v) for v in text.replace(" ", "").split(",") if v]
            except ValueError:
                raise StudioError(f"block weights {text!r}: not a preset, a list of numbers or BLOCK=value pairs",
                                  hint="presets are listed in assets/presets/block_weights.tsv") from None
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(blocks):
            raise StudioError(f"{len(spec)} block weights given, the model has {len(blocks)} blocks "
                              f"({blocks[0]}…{blocks[-1]})", hint="give one value per block in SuperMerger order")
        values = {b: float(v) for b, v in zip(blocks, spec)}
    elif isinstance(spec, dict):
        for k, v in spec.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise StudioError(f"block weight for {k!r} is not a number: {v!r}") from None
            if k == "*":
                default = v
                continue
            hits = [b for b in layout.groups if b == k or b.startswith(k)]
            if not hits:
                raise StudioError(f"unknown block {k!r}", hint=f"blocks are {', '.join(layout.groups)}")
            for b in hits:
                values[b] = v
    else:
        raise StudioError(f"block weights of type {type(spec).__name__} are not understood")
    return lambda key: values.get(layout.group_of(key), default)


def apply_lora_source(src: TensorSource, lora_src: TensorSource, strength: float = 1.0, ref: str | None = None,
                      blocks=None) -> LoraAppliedSource:
    """``model: BASE+LORA[:strength]``: the base with one LoRA applied lazily (validated from headers now)."""
    net = read_lora(lora_src)
    return LoraAppliedSource(src, [(net, float(strength), block_weight_fn(blocks, src))], ref=ref)


def lora_reference(base: TensorSource, suffix: str, ref: str) -> LoraAppliedSource:
    """``BASE+LORA[:strength]`` in a reference (a studio.sources reference modifier): the base with the LoRA applied."""
    lora_text, strength = split_strength(suffix)
    return apply_lora_source(base, open_source(lora_text), strength, ref=ref)


REFERENCE_MODIFIERS.append(lora_reference)
