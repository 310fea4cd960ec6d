"""Differential tests: every deterministic mergekit 0.1.5 method gives mergekit's tensors (float32 rounding)."""

from __future__ import annotations

import pytest
import torch

from studio.methods.registry import get_method

mk = pytest.importorskip("mergekit.merge_methods")


def _mk(name, tensors, params, base_index=None):
    return mk.merge_tensors(tensors, name, parameters=params, base_index=base_index)


def _ours(name, base, models, **params):
    spec = get_method(name)
    kwargs = {}
    for p in spec.params:
        if p.name in params:
            kwargs[p.py_name] = params[p.name]
        elif not p.required:
            kwargs[p.py_name] = [p.default] * len(models) if p.per_model else p.default
    return spec(base, models, **kwargs)


def _family(shape=(24, 40), n=3, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * (i + 1) * torch.randn(shape, generator=g) for i in range(n)]


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)


GTA_CASES = [
    ("task_arithmetic", {}),
    ("ties", {}),
    ("breadcrumbs", {"gamma": [0.02, 0.05, 0.1]}),
    ("breadcrumbs_ties", {"gamma": [0.02, 0.05, 0.1]}),
]


@pytest.mark.parametrize("name,extra", GTA_CASES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("shape", [(24, 40), (37,), (4, 3, 5, 5)])
def test_gta_family_equals_mergekit(name, extra, normalize, rescale, shape):
    base, models = _family(shape)
    params = {"weight": [0.5, 1.0, -0.3], "density": [0.3, 0.55, 0.9], "normalize": normalize,
              "rescale": rescale, "lambda": 0.8, **extra}
    ref = _mk(name, [base, *models], params, base_index=0)
    out = _ours(name, base, models, **params)
    _close(out, ref)
    if name != "task_arithmetic":
        # the default (no rescale) paths are bit-exact
        if not rescale or name in ("ties", "breadcrumbs", "breadcrumbs_ties"):
            assert torch.equal(out, ref)


def test_ties_defaults_equal_mergekit():
    base, models = _family((64, 64), n=4, seed=3)
    params = {"weight": [1.0, 0.7, 0.4, 1.2], "density": 0.2}
    ref = _mk("ties", [base, *models], params, base_index=0)
    out = _ours("ties", base, models, weight=params["weight"], density=[0.2] * 4)
    assert torch.equal(out, ref)


def test_linear_equals_mergekit():
    _, models = _family((16, 8), n=3)
    for normalize in (True, False):
        params = {"weight": [0.2, 0.5, 1.3], "normalize": normalize}
        _close(_ours("linear", None, models, **params), _mk("linear", models, params))


def test_slerp_equals_mergekit():
    base, (other,) = _family((32, 16), n=1, scale=0.5)
    for t in (0.0, 0.25, 0.7, 1.0):
        _close(_ours("slerp", base, [other], t=t), _mk("slerp", [base, other], {"t": t}, base_index=0))
    # nearly collinear: lerp fallback
    near = base * 1.0001
    _close(_ours("slerp", base, [near], t=0.3), _mk("slerp", [base, near], {"t": 0.3}, base_index=0))


@pytest.mark.parametrize("row_wise,flatten", [(False, True), (False, False), (True, False)])
@pytest.mark.parametrize("with_base", [True, False])
def test_nuslerp_equals_mergekit(row_wise, flatten, with_base):
    base, models = _family((12, 20), n=2, scale=0.4)
    params = {"weight": [0.3, 0.9], "nuslerp_row_wise": row_wise, "nuslerp_flatten": flatten}
    if with_base:
        ref = _mk("nuslerp", [base, *models], params, base_index=0)
        out = _ours("nuslerp", base, models, **params)
    else:
        ref = _mk("nuslerp", models, params)
        out = _ours("nuslerp", None, models, **params)
    _close(out, ref)


@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp_equals_mergekit(with_base):
    base, models = _family((10, 30), n=3, scale=0.4)
    params = {"weight": [0.2, 0.5, 0.8]}
    if with_base:
        ref, out = _mk("multislerp", [base, *models], params, 0), _ours("multislerp", base, models, **params)
    else:
        ref, out = _mk("multislerp", models, params), _ours("multislerp", None, models, **params)
    _close(out, ref)


def test_karcher_equals_mergekit():
    base, models = _family((20, 20), n=3, scale=0.5)
    tensors = [base, *models]
    _close(_ours("karcher", None, tensors), _mk("karcher", tensors, {}))
    _close(_ours("karcher", None, tensors, max_iter=3, tol=1e-3), _mk("karcher", tensors, {"max_iter": 3, "tol": 1e-3}))


@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("shape", [(16, 24), (50,)])
def test_model_stock_equals_mergekit(filter_wise, shape):
    base, models = _family(shape, n=3)
    _close(_ours("model_stock", base, models, filter_wise=filter_wise),
           _mk("model_stock", [base, *models], {"filter_wise": filter_wise}, 0))


@pytest.mark.parametrize("topk", [1.0, 0.3, 0.0])
def test_sce_equals_mergekit(topk):
    base, models = _family((18, 22), n=3)
    _close(_ours("sce", base, models, select_topk=topk), _mk("sce", [base, *models], {"select_topk": topk}, 0))


def test_nearswap_equals_mergekit():
    base, models = _family((30, 30), n=1, scale=0.01)
    for t in (0.001, 0.01, 0.1):
        _close(_ours("nearswap", base, models, t=t), _mk("nearswap", [base, *models], {"t": t}, 0))


@pytest.mark.parametrize("shape", [(40, 64), (300,)])
def test_arcee_fusion_equals_mergekit(shape):
    base, models = _family(shape, n=1, scale=0.1)
    _close(_ours("arcee_fusion", base, models), _mk("arcee_fusion", [base, *models], {}, 0))


def test_passthrough_equals_mergekit():
    x = torch.randn(5, 7)
    _close(_ours("passthrough", None, [x]), _mk("passthrough", [x], {}))
    _close(_ours("passthrough", None, [x], scale=[0.5]), _mk("passthrough", [x], {"scale": [0.5]}))
