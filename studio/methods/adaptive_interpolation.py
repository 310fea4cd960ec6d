"""Interpolations from the base toward the fine-tunes by a ratio the weights themselves set (mergekit 0.1.5):
Model Stock (per tensor or row, from the deltas' pairwise cosines), NearSwap (per entry, from the distance) and
Arcee Fusion (per entry, 0 or 1, from a KL-weighted importance)."""

from __future__ import annotations

import torch

from .order_statistics import kth_smallest
from .registry import NON_NEGATIVE, Param, method


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
    "nearswap",
    params=[Param("t", range=(0.0, 1.0), bounds=NON_NEGATIVE, doc="similarity threshold: entries closer than t move to the other model",
                  start=0.5)],
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
