"""Fisher merging and RegMean: one pass of statistics on unlabeled data, then a closed form.

Fisher (Matena & Raffel, 2022): diagonal Fisher F_i = E_x E_{y~p_θi(·|x)} (∇_θ log p_θi(y|x))², labels sampled from the
expert's own predictions (no labels needed); each F_i divided by its global L2 norm, plus a floor of 1e-6;
θ = Σ_i F_i ⊙ θ_i / Σ_i F_i.

RegMean (Jin et al., 2023): for every linear layer, G_i = X_iᵀX_i / rows over the layer's inputs under expert i on
task-i data; G̃_i = α·G_i + (1 − α)·diag(G_i) (α = 0.95); W* = (Σ G̃_i)⁻¹ Σ G̃_i W_i in (in, out) layout — the
minimiser of Σ_i ‖X_i W − X_i W_i‖² when α = 1. Every other tensor: the plain mean of the experts.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..methods.registry import Param
from .adapters import TaskAdapter
from .registry import learner

EXAMPLES = Param("examples", default=256, kind=int, range=(1, 4096),
                 doc="unlabeled inputs per task the statistics are taken on (FusionBench: 256)")


def _examples(data: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return data[torch.randperm(len(data), generator=g)[:n]]


def diagonal_fisher(adapter: TaskAdapter, task: str, inputs: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean over examples of squared per-example gradients of log p(ŷ|x), ŷ sampled from the expert itself."""
    params = {k: adapter.experts[task][k].detach().clone().requires_grad_(True) for k in adapter.keys}
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    gen = torch.Generator(device=adapter.device).manual_seed(seed)
    keys = list(params)
    for x in inputs:
        logits = adapter.logits(params, task, x.unsqueeze(0))
        logp = logits.log_softmax(-1)
        with torch.no_grad():
            y = torch.multinomial(logp.exp(), 1, generator=gen)
        grads = torch.autograd.grad(logp.gather(-1, y).sum(), [params[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads):
            if g is not None:
                fisher[k] += g.detach() ** 2
    return {k: v / len(inputs) for k, v in fisher.items()}


def fisher_objective(state, experts: list[dict], fishers: list[dict], keys) -> float:
    """Σ_i Σ_p F_i,p (θ_p − θ_i,p)² — the quadratic Fisher merging minimises."""
    return float(sum(((state[k] - e[k]) ** 2 * f[k]).sum() for e, f in zip(experts, fishers) for k in keys))


@learner("fisher", [
    EXAMPLES,
    Param("floor", default=1e-6, range=(0, 1e-3),
          doc="added to every (normalised) Fisher value, so no weight divides by zero"),
    Param("normalize", default=True, kind=bool, doc="divide each expert's Fisher by its global L2 norm (FusionBench)"),
], produces="weights", label="Fisher merging", ref="Matena & Raffel, NeurIPS 2022", variants={
    "fisher": ("Fisher · merged weights", {}),
})
def fisher_merge(adapter: TaskAdapter, data: dict[str, torch.Tensor], *, examples: int = 256, floor: float = 1e-6,
                 normalize: bool = True, seed: int = 0, progress=None) -> dict:
    """Diagonal-Fisher-weighted average of the experts (labels sampled from each expert's own predictions)."""
    t0 = time.perf_counter()
    fishers = []
    for i, t in enumerate(adapter.tasks):
        f = diagonal_fisher(adapter, t, _examples(data[t], examples, seed), seed=seed + i)
        if normalize:
            norm = torch.sqrt(sum((v ** 2).sum() for v in f.values())).clamp(min=1e-30)
            f = {k: v / norm for k, v in f.items()}
        fishers.append({k: v + floor for k, v in f.items()})
        if progress:
            progress((i + 1) / len(adapter.tasks), f"Fisher of {t} ({i + 1}/{len(adapter.tasks)})")
    experts = [adapter.experts[t] for t in adapter.tasks]
    state = {k: sum(f[k] * e[k] for f, e in zip(fishers, experts)) / sum(f[k] for f in fishers) for k in adapter.keys}
    mean = {k: sum(e[k] for e in experts) / len(experts) for k in adapter.keys}
    metrics = {"objective": "Fisher-weighted squared distance to the experts",
               "objective_start": fisher_objective(mean, experts, fishers, adapter.keys),
               "objective_end": fisher_objective(state, experts, fishers, adapter.keys),
               "examples": examples, "steps": 0, "seconds": time.perf_counter() - t0}
    return {"state_dict": state, "history": [], "trajectory": [], "metrics": metrics}


def _linear_modules(adapter: TaskAdapter) -> dict[str, nn.Linear]:
    """Linear layers whose weight is a merged tensor: ``{weight key: module}``."""
    keys = set(adapter.keys)
    return {f"{n}.weight": m for n, m in adapter.module.named_modules()
            if isinstance(m, nn.Linear) and f"{n}.weight" in keys}


@torch.no_grad()
def gram_matrices(adapter: TaskAdapter, task: str, inputs: torch.Tensor, batch_size: int = 64
                  ) -> dict[str, torch.Tensor]:
    """Per linear layer, XᵀX / rows of its inputs when the expert of ``task`` runs on ``inputs``."""
    linears = _linear_modules(adapter)
    grams = {k: torch.zeros(m.in_features, m.in_features, device=adapter.device) for k, m in linears.items()}
    rows = {k: 0 for k in linears}
    hooks = []
    for k, m in linears.items():
        def hook(mod, args, k=k):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            grams[k] += x.T @ x
            rows[k] += x.shape[0]
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        for i in range(0, len(inputs), batch_size):
            adapter.logits(adapter.experts[task], task, inputs[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {k: g / max(1, rows[k]) for k, g in grams.items()}


def regmean_solve(weights: list[torch.Tensor], grams: list[torch.Tensor], alpha: float = 0.95) -> torch.Tensor:
    """W* (torch layout, out × in) = ((Σ G̃_i)⁻¹ Σ G̃_i W_iᵀ)ᵀ with G̃ = α·G + (1 − α)·diag(G)."""
    reduced = [alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g)) for g in grams]
    lhs = sum(reduced)
    rhs = sum(g @ w.T for g, w in zip(reduced, weights))
    try:
        sol = torch.linalg.solve(lhs.double(), rhs.double())
    except RuntimeError:  # singular (e.g. a dead input feature): the least-squares solution
        sol = torch.linalg.lstsq(lhs.double().cpu(), rhs.double().cpu()).solution.to(lhs.device)
    return sol.T.to(weights[0].dtype)


def regmean_objective(state, experts, grams_per_task, keys) -> float:
    """Σ_i Σ_layers tr((W − W_i) G_i (W − W_i)ᵀ) = Σ_i ‖X_i Wᵀ − X_i W_iᵀ‖² / rows."""
    total = 0.0
    for e, grams in zip(experts, grams_per_task):
        for k in keys:
            d = state[k] - e[k]
            total += float(torch.trace(d @ grams[k] @ d.T))
    return total


@learner("regmean", [
    EXAMPLES,
    Param("alpha", default=0.95, range=(0, 1), label="α (alpha)",
          doc="α: weight of the Gram matrices' off-diagonal (1 = exact least squares; the diagonal always counts)"),
], produces="weights", label="RegMean", ref="Jin et al., ICLR 2023", variants={
    "regmean": ("RegMean · merged weights", {}),
})
def regmean_merge(adapter: TaskAdapter, data: dict[str, torch.Tensor], *, examples: int = 256, alpha: float = 0.95,
                  seed: int = 0, progress=None) -> dict:
    """Closed-form least squares on the Gram matrices of every linear layer's inputs; other tensors averaged."""
    t0 = time.perf_counter()
    grams = []
    for i, t in enumerate(adapter.tasks):
        grams.append(gram_matrices(adapter, t, _examples(data[t], examples, seed)))
        if progress:
            progress((i + 1) / (len(adapter.tasks) + 1), f"Gram matrices of {t} ({i + 1}/{len(adapter.tasks)})")
    experts = [adapter.experts[t] for t in adapter.tasks]
    state = {k: sum(e[k] for e in experts) / len(experts) for k in adapter.keys}
    mean = dict(state)
    linear_keys = list(grams[0])
    for k in linear_keys:
        state[k] = regmean_solve([e[k] for e in experts], [g[k] for g in grams], alpha)
    metrics = {"objective": "Σ_i ‖X_i W − X_i W_i‖² over linear layers (per input row)",
               "objective_start": regmean_objective(mean, experts, grams, linear_keys),
               "objective_end": regmean_objective(state, experts, grams, linear_keys),
               "examples": examples, "alpha": alpha, "linear_layers": len(linear_keys), "steps": 0,
               "seconds": time.perf_counter() - t0}
    return {"state_dict": state, "history": [], "trajectory": [], "metrics": metrics}
