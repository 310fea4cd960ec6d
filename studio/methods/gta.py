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
zero, which sums exactly the agreeing entries in the same order as mergekit.
"""

from __future__ import annotations

import torch

from . import sparsify as sp
from .basic import WEIGHT
from .cache_blocks import block_size, blocked_cast
from functools import partial

from .registry import Param
from .order_statistics import KthLargestSweep
from .registry import method as _register

# every method here only reads base/models (it writes into its own buffers), so the live engine may pass them uncopied
method = partial(_register, pure_inputs=True)

DENSITY = Param("density", default=1.0, per_model=True, range=(0.0, 1.0), doc="fraction of the delta kept")
LAMBDA = Param("lambda", default=1.0, range=(0.0, 3.0), doc="scale of the merged delta")
INT8 = Param("int8_mask", default=False, kind=bool, doc="accepted for mergekit compatibility; no effect here",
             compat=True)
GAMMA = Param("gamma", default=0.01, per_model=True, range=(0.0, 0.2),
              doc="fraction of the largest-magnitude entries removed (outliers)")
EPSILON = Param("epsilon", default=0.15, per_model=True, range=(0.0, 0.5),
                doc="half-width of the keep-probability band around density")


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
            _scale_(d, weight[i], sparsify(i, d, ws) if sparsify else 1.0, fold)
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
        _scale_(d, weight[i], sparsify(i, d, ws) if sparsify else 1.0, fold)
    # sequential sums equal mergekit's stack.sum(dim=0) bit for bit and skip a reduction kernel
    sign = stack[0].clone() if n == 1 else torch.add(stack[0], stack[1])
    for i in range(2, n):
        sign.add_(stack[i])
    # elected sign: +1 where Σ ≥ 0, else −1. copysign maps a −0.0 sum to −1 where mergekit's (Σ ≥ 0) says +1, but
    # a −0.0 sum only arises when every Dᵢ there is ±0, which contributes nothing either way.
    torch.copysign(torch.ones((), dtype=sign.dtype, device=sign.device), sign, out=sign)
    acc = torch.empty_like(base)
    div = torch.empty_like(base) if normalize else None
    tmp = ws.get("scratch")
    if tmp is None or tmp.shape != base.shape:
        tmp = torch.empty_like(base)
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
    del stack, tmp
    acc.mul_(sign)
    if div is not None:
        div.masked_fill_(div == 0, 1.0)
        acc.div_(div)
    return _finish(acc, base, lambda_)


# ---------------------------------------------------------------------------------------------------------------
# Blocked kernel (CPU). gta_merge above holds n float32 deltas plus scratch the size of the tensor and makes ~10 full
# passes over memory per model. Here every per-element step (delta, sparsify, weight, election, disjoint sum,
# normalisation, + base) runs block by block over ~BLOCK elements that stay in cache, reading the inputs in their
# stored dtype (fp16/bf16 upcast on the fly, exactly). Only what needs the whole tensor comes first, per model: the
# exact k-th magnitude for TIES (one sweep: count above a sampled bracket, gather the few inside) or the DARE mask
# and its L1 norms (one sweep; the mask is kept as bools). Elementwise arithmetic is the same as gta_merge's, in
# the same order, so results are identical to it (and, for TIES, to mergekit) bit for bit.
# ---------------------------------------------------------------------------------------------------------------

SAMPLE = 1 << 14     # sample used to bracket the k-th magnitude (a wider band is cheaper than a bigger sort)


def blocked_ok(base, models) -> bool:
    """Whether the blocked kernel applies: CPU floating tensors of one shape."""
    if base is None or not models or base.device.type != "cpu" or not base.dtype.is_floating_point \
            or base.numel() == 0:
        return False
    return all(m.device.type == "cpu" and m.dtype.is_floating_point and m.shape == base.shape for m in models)


def _as_f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)  # a view for the contiguous tensors the engine passes


def _delta_(out: torch.Tensor, m: torch.Tensor, s: int, e: int, b32: torch.Tensor) -> torch.Tensor:
    """out = m[s:e] − b32 in float32, ``b32`` being the base block already in float32 (upcasting is exact, so this
    equals the difference of float32 copies)."""
    out.copy_(m[s:e])
    return out.sub_(b32)


class _Keep:
    """What the blocked kernel keeps of one model's delta: all, nothing, a top-k cut or a stored Bernoulli mask."""

    def __init__(self, kind: str, factor: float = 1.0, v: float = 0.0, cut: int = 0, mask=None):
        self.kind, self.factor, self.v, self.cut, self.mask = kind, factor, v, cut, mask
        if kind == "topk":
            # hardshrink(x, λ) zeroes |x| ≤ λ: |x| ≥ v is |x| > (the float32 just below v); v = 0 keeps everything
            below = torch.nextafter(torch.tensor(v, dtype=torch.float32), torch.tensor(0.0, dtype=torch.float32))
            self.lam_ge = float(below) if v > 0 else None

    def apply_(self, d: torch.Tensor, s: int, e: int, fbuf: torch.Tensor) -> torch.Tensor:
        kind = self.kind
        if kind == "all":
            return d
        if kind == "none":
            return d.zero_()
        if kind == "mask":
            f = fbuf[: e - s]
            f.copy_(self.mask[s:e].view(torch.uint8))  # bytes → float is vectorised; bool → float is ~7× slower
            return d.mul_(f)
        # top-k: |x| ≥ v before the cut index, |x| > v from it on (ties at v go to lower indices)
        c = min(max(self.cut - s, 0), e - s)
        if c > 0 and self.lam_ge is not None:
            torch.hardshrink(d[:c], self.lam_ge, out=d[:c])
        if c < e - s:
            torch.hardshrink(d[c:], self.v, out=d[c:])
        return d


def _prepare_topk(ms: list[torch.Tensor], b: torch.Tensor, density: list[float], block: int) -> list[_Keep]:
    """TIES trims (mergekit magnitude, no rescale) of every model in one sweep: the exact k-th |delta| of each and
    its tie cut (order_statistics.KthLargestSweep)."""
    n = b.numel()
    keeps: list = [None] * len(ms)
    sweeps = {}
    for i, m in enumerate(ms):
        if density[i] >= 1:
            keeps[i] = _Keep("all")
        elif density[i] <= 0:
            keeps[i] = _Keep("none")
        else:
            step = max(1, n // SAMPLE)
            sample = (m[::step].to(torch.float32) - b[::step].to(torch.float32)).abs_()
            sweeps[i] = KthLargestSweep(n, max(1, int(density[i] * n)), sample)
    if not sweeps:
        return keeps
    blk = max(1, min(block, n))
    b32, d = torch.empty(blk), torch.empty(blk)
    scratch = torch.empty(2 * blk)
    for s in range(0, n, blk):
        e = min(n, s + blk)
        bb = b32[: e - s]
        bb.copy_(b[s:e])
        for i, sw in sweeps.items():
            sw.add(_delta_(d[: e - s], ms[i], s, e, bb).abs_(), scratch)
    for i, sw in sweeps.items():
        def refill(j, m=ms[i]):
            s, e = j * blk, min(n, (j + 1) * blk)
            return (m[s:e].to(torch.float32) - b[s:e].to(torch.float32)).abs_()

        v, cut = sw.result(refill)
        keeps[i] = _Keep("topk", v=v, cut=cut)
    return keeps


def _prepare_dare(m: torch.Tensor, b: torch.Tensor, density: float, rescale: bool, generator, block: int,
                  ws: dict) -> _Keep:
    """DARE mask of one model, drawn block by block (the same draws as sparsify.bernoulli_), kept as bools, with the
    L1 rescale factor from per-block partial sums."""
    n = b.numel()
    if density >= 1:
        return _Keep("all")
    if density <= 0:
        return _Keep("none")
    words, d, f, b32 = ws["words"], ws["d"], ws["f"], ws["b32"]
    mask = torch.empty(n, dtype=torch.bool)
    before = after = 0.0
    for s in range(0, n, block):
        e = min(n, s + block)
        keep = sp.bernoulli_block_(f[: e - s], density, generator, words)
        mask[s:e].copy_(keep)
        if rescale:
            bb = b32[: e - s]
            bb.copy_(b[s:e])
            a = _delta_(d[: e - s], m, s, e, bb).abs_()
            before += float(a.sum())
            after += float(a.mul_(keep).sum())
    factor = sp._rescale_factor(before, after) if rescale else 1.0
    return _Keep("mask", factor=factor, mask=mask)


def gta_blocked(base: torch.Tensor, models: list[torch.Tensor], weight: list[float], keeps: list[_Keep], *,
                normalize: bool, lambda_: float, fold: bool, block: int | None = None,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The consensus (TIES-election) half of :func:`gta_merge`, block by block, given each model's trim. With
    ``out_dtype`` the result comes in that dtype, each block rounded once from its float32 values."""
    n_el = base.numel()
    b = _flat(base)
    ms = [_flat(m) for m in models]
    blk = max(1, min(block or block_size(), n_el))
    D = [torch.empty(blk, dtype=torch.float32) for _ in models]
    sgn, tmp, fbuf, b32 = (torch.empty(blk, dtype=torch.float32) for _ in range(4))
    div = torch.empty(blk, dtype=torch.float32) if normalize else None
    one = torch.ones((), dtype=torch.float32)
    w = [float(x) for x in weight]
    nm = len(models)

    def fill(s: int, e: int, acc: torch.Tensor) -> torch.Tensor:
        L = e - s
        bb = b32[:L]
        bb.copy_(b[s:e])
        ds = []
        for i in range(nm):
            d = _delta_(D[i][:L], ms[i], s, e, bb)
            keeps[i].apply_(d, s, e, fbuf)
            _scale_(d, w[i], keeps[i].factor, fold)
            ds.append(d)
        sg = sgn[:L]
        if nm == 1:
            sg.copy_(ds[0])
        else:
            torch.add(ds[0], ds[1], out=sg)
            for i in range(2, nm):
                sg.add_(ds[i])
        torch.copysign(one, sg, out=sg)
        torch.mul(ds[0], sg, out=acc).clamp_(min=0)
        dv = None
        if div is not None:
            dv = div[:L]
            torch.sign(acc, out=dv).mul_(w[0])
        t = tmp[:L]
        for i in range(1, nm):
            torch.mul(ds[i], sg, out=t).clamp_(min=0)
            acc.add_(t)
            if dv is not None:
                dv.add_(t.sign_(), alpha=w[i])
        acc.mul_(sg)
        if dv is not None:
            # dv[dv == 0] = 1 without a bool mask: adding the float (dv == 0) flag changes exactly those entries
            dv.add_(torch.eq(dv, 0, out=t))
            acc.div_(dv)
        if lambda_ != 1:
            acc.mul_(lambda_)
        return acc.add_(bb)

    return blocked_cast(base.shape, out_dtype or torch.float32, fill, block=blk)


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t if dtype is None else t.to(dtype)


def _scratch(ws: dict, like: torch.Tensor) -> torch.Tensor:
    buf = ws.get("scratch")
    if buf is None:
        buf = ws["scratch"] = torch.empty_like(like)
    return buf


def _scale_(d: torch.Tensor, w: float, factor: float, fold: bool) -> None:
    w = float(w)
    if fold:
        if w * factor != 1.0:
            d.mul_(w * factor)
        return
    if factor != 1.0:
        d.mul_(factor)
    if w != 1.0:
        d.mul_(w)


def _elected_sign_(total: torch.Tensor) -> torch.Tensor:
    """In place: +1 where the summed weighted delta is ≥ 0, else −1 (mergekit's sign election, ties to +)."""
    positive = total >= 0
    total.copy_(positive).mul_(2).sub_(1)
    return total


def _finish(delta: torch.Tensor, base: torch.Tensor, lambda_: float) -> torch.Tensor:
    if lambda_ != 1:
        delta.mul_(lambda_)
    return delta.add_(base)


_REF_TIES = "Yadav et al. 2023, TIES-Merging (arXiv 2306.01708); mergekit ties"
_REF_DARE = "Yu et al. 2024, Language Models are Super Mario / DARE (arXiv 2311.03099); mergekit dare_*"
_REF_BC = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv 2312.06795); mergekit breadcrumbs*"
_REF_DELLA = "Deep et al. 2024, DELLA-Merging (arXiv 2406.11617); mergekit della*"


@method("ties", params=[WEIGHT, DENSITY, _normalize(True), _rescale(False), LAMBDA, INT8], needs_base=True,
        stored_dtype_inputs=True, casts_output=True, ref=_REF_TIES, label="TIES",
        formula="dᵢ = top-k(θᵢ−θ₀, density); s = sign Σ wᵢdᵢ; θ = θ₀ + λ·Σ[sign wᵢdᵢ = s]wᵢdᵢ / Σ[·]wᵢ")
def ties(base, models, *, weight, density, normalize, rescale, lambda_, int8_mask=False, out_dtype=None):
    """TIES as mergekit does it: per-tensor top-k trim (``density`` kept), sign election on the weighted trimmed
    deltas (ties go to +), disjoint (weighted) mean of the agreeing entries, times λ."""
    if not rescale and blocked_ok(base, models):
        b, ms = _flat(base), [_flat(m) for m in models]
        blk = block_size()
        keeps = _prepare_topk(ms, b, density, blk)
        return gta_blocked(base, models, weight, keeps, normalize=normalize, lambda_=lambda_, fold=False,
                           block=blk, out_dtype=out_dtype)
    # rescale: mergekit's whole-tensor L1 sums round differently from per-block partial sums; keep gta_merge
    base, models = _as_f32(base), [_as_f32(m) for m in models]
    return _cast(gta_merge(base, models, weight,
                           lambda i, d, ws: sp.magnitude_(d, density[i], rescale, _scratch(ws, d)),
                           consensus=True, normalize=normalize, lambda_=lambda_), out_dtype)


@method("dare_ties", params=[WEIGHT, DENSITY, _normalize(False), _rescale(True), LAMBDA, INT8], needs_base=True,
        random=True, stored_dtype_inputs=True, casts_output=True, ref=_REF_DARE, label="DARE + TIES",
        formula="dᵢ = Bernoulli(density)⊙(θᵢ−θ₀)·‖·‖₁-rescale; TIES election on wᵢdᵢ; θ = θ₀ + λ·τ")
def dare_ties(base, models, *, weight, density, normalize, rescale, lambda_, int8_mask=False, generator=None,
              out_dtype=None):
    """DARE drop (keep each entry with probability ``density``; ``rescale`` restores each delta's L1 norm, as
    mergekit does, rather than dividing by density), then TIES sign election and sum (normalize off by default)."""
    if blocked_ok(base, models):
        b, ms = _flat(base), [_flat(m) for m in models]
        blk = min(block_size(), b.numel())  # a multiple of 4 (or the whole tensor): the draws match sparsify.bernoulli_
        ws = {"words": torch.empty((blk + 3) // 4, dtype=torch.int64), "d": torch.empty(blk), "f": torch.empty(blk),
              "b32": torch.empty(blk)}
        keeps = [_prepare_dare(m, b, density[i], rescale, generator, blk, ws) for i, m in enumerate(ms)]
        del ws
        return gta_blocked(base, models, weight, keeps, normalize=normalize, lambda_=lambda_, fold=True, block=blk,
                           out_dtype=out_dtype)
    base, models = _as_f32(base), [_as_f32(m) for m in models]
    return _cast(gta_merge(base, models, weight,
                           lambda i, d, ws: sp.bernoulli_(d, density[i], rescale, generator, ws),
                           consensus=True, normalize=normalize, lambda_=lambda_, fold=True), out_dtype)


@method("dare_linear", params=[WEIGHT, DENSITY, _normalize(False), _rescale(True), LAMBDA, INT8], needs_base=True,
        random=True, ref=_REF_DARE, label="DARE (linear)",
        formula="θ = θ₀ + λ·Σᵢ wᵢ·Bernoulli(density)⊙(θᵢ−θ₀)·‖·‖₁-rescale")
def dare_linear(base, models, *, weight, density, normalize, rescale, lambda_, int8_mask=False, generator=None):
    """DARE drop and L1 rescale per model, then a weighted sum of the deltas (no sign election)."""
    return gta_merge(base, models, weight, lambda i, d, ws: sp.bernoulli_(d, density[i], rescale, generator, ws),
                     consensus=False, normalize=normalize, lambda_=lambda_, fold=True)


@method("breadcrumbs", params=[WEIGHT, DENSITY, GAMMA, _normalize(False), _rescale(False), LAMBDA, INT8],
        needs_base=True, ref=_REF_BC, label="Model Breadcrumbs",
        formula="dᵢ = (θᵢ−θ₀) minus its top-γ and bottom (1−density−γ) magnitudes; θ = θ₀ + λ·Σ wᵢdᵢ")
def breadcrumbs(base, models, *, weight, density, gamma, normalize, rescale, lambda_, int8_mask=False):
    """Model Breadcrumbs (mergekit): per tensor drop the ``gamma`` fraction of largest-magnitude entries and the
    smallest ones, keeping ``density`` of the entries; weighted sum of the deltas."""
    return gta_merge(base, models, weight, lambda i, d, ws: sp.magnitude_outliers_(d, density[i], gamma[i], rescale),
                     consensus=False, normalize=normalize, lambda_=lambda_)


@method("breadcrumbs_ties", params=[WEIGHT, DENSITY, GAMMA, _normalize(False), _rescale(False), LAMBDA, INT8],
        needs_base=True, ref=_REF_BC, label="Model Breadcrumbs + TIES",
        formula="breadcrumbs sparsification, then TIES election on wᵢdᵢ; θ = θ₀ + λ·τ")
def breadcrumbs_ties(base, models, *, weight, density, gamma, normalize, rescale, lambda_, int8_mask=False):
    """Breadcrumbs sparsification followed by the TIES sign election (mergekit ``breadcrumbs_ties``)."""
    return gta_merge(base, models, weight, lambda i, d, ws: sp.magnitude_outliers_(d, density[i], gamma[i], rescale),
                     consensus=True, normalize=normalize, lambda_=lambda_)


@method("della", params=[WEIGHT, DENSITY, EPSILON, _normalize(True), _rescale(True), LAMBDA, INT8],
        needs_base=True, random=True, ref=_REF_DELLA, label="DELLA",
        formula="keep pᵢ = density−ε+2ε·rank/(cols−1) per row; ‖·‖₁ rescale; TIES election; θ = θ₀ + λ·τ")
def della(base, models, *, weight, density, epsilon, normalize, rescale, lambda_, int8_mask=False,
          generator=None):
    """DELLA (MagPrune): per row, the keep probability grows linearly with the magnitude rank over
    ``[density − ε, density + ε]`` (mergekit's band is 2ε wide); L1 rescale; TIES election and disjoint mean."""
    return gta_merge(base, models, weight,
                     lambda i, d, ws: sp.della_(d, density[i], epsilon[i], rescale, generator),
                     consensus=True, normalize=normalize, lambda_=lambda_, fold=True)


@method("della_linear", params=[WEIGHT, DENSITY, EPSILON, _normalize(False), _rescale(True), LAMBDA, INT8],
        needs_base=True, random=True, ref=_REF_DELLA, label="DELLA (linear)",
        formula="MagPrune sparsification + ‖·‖₁ rescale; θ = θ₀ + λ·Σ wᵢdᵢ")
def della_linear(base, models, *, weight, density, epsilon, normalize, rescale, lambda_, int8_mask=False,
                 generator=None):
    """DELLA's MagPrune sparsification followed by a weighted sum of the deltas (no sign election)."""
    return gta_merge(base, models, weight,
                     lambda i, d, ws: sp.della_(d, density[i], epsilon[i], rescale, generator),
                     consensus=False, normalize=normalize, lambda_=lambda_, fold=True)
