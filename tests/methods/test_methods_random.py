"""DARE / DELLA: kept density, L1 rescale and sign election match mergekit statistically; seeds reproduce."""

from __future__ import annotations

import pytest
import torch

from studio.methods import sparsify as sp
from studio.methods.registry import get_method


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _call(name, base, models, generator, **params):
    spec = get_method(name)
    kw = {}
    for p in spec.params:
        if p.name in params:
            kw[p.py_name] = params[p.name]
        elif not p.required:
            kw[p.py_name] = [p.default] * len(models) if p.per_model else p.default
    return spec(base, models, generator=generator, **kw)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.9])
def test_bernoulli_mask_density(p):
    m = sp.bernoulli_mask((1000, 1000), p, _gen(1))
    kept = m.float().mean().item()
    assert abs(kept - p) < 5 * (p * (1 - p) / 1e6) ** 0.5
    # independent halves of the 64-bit words: neighbours uncorrelated
    x = m.reshape(-1).float()
    assert abs(torch.corrcoef(torch.stack([x[0::2], x[1::2]]))[0, 1].item()) < 0.01


def test_dare_keeps_density_and_l1_norm():
    d = torch.randn(400, 500)
    before = d.abs().sum()
    work = d.clone()
    factor = sp.bernoulli_(work, 0.3, rescale=True, generator=_gen(2))
    kept = (work != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.005
    assert torch.isclose(work.abs().sum() * factor, before, rtol=1e-5)
    # kept entries are unchanged before the factor is applied (mergekit masks, then scales)
    nz = work != 0
    assert torch.equal(work[nz], d[nz])
    # the L1-matching factor agrees with DARE's 1/p in expectation
    assert abs(factor - 1 / 0.3) < 0.05


def test_dare_linear_single_model_preserves_l1_and_density():
    base = torch.zeros(300, 300)
    model = torch.randn(300, 300)
    out = _call("dare_linear", base, [model], _gen(3), weight=[1.0], density=[0.25])
    assert abs((out != 0).float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(out.abs().sum(), model.abs().sum(), rtol=1e-4, atol=0)
    nz = out != 0
    ratio = out[nz] / model[nz]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_seed_reproducible(name):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 64, generator=g)
    models = [base + 0.1 * torch.randn(64, 64, generator=g) for _ in range(3)]
    params = dict(weight=[1.0, 0.5, 0.8], density=[0.4, 0.4, 0.4])
    a = _call(name, base, models, _gen(7), **params)
    b = _call(name, base, models, _gen(7), **params)
    c = _call(name, base, models, _gen(8), **params)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_della_keep_probability_band():
    d = torch.randn(8, 101)
    probs = sp.della_keep_probability(d, 0.4, 0.1)
    # each row: probabilities are a permutation of the linear band, ordered as the magnitudes
    expected = 0.3 + 0.2 * torch.arange(101) / 100
    for r in range(8):
        order = d[r].abs().argsort()
        torch.testing.assert_close(probs[r, order], expected)
    with pytest.raises(Exception):
        sp.della_keep_probability(d, 0.9, 0.15)


def test_della_kept_fraction_follows_rank():
    d = torch.randn(200, 1000)
    work = d.clone()
    sp.della_(work, 0.5, 0.2, rescale=False, generator=_gen(4))
    kept = work != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    ranks = d.abs().argsort(dim=1).argsort(dim=1)
    low = kept[ranks < 100].float().mean().item()    # band bottom ≈ 0.3 + small
    high = kept[ranks >= 900].float().mean().item()  # band top ≈ 0.7 − small
    assert abs(low - 0.32) < 0.02 and abs(high - 0.68) < 0.02



@pytest.mark.parametrize("name,extra", [("dare_ties", {}), ("dare_linear", {}), ("della", {"epsilon": [0.1] * 3}),
                                        ("della_linear", {"epsilon": [0.1] * 3})])
def test_statistics_match_mergekit(name, extra):
    mkm = pytest.importorskip("mergekit.merge_methods")
    g = torch.Generator().manual_seed(11)
    base = torch.randn(256, 256, generator=g)
    models = [base + 0.05 * torch.randn(256, 256, generator=g) for _ in range(3)]
    params = {"weight": [1.0, 0.6, 0.8], "density": [0.3, 0.5, 0.7], **extra}
    ours = [_call(name, base, models, _gen(s), **params) - base for s in range(4)]
    refs = []
    for s in range(4):
        torch.manual_seed(100 + s)
        refs.append(mkm.merge_tensors([base, *models], name, parameters=params, base_index=0) - base)
    for stat in (lambda t: (t != 0).float().mean(), lambda t: t.abs().sum(), lambda t: t.clamp(min=0).sum(),
                 lambda t: t.square().sum().sqrt()):
        a = torch.stack([stat(t) for t in ours]).mean()
        b = torch.stack([stat(t) for t in refs]).mean()
        assert torch.isclose(a, b, rtol=0.02), (name, a, b)
