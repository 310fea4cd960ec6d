"""Per-matrix merges built from the task vectors' subspaces: TSV-M (concatenated top singular vectors,
decorrelated) and WUDI (the merged task vector that least disturbs each task's row space). Tensors that are not
2-D take the mean task vector.
"""

from __future__ import annotations

import torch

from .registry import NON_NEGATIVE, Param, method


def _polar(x: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor P Qᵀ of x = P Σ Qᵀ (nearest matrix with orthonormal columns/rows)."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


@method(
    "tsv_m",
    params=[Param("alpha", default=1.0, range=(0.0, 3.0), doc="scale of the merged task vector", label="α (alpha)")],
    needs_base=True,
    category="survey",
    ref="Gargiulo et al. 2025, Task Singular Vectors (CVPR 2025, arXiv 2412.00081); FusionBench TSVM",
    formula="k=⌊min(m,n)/T⌋; U=[U₁,ₖ…U_T,ₖ], S=[…], V=[…]; τ = polar(U)·diag(S)·polar(Vᵀ); θ = θ₀ + α·τ",
    label="TSV-M (task singular vectors)",
    pure_inputs=True,
)
def tsv_m(base, models, *, alpha):
    """For 2-D weights, keep each task vector's top k = ⌊min(m,n)/T⌋ singular triplets, concatenate them, and
    decorrelate the concatenated singular vectors with the orthogonal Procrustes (polar) factor:
    τ = U⊥ diag(S) V⊥ᵀ. Other tensors: mean task vector. (k is at least 1 for very small matrices.)"""
    taus = [m - base for m in models]
    if base.dim() != 2:
        merged = torch.stack(taus).mean(dim=0)
    else:
        k = max(1, min(base.shape) // len(taus))
        us, ss, vs = [], [], []
        for t in taus:
            u, s, vh = torch.linalg.svd(t, full_matrices=False)
            us.append(u[:, :k])
            ss.append(s[:k])
            vs.append(vh[:k])
        u_cat, s_cat, v_cat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 0)
        merged = (_polar(u_cat) * s_cat) @ _polar(v_cat)
    return base + alpha * merged


def wudi_optimize(taus: list[torch.Tensor], iters: int = 300, lr: float = 1e-5) -> torch.Tensor:
    """Minimise L(τ) = Σᵢ ‖(τ − τᵢ)τᵢᵀ‖²_F / ‖τᵢ‖²_F from τ = Στᵢ with Adam (FusionBench ``wudi_merging``).

    The gradient is closed-form, ∇L = 2(τG − B) with G = Σᵢ τᵢᵀτᵢ/‖τᵢ‖², B = Σᵢ τᵢτᵢᵀτᵢ/‖τᵢ‖², so each step costs
    one matmul instead of 2n through autograd.
    """
    stacked = torch.stack(taus)
    merged = stacked.sum(dim=0)
    norms2 = stacked.reshape(len(taus), -1).square().sum(dim=1).clamp(min=1e-30)
    gram = torch.zeros(merged.shape[1], merged.shape[1], dtype=merged.dtype, device=merged.device)
    target = torch.zeros_like(merged)
    for t, n2 in zip(taus, norms2):
        g = (t.T @ t) / n2
        gram.add_(g)
        target.add_(t @ g)
    param = torch.nn.Parameter(merged)
    opt = torch.optim.Adam([param], lr=lr, weight_decay=0)
    with torch.no_grad():
        for _ in range(iters):
            param.grad = 2 * (param @ gram - target)
            opt.step()
    return param.detach()


@method(
    "wudi",
    params=[Param("iters", default=300, kind=int, range=(0, 2000), bounds=NON_NEGATIVE, doc="Adam steps"),
            Param("lr", default=1e-5, range=(0.0, 1e-3), bounds=NON_NEGATIVE, doc="Adam learning rate")],
    needs_base=True,
    category="survey",
    ref="Cheng et al. 2025, Whoever Started the Interference Should End It / WUDI (ICML 2025, arXiv 2503.08099); "
        "FusionBench wudi",
    formula="2-D: τ = argmin Σᵢ‖(τ−τᵢ)τᵢᵀ‖²/‖τᵢ‖² (Adam from Στᵢ); else τ = mean τᵢ;  θ = θ₀ + τ",
    label="WUDI (data-free interference minimisation)",
    pure_inputs=True,
)
def wudi(base, models, *, iters, lr):
    """Data-free: for each 2-D weight, find the merged task vector whose interference with every task's input
    subspace (spanned by that task's own τᵢ rows) is smallest, by Adam from the sum; other tensors average."""
    taus = [m - base for m in models]
    if base.dim() != 2:
        return base + torch.stack(taus).mean(dim=0)
    return base + wudi_optimize(taus, iters=iters, lr=lr)
