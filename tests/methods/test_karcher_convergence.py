"""Karcher means as published recipes ask for them (``max_iter: 9999``, ``tol: 1e-9`` — below float32's resolution):
the iteration stops once its step has settled at rounding noise, and the result is the Karcher mean that a float64
iteration run to 1e-14 finds."""

import torch

from studio.methods import spherical
from studio.methods.spherical import karcher_mean


def _points(n=4, size=(64, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(size, generator=g)
    return [base + 0.6 * torch.randn(size, generator=g) for _ in range(n)]


def test_an_unreachable_tol_stops_at_float32_resolution_on_the_float64_mean(monkeypatch):
    pts = _points()
    alphas = [0.1, 0.2, 0.3, 0.4]
    reference = karcher_mean([p.double() for p in pts], alphas, max_iter=1000, tol=1e-14)
    steps = []
    norm = torch.linalg.vector_norm
    monkeypatch.setattr(spherical.torch.linalg, "vector_norm", lambda t, *a, **k: (steps.append(1), norm(t, *a, **k))[1])
    got = karcher_mean(pts, alphas, max_iter=9999, tol=1e-9)
    torch.testing.assert_close(got.double(), reference, rtol=2e-6, atol=2e-6)
    assert len(steps) < 200   # iterations (2 norms each) — not 9999


def test_a_reachable_tol_still_decides():
    pts = _points(3, seed=1)
    loose = karcher_mean(pts, [1 / 3] * 3, max_iter=9999, tol=1e-2)
    tight = karcher_mean(pts, [1 / 3] * 3, max_iter=9999, tol=1e-9)
    assert not torch.equal(loose, tight)
    torch.testing.assert_close(loose, tight, rtol=5e-2, atol=5e-2)


def test_multislerp_with_a_base_and_no_change_in_a_tensor_gives_the_base():
    """Three fine-tunes that left a tensor as the base had it (bf16 deltas that round to zero): mergekit raises
    here; the weighted sum of zero task vectors is the base."""
    base = torch.randn(8, 6, dtype=torch.bfloat16).float()
    out = spherical.multislerp(base, [base.clone() for _ in range(3)], weight=[0.2, 0.3, 0.5], normalize_weights=True,
                               eps=1e-8)
    assert torch.equal(out, base)
    a, b = torch.randn(8, 6), torch.randn(8, 6)   # cancelling directions among three: their weighted sum
    out = spherical.multislerp(None, [a, -a, b], weight=[0.5, 0.5, 0.0], normalize_weights=True, eps=1e-8)
    torch.testing.assert_close(out, torch.zeros(8, 6))
