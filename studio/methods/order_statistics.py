"""Exact k-th value selection without a full sort, and float-bit histograms for whole-model thresholds.

TIES, breadcrumbs, DELLA and the diagnostics need "the k-th largest magnitude" of a big tensor. A full sort
(``argsort``) is O(n log n) and allocates an index tensor eight bytes wide; ``torch.kthvalue`` is a serial
quickselect on the CPU. :func:`kth_largest` instead brackets the answer with a small strided sample, counts the
elements above the bracket in one pass, and runs ``kthvalue`` only on the few candidates inside it. The counts
prove the bracket, so the result is always exactly ``torch.kthvalue``'s; when a bracket fails (adversarial data)
it falls back to ``kthvalue`` on the whole tensor. The same code runs on CUDA, on the tensor's device.

For thresholds over a whole model (paper-faithful TIES), tensors are never concatenated: a non-negative float32's
bit pattern is monotone in its value, so two rounds of histograms, first over the high 16 bits then over the low
16 bits within the one bin that holds the k-th value, give the exact k-th value of the union of all tensors.
"""

from __future__ import annotations

import math

import torch

_SMALL = 1 << 17          # below this, kthvalue on the whole tensor is already cheap
_SAMPLE = 1 << 16         # sample size used to bracket the k-th value
HI_BINS = 1 << 15         # bit patterns of non-negative float32 >> 16 lie in [0, 2**15)
LO_BINS = 1 << 16


def kth_largest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest element (1-based) of ``x`` (any shape, flattened) as a 0-d tensor; exact.

    Equal to ``torch.kthvalue(x.flatten(), x.numel() - k + 1).values``.
    """
    flat = x.reshape(-1)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for {n} elements")
    if n <= _SMALL:
        return torch.kthvalue(flat, n - k + 1).values
    step = n // _SAMPLE
    sample = torch.sort(flat[::step].contiguous()).values
    m = sample.numel()
    # Target position in ascending order, and a margin of ~4 binomial standard deviations of the sample rank.
    q = (n - k) / max(n - 1, 1)
    centre = q * (m - 1)
    margin = int(4 * math.sqrt(m * max(q * (1 - q), 1.0 / m))) + 8
    lo_i, hi_i = int(centre) - margin, int(centre) + margin + 1
    above = 0
    if hi_i < m:
        hi = float(sample[hi_i])
        gt_hi = flat > hi
        above = int(torch.count_nonzero(gt_hi))
        if above >= k:
            return torch.kthvalue(flat, n - k + 1).values
        band = gt_hi.logical_not_()
    else:
        band = None
    if lo_i > 0:
        lo = float(sample[lo_i])
        ge_lo = flat >= lo
        band = ge_lo if band is None else band.logical_and_(ge_lo)
    if band is None:
        return torch.kthvalue(flat, n - k + 1).values
    cand = flat[band]
    inside = cand.numel()
    if above + inside < k:  # the k-th value lies below the bracket
        return torch.kthvalue(flat, n - k + 1).values
    k_in = k - above
    return torch.kthvalue(cand, inside - k_in + 1).values


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest element (1-based) of ``x``; exact (``torch.kthvalue`` semantics)."""
    return kth_largest(x, x.numel() - k + 1)


def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``x``) of exactly ``k`` largest elements; ties at the threshold go to lower indices.

    Selects the same values as ``torch.topk(x.flatten(), k)`` (which breaks ties arbitrarily).
    """
    n = x.numel()
    if k <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    v = float(kth_largest(x, k))
    mask = x >= v
    count = int(torch.count_nonzero(mask))
    if count > k:  # ties at v: keep the first ones in index order
        flat = mask.view(-1) if mask.is_contiguous() else mask.reshape(-1)
        eq = (x.reshape(-1) == v).nonzero().flatten()
        n_gt = count - eq.numel()
        flat[eq[k - n_gt:]] = False
        if not mask.is_contiguous():
            mask = flat.view_as(x)
    return mask


def abs_bits(x: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of ``|x|`` (float32), monotone in the magnitude."""
    return x.abs().view(torch.int32) if x.dtype == torch.float32 else x.float().abs().view(torch.int32)


def hist_hi(bits: torch.Tensor) -> torch.Tensor:
    """Counts of the high 16 bits (``HI_BINS`` bins) of non-negative float32 bit patterns."""
    return torch.bincount((bits.reshape(-1) >> 16), minlength=HI_BINS)


def hist_lo(bits: torch.Tensor, hi_bin: int) -> torch.Tensor:
    """Counts of the low 16 bits (``LO_BINS`` bins) of the bit patterns whose high 16 bits equal ``hi_bin``."""
    flat = bits.reshape(-1)
    inside = flat[(flat >> 16) == hi_bin]
    return torch.bincount(inside & 0xFFFF, minlength=LO_BINS)


def locate_kth_smallest(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Bin holding the k-th smallest (1-based) element of a histogram, and its rank inside that bin (1-based)."""
    cum = torch.cumsum(hist.to(torch.int64).cpu(), 0)
    total = int(cum[-1])
    if not 1 <= k <= total:
        raise ValueError(f"k={k} out of range for {total} elements")
    b = int(torch.searchsorted(cum, torch.tensor([k], dtype=torch.int64))[0])
    before = int(cum[b - 1]) if b > 0 else 0
    return b, k - before


def bits_to_float(hi_bin: int, lo_bin: int) -> float:
    """The float32 whose bit pattern is ``(hi_bin << 16) | lo_bin``."""
    return float(torch.tensor([(hi_bin << 16) | lo_bin], dtype=torch.int32).view(torch.float32)[0])



class KthLargestSweep:
    """Exact k-th largest of a length-``n`` float32 vector ``x`` seen once, block by block, in order, plus where
    :func:`topk_mask`'s tie rule puts its cut; no copy of ``x`` is held.

    ``sample``: an unsorted sample of ``x`` (a few thousand strided entries) that brackets the answer as in
    :func:`kth_largest`; each block passed to :meth:`add` is then only counted above the bracket and its few entries
    inside it gathered. Without a sample (or for small ``n``) every block is kept. :meth:`result` proves the bracket with
    the counts; when it fails (adversarial data, NaN) it gathers every block again through ``refill``.
    """

    def __init__(self, n: int, k: int, sample: torch.Tensor | None = None):
        if not 1 <= k <= n:
            raise ValueError(f"k={k} out of range for {n} elements")
        self.n, self.k = n, k
        self.lo = self.hi = None
        if sample is not None and n > _SMALL and sample.numel() >= 64:
            flat = sample.reshape(-1)
            m = flat.numel()
            q = (n - k) / max(n - 1, 1)
            centre = q * (m - 1)
            margin = int(4 * math.sqrt(m * max(q * (1 - q), 1.0 / m))) + 8
            lo_i, hi_i = int(centre) - margin, int(centre) + margin + 1
            # two selections instead of sorting the sample
            self.lo = float(torch.kthvalue(flat, lo_i + 1).values) if lo_i > 0 else -math.inf
            self.hi = float(torch.kthvalue(flat, hi_i + 1).values) if hi_i < m else math.inf
            if self.lo == -math.inf and self.hi == math.inf:
                self.lo = self.hi = None
        self.cands: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.above = 0
        self._bufs = None

    def add(self, a: torch.Tensor, scratch: torch.Tensor | None = None) -> None:
        """The next block of ``x`` (1-D float32; not kept). ``scratch``: an optional float32 buffer ≥ 2·len."""
        self.sizes.append(a.numel())
        if self.lo is None:
            self.cands.append(a.clone())
            return
        L = a.numel()
        if scratch is None or scratch.numel() < 2 * L:
            scratch = torch.empty(2 * L, dtype=torch.float32, device=a.device)
        # float 1/0 flags (bool-producing comparisons are several times slower): in band = (x ≥ lo) − (x > hi)
        f_ge = torch.ge(a, self.lo, out=scratch[:L])
        f_gt = torch.gt(a, self.hi, out=scratch[L:2 * L])
        self.above += int(f_gt.sum())  # a float32 sum of at most 2**24 ones is exact
        self.cands.append(a[f_ge.sub_(f_gt).to(torch.bool)])

    def result(self, refill) -> tuple[float, int]:
        """``(v, cut)``: ``v`` equals ``torch.kthvalue(x, n − k + 1)``; the ``k`` entries ``topk_mask(x, k)`` keeps are
        those with ``x > v`` plus those with ``x == v`` at indices ``< cut``. ``refill(j)`` returns block ``j`` again
        (needed only to locate a tie cut, or when the bracket failed)."""
        k = self.k
        cands = self.cands
        inside = sum(c.numel() for c in cands)
        k_in = k - self.above
        if not 1 <= k_in <= inside:  # the bracket missed: gather everything
            cands = self.cands = [refill(j).clone() for j in range(len(self.sizes))]
            self.above, inside, k_in = 0, self.n, k
        cand = cands[0] if len(cands) == 1 else torch.cat(cands)
        v = float(torch.kthvalue(cand, inside - k_in + 1).values)
        allowed = k - self.above - int(torch.count_nonzero(cand > v))  # entries equal to v that are kept
        del cand
        seen = 0
        start = 0
        for j, c in enumerate(cands):
            eq = int(torch.count_nonzero(c == v))
            if seen + eq > allowed:  # the first dropped tie lies in block j: find its index
                pos = (refill(j) == v).nonzero().flatten()
                return v, start + int(pos[allowed - seen])
            seen += eq
            start += self.sizes[j]
        return v, self.n
