"""Closed-form expectations on small tensors for the mergekit-family and SuperMerger methods, and the selector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.methods import order_statistics as sel
from studio.methods.checkpoint_merger_modes import similarity_range
from studio.methods.global_stats import gather_context
from studio.methods.registry import Param, get_method, list_methods

A = torch.tensor([1.0, 2.0, -1.0, 0.0])
B = torch.tensor([3.0, 0.0, 1.0, 2.0])
C = torch.tensor([1.0, 1.0, 1.0, 1.0])


def test_every_method_is_declared_and_documented():
    names = {s.name for s in list_methods()}
    expected = {"linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_linear",
                "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "sce",
                "nearswap", "arcee_fusion", "passthrough", "tsv_m", "wudi", "consensus_ta", "magmax", "emr",
                "ties_paper", "weighted_sum", "add_difference", "triple_sum", "sum_twice", "train_difference",
                "cosine_a", "cosine_b"}
    assert expected <= names
    greek = {"alpha": "α", "beta": "β", "gamma": "γ", "epsilon": "ε", "lambda": "λ"}
    for s in list_methods():
        assert s.doc and s.formula and s.ref and s.label, s.name
        for p in s.params:
            assert p.doc, (s.name, p.name)
            if p.kind in (int, float):
                assert p.title == (p.label or p.name) and p.name in p.title, (s.name, p.name)
                assert greek.get(p.name, "") in p.title, (s.name, p.name, p.title)
            if p.required:
                assert p.coerce(p.initial) == p.initial, (s.name, p.name)
                if p.range:
                    assert p.range[0] <= p.initial <= p.range[1], (s.name, p.name, p.initial)


def test_param_title_and_initial():
    # required: start when declared, else neutral (midpoint of the range, first choice, False, 1)
    assert Param("x", range=(0.0, 3.0)).initial == 1.5
    assert Param("x", range=(1, 8), kind=int).initial == 4
    assert Param("x", range=(0.0, 3.0), start=0.25).initial == 0.25
    assert Param("x", choices=("a", "b"), kind=str).initial == "a"
    assert Param("x", kind=bool).initial is False
    assert Param("x").initial == 1.0 and Param("x", kind=int).initial == 1
    # not required: the default, whatever start says
    assert Param("x", default=0.2, range=(0.0, 1.0), start=0.9).initial == 0.2
    assert Param("x").title == "x" and Param("x", label="ξ (xi)").title == "ξ (xi)"
    # the values the studio's controls have always started at
    assert get_method("linear").param("weight").initial == 1.0
    assert get_method("nuslerp").param("weight").initial == 1.0
    assert get_method("slerp").param("t").initial == 0.5 and get_method("nearswap").param("t").initial == 0.5
    assert get_method("ties").param("lambda").title == "λ (lambda)"
    assert get_method("triple_sum").param("beta").title == "β (beta)"
    described = get_method("task_arithmetic").param("lambda").describe()
    assert (described["label"], described["title"], described["start"], described["initial"]) == \
        ("λ (lambda)", "λ (lambda)", None, 1.0)
    described = get_method("linear").param("weight").describe()
    assert (described["title"], described["start"], described["initial"]) == ("weight", 1.0, 1.0)


def test_supermerger_modes_closed_form():
    torch.testing.assert_close(get_method("weighted_sum")(None, [A, B], alpha=0.25), 0.75 * A + 0.25 * B)
    assert torch.equal(get_method("weighted_sum")(None, [A, B], alpha=1.0), B)
    torch.testing.assert_close(get_method("add_difference")(None, [A, B, C], alpha=0.5),
                               torch.tensor([2.0, 1.5, -1.0, 0.5]))
    torch.testing.assert_close(get_method("triple_sum")(None, [A, B, C], alpha=0.2, beta=0.3),
                               0.5 * A + 0.2 * B + 0.3 * C)
    torch.testing.assert_close(get_method("sum_twice")(None, [A, B, C], alpha=0.2, beta=0.3),
                               0.7 * (0.8 * A + 0.2 * B) + 0.3 * C)


def test_train_difference_closed_form():
    # B−C = [2, −1, 0, 1]; |B−A| = [2, 2, 2, 2]; scale = 2/(|B−C|+2) = [.5, 2/3, 1, 2/3]
    out = get_method("train_difference")(None, [A, B, C], alpha=1.0)
    expected = A + 1.8 * torch.tensor([0.5 * 2, -(2 / 3) * 1, 0.0, (2 / 3) * 1])
    torch.testing.assert_close(out, expected)


def test_cosine_modes():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 6, generator=g)
    b = a + 0.3 * torch.randn(8, 6, generator=g)
    for name in ("cosine_a", "cosine_b"):
        spec = get_method(name)
        out = spec(None, [a, b], alpha=0.0)
        # k ∈ [0, 1] per column: every entry lies between a and b
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        assert bool(((out >= lo - 1e-6) & (out <= hi + 1e-6)).all())
        # large α → k clamps to 0 → model B
        torch.testing.assert_close(spec(None, [a, b], alpha=5.0), b)
        # a context computed over several tensors is used as given
        ctx = gather_context(spec, [(None, [a, b], {"alpha": 0.1}), (None, [a * 2, b - 1], {"alpha": 0.1})])
        assert ctx["min"] <= ctx["max"]
        out2 = spec(None, [a, b], alpha=0.1, context={"min": -1.0, "max": 1.0})
        simab = torch.nn.functional.cosine_similarity(a, b, dim=0) if name == "cosine_b" else None
        if simab is not None:
            mag = (a * b).sum() / (a.norm() * b.norm())
            k = (((simab + mag) / 2 + 1) / 2 - 0.1).clamp(0, 1)
            torch.testing.assert_close(out2, b * (1 - k) + a * k)


def test_similarity_range_trims_percentiles():
    vals = np.linspace(0, 1, 1001)
    rng = similarity_range([vals[:500], vals[500:], np.array([np.nan])])
    assert 0.005 < rng["min"] < 0.02 and 0.98 < rng["max"] < 0.995


def test_linear_and_task_arithmetic_closed_form():
    torch.testing.assert_close(get_method("linear")(None, [A, B], weight=[1.0, 3.0], normalize=True),
                               0.25 * A + 0.75 * B)
    out = get_method("task_arithmetic")(C, [A, B], weight=[1.0, 0.5], normalize=False, lambda_=2.0)
    torch.testing.assert_close(out, C + 2 * ((A - C) + 0.5 * (B - C)))


def test_ties_closed_form():
    base = torch.zeros(4)
    m1 = torch.tensor([4.0, -1.0, 0.5, -3.0])
    m2 = torch.tensor([-1.0, 2.0, 0.25, -2.0])
    # density 0.5: m1 keeps {4, -3}; m2 keeps {2, -2}. weighted by [1, 2]: D1 = [4,0,0,-3], D2 = [0,4,0,-4]
    # sign: [+, +, +(0), -]; agreeing: e0: D1 → 4/1; e1: D2 → 4/2 = 2; e2: 0; e3: (-3-4)/(1+2)
    out = get_method("ties")(base, [m1, m2], weight=[1.0, 2.0], density=[0.5, 0.5], normalize=True,
                             rescale=False, lambda_=1.0)
    torch.testing.assert_close(out, torch.tensor([4.0, 2.0, 0.0, -7.0 / 3]))


def test_breadcrumbs_closed_form():
    base = torch.zeros(10)
    m = torch.arange(1.0, 11.0)  # magnitudes 1..10
    # density 0.5, gamma 0.2: drop the 2 largest (9, 10) and the 3 smallest, keep 4..8
    out = get_method("breadcrumbs")(base, [m], weight=[1.0], density=[0.5], gamma=[0.2], normalize=False,
                                    rescale=False, lambda_=1.0)
    torch.testing.assert_close(out, torch.tensor([0, 0, 0, 4, 5, 6, 7, 8, 0, 0.0]))


def test_nearswap_and_model_stock_closed_form():
    a = torch.tensor([0.0, 0.0, 0.0])
    b = torch.tensor([0.05, 0.2, 1.0])
    # w = clamp(0.1/|Δ|, 0, 1) = [1, .5, .1]
    torch.testing.assert_close(get_method("nearswap")(a, [b], t=0.1), torch.tensor([0.05, 0.1, 0.1]))
    base = torch.zeros(2)
    m1, m2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # orthogonal deltas: cos 0 → t = 0 → base
    torch.testing.assert_close(get_method("model_stock")(base, [m1, m2], filter_wise=False), base)
    m3 = torch.tensor([2.0, 0.0])  # parallel: cos 1 → t = 1 → average
    torch.testing.assert_close(get_method("model_stock")(base, [m1, m3], filter_wise=False),
                               torch.tensor([1.5, 0.0]))


def test_slerp_and_karcher_closed_form():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    h = 2 ** -0.5
    torch.testing.assert_close(get_method("slerp")(a, [b], t=0.5), torch.tensor([h, h]))
    torch.testing.assert_close(get_method("karcher")(None, [a, b], max_iter=10, tol=1e-5), torch.tensor([h, h]))
    torch.testing.assert_close(get_method("nuslerp")(None, [a, b], weight=[1.0, 1.0], nuslerp_row_wise=False,
                                                     nuslerp_flatten=True), torch.tensor([h, h]))


@pytest.mark.parametrize("n", [7, 5000, 300_000])
@pytest.mark.parametrize("frac", [0.0001, 0.2, 0.5, 0.97, 1.0])
def test_kth_largest_exact(n, frac):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g).abs()
    k = max(1, int(frac * n))
    assert sel.kth_largest(x, k) == torch.kthvalue(x, n - k + 1).values


def test_kth_largest_adversarial_and_ties():
    # sorted data defeats a strided sample's bracket; the counts catch it and fall back
    x = torch.cat([torch.zeros(200_000), torch.arange(200_000, dtype=torch.float32)])
    for k in (1, 1000, 199_999, 250_000):
        assert sel.kth_largest(x, k) == torch.kthvalue(x, x.numel() - k + 1).values
    y = torch.randint(0, 4, (300_000,), generator=torch.Generator().manual_seed(1)).float()
    m = sel.topk_mask(y, 123_456)
    assert int(m.sum()) == 123_456
    assert y[m].sum() == torch.topk(y, 123_456).values.sum()


def test_float_bit_histograms_give_exact_threshold():
    g = torch.Generator().manual_seed(5)
    parts = [torch.randn(s, generator=g).abs() for s in (1000, 333, 4096)]
    allv = torch.cat(parts)
    k = 1234
    hist = sum(sel.hist_hi(sel.abs_bits(p)) for p in parts)
    hb, r = sel.locate_kth_smallest(hist, k)
    lo_hist = sum(sel.hist_lo(sel.abs_bits(p), hb) for p in parts)
    lb, _ = sel.locate_kth_smallest(lo_hist, r)
    assert sel.bits_to_float(hb, lb) == torch.kthvalue(allv, k).values.item()


def test_docs_table_is_current():
    from pathlib import Path

    from studio.methods.doc import render
    doc = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
    if not doc.exists():
        pytest.skip("docs/methods.md not generated")
    assert doc.read_text() == render(), "regenerate with: python -m studio.methods.doc > docs/methods.md"


def test_methods_never_write_into_their_inputs():
    g = torch.Generator().manual_seed(9)
    base = torch.randn(6, 8, generator=g)
    pool = [base + 0.3 * torch.randn(6, 8, generator=g) for _ in range(3)]
    for spec in list_methods():
        n = max(spec.min_models, min(spec.max_models or 3, 3))
        if spec.name == "model_stock":
            n = 3
        models = [m.clone() for m in pool[:n]]
        b = base.clone() if (spec.needs_base or not spec.includes_base) else None
        kw = {}
        for p in spec.params:
            value = p.default if not p.required else (0.5 if p.name == "t" else 1.0)
            if p.name == "density" and spec.name.startswith("della"):
                value = 0.5
            kw[p.py_name] = [value] * n if p.per_model else value
        if spec.random:
            kw["generator"] = torch.Generator().manual_seed(0)
        if spec.name == "wudi":
            kw["iters"] = 3
        out = spec(b, models, **kw)
        assert out.shape == base.shape and torch.isfinite(out).all(), spec.name
        for m, orig in zip(models, pool):
            assert torch.equal(m, orig), spec.name
        if b is not None:
            assert torch.equal(b, base), spec.name
