"""Sparsification of task vectors, in place, with mergekit 0.1.5's semantics (``mergekit/sparsify.py``).

Each function takes a delta ``d`` (a scratch tensor it may overwrite), zeroes the dropped entries in place and
returns the L1 rescale factor ``‖d‖₁ / ‖masked d‖₁`` (1.0 when ``rescale`` is off or either norm is below 1e-7),
which the caller folds into the model's weight instead of spending a pass multiplying the tensor.

* magnitude: keep the ``max(1, ⌊density·n⌋)`` largest |d| (exact top-k, :mod:`.order_statistics`), per tensor.
* magnitude_outliers (breadcrumbs): drop the ``⌊gamma·n⌋`` largest, then the smallest, keeping ``⌊density·n⌋``.
* bernoulli (DARE): keep each entry with probability ``density``.
* della_magprune: per row, keep probability rising linearly with the magnitude rank over
  ``[density − ε, density + ε]``.

Random draws use the caller's ``torch.Generator``. DARE's mask comes from 64-bit random words split into four
16-bit uniforms each (P(keep) = density to within 2⁻¹⁷), which is several times faster than ``torch.bernoulli``;
mergekit draws ``torch.bernoulli`` from the global RNG, so masks agree with it in distribution, not bit for bit.
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from .order_statistics import kth_largest, topk_mask

RESCALE_EPS = 1e-7


def l1_norm(x: torch.Tensor) -> float:
    # mergekit's ``x.abs().sum()``: torch.linalg.vector_norm(x, ord=1) accumulates float32 so loosely that it is off
    # by ~1% on a few million entries, which skewed the rescale factor by as much
    return float(torch.abs(x).sum())


def rescale_factor(before: float, after: float) -> float:
    """The L1 rescale factor ‖d‖₁ / ‖masked d‖₁ from the two norms (1.0 when either is below ``RESCALE_EPS``)."""
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return 1.0
    # mergekit divides two float32 scalars; do the same so the factor rounds identically.
    return float(torch.tensor(before, dtype=torch.float32) / torch.tensor(after, dtype=torch.float32))


def magnitude_(d: torch.Tensor, density: float, rescale: bool = False,
               scratch: torch.Tensor | None = None) -> float:
    """Keep the ``max(1, int(density·n))`` largest magnitudes of ``d`` (in place). Returns the L1 rescale factor.

    ``scratch``: an optional float buffer shaped like ``d`` (saves an allocation per call).
    """
    if density >= 1:
        return 1.0
    n = d.numel()
    if density <= 0 or n == 0:
        d.zero_()
        return 1.0
    k = max(1, int(density * n))
    a = torch.abs(d, out=scratch) if scratch is not None else d.abs()
    before = float(a.sum()) if rescale else 0.0
    v = float(kth_largest(a, k))
    keep = a.ge_(v)  # float 1/0 in place: mixed bool×float kernels are several times slower
    if int(torch.count_nonzero(keep)) > k:  # ties at the threshold: drop the later ones (index order)
        flat = keep.view(-1)
        eq = (d.reshape(-1).abs() == v).nonzero().flatten()
        n_gt = int(torch.count_nonzero(keep)) - eq.numel()
        flat[eq[k - n_gt:]] = 0
    d.mul_(keep)
    if not rescale:
        return 1.0
    return rescale_factor(before, float(d.abs().sum()))


def outliers_mask(a: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs mask on magnitudes ``a``: ascending ranks ``[n_bot, n_bot + ⌊density·n⌋)`` are kept."""
    n = a.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    k1 = n - n_bot           # keep the k1 largest ...
    k2 = k1 - target          # ... except the k2 largest
    keep = topk_mask(a, k1)
    if k2 > 0:
        keep &= ~topk_mask(a, k2)
    return keep


def magnitude_outliers_(d: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False) -> float:
    """Model Breadcrumbs sparsification (in place). Returns the L1 rescale factor."""
    if density >= 1:
        return 1.0
    a = d.abs()
    keep = outliers_mask(a, density, gamma)
    d.mul_(keep)
    if not rescale:
        return 1.0
    before = float(a.sum())
    after = float(a.mul_(keep).sum())
    return rescale_factor(before, after)


def bernoulli_mask(shape, p: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, words: torch.Tensor | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Mask, each entry True with probability ``p`` rounded to a multiple of 2⁻¹⁶ (|error| ≤ 2⁻¹⁷), drawn from
    ``generator``: each 64-bit draw gives four 16-bit uniforms, a quarter of ``torch.bernoulli``'s RNG work.

    ``words`` (int64, ≥ ⌈n/4⌉ elements) and ``out`` (bool, n elements) are optional reusable buffers.
    """
    if generator is not None:
        device = generator.device
    n = 1
    for s in shape:
        n *= int(s)
    if p >= 1:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if p <= 0 or n == 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    quarter = (n + 3) // 4
    if words is None or words.numel() < quarter:
        words = torch.empty(quarter, dtype=torch.int64, device=device)
    words = words[:quarter]
    words.random_(-(2 ** 63), None, generator=generator)
    uniform = words.view(torch.int16)[:n]  # four independent 16-bit uniforms per 64-bit draw
    threshold = _keep_threshold(p)
    if threshold >= 2 ** 15:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if out is None:
        out = torch.empty(n, dtype=torch.bool, device=device)
    return torch.lt(uniform, threshold, out=out.view(-1)[:n]).view(shape)


def _keep_threshold(p: float) -> int:
    """bernoulli_mask's integer threshold: a signed 16-bit uniform ``u`` keeps its entry when ``u < threshold``."""
    return int(round(p * 2 ** 16)) - 2 ** 15


def bernoulli_block_(out: torch.Tensor, p: float, generator: torch.Generator | None,
                     words: torch.Tensor) -> torch.Tensor:
    """Fill the 1-D float32 ``out`` with a 1.0/0.0 keep mask, each entry 1 with probability ``p`` exactly as
    :func:`bernoulli_mask` (16-bit uniforms; ``0 < p < 1``). Consumes ``⌈len/4⌉`` 64-bit draws of ``generator``, so
    consecutive calls on blocks whose lengths are multiples of 4 reproduce ``bernoulli_mask`` over the whole tensor.

    ``words``: an int64 buffer of at least ``⌈len/4⌉`` elements.
    """
    n = out.numel()
    w = words[: (n + 3) // 4]
    w.random_(-(2 ** 63), None, generator=generator)
    threshold = _keep_threshold(p)
    if threshold >= 2 ** 15:
        return out.fill_(1.0)
    # comparing into a float output is vectorised; producing bools is several times slower
    return torch.lt(w.view(torch.int16)[:n], threshold, out=out)


def bernoulli_(d: torch.Tensor, density: float, rescale: bool = True, generator: torch.Generator | None = None,
               workspace: dict | None = None) -> float:
    """DARE: keep each entry with probability ``density`` (in place). Returns the L1 rescale factor.

    ``workspace``: a dict in which reusable buffers are kept between calls on same-sized tensors.
    """
    if density >= 1:
        return 1.0
    ws = workspace if workspace is not None else {}
    n = d.numel()
    words = _buffer(ws, "words", (n + 3) // 4, torch.int64, d.device)
    bools = _buffer(ws, "bools", n, torch.bool, d.device)
    keep = bernoulli_mask(d.shape, density, generator, d.device, words=words, out=bools)
    fmask = scratch_like(ws, d)
    fmask.copy_(keep)
    return _mask_(d, fmask, rescale)


def _mask_(d: torch.Tensor, keep: torch.Tensor, rescale: bool) -> float:
    """``d *= keep`` in place; returns the L1 rescale factor (‖d‖₁ before / after) when ``rescale``, else 1."""
    if not rescale:
        d.mul_(keep)
        return 1.0
    before = l1_norm(d)
    d.mul_(keep)
    return rescale_factor(before, l1_norm(d))


def _buffer(ws: dict, name: str, n: int, dtype, device) -> torch.Tensor:
    buf = ws.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
        buf = torch.empty(n, dtype=dtype, device=device)
        ws[name] = buf
    return buf


def scratch_like(ws: dict, like: torch.Tensor) -> torch.Tensor:
    """``ws["scratch"]``, a buffer shaped like ``like`` that a merge's sparsifiers share (reallocated for another
    shape or dtype)."""
    buf = ws.get("scratch")
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
        buf = ws["scratch"] = torch.empty_like(like)
    return buf


def scale_(d: torch.Tensor, w: float, factor: float, fold: bool) -> None:
    """``d *= factor·w`` in place: the L1 rescale ``factor`` a sparsifier returned and the model's weight ``w``.
    ``fold`` multiplies once; otherwise factor then weight, in mergekit's order, so deterministic methods round
    exactly as mergekit does."""
    w = float(w)
    if fold:
        if w * factor != 1.0:
            d.mul_(w * factor)
        return
    if factor != 1.0:
        d.mul_(factor)
    if w != 1.0:
        d.mul_(w)


def della_keep_probability(d: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """MagPrune keep probabilities: per row (dim 1; 1-D tensors are one row), rank-normalised magnitudes mapped
    linearly onto ``[density − ε, density + ε]``."""
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise RecipeError(f"della needs density ± epsilon inside (0, 1); got density={density}, epsilon={epsilon}",
                          hint="lower epsilon or move density away from 0 and 1")
    t = d if d.dim() >= 2 else d.reshape(1, -1)
    cols = t.shape[1]
    order = torch.argsort(t.abs(), dim=1)
    ranks = torch.empty(t.shape, dtype=torch.float32, device=d.device)
    steps = torch.arange(cols, dtype=torch.float32, device=d.device)
    ranks.scatter_(1, order, steps.view(1, cols, *([1] * (t.dim() - 2))).expand(t.shape))
    if cols > 1:
        ranks.div_(cols - 1)
    else:  # mergekit divides 0 by 0 here; a single column sits in the middle of the band
        ranks.fill_(0.5)
    probs = ranks.mul_(2 * epsilon).add_(density - epsilon)
    return probs.view(d.shape)


def della_(d: torch.Tensor, density: float, epsilon: float, rescale: bool = True,
           generator: torch.Generator | None = None) -> float:
    """DELLA MagPrune (in place). Returns the L1 rescale factor."""
    if density >= 1:
        return 1.0
    if density <= 0:
        d.zero_()
        return 1.0
    probs = della_keep_probability(d, density, epsilon)
    u = torch.rand(d.shape, generator=generator, device=d.device, dtype=torch.float32)
    keep = u < probs
    del u, probs
    return _mask_(d, keep, rescale)
