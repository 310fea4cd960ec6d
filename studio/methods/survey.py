"""Data-free methods from the merging literature that mergekit lacks (see reference/algorithms.md §4).

TIES as in the paper (global top-k), TSV-M, WUDI, TALL-mask consensus TA, MagMax and EMR-merging.
All act on task vectors τᵢ = θᵢ − θ₀.
"""

from __future__ import annotations

import torch

from ..errors import StudioError
from . import order_statistics as sel
from .registry import Param, method
from .shared_params import LAMBDA


# ---------------------------------------------------------------------------------------------------------------
# TIES, paper-faithful: top-k over the whole model vector, sign election on unweighted trimmed deltas


def _kth_rank(total: int, density: float) -> int:
    """FusionBench/TIES ``topk_values_mask``: keep |τ| ≥ the (P − ⌊P·density⌋)-th smallest magnitude."""
    return total - int(total * density)


def _ties_collect(base, models, *, density, lambda_=1.0, context=None):
    """Round 1: high-16-bit histograms of |τᵢ|. Round 2: low-16-bit histograms inside each model's chosen bin."""
    bits = [sel.abs_bits(m - base) for m in models]
    if context is None:
        return {"round": 1, "density": float(density), "hist": torch.stack([sel.hist_hi(b).cpu() for b in bits])}
    empty = torch.zeros(sel.LO_BINS, dtype=torch.int64)
    return {"round": 2, "context": context,
            "hist": torch.stack([sel.hist_lo(b, h).cpu() if h >= 0 else empty
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
            lo, _ = sel.locate_kth_smallest(row, r)
            thresholds.append(sel.bits_to_float(h, lo))
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
        b, r = sel.locate_kth_smallest(row, k)
        hi_bin.append(b)
        rank.append(r)
    return {"hi_bin": hi_bin, "rank": rank}


@method(
    "ties_paper",
    params=[Param("density", default=0.2, range=(0.0, 1.0),
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
            thresholds.append(0.0 if density >= 1 or k < 1 else float(sel.kth_smallest(t.abs(), k)))
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


# ---------------------------------------------------------------------------------------------------------------
# TSV-M


def _polar(x: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor P Qᵀ of x = P Σ Qᵀ (nearest matrix with orthonormal columns/rows)."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


@method(
    "tsv_m",
    params=[Param("alpha", default=1.0, range=(0.0, 3.0), doc="scale of the merged task vector")],
    needs_base=True,
    category="survey",
    ref="Gargiulo et al. 2025, Task Singular Vectors (CVPR 2025, arXiv 2412.00081); FusionBench TSVM",
    formula="k=⌊min(m,n)/T⌋; U=[U₁,ₖ…U_T,ₖ], S=[…], V=[…]; τ = polar(U)·diag(S)·polar(Vᵀ); θ = θ₀ + α·τ",
    label="TSV-M (task singular vectors)",
    pure_inputs=True,
)
def tsv_m(base, models, *, alpha):
    """For 2-D weights, keep each task vector's top k = ⌊min(m,n)/T⌋ singular triplets, concatenate them, and
    decorrelate the concatenated singular vectors with the orthogonal Procrustes (polar) factor:
    τ = U⊥ diag(S) V⊥ᵀ. Other tensors: mean task vector. (k is at least 1 for very small matrices.)"""
    taus = [m - base for m in models]
    if base.dim() != 2:
        merged = torch.stack(taus).mean(dim=0)
    else:
        k = max(1, min(base.shape) // len(taus))
        us, ss, vs = [], [], []
        for t in taus:
            u, s, vh = torch.linalg.svd(t, full_matrices=False)
            us.append(u[:, :k])
            ss.append(s[:k])
            vs.append(vh[:k])
        u_cat, s_cat, v_cat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
        merged = (_polar(u_cat) * s_cat) @ _polar(v_cat)
    return base + alpha * merged


# ---------------------------------------------------------------------------------------------------------------
# WUDI


def wudi_optimize(taus: list[torch.Tensor], iters: int = 300, lr: float = 1e-5) -> torch.Tensor:
    """Minimise L(τ) = Σᵢ ‖(τ − τᵢ)τᵢᵀ‖²_F / ‖τᵢ‖²_F from τ = Στᵢ with Adam (FusionBench ``wudi_merging``).

    The gradient is closed-form, ∇L = 2(τG − B) with G = Σᵢ τᵢᵀτᵢ/‖τᵢ‖², B = Σᵢ τᵢτᵢᵀτᵢ/‖τᵢ‖², so each step costs
    one matmul instead of 2n through autograd.
    """
    stacked = torch.stack(taus)
    merged = stacked.sum(dim=0)
    norms2 = stacked.reshape(len(taus), -1).square().sum(dim=1).clamp(min=1e-30)
    gram = torch.zeros(merged.shape[1], merged.shape[1], dtype=merged.dtype, device=merged.device)
    target = torch.zeros_like(merged)
    for t, n2 in zip(taus, norms2):
        g = (t.T @ t) / n2
        gram.add_(g)
        target.add_(t @ g)
    param = torch.nn.Parameter(merged)
    opt = torch.optim.Adam([param], lr=lr, weight_decay=0)
    with torch.no_grad():
        for _ in range(iters):
            param.grad = 2 * (param @ gram - target)
            opt.step()
    return param.detach()


@method(
    "wudi",
    params=[Param("iters", default=300, kind=int, range=(0, 2000), doc="Adam steps"),
            Param("lr", default=1e-5, range=(0.0, 1e-3), doc="Adam learning rate")],
    needs_base=True,
    category="survey",
    ref="Cheng et al. 2025, Whoever Started the Interference Should End It / WUDI (ICML 2025, arXiv 2503.08099); "
        "FusionBench wudi",
    formula="2-D: τ = argmin Σᵢ‖(τ−τᵢ)τᵢᵀ‖²/‖τᵢ‖² (Adam from Στᵢ); else τ = mean τᵢ;  θ = θ₀ + τ",
    label="WUDI (data-free interference minimisation)",
    pure_inputs=True,
)
def wudi(base, models, *, iters, lr):
    """Data-free: for each 2-D weight, find the merged task vector whose interference with every task's input
    subspace (spanned by that task's own τᵢ rows) is smallest, by Adam from the sum; other tensors average."""
    taus = [m - base for m in models]
    if base.dim() != 2:
        return base + torch.stack(taus).mean(dim=0)
    return base + wudi_optimize(taus, iters=iters, lr=lr)


# ---------------------------------------------------------------------------------------------------------------
# TALL-mask consensus


def tall_masks(taus: list[torch.Tensor], merged: torch.Tensor, lambdas: list[float]) -> list[torch.Tensor]:
    """TALL masks mₜ = |τₜ| ≥ λₜ·|τ_MTL − τₜ|."""
    return [t.abs() >= float(lam) * (merged - t).abs() for t, lam in zip(taus, lambdas)]


@method(
    "consensus_ta",
    params=[Param("weight", default=1.0, per_model=True, range=(-1.0, 2.0), doc="this task vector's coefficient"),
            Param("tall_lambda", default=0.6, per_model=True, range=(0.0, 1.0),
                  doc="TALL mask strictness λₜ (the paper tunes it in [0.2, 0.6])"),
            Param("min_agree", default=2, kind=int, range=(1, 8),
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


# ---------------------------------------------------------------------------------------------------------------
# MagMax


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


# ---------------------------------------------------------------------------------------------------------------
# EMR-merging


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
