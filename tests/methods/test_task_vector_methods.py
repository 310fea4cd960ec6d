"""TSV-M, WUDI, consensus TA, MagMax, EMR and paper TIES against their definitions on hand-made task vectors."""

from __future__ import annotations

import torch

from studio.methods import entry_selection, task_subspaces
from studio.methods.global_stats import gather_context
from studio.methods.registry import get_method


def _fam(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + torch.randn(shape, generator=g) * (0.1 * (i + 1)) for i in range(n)]


def test_ties_paper_closed_form():
    base = torch.zeros(5)
    t1 = torch.tensor([3.0, -1.0, 0.5, 2.0, -4.0])
    t2 = torch.tensor([-2.0, -3.0, 0.2, 1.0, 4.0])
    # density 0.4 of 5 → keep |τ| ≥ the (5-2)=3rd smallest: t1 keeps {3, 2, -4}; t2 keeps {-2, -3, 4}
    out = get_method("ties_paper")(base, [base + t1, base + t2], density=0.4, lambda_=1.0)
    # sums: [1, -3, 0, 2, 0] → γ = [+, -, 0, +, 0]; majority sign of γ = sign(+1-1+1) = +
    # entry 0: agreeing +3 → 3; entry1: -3 (only t2 kept) → -3; entry 2: nothing kept → 0;
    # entry 3: t1 2 → 2; entry 4: γ 0 → + → t2's 4 → 4
    torch.testing.assert_close(out, torch.tensor([3.0, -3.0, 0.0, 2.0, 4.0]))


def test_ties_paper_global_threshold_is_model_wide():
    spec = get_method("ties_paper")
    shapes = [(30, 20), (50,), (4, 5, 6)]
    fams = [_fam(s, 3, seed=i) for i, s in enumerate(shapes)]
    calls = [(b, ms, {"density": 0.2, "lambda_": 0.9}) for b, ms in fams]
    ctx = gather_context(spec, calls)
    for i in range(3):
        flat = torch.cat([(ms[i] - b).reshape(-1) for b, ms in fams])
        k = flat.numel() - int(0.2 * flat.numel())
        assert ctx["threshold"][i] == torch.kthvalue(flat.abs(), k).values.item()
    # the method with the global context equals a merge of the concatenated model vector
    outs = [spec(b, ms, density=0.2, lambda_=0.9, context=ctx) for b, ms in fams]
    flat_base = torch.cat([b.reshape(-1) for b, _ in fams])
    flat_models = [torch.cat([ms[i].reshape(-1) for _, ms in fams]) for i in range(3)]
    whole = spec(flat_base, flat_models, density=0.2, lambda_=0.9)
    torch.testing.assert_close(torch.cat([o.reshape(-1) for o in outs]), whole)


def _tsv_reference(taus):
    # FusionBench's construction with zero-padded blocks, written out
    m, n = taus[0].shape
    r = min(m, n)
    k = r // len(taus)
    su, ss, sv = torch.zeros(m, r), torch.zeros(r), torch.zeros(r, n)
    for i, t in enumerate(taus):
        u, s, v = torch.linalg.svd(t, full_matrices=False)
        su[:, i * k:(i + 1) * k] = u[:, :k]
        ss[i * k:(i + 1) * k] = s[:k]
        sv[i * k:(i + 1) * k] = v[:k]
    uu, _, vu = torch.linalg.svd(su, full_matrices=False)
    uv, _, vv = torch.linalg.svd(sv, full_matrices=False)
    return torch.linalg.multi_dot((uu, vu, torch.diag(ss), uv, vv))


def test_tsv_m_matches_definition():
    base, models = _fam((12, 9), 3)
    out = get_method("tsv_m")(base, models, alpha=0.7)
    ref = base + 0.7 * _tsv_reference([m - base for m in models])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # non-2-D: mean task vector
    b1, m1 = _fam((7,), 3)
    torch.testing.assert_close(get_method("tsv_m")(b1, m1, alpha=1.0), torch.stack(m1).mean(0))


def test_tsv_m_orthogonal_tasks_are_sum():
    # task vectors on disjoint orthogonal subspaces: TSV-M returns their sum exactly
    base = torch.zeros(6, 6)
    t1 = torch.diag(torch.tensor([2.0, 1.0, 0.7, 0.0, 0.0, 0.0]))      # rank 3 = k: no arbitrary directions
    t2 = torch.zeros(6, 6)
    t2[3, 3], t2[4, 5], t2[5, 4] = 3.0, 0.5, -1.5
    out = get_method("tsv_m")(base, [t1, t2], alpha=1.0)
    torch.testing.assert_close(out, t1 + t2, atol=1e-5, rtol=1e-5)


def test_wudi_matches_autograd_definition():
    base, models = _fam((6, 5), 3)
    taus = [m - base for m in models]
    tvs = torch.stack(taus)
    ref = torch.nn.Parameter(tvs.sum(0).clone())
    opt = torch.optim.Adam([ref], lr=1e-3)
    norms = tvs.reshape(3, -1).norm(dim=-1).square()
    for _ in range(50):
        prod = (ref.unsqueeze(0) - tvs) @ tvs.transpose(1, 2)
        loss = (prod.square() / norms.view(-1, 1, 1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = get_method("wudi")(base, models, iters=50, lr=1e-3)
    torch.testing.assert_close(out, base + ref.detach(), rtol=1e-4, atol=1e-5)
    # 1-D tensors: plain mean
    b1, m1 = _fam((9,), 3)
    torch.testing.assert_close(get_method("wudi")(b1, m1, iters=10, lr=1e-3), torch.stack(m1).mean(0))


def test_wudi_loss_decreases():
    base, models = _fam((16, 12), 4)
    taus = [m - base for m in models]

    def loss(t):
        return sum(((t - ti) @ ti.T).square().sum() / ti.square().sum() for ti in taus)

    start = sum(taus)
    merged = task_subspaces.wudi_optimize(taus, iters=200, lr=1e-3)
    assert loss(merged) < 0.9 * loss(start)


def test_consensus_ta_closed_form():
    base = torch.zeros(4)
    t1 = torch.tensor([1.0, 1.0, 0.0, 2.0])
    t2 = torch.tensor([1.0, -1.0, 0.0, 0.1])
    t3 = torch.tensor([1.0, 0.0, 3.0, 0.1])
    # τ_MTL = [3, 0, 3, 2.2]; masks with λ=0.5: |τ_t| ≥ 0.5|τ_MTL − τ_t|
    # t1: [1≥1 T, 1≥0.5 T, 0≥1.5 F, 2≥0.1 T]; t2: [T, 1≥0.5 T, F, 0.1≥1.05 F]; t3: [T, 0≥0 T, 3≥0 T, F]
    # votes [3, 3, 1, 1] → keep entries 0, 1
    out = get_method("consensus_ta")(base, [t1, t2, t3], weight=[1.0] * 3, tall_lambda=[0.5] * 3, min_agree=2,
                                     lambda_=0.5)
    torch.testing.assert_close(out, torch.tensor([1.5, 0.0, 0.0, 0.0]))


def test_magmax_closed_form():
    base = torch.ones(4)
    t = [torch.tensor([1.0, -5.0, 0.0, 2.0]), torch.tensor([-3.0, 1.0, 0.0, -2.0])]
    out = get_method("magmax")(base, [base + x for x in t], lambda_=2.0)
    torch.testing.assert_close(out, base + 2 * torch.tensor([-3.0, -5.0, 0.0, 2.0]))


def test_emr_closed_form_and_task_models():
    base = torch.zeros(5)
    t1 = torch.tensor([2.0, -1.0, 0.5, 0.0, -1.0])
    t2 = torch.tensor([1.0, 3.0, -0.5, 0.0, -2.0])
    models = [base + t1, base + t2]
    # Σ = [3, 2, 0, 0, -3] → s = [+, +, -, -, -]; max agreeing magnitude: [2, 3, 0.5, 0, 2]
    uni = torch.tensor([2.0, 3.0, -0.5, 0.0, -2.0])
    torch.testing.assert_close(get_method("emr")(base, models), base + uni)
    masks = entry_selection.emr_masks(base, models)
    assert masks[0].tolist() == [True, False, False, False, True]
    assert masks[1].tolist() == [True, True, True, False, True]
    r = entry_selection.emr_rescalers([entry_selection.emr_stats(base, models)])
    # r1 = mean|t1| / mean|M1 uni| = 4.5/4 ; r2 = 6.5/7.5
    assert abs(r[0] - 4.5 / 4) < 1e-6 and abs(r[1] - 6.5 / 7.5) < 1e-6
    task1 = entry_selection.emr_task_tensor(base, uni, masks[0], r[0])
    torch.testing.assert_close(task1, torch.tensor([2.0, 0.0, 0.0, 0.0, -2.0]) * (4.5 / 4))
    # rescalers sum over tensors of per-tensor means
    r2 = entry_selection.emr_rescalers([entry_selection.emr_stats(base, models), entry_selection.emr_stats(base, models)])
    assert abs(r2[0] - r[0]) < 1e-6
