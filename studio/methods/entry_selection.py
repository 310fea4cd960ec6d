"""Methods that decide, entry by entry, which task-vector values the merge keeps: SCE (the entries that vary most
across models, then those agreeing with the elected sign), Consensus TA (entries that enough TALL masks vote for),
MagMax (the largest magnitude) and EMR (the elected sign's largest magnitude, with per-task masks and rescalers).
All act on task vectors τᵢ = θᵢ − θ₀.
"""

from __future__ import annotations

import torch

from .order_statistics import topk_mask
from .registry import FRACTION, NON_NEGATIVE, Param, method
from .shared_params import INT8_MASK, LAMBDA


@method(
    "sce",
    params=[Param("select_topk", default=1.0, range=(0.0, 1.0), bounds=FRACTION,
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


def tall_masks(taus: list[torch.Tensor], merged: torch.Tensor, lambdas: list[float]) -> list[torch.Tensor]:
    """TALL masks mₜ = |τₜ| ≥ λₜ·|τ_MTL − τₜ|."""
    return [t.abs() >= float(lam) * (merged - t).abs() for t, lam in zip(taus, lambdas)]


@method(
    "consensus_ta",
    params=[Param("weight", default=1.0, per_model=True, range=(-1.0, 2.0), doc="this task vector's coefficient"),
            Param("tall_lambda", default=0.6, per_model=True, range=(0.0, 1.0), bounds=NON_NEGATIVE,
                  doc="TALL mask strictness λₜ (the paper tunes it in [0.2, 0.6])"),
            Param("min_agree", default=2, kind=int, range=(1, 8), bounds=NON_NEGATIVE,
                  doc="keep entries that at least this many task masks select"),
            LAMBDA],
    needs_base=True,
    category="survey",
    ref="Wang et al. 2024, Localizing Task Information for Improved Model Merging and Compression "
        "(TALL masks / Consensus, ICML 2024, arXiv 2405.07813)",
    formula="τ_MTL = Σ wₜτₜ; mₜ = |τₜ| ≥ λₜ|τ_MTL−τₜ|; θ = θ₀ + λ·[Σₜ mₜ ≥ k]⊙τ_MTL",
    label="Consensus TA (TALL masks)",
    pure_inputs=True,
)
def consensus_ta(base, models, *, weight, tall_lambda, min_agree, lambda_):
    """Task arithmetic restricted to the entries that at least ``min_agree`` tasks consider important (their
    TALL mask), removing 'selfish' (one task) and 'catastrophic' (no task) weights."""
    taus = [m - base for m in models]
    merged = torch.zeros_like(base)
    for t, w in zip(taus, weight):
        merged.add_(t, alpha=float(w))
    votes = torch.zeros_like(base)
    for m in tall_masks(taus, merged, tall_lambda):
        votes.add_(m)
    merged.mul_(votes >= min_agree)
    if lambda_ != 1:
        merged.mul_(lambda_)
    return merged.add_(base)


@method(
    "magmax",
    params=[LAMBDA],
    needs_base=True,
    category="survey",
    ref="Marczak et al. 2024, MagMax: Leveraging Model Merging for Seamless Continual Learning "
        "(ECCV 2024, arXiv 2407.06322)",
    formula="τ[j] = τ_{i*}[j], i* = argmaxᵢ |τᵢ[j]|;  θ = θ₀ + λ·τ",
    label="MagMax (max-magnitude selection)",
    pure_inputs=True,
)
def magmax(base, models, *, lambda_):
    """For every parameter, take the task-vector entry of largest magnitude (first model on ties)."""
    best = models[0] - base
    best_abs = best.abs()
    for m in models[1:]:
        t = m - base
        a = t.abs()
        better = a > best_abs
        best = torch.where(better, t, best)
        best_abs = torch.where(better, a, best_abs)
    if lambda_ != 1:
        best.mul_(lambda_)
    return best.add_(base)


def emr_unified(taus: list[torch.Tensor]) -> torch.Tensor:
    """τ_uni = s ⊙ maxᵢ |τᵢ ⊙ [τᵢ s > 0]| with s = +1 where Σ τᵢ > 0 else −1 (FusionBench ``emr_merge``)."""
    total = torch.zeros_like(taus[0])
    for t in taus:
        total.add_(t)
    flag = torch.where(total > 0, 1.0, -1.0).to(total.dtype)
    mag = torch.zeros_like(total)
    for t in taus:
        torch.maximum(mag, (t * flag).clamp(min=0), out=mag)
    return mag.mul_(flag)


def emr_masks(base: torch.Tensor, models: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-task boolean masks Mᵢ = [τᵢ ⊙ τ_uni > 0] for one tensor."""
    taus = [m - base for m in models]
    uni = emr_unified(taus)
    return [(t * uni) > 0 for t in taus]


def emr_stats(base: torch.Tensor, models: list[torch.Tensor]) -> torch.Tensor:
    """This tensor's contribution to the rescalers: [n, 2] rows (mean|τᵢ|, mean|Mᵢ ⊙ τ_uni|)."""
    taus = [m - base for m in models]
    uni = emr_unified(taus)
    rows = []
    for t in taus:
        mask = (t * uni) > 0
        rows.append(torch.stack([t.abs().mean(), (uni * mask).abs().mean()]))
    return torch.stack(rows).cpu()


def emr_rescalers(stats: list[torch.Tensor]) -> list[float]:
    """rᵢ = Σ_tensors mean|τᵢ| / Σ_tensors mean|Mᵢ ⊙ τ_uni|, from every tensor's :func:`emr_stats`."""
    total = sum(s.double() for s in stats)
    return [float(a / b) if b > 0 else 1.0 for a, b in total.tolist()]


def emr_task_tensor(base: torch.Tensor, unified: torch.Tensor, mask: torch.Tensor, rescaler: float) -> torch.Tensor:
    """Materialise task i's tensor: θᵢ = θ₀ + rᵢ·Mᵢ ⊙ τ_uni (``unified`` is the EMR output minus the base)."""
    return base + float(rescaler) * (unified * mask)


@method(
    "emr",
    params=[],
    needs_base=True,
    category="survey",
    ref="Huang et al. 2024, EMR-Merging: Tuning-Free High-Performance Model Merging (NeurIPS 2024, "
        "arXiv 2405.17461); FusionBench emr_merging",
    formula="τ_uni = s⊙maxᵢ|τᵢ[sign τᵢ = s]|, s = sign Στᵢ;  θ = θ₀ + τ_uni;  task i: θ₀ + rᵢ·Mᵢ⊙τ_uni",
    label="EMR-merging (unified model + task masks)",
    extra={"artifacts": "emr"},
    pure_inputs=True,
)
def emr(base, models):
    """The unified EMR model θ₀ + τ_uni. The per-task masks Mᵢ = [τᵢ⊙τ_uni > 0] and rescalers
    rᵢ = Σ mean|τᵢ| / Σ mean|Mᵢ⊙τ_uni| come from :func:`emr_masks`, :func:`emr_stats` / :func:`emr_rescalers`, and
    :func:`emr_task_tensor` rebuilds a task's model from them."""
    return base + emr_unified([m - base for m in models])
