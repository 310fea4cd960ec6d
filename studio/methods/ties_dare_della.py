"""mergekit's generalized task arithmetic family: TIES, DARE, breadcrumbs, DELLA (mergekit 0.1.5 semantics).

One recipe (``mergekit/merge_methods/generalized_task_arithmetic.py``)::

    dᵢ = sparsify(θᵢ − θ₀)                 per tensor; density = fraction kept; rescale = match ‖·‖₁
    Dᵢ = wᵢ·dᵢ                              weights apply BEFORE the sign election
    consensus ("ties" variants):  s = sign(Σᵢ Dᵢ) with 0 → +;  mᵢ = [sign(Dᵢ) = s]
        τ = Σᵢ mᵢ·Dᵢ,   normalize: τ /= Σᵢ wᵢ·mᵢ   (0 → 1)
    no consensus ("linear" variants):  τ = Σᵢ Dᵢ,   normalize: τ /= Σᵢ wᵢ   (|·| < 1e-8 → 1)
    θ = θ₀ + λ·τ

The implementation never materialises the mask or the weighted copies mergekit builds: sparsified deltas are
computed in place, the L1 rescale factor is folded into the weight, and the election works on ``Dᵢ·s`` clamped at
zero, which sums exactly the agreeing entries in the same order as mergekit. On the CPU, TIES and DARE-TIES hand
their work to the cache-blocked kernel in :mod:`.ties_blocked` (the same arithmetic, bit for bit).
"""

from __future__ import annotations

import torch

from . import sparsify as sp
from .registry import FRACTION, Param, method
from .shared_params import INT8_MASK, LAMBDA, WEIGHT
from .ties_blocked import blocked_ok, dare_ties_blocked, ties_blocked

DENSITY = Param("density", default=1.0, per_model=True, range=(0.0, 1.0), bounds=FRACTION,
                doc="fraction of the delta kept")
GAMMA = Param("gamma", default=0.01, per_model=True, range=(0.0, 0.2), bounds=FRACTION,
              doc="fraction of the largest-magnitude entries removed (outliers)", label="γ (gamma)")
EPSILON = Param("epsilon", default=0.15, per_model=True, range=(0.0, 0.5), bounds=FRACTION,
                doc="half-width of the keep-probability band around density", label="ε (epsilon)")


def _normalize(default: bool) -> Param:
    return Param("normalize", default=default, kind=bool,
                 doc="divide by the summed weight of the (agreeing) models")


def _rescale(default: bool) -> Param:
    return Param("rescale", default=default, kind=bool, doc="rescale each sparsified delta to its original L1 norm")


def gta_merge(base: torch.Tensor, models: list[torch.Tensor], weight: list[float], sparsify, *,
              consensus: bool, normalize: bool, lambda_: float, fold: bool = False) -> torch.Tensor:
    """The shared core. ``sparsify(i, d, workspace) -> factor`` sparsifies model i's delta ``d`` in place.

    ``fold`` multiplies by (rescale factor × weight) in one pass; otherwise the two multiplications are applied in
    mergekit's order so deterministic methods round exactly as mergekit does.
    """
    n = len(models)
    if n == 0:
        return base.clone()
    ws: dict = {}  # reusable scratch buffers for the sparsifiers
    if not consensus:
        acc = torch.zeros_like(base)
        d = torch.empty_like(base)
        for i, m in enumerate(models):
            torch.sub(m, base, out=d)
            sp.scale_(d, weight[i], sparsify(i, d, ws) if sparsify else 1.0, fold)
            acc.add_(d)
        if normalize:
            total = float(torch.tensor(weight, dtype=torch.float32).sum())
            if abs(total) >= 1e-8:
                acc.div_(total)
        return _finish(acc, base, lambda_)

    stack = torch.empty((n, *base.shape), dtype=base.dtype, device=base.device)
    for i, m in enumerate(models):
        d = stack[i]
        torch.sub(m, base, out=d)
        sp.scale_(d, weight[i], sparsify(i, d, ws) if sparsify else 1.0, fold)
    # sequential sums equal mergekit's stack.sum(dim=0) bit for bit and skip a reduction kernel
    sign = stack[0].clone() if n == 1 else torch.add(stack[0], stack[1])
    for i in range(2, n):
        sign.add_(stack[i])
    # elected sign: +1 where Σ ≥ 0, else −1. copysign maps a −0.0 sum to −1 where mergekit's (Σ ≥ 0) says +1, but
    # a −0.0 sum only arises when every Dᵢ there is ±0, which contributes nothing either way.
    torch.copysign(torch.ones((), dtype=sign.dtype, device=sign.device), sign, out=sign)
    acc = torch.empty_like(base)
    div = torch.empty_like(base) if normalize else None
    tmp = sp.scratch_like(ws, base)
    for i in range(n):
        # Dᵢ·s > 0 exactly where Dᵢ agrees with the elected sign; summing its positive part sums the agreeing
        # entries in mergekit's order, then one multiplication by s restores their sign.
        dst = acc if i == 0 else tmp
        torch.mul(stack[i], sign, out=dst).clamp_(min=0)
        if i > 0:
            acc.add_(tmp)
        if div is not None:
            if i == 0:
                torch.sign(acc, out=div).mul_(float(weight[0]))
            else:
                div.add_(tmp.sign_(), alpha=float(weight[i]))
    del stack, tmp, ws
    acc.mul_(sign)
    if div is not None:
        div.masked_fill_(div == 0, 1.0)
        acc.div_(div)
    return _finish(acc, base, lambda_)


def _as_f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None else t.to(dtype)


def _finish(delta: torch.Tensor, base: torch.Tensor, lambda_: float) -> torch.Tensor:
    if lambda_ != 1:
        delta.mul_(lambda_)
    return delta.add_(base)


_REF_TIES = "Yadav et al. 2023, TIES-Merging (arXiv 2306.01708); mergekit ties"
_REF_DARE = "Yu et al. 2024, Language Models are Super Mario / DARE (arXiv 2311.03099); mergekit dare_*"
_REF_BC = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv 2312.06795); mergekit breadcrumbs*"
_REF_DELLA = "Deep et al. 2024, DELLA-Merging (arXiv 2406.11617); mergekit della*"


@method("ties", params=[WEIGHT, DENSITY, _normalize(True), _rescale(False), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, stored_dtype_inputs=True, casts_output=True, ref=_REF_TIES, label="TIES",
        formula="dᵢ = top-k(θᵢ−θ₀, density); s = sign Σ wᵢdᵢ; θ = θ₀ + λ·Σ[sign wᵢdᵢ = s]wᵢdᵢ / Σ[·]wᵢ")
def ties(base, models, *, weight, density, normalize, rescale, lambda_, int8_mask=False, out_dtype=None):
    """TIES as mergekit does it: per-tensor top-k trim (``density`` kept), sign election on the weighted trimmed
    deltas (ties go to +), disjoint (weighted) mean of the agreeing entries, times λ."""
    if not rescale and blocked_ok(base, models):
        return ties_blocked(base, models, weight, density, normalize=normalize, lambda_=lambda_, out_dtype=out_dtype)
    # rescale: mergekit's whole-tensor L1 sums round differently from per-block partial sums; keep gta_merge
    base, models = _as_f32(base), [_as_f32(m) for m in models]
    return _cast(gta_merge(base, models, weight,
                           lambda i, d, ws: sp.magnitude_(d, density[i], rescale, sp.scratch_like(ws, d)),
                           consensus=True, normalize=normalize, lambda_=lambda_), out_dtype)


@method("dare_ties", params=[WEIGHT, DENSITY, _normalize(False), _rescale(True), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, random=True, stored_dtype_inputs=True, casts_output=True, ref=_REF_DARE,
        label="DARE + TIES",
        formula="dᵢ = Bernoulli(density)⊙(θᵢ−θ₀)·‖·‖₁-rescale; TIES election on wᵢdᵢ; θ = θ₀ + λ·τ")
def dare_ties(base, models, *, weight, density, normalize, rescale, lambda_, int8_mask=False, generator=None,
              out_dtype=None):
    """DARE drop (keep each entry with probability ``density``; ``rescale`` restores each delta's L1 norm, as
    mergekit does, rather than dividing by density), then TIES sign election and sum (normalize off by default)."""
    if blocked_ok(base, models):
        return dare_ties_blocked(base, models, weight, density, rescale=rescale, normalize=normalize,
                                 lambda_=lambda_, generator=generator, out_dtype=out_dtype)
    base, models = _as_f32(base), [_as_f32(m) for m in models]
    return _cast(gta_merge(base, models, weight,
                           lambda i, d, ws: sp.bernoulli_(d, density[i], rescale, generator, ws),
                           consensus=True, normalize=normalize, lambda_=lambda_, fold=True), out_dtype)


@method("dare_linear", params=[WEIGHT, DENSITY, _normalize(False), _rescale(True), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, random=True, ref=_REF_DARE, label="DARE (linear)",
        formula="θ = θ₀ + λ·Σᵢ wᵢ·Bernoulli(density)⊙(θᵢ−θ₀)·‖·‖₁-rescale")
def dare_linear(base, models, *, weight, density, normalize, rescale, lambda_, int8_mask=False, generator=None):
    """DARE drop and L1 rescale per model, then a weighted sum of the deltas (no sign election)."""
    return gta_merge(base, models, weight, lambda i, d, ws: sp.bernoulli_(d, density[i], rescale, generator, ws),
                     consensus=False, normalize=normalize, lambda_=lambda_, fold=True)


@method("breadcrumbs", params=[WEIGHT, DENSITY, GAMMA, _normalize(False), _rescale(False), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, ref=_REF_BC, label="Model Breadcrumbs",
        formula="dᵢ = (θᵢ−θ₀) minus its top-γ and bottom (1−density−γ) magnitudes; θ = θ₀ + λ·Σ wᵢdᵢ")
def breadcrumbs(base, models, *, weight, density, gamma, normalize, rescale, lambda_, int8_mask=False):
    """Model Breadcrumbs (mergekit): per tensor drop the ``gamma`` fraction of largest-magnitude entries and the
    smallest ones, keeping ``density`` of the entries; weighted sum of the deltas."""
    return gta_merge(base, models, weight, lambda i, d, ws: sp.magnitude_outliers_(d, density[i], gamma[i], rescale),
                     consensus=False, normalize=normalize, lambda_=lambda_)


@method("breadcrumbs_ties", params=[WEIGHT, DENSITY, GAMMA, _normalize(False), _rescale(False), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, ref=_REF_BC, label="Model Breadcrumbs + TIES",
        formula="breadcrumbs sparsification, then TIES election on wᵢdᵢ; θ = θ₀ + λ·τ")
def breadcrumbs_ties(base, models, *, weight, density, gamma, normalize, rescale, lambda_, int8_mask=False):
    """Breadcrumbs sparsification followed by the TIES sign election (mergekit ``breadcrumbs_ties``)."""
    return gta_merge(base, models, weight, lambda i, d, ws: sp.magnitude_outliers_(d, density[i], gamma[i], rescale),
                     consensus=True, normalize=normalize, lambda_=lambda_)


@method("della", params=[WEIGHT, DENSITY, EPSILON, _normalize(True), _rescale(True), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, random=True, ref=_REF_DELLA, label="DELLA",
        formula="keep pᵢ = density−ε+2ε·rank/(cols−1) per row; ‖·‖₁ rescale; TIES election; θ = θ₀ + λ·τ")
def della(base, models, *, weight, density, epsilon, normalize, rescale, lambda_, int8_mask=False,
          generator=None):
    """DELLA (MagPrune): per row, the keep probability grows linearly with the magnitude rank over
    ``[density − ε, density + ε]`` (mergekit's band is 2ε wide); L1 rescale; TIES election and disjoint mean."""
    return gta_merge(base, models, weight,
                     lambda i, d, ws: sp.della_(d, density[i], epsilon[i], rescale, generator),
                     consensus=True, normalize=normalize, lambda_=lambda_, fold=True)


@method("della_linear", params=[WEIGHT, DENSITY, EPSILON, _normalize(False), _rescale(True), LAMBDA, INT8_MASK],
        needs_base=True, pure_inputs=True, random=True, ref=_REF_DELLA, label="DELLA (linear)",
        formula="MagPrune sparsification + ‖·‖₁ rescale; θ = θ₀ + λ·Σ wᵢdᵢ")
def della_linear(base, models, *, weight, density, epsilon, normalize, rescale, lambda_, int8_mask=False,
                 generator=None):
    """DELLA's MagPrune sparsification followed by a weighted sum of the deltas (no sign election)."""
    return gta_merge(base, models, weight,
                     lambda i, d, ws: sp.della_(d, density[i], epsilon[i], rescale, generator),
                     consensus=False, normalize=normalize, lambda_=lambda_, fold=True)
