"""The rest of mergekit 0.1.5's methods: Model Stock, SCE, NearSwap, Arcee Fusion, passthrough."""

from __future__ import annotations

import torch

from .registry import Param, method
from .shared_params import INT8_MASK

from .order_statistics import kth_smallest, topk_mask


@method(
    "model_stock",
    params=[Param("filter_wise", default=False, kind=bool, doc="one ratio per row instead of per tensor")],
    needs_base=True,
    min_models=2,
    ref="Jang et al. 2024, Model Stock (arXiv 2403.19522); mergekit model_stock",
    formula="cos = mean_{i<j} cos(θᵢ−θ₀, θⱼ−θ₀); t = k·cos/(1+(k−1)·cos); θ = t·mean θᵢ + (1−t)·θ₀",
    label="Model Stock",
    pure_inputs=True,
)
def model_stock(base, models, *, filter_wise):
    """Interpolate between the base and the average of k fine-tunes with the ratio Model Stock derives from the
    mean pairwise cosine of their deltas (per tensor, or per row with ``filter_wise``). Where 1+(k−1)cos ≈ 0 the
    base is kept."""
    shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [m.unsqueeze(0) if m.dim() == 1 else m for m in models]
    else:
        w0 = base.reshape(-1)
        ws = [m.reshape(-1) for m in models]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            denom = (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / denom).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denom = 1 + (k - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), (k * cos) / torch.where(singular, 1, denom))
    average = sum(ws) / k
    return (t * average + (1 - t) * w0).reshape(shape)


@method(
    "sce",
    params=[Param("select_topk", default=1.0, range=(0.0, 1.0),
                  doc="fraction of entries (by variance across models) that are kept"),
            INT8_MASK],
    needs_base=True,
    ref="Wan et al. 2024, FuseChat / SCE (arXiv 2408.07990); mergekit sce",
    formula="keep top-k Var_i(τᵢ); s = sign Στᵢ; wᵢ = mean τᵢ²/Σⱼ; θ = θ₀ + Σ[sign τᵢ=s]wᵢτᵢ / Σ[·]wᵢ",
    label="SCE (select, calculate, erase)",
    pure_inputs=True,
)
def sce(base, models, *, select_topk, int8_mask=False):
    """Select the entries with the largest variance across task vectors, weight each task vector by its mean
    square, erase entries that disagree with the elected sign, and take the weighted mean of the rest."""
    tv = torch.stack([m - base for m in models])
    if select_topk < 1:
        tv.mul_(_sce_mask(tv, select_topk))
    total = tv.sum(dim=0)
    positive = total >= 0
    del total
    agree = torch.where(positive, tv > 0, tv < 0)
    w = tv.square().reshape(tv.shape[0], -1).mean(dim=1)
    wsum = float(w.sum())
    w = torch.ones_like(w) / w.shape[0] if abs(wsum) < 1e-6 else w / wsum
    w = w.view(-1, *([1] * (tv.dim() - 1)))
    erased = w * agree
    merged = (tv * erased).sum(dim=0)
    return base + merged / erased.sum(dim=0).clamp(min=1e-6)


def _sce_mask(tv: torch.Tensor, density: float) -> torch.Tensor:
    if density <= 0:
        return torch.zeros_like(tv[0], dtype=torch.bool)
    var = torch.var(tv, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(var)) * density)
    return topk_mask(var, k)


@method(
    "nearswap",
    params=[Param("t", range=(0.0, 1.0), doc="similarity threshold: entries closer than t move to the other model")],
    needs_base=True,
    min_models=1, max_models=1,
    ref="alchemonaut, QuartetAnemoi-70B NearSwap (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001); "
        "mergekit nearswap",
    formula="w = clamp(t / max(|θ₀−θ₁|, 1e-6), 0, 1);  θ = w·θ₁ + (1−w)·θ₀",
    label="NearSwap",
    pure_inputs=True,
)
def nearswap(base, models, *, t):
    """Take the other model's value where it is close to the base's (|Δ| ≤ t), interpolating by t/|Δ| beyond."""
    other = models[0]
    w = (t / (base - other).abs_().clamp_(min=1e-6)).clamp_(0, 1)
    return w * other + (1 - w) * base


def _quantile_index(q: float, n: int) -> int:
    # mergekit: (float32 tensor q * (n-1)).long() on a sorted copy
    return int((torch.tensor(q, dtype=torch.float32) * (n - 1)).long())


@method(
    "arcee_fusion",
    params=[],
    needs_base=True,
    min_models=1, max_models=1,
    ref="Arcee AI, Arcee Fusion (arcee.ai); mergekit arcee_fusion",
    formula="I = |θ₁−θ₀|·KL(softmax θ₁ ‖ softmax θ₀) per row; θ = θ₀ + [I ≥ Q₂+1.5(Q₃−Q₁)]·(θ₁−θ₀)",
    label="Arcee Fusion",
    pure_inputs=True,
)
def arcee_fusion(base, models):
    """Move to the other model only where the importance |Δ|·KL (row-wise softmax divergence) is an upper
    outlier: I ≥ median + 1.5·IQR. Quantiles are exact order statistics (mergekit estimates them from a random
    1M-element sample on larger tensors)."""
    other = models[0]
    eps = 1e-8
    p = torch.softmax(other, dim=-1) + eps
    q = torch.softmax(base, dim=-1) + eps
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    del p, q
    importance = (other - base).abs() * kl
    flat = importance.reshape(-1)
    n = flat.numel()
    q1, med, q3 = (kth_smallest(flat, _quantile_index(q, n) + 1) for q in (0.25, 0.5, 0.75))
    threshold = med + 1.5 * (q3 - q1)
    mask = (importance >= threshold).float()
    return base + (other - base) * mask


@method(
    "passthrough",
    params=[Param("scale", default=1.0, per_model=True, range=(0.0, 2.0), doc="multiply the tensor by this")],
    includes_base=True,
    min_models=1, max_models=1,
    ref="mergekit passthrough",
    formula="θ = scale·θ₁",
    label="Passthrough",
    pure_inputs=True,
)
def passthrough(base, models, *, scale):
    """Copy the single input tensor, optionally scaled (mergekit's ``scale``; its default ``None`` means 1)."""
    s = scale[0]
    return models[0].clone() if s is None or float(s) == 1.0 else models[0] * float(s)
