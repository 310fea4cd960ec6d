"""LoRA + LoRA → one LoRA. Exact rank concatenation when every input is a plain LoRA (each weight and α/r folded
into down, alpha = total rank, so ΔW = Σ wᵢ·ΔWᵢ exactly; cf. the inexact kohya --concat, sd-scripts#868); otherwise,
or when a target rank is given, SVD re-factorisation of Σ wᵢ·ΔWᵢ with the relative Frobenius error reported per
module and overall (formats.md §4.3)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..devices import parse_dtype
from ..errors import StudioError
from ..sources import open_source
from .io import check_output
from .network import LoraNetwork, detect_lora_family, read_lora
from .write import LoraOut, write_lora


@dataclass
class SvdReport:
    errors: dict[str, float] = field(default_factory=dict)   # module → ‖ΔW − UD‖_F / ‖ΔW‖_F
    sq_err: float = 0.0
    sq_norm: float = 0.0

    def add(self, name: str, err2: float, norm2: float):
        self.errors[name] = math.sqrt(err2 / norm2) if norm2 > 0 else 0.0
        self.sq_err += err2
        self.sq_norm += norm2

    @property
    def overall(self) -> float:
        return math.sqrt(self.sq_err / self.sq_norm) if self.sq_norm > 0 else 0.0

    def worst(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.errors.items(), key=lambda kv: -kv[1])[:n]


def svd_factor(delta: torch.Tensor, rank: int, clamp_quantile: float | None = None):
    """ΔW [out, in, *k] → (up [out, k', 1, 1…], down [k', in, *k]) with k' ≤ rank; returns (up, down, err², norm²)."""
    out_dim = delta.shape[0]
    mat = delta.reshape(out_dim, -1).to(torch.float32)
    k = max(1, min(rank, *mat.shape))
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    up = u[:, :k] * s[:k]
    down = vh[:k].clone()
    if clamp_quantile is not None and clamp_quantile < 1.0:
        both = torch.cat([up.flatten(), down.flatten()]).abs()
        if both.numel() > 16_000_000:  # torch.quantile's input limit: estimate from a strided sample
            both = both[:: math.ceil(both.numel() / 16_000_000)]
        hi = torch.quantile(both, clamp_quantile).item()
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    approx = up @ down
    err2 = float((mat - approx).pow(2).sum())
    norm2 = float(mat.pow(2).sum())
    if delta.dim() > 2:
        down = down.reshape(k, *delta.shape[1:])
        up = up.reshape(out_dim, k, *([1] * (delta.dim() - 2)))
    return up, down, err2, norm2


def combine(out: str | Path, loras: list[tuple[str, float]], rank: int | None = None, conv_rank: int | None = None,
            clamp_quantile: float | None = None, dtype: str | None = None, overwrite: bool = False,
            progress: bool = True) -> dict:
    if not loras:
        raise StudioError("no LoRA given", hint="add --lora FILE[:WEIGHT]")
    nets: list[LoraNetwork] = [read_lora(open_source(ref)) for ref, _ in loras]
    weights = [w for _, w in loras]
    out = check_output(Path(out), [n.source for n in nets], overwrite)
    styles = {n.style for n in nets}
    if len(styles) > 1:
        raise StudioError(f"cannot combine LoRAs written in different naming styles ({', '.join(sorted(styles))})",
                          hint="convert them to one style first, or bake each into the checkpoint")
    fams = {f for n in nets if (f := detect_lora_family(n)) not in (None, "sd")}
    if len(fams) > 1:
        raise StudioError(f"the LoRAs are for different model families ({', '.join(sorted(fams))})")
    for n in nets:
        dora = [m for m, mod in n.modules.items() if "dora" in mod.keys]
        if dora:
            raise StudioError(f"{len(dora)} DoRA modules (e.g. {dora[0]}): their effect depends on the base weights",
                              where=n.ref, hint="bake DoRA LoRAs into the checkpoint instead of combining them")
    exact = rank is None and all(n.is_plain_lora() for n in nets)
    names: list[str] = []
    for n in nets:
        names.extend(m for m in n.modules if m not in names)
    result: dict[str, LoraOut] = {}
    report = SvdReport()
    it = names
    if progress:
        it = tqdm(names, desc="combining", unit="module", leave=False)
    for name in it:
        parts = [(n, w, n.modules[name]) for n, w in zip(nets, weights) if name in n.modules]
        shapes = {p[2].delta_shape() for p in parts if p[2].has_weight}
        if len({(s[0], math.prod(s)) for s in shapes if s}) > 1:
            raise StudioError(f"module {name}: the LoRAs disagree on its shape ({', '.join(map(str, shapes))})")
        if exact:
            downs, ups = [], []
            for n, w, m in parts:
                down = n.source.get(m.keys["down"]).to(torch.float32)
                downs.append(down * (w * m.scale))
                ups.append(n.source.get(m.keys["up"]).to(torch.float32))
            if len({d.shape[1:] for d in downs}) > 1 or len({u.shape[2:] for u in ups}) > 1:
                raise StudioError(f"module {name}: LoRA kernel shapes differ; use --rank to re-factorise")
            down = torch.cat(downs, 0)
            up = torch.cat(ups, 1)
            result[name] = LoraOut(up=up, down=down, alpha=float(down.shape[0]))
            continue
        shape = next(iter(shapes), None)
        bias = None
        delta = None
        for n, w, m in parts:
            if m.has_weight:
                d = m.delta(n.source, shape) * w
                delta = d if delta is None else delta + d
            b = m.bias_delta(n.source)
            if b is not None:
                bias = b * w if bias is None else bias + b * w
        if delta is None:
            result[name] = LoraOut(bias=bias)
            continue
        is_conv_kxk = delta.dim() == 4 and delta.shape[2:] != (1, 1)
        r = rank if rank is not None else max((m.rank or 1) for _, _, m in parts)
        if is_conv_kxk and conv_rank is not None:
            r = conv_rank
        up, down, err2, norm2 = svd_factor(delta, r, clamp_quantile)
        report.add(name, err2, norm2)
        result[name] = LoraOut(up=up, down=down, alpha=float(down.shape[0]), bias=bias)
    style = nets[0].style
    fam = next(iter(fams), None) or detect_lora_family(nets[0])
    meta = {"studio_recipe": json.dumps({"type": "lora-combine", "method": "concat" if exact else "svd",
                                         "loras": [{"model": r, "weight": w} for r, w in loras], "rank": rank})}
    if not exact:
        meta["studio_svd_rel_error"] = f"{report.overall:.6g}"
    write_lora(out, result, style=style, family=fam, dtype=parse_dtype(dtype), metadata=meta,
               base_model=None, overwrite=overwrite)
    return {"output": str(out), "method": "concat" if exact else "svd", "modules": len(result),
            "rank": None if exact else rank, "overall_rel_error": 0.0 if exact else report.overall,
            "module_errors": report.errors, "worst": report.worst()}
