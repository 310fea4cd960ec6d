"""RegMean equals its closed form on a linear layer; Fisher merging minimises its weighted quadratic."""

from __future__ import annotations

import torch

from studio.learn.closed_form import fisher_merge, gram_matrices, regmean_merge, regmean_solve


def test_regmean_alpha_one_is_least_squares():
    g = torch.Generator().manual_seed(0)
    X = [torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64)]
    W = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in X]
    merged = regmean_solve(W, [x.T @ x for x in X], alpha=1.0)
    # min_W Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖² ⇔ least squares on the stacked inputs and targets
    A = torch.cat(X)
    B = torch.cat([x @ w.T for x, w in zip(X, W)])
    ref = torch.linalg.lstsq(A, B).solution.T
    torch.testing.assert_close(merged, ref)


def test_regmean_reduced_off_diagonal_formula():
    g = torch.Generator().manual_seed(1)
    G = [(lambda x: x.T @ x)(torch.randn(20, 5, generator=g, dtype=torch.float64)) for _ in range(3)]
    W = [torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    a = 0.95
    Gt = [a * x + (1 - a) * torch.diag(torch.diag(x)) for x in G]
    ref = (torch.linalg.inv(sum(Gt)) @ sum(gt @ w.T for gt, w in zip(Gt, W))).T
    torch.testing.assert_close(regmean_solve(W, G, a), ref)


def test_regmean_on_zoo(vision_adapter, vision_data):
    a = vision_adapter
    grams = gram_matrices(a, a.tasks[0], vision_data[a.tasks[0]][:32])
    assert set(grams) == {k for k in a.keys if k.endswith("fc1.weight") or k.endswith("fc2.weight")
                          or k == "embed.weight"}
    assert grams["embed.weight"].shape == (64, 64)
    out = regmean_merge(a, vision_data, examples=64)
    m = out["metrics"]
    assert m["objective_end"] < m["objective_start"]  # better than the plain mean on its own objective
    # non-linear tensors are the plain mean
    mean = sum(a.experts[t]["norm.weight"] for t in a.tasks) / len(a.tasks)
    torch.testing.assert_close(out["state_dict"]["norm.weight"], mean)


def test_fisher_merge_minimises_weighted_quadratic(vision_adapter, vision_data):
    out = fisher_merge(vision_adapter, vision_data, examples=24)
    m = out["metrics"]
    assert m["objective_end"] < m["objective_start"]
    k = "blocks.0.fc1.weight"
    # a weighted mean stays inside the experts' element-wise range
    lo = torch.stack([vision_adapter.experts[t][k] for t in vision_adapter.tasks]).min(0).values
    hi = torch.stack([vision_adapter.experts[t][k] for t in vision_adapter.tasks]).max(0).values
    v = out["state_dict"][k]
    assert bool(((v >= lo - 1e-6) & (v <= hi + 1e-6)).all())
