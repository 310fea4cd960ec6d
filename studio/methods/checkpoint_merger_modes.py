"""The checkpoint merger's modes of A1111 (weighted sum, add difference) and SuperMerger (triple sum, sum twice,
train difference, cosine A/B calc modes) as methods on any same-keyed checkpoints.

Models arrive in A, B, C order (``includes_base``: a recipe's base is simply one of the inputs, by position).
α follows A1111/SuperMerger: ``(1 − α)·A + α·B``, so α = 0 is model A and α = 1 is model B.
Key selection (SuperMerger skips the VAE and position ids in some modes) is the recipe's business, not the math's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .registry import FRACTION, Param, method


REF = "hako-mikan/sd-webui-supermerger (scripts/mergers/mergers.py); AUTOMATIC1111 checkpoint merger"


# a share of a convex mix (weighted sum, sum twice, triple sum) is a fraction, as A1111's slider has it; a multiplier
# (add difference, train difference) or an offset (cosine) is not bounded
def _alpha(default: float, doc: str = "0 → model A, 1 → model B", share: bool = False) -> Param:
    return Param("alpha", default=default, range=(0.0, 1.0), bounds=FRACTION if share else None, doc=doc,
                 label="α (alpha)")


def _beta(default: float, doc: str) -> Param:
    return Param("beta", default=default, range=(0.0, 1.0), bounds=FRACTION, doc=doc, label="β (beta)")


@method("weighted_sum", params=[_alpha(0.5, share=True)], includes_base=True, pure_inputs=True, min_models=2,
        max_models=2, category="supermerger", ref=REF, formula="θ = (1−α)·A + α·B", label="Weight sum (A1111)")
def sd_weighted_sum(base, models, *, alpha):
    """A1111's weighted sum ``(1 − α)·A + α·B``; α = 0 returns A exactly and α = 1 returns B exactly."""
    a, b = models
    if alpha == 0:
        return a.clone()
    if alpha == 1:
        return b.clone()
    return (1 - alpha) * a + alpha * b


@method("add_difference", params=[_alpha(1.0, "multiplier of the difference B − C")], includes_base=True,
        pure_inputs=True, min_models=3, max_models=3, category="supermerger", ref=REF, formula="θ = A + α·(B − C)",
        label="Add difference (A1111)")
def add_difference(base, models, *, alpha):
    """Graft what C → B changed onto A: ``A + α·(B − C)`` (e.g. B = inpainting model, C = its base)."""
    a, b, c = models
    return a + alpha * (b - c)


@method("triple_sum", params=[_alpha(0.33, "share of model B", share=True), _beta(0.33, "share of model C")],
        includes_base=True, pure_inputs=True, min_models=3, max_models=3, category="supermerger", ref=REF,
        formula="θ = (1−α−β)·A + α·B + β·C", label="Triple sum")
def triple_sum(base, models, *, alpha, beta):
    """Three-way weighted sum ``(1 − α − β)·A + α·B + β·C``."""
    a, b, c = models
    return (1 - alpha - beta) * a + alpha * b + beta * c


@method("sum_twice", params=[_alpha(0.5, share=True), _beta(0.5, "0 → (A,B) mix, 1 → model C")],
        includes_base=True, pure_inputs=True, min_models=3, max_models=3, category="supermerger", ref=REF,
        formula="θ = (1−β)·((1−α)·A + α·B) + β·C", label="Sum twice")
def sum_twice(base, models, *, alpha, beta):
    """Two weighted sums in a row: first A with B by α, then the result with C by β."""
    a, b, c = models
    mid = (1 - alpha) * a + alpha * b
    return (1 - beta) * mid + beta * c


@method("train_difference", params=[_alpha(1.0, "multiplier of the trained difference (×1.8 as SuperMerger)")],
        includes_base=True, pure_inputs=True, min_models=3, max_models=3, category="supermerger", ref=REF,
        formula="θ = A + 1.8α·sign(B−C)·|B−C|·|B−A| / (|B−C| + |B−A|)", label="Train difference")
def train_difference(base, models, *, alpha):
    """Add B − C as if it had been trained on A: each entry's difference is damped by how close A already is to
    B, ``|B−A| / (|B−C| + |B−A|)`` (0 where both distances vanish), then scaled by 1.8·α as SuperMerger does."""
    a, b, c = models
    diff = b - c
    dist_a = (b - a).abs_()
    denom = diff.abs() + dist_a
    scale = torch.where(denom != 0, dist_a / denom, torch.zeros_like(denom))
    return a + (torch.sign(diff) * scale * diff.abs()) * (alpha * 1.8)


# ---------------------------------------------------------------------------------------------------------------
# cosine A / cosine B: per-column similarity, normalised by the similarity range over the whole model


def _as_columns(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1) if x.dim() == 0 else x


def _similarity(a: torch.Tensor, b: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-column cosine along dim 0, combined similarity) as SuperMerger computes them for ``variant``."""
    a, b = _as_columns(a), _as_columns(b)
    if variant == "a":
        a, b = F.normalize(a, p=2, dim=0), F.normalize(b, p=2, dim=0)
    simab = F.cosine_similarity(a, b, dim=0)
    dot = torch.dot(a.reshape(-1), b.reshape(-1))
    magnitude = dot / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return simab, (simab + magnitude) / 2.0


def _stage0(a, b, variant):
    simab, combined = _similarity(a, b, variant)
    # SuperMerger's first pass records the plain cosine for cosineA and the combined one for cosineB.
    return (simab if variant == "a" else combined).reshape(-1).double().cpu().numpy()


def similarity_range(values: list[np.ndarray]) -> dict:
    """Drop NaNs, then values below the 1st and above the 99th percentile (midpoint), and return min / max."""
    sims = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values]) if values else np.zeros(0)
    sims = sims[~np.isnan(sims)]
    if sims.size == 0:
        return {"min": 0.0, "max": 1.0}
    sims = np.delete(sims, np.where(sims < np.percentile(sims, 1, method="midpoint")))
    sims = np.delete(sims, np.where(sims > np.percentile(sims, 99, method="midpoint")))
    return {"min": float(sims.min()), "max": float(sims.max())}


def _cosine(a, b, alpha, variant, context):
    rng = context if context is not None else similarity_range([_stage0(a, b, variant)])
    _, combined = _similarity(a, b, variant)
    span = rng["max"] - rng["min"]
    k = (combined - rng["min"]) / span if span != 0 else torch.zeros_like(combined)
    k = (k - (abs(alpha) if variant == "a" else alpha)).clamp(0, 1)
    if a.dim() == 0:
        k = k.reshape(())
    return b * (1 - k) + a * k


def _collect_a(base, models, *, alpha=None):
    return _stage0(models[0], models[1], "a")


def _collect_b(base, models, *, alpha=None):
    return _stage0(models[0], models[1], "b")


@method("cosine_a", params=[_alpha(0.5, "subtracted from the normalised similarity; larger → more of B")],
        includes_base=True, pure_inputs=True, min_models=2, max_models=2, category="supermerger",
        collect=_collect_a, combine=similarity_range, ref=REF + " calcmode cosineA",
        formula="k = clamp((sim−min)/(max−min) − |α|, 0, 1) per column;  θ = k·A + (1−k)·B",
        label="Cosine A (keeps A's structure)")
def cosine_a(base, models, *, alpha, context=None):
    """SuperMerger calcmode *cosineA* (weight sum only): per column (dim 0), the similarity of the L2-normalised
    A and B (mean of the column cosine and the whole-tensor cosine), rescaled by its range over the model
    (1st–99th percentile of the first-pass column cosines), minus |α|, sets how much of A is kept."""
    return _cosine(models[0], models[1], alpha, "a", context)


@method("cosine_b", params=[_alpha(0.5, "subtracted from the normalised similarity; larger → more of B")],
        includes_base=True, pure_inputs=True, min_models=2, max_models=2, category="supermerger",
        collect=_collect_b, combine=similarity_range, ref=REF + " calcmode cosineB",
        formula="k = clamp((sim−min)/(max−min) − α, 0, 1) per column;  θ = k·A + (1−k)·B",
        label="Cosine B (keeps B's structure)")
def cosine_b(base, models, *, alpha, context=None):
    """SuperMerger calcmode *cosineB*: as cosine A but on the raw (unnormalised) tensors, with the combined
    similarity's model-wide range, and α subtracted without absolute value."""
    return _cosine(models[0], models[1], alpha, "b", context)
