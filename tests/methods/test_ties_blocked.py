"""The blocked CPU kernel for TIES / DARE-TIES (studio.methods.ties_blocked) against the whole-tensor path.

TIES must equal ``gta_merge`` (and so mergekit) bit for bit for every block size, dtype and tie pattern; DARE must
draw exactly ``sparsify.bernoulli_mask``'s mask whatever the block size and reproduce per seed.
"""

from __future__ import annotations

import pytest
import torch

from studio.methods import cache_blocks, ties_blocked
from studio.methods import order_statistics as sel
from studio.methods import sparsify as sp
from studio.methods import ties_dare_della as tdd


def _old_ties(base, models, weight, density, normalize=True, lambda_=1.0):
    base, models = base.float(), [m.float() for m in models]
    return tdd.gta_merge(base, models, weight,
                         lambda i, d, ws: sp.magnitude_(d, density[i], False, sp.scratch_like(ws, d)),
                         consensus=True, normalize=normalize, lambda_=lambda_)


def _old_dare(base, models, weight, density, generator, normalize=False, lambda_=1.0):
    base, models = base.float(), [m.float() for m in models]
    return tdd.gta_merge(base, models, weight, lambda i, d, ws: sp.bernoulli_(d, density[i], True, generator, ws),
                         consensus=True, normalize=normalize, lambda_=lambda_, fold=True)


def _family(shape, dtype, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).to(dtype)
    models = [(base.float() + 0.002 * torch.randn(shape, generator=g)).to(dtype) for _ in range(n - 1)]
    # coarse steps: many |delta| equal to the k-th value (tie cuts) and many exactly cancelling sums
    models.append((base.float() + 0.01 * torch.randint(-3, 4, shape, generator=g).float()).to(dtype))
    return base, models


SHAPES = [(50,), (37, 29), (3, 70001), (131073,), (300, 1000)]


@pytest.mark.parametrize("block", [4096, 1000, 1 << 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_ties_blocked_is_bit_exact(monkeypatch, shape, dtype, block):
    monkeypatch.setattr(cache_blocks, "BLOCK", block)
    base, models = _family(shape, dtype)
    weight, density = [0.3, 1.0, -0.5, 0.7], [0.3, 0.55, 0.9, 0.2]
    before = [t.clone() for t in (base, *models)]
    for normalize, lambda_ in ((True, 1.0), (False, 0.8)):
        out = tdd.ties(base, models, weight=weight, density=density, normalize=normalize, rescale=False,
                       lambda_=lambda_)
        assert out.dtype == torch.float32 and out.shape == base.shape
        assert torch.equal(out, _old_ties(base, models, weight, density, normalize, lambda_))
    # stored-dtype inputs are read-only views of mapped files: never written
    assert all(torch.equal(a, b) for a, b in zip(before, (base, *models)))


@pytest.mark.parametrize("density", [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1e-6, 0.999999]])
def test_ties_blocked_density_edges(density):
    base, models = _family((200, 700), torch.float16, n=2, seed=4)
    out = tdd.ties(base, models, weight=[1.0, 0.5], density=density, normalize=True, rescale=False, lambda_=1.0)
    assert torch.equal(out, _old_ties(base, models, [1.0, 0.5], density))


def test_ties_blocked_single_model_and_rescale_fallback():
    base, models = _family((300, 500), torch.float16, n=1, seed=2)
    out = tdd.ties(base, models, weight=[0.7], density=[0.3], normalize=True, rescale=False, lambda_=1.0)
    assert torch.equal(out, _old_ties(base, models, [0.7], [0.3]))
    # rescale keeps the whole-tensor path (mergekit's L1 sums), now fed fp16 inputs
    out = tdd.ties(base, models, weight=[0.7], density=[0.3], normalize=True, rescale=True, lambda_=1.0)
    ref = tdd.gta_merge(base.float(), [models[0].float()], [0.7],
                        lambda i, d, ws: sp.magnitude_(d, 0.3, True, sp.scratch_like(ws, d)),
                        consensus=True, normalize=True, lambda_=1.0)
    assert torch.equal(out, ref)


def test_ties_blocked_equals_mergekit_on_large_tensors(monkeypatch):
    # several blocks and the sampled bracket (n > 2**17); continuous float32 deltas, so no ties at the threshold
    # (on tied magnitudes mergekit keeps whichever its unstable argsort puts first; we keep the lower indices)
    mk = pytest.importorskip("mergekit.merge_methods")
    monkeypatch.setattr(cache_blocks, "BLOCK", 30000)
    g = torch.Generator().manual_seed(9)
    base = torch.randn(300, 1000, generator=g)
    models = [base + 0.05 * torch.randn(300, 1000, generator=g) for _ in range(3)]
    params = {"weight": [1.0, 0.7, -0.4], "density": 0.3}
    ref = mk.merge_tensors([base, *models], "ties", parameters=params, base_index=0)
    out = tdd.ties(base, models, weight=params["weight"], density=[0.3] * 3, normalize=True, rescale=False,
                   lambda_=1.0)
    assert torch.equal(out, ref)


def _sweep(x, k, block, sample=True):
    n = x.numel()
    step = max(1, n // 4096)
    sw = sel.KthLargestSweep(n, k, x[::step].clone() if sample else None)
    for s in range(0, n, block):
        sw.add(x[s:s + block])
    return sw.result(lambda j: x[j * block:(j + 1) * block])


@pytest.mark.parametrize("k_frac", [1e-5, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("data", ["randn", "ties", "sorted"])
def test_kth_sweep_matches_topk_mask(data, k_frac):
    g = torch.Generator().manual_seed(3)
    n = 300_001
    if data == "randn":
        x = torch.randn(n, generator=g).abs()
    elif data == "ties":
        x = torch.randint(0, 5, (n,), generator=g).float()
    else:  # sorted data defeats the strided sample's bracket: the counts catch it
        x = torch.cat([torch.zeros(n // 2), torch.arange(n - n // 2, dtype=torch.float32)])
    k = max(1, int(k_frac * n))
    for block in (65536, 7777):
        v, cut = _sweep(x, k, block)
        assert v == torch.kthvalue(x, n - k + 1).values.item()
        kept = (x > v) | ((x == v) & (torch.arange(n) < cut))
        assert torch.equal(kept, sel.topk_mask(x, k))


def test_kth_sweep_small_without_sample():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])
    assert _sweep(x, 2, 2, sample=False) == (3.0, 4)   # keeps the 3s at 0 and 2, drops the one at 4
    assert _sweep(x, 4, 3, sample=False) == (2.0, 5)


@pytest.mark.parametrize("block", [4096, 1 << 16])
@pytest.mark.parametrize("shape", [(7,), (37, 29), (300, 1001)])
def test_dare_blocked_draws_bernoulli_mask(monkeypatch, shape, block):
    monkeypatch.setattr(cache_blocks, "BLOCK", block)
    base, models = _family(shape, torch.float16, n=3, seed=5)
    weight, density = [1.0, 0.6, -0.8], [0.3, 0.5, 1.0]
    out = tdd.dare_ties(base, models, weight=weight, density=density, normalize=False, rescale=True, lambda_=1.0,
                        generator=torch.Generator().manual_seed(11))
    ref = _old_dare(base, models, weight, density, torch.Generator().manual_seed(11))
    # same masks, so the same support; the L1 factors come from per-block sums, so values agree to rounding
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the stored masks are bernoulli_mask's, drawn model after model from one generator
    g = torch.Generator().manual_seed(11)
    b = base.reshape(-1)
    blk = min(cache_blocks.BLOCK, b.numel())
    ws = {"words": torch.empty((blk + 3) // 4, dtype=torch.int64), "d": torch.empty(blk), "f": torch.empty(blk),
          "b32": torch.empty(blk)}
    g2 = torch.Generator().manual_seed(11)
    for m, p in zip(models, density):
        keep = ties_blocked.prepare_dare(m.reshape(-1), b, p, True, g, blk, ws)
        if p < 1:
            assert torch.equal(keep.mask, sp.bernoulli_mask((b.numel(),), p, g2))
            d = m.float() - base.float()
            expect = float(d.abs().sum() / (d * keep.mask.view(shape)).abs().sum())
            assert keep.factor == pytest.approx(expect, rel=1e-5)


def test_dare_blocked_reproducible_and_statistics():
    base, models = _family((256, 1024), torch.bfloat16, n=3, seed=6)
    kw = dict(weight=[1.0, 1.0, 1.0], density=[0.3] * 3, normalize=False, rescale=True, lambda_=1.0)
    a = tdd.dare_ties(base, models, generator=torch.Generator().manual_seed(1), **kw)
    b = tdd.dare_ties(base, models, generator=torch.Generator().manual_seed(1), **kw)
    c = tdd.dare_ties(base, models, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    b32 = base.reshape(-1)
    g = torch.Generator().manual_seed(3)
    blk = 1 << 16
    ws = {"words": torch.empty(blk // 4, dtype=torch.int64), "d": torch.empty(blk), "f": torch.empty(blk),
          "b32": torch.empty(blk)}
    keep = ties_blocked.prepare_dare(models[0].reshape(-1), b32, 0.3, True, g, blk, ws)
    p = keep.mask.float().mean().item()
    assert abs(p - 0.3) < 5 * (0.3 * 0.7 / keep.mask.numel()) ** 0.5


def test_l1_is_an_accurate_sum():
    # torch.linalg.vector_norm(ord=1) drifts ~1% on millions of float32 entries; the rescale factor must not
    g = torch.Generator().manual_seed(0)
    x = 0.01 * torch.randint(-3, 4, (2816 * 1024,), generator=g).float() + 0.02 * torch.randn(2816 * 1024, generator=g)
    assert sp.l1_norm(x) == pytest.approx(float(x.double().abs().sum()), rel=1e-6)
