"""TIES as published: each task vector trimmed to its top-k magnitudes over the WHOLE model (not per tensor, as
mergekit's ``ties``), signs elected on the unweighted trimmed vectors, agreeing entries averaged.

The model-wide threshold comes from two rounds of whole-model statistics (``collect`` / ``combine``): float-bit
histograms of |τᵢ| (:mod:`.order_statistics`), exact without concatenating the model.
"""

from __future__ import annotations

import torch

from ..errors import StudioError
from .order_statistics import LO_BINS, abs_bits, bits_to_float, hist_hi, hist_lo, kth_smallest, locate_kth_smallest
from .registry import FRACTION, Param, method
from .shared_params import LAMBDA


def _kth_rank(total: int, density: float) -> int:
    """FusionBench/TIES ``topk_values_mask``: keep |τ| ≥ the (P − ⌊P·density⌋)-th smallest magnitude."""
    return total - int(total * density)


def _ties_collect(base, models, *, density, lambda_=1.0, context=None):
    """Round 1: high-16-bit histograms of |τᵢ|. Round 2: low-16-bit histograms inside each model's chosen bin."""
    bits = [abs_bits(m - base) for m in models]
    if context is None:
        return {"round": 1, "density": float(density), "hist": torch.stack([hist_hi(b).cpu() for b in bits])}
    empty = torch.zeros(LO_BINS, dtype=torch.int64)
    return {"round": 2, "context": context,
            "hist": torch.stack([hist_lo(b, h).cpu() if h >= 0 else empty
                                 for b, h in zip(bits, context["hi_bin"])])}


def _ties_combine(partials):
    hist = sum(p["hist"] for p in partials)
    if partials[0]["round"] == 1:
        return ties_global_context(hist, partials[0]["density"])
    ctx = partials[0]["context"]
    thresholds = []
    for row, h, r in zip(hist, ctx["hi_bin"], ctx["rank"]):
        if h < 0:
            thresholds.append(0.0)
        else:
            lo, _ = locate_kth_smallest(row, r)
            thresholds.append(bits_to_float(h, lo))
    return {"threshold": thresholds}


def ties_global_context(hist_hi: torch.Tensor, density: float) -> dict:
    """From summed high-bit histograms [n, HI_BINS]: the bin and in-bin rank of each model's global k-th value."""
    hi_bin, rank = [], []
    for row in hist_hi:
        total = int(row.sum())
        k = _kth_rank(total, density)
        if density >= 1 or k < 1:
            hi_bin.append(-1)
            rank.append(0)
            continue
        b, r = locate_kth_smallest(row, k)
        hi_bin.append(b)
        rank.append(r)
    return {"hi_bin": hi_bin, "rank": rank}


@method(
    "ties_paper",
    params=[Param("density", default=0.2, range=(0.0, 1.0), bounds=FRACTION,
                  doc="fraction of each task vector kept, top-k over the whole model"),
            LAMBDA],
    needs_base=True,
    category="survey",
    collect=_ties_collect,
    combine=_ties_combine,
    rounds=2,
    ref="Yadav et al. 2023, TIES-Merging (arXiv 2306.01708), as in FusionBench ties_merging_utils",
    formula="τ̂ᵢ = τᵢ·[|τᵢ| ≥ kth_model(|τᵢ|)]; γ = sign Σ τ̂ᵢ; θ = θ₀ + λ·Σ[sign τ̂ᵢ=γ]τ̂ᵢ / max(1, Σ[·])",
    label="TIES (paper: global top-k)",
    pure_inputs=True,
)
def ties_paper(base, models, *, density, lambda_, context=None):
    """TIES as published: each task vector is trimmed to its top ``density`` magnitudes over the WHOLE model
    (threshold from two rounds of float-bit histograms; exact, ties at the threshold kept as ``kthvalue`` + ``>=``
    does), signs are elected on the unweighted trimmed vectors by total mass, and agreeing entries are averaged
    (disjoint mean). Entries whose trimmed sum is exactly 0 take the tensor's majority sign (the paper uses the
    model's). Without ``context`` (a direct call) the tensor is treated as the whole model."""
    taus = [m - base for m in models]
    if context is not None and "threshold" not in context:
        raise StudioError("ties_paper needs two collect rounds (spec.rounds = 2) but got a first-round context",
                          hint="the engine must loop collect/combine spec.rounds times "
                               "(see studio.methods.global_stats.gather_context)")
    if context is None:
        thresholds = []
        for t in taus:
            k = _kth_rank(t.numel(), density)
            thresholds.append(0.0 if density >= 1 or k < 1 else float(kth_smallest(t.abs(), k)))
    else:
        thresholds = context["threshold"]
    for t, thr in zip(taus, thresholds):
        if thr > 0:
            t.mul_(t.abs() >= thr)
    total = torch.zeros_like(base)
    for t in taus:
        total.add_(t)
    gamma = torch.sign(total)
    majority = torch.sign(gamma.sum())
    gamma[gamma == 0] = majority
    acc = torch.zeros_like(base)
    count = torch.zeros_like(base)
    for t in taus:
        agree = torch.where(gamma > 0, t > 0, t < 0)
        acc.add_(t * agree)
        count.add_(agree)
    acc.div_(count.clamp_(min=1))
    if lambda_ != 1:
        acc.mul_(lambda_)
    return acc.add_(base)
