"""The cache-blocked CPU kernel for TIES and DARE-TIES: :func:`.ties_dare_della.gta_merge`'s consensus path, block
by block.

``gta_merge`` holds n float32 deltas plus scratch the size of the tensor and makes ~10 full passes over memory per
model. Here every per-element step (delta, sparsify, weight, election, disjoint sum, normalisation, + base) runs
block by block over cache-resident blocks (:mod:`.cache_blocks`), reading the inputs in their stored dtype
(fp16/bf16 upcast on the fly, exactly). Only what needs the whole tensor comes first, per model: the exact k-th
magnitude for TIES (one sweep: count above a sampled bracket, gather the few inside) or the DARE mask and its L1
norms (one sweep; the mask is kept as bools). Elementwise arithmetic is the same as ``gta_merge``'s, in the same
order, so results are identical to it (and, for TIES, to mergekit) bit for bit.
"""

from __future__ import annotations

import torch

from .cache_blocks import block_size, blocked_cast
from .order_statistics import KthLargestSweep
from .sparsify import bernoulli_block_, rescale_factor, scale_

SAMPLE = 1 << 14     # sample used to bracket the k-th magnitude (a wider band is cheaper than a bigger sort)


def blocked_ok(base, models) -> bool:
    """Whether the blocked kernel applies: CPU floating tensors of one shape."""
    if base is None or not models or base.device.type != "cpu" or not base.dtype.is_floating_point \
            or base.numel() == 0:
        return False
    return all(m.device.type == "cpu" and m.dtype.is_floating_point and m.shape == base.shape for m in models)


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


def prepare_dare(m: torch.Tensor, b: torch.Tensor, density: float, rescale: bool, generator, block: int,
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
        keep = bernoulli_block_(f[: e - s], density, generator, words)
        mask[s:e].copy_(keep)
        if rescale:
            bb = b32[: e - s]
            bb.copy_(b[s:e])
            a = _delta_(d[: e - s], m, s, e, bb).abs_()
            before += float(a.sum())
            after += float(a.mul_(keep).sum())
    factor = rescale_factor(before, after) if rescale else 1.0
    return _Keep("mask", factor=factor, mask=mask)


def consensus_blocked(base: torch.Tensor, models: list[torch.Tensor], weight: list[float], keeps: list[_Keep], *,
                normalize: bool, lambda_: float, fold: bool, block: int | None = None,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The consensus (TIES-election) half of :func:`.ties_dare_della.gta_merge`, block by block, given each
    model's trim. With ``out_dtype`` the result comes in that dtype, each block rounded once from its float32
    values."""
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
            scale_(d, w[i], keeps[i].factor, fold)
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


def ties_blocked(base: torch.Tensor, models: list[torch.Tensor], weight: list[float], density: list[float], *,
                 normalize: bool, lambda_: float, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """mergekit TIES without rescale (top-k trim, election, disjoint mean) on :func:`blocked_ok` inputs."""
    b, ms = _flat(base), [_flat(m) for m in models]
    blk = block_size()
    keeps = _prepare_topk(ms, b, density, blk)
    return consensus_blocked(base, models, weight, keeps, normalize=normalize, lambda_=lambda_, fold=False,
                             block=blk, out_dtype=out_dtype)


def dare_ties_blocked(base: torch.Tensor, models: list[torch.Tensor], weight: list[float], density: list[float], *,
                      rescale: bool, normalize: bool, lambda_: float, generator,
                      out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """mergekit DARE-TIES (Bernoulli drop, L1 rescale, election) on :func:`blocked_ok` inputs."""
    b, ms = _flat(base), [_flat(m) for m in models]
    blk = min(block_size(), b.numel())  # a multiple of 4 (or the whole tensor): the draws match sparsify.bernoulli_
    ws = {"words": torch.empty((blk + 3) // 4, dtype=torch.int64), "d": torch.empty(blk), "f": torch.empty(blk),
          "b32": torch.empty(blk)}
    keeps = [prepare_dare(m, b, density[i], rescale, generator, blk, ws) for i, m in enumerate(ms)]
    del ws
    return consensus_blocked(base, models, weight, keeps, normalize=normalize, lambda_=lambda_, fold=True, block=blk,
                             out_dtype=out_dtype)
