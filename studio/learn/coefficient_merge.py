"""Merge coefficients: θ(λ) = θ0 + Σᵢ λᵢˡ τᵢˡ with frozen task vectors, and their export as a recipe.

Layer-wise: one λ per (model, parameter tensor) — weight and bias counted separately, as in AdaMerging/SAMerging.
Task-wise: one λ per model. The recipe uses ``task_arithmetic`` with per-model ``weight`` given as filter rules on
exact tensor names, so the streaming engine reproduces θ(λ) on the full-size checkpoints.
"""

from __future__ import annotations

import torch

from ..layout import detect_layout
from ..recipe import Recipe
from ..sources import open_source


class CoefficientMerge:
    def __init__(self, base: dict[str, torch.Tensor], task_vectors: dict[str, dict[str, torch.Tensor]],
                 keys: list[str], granularity: str = "layer", init: float = 0.3):
        if granularity not in ("layer", "task"):
            raise ValueError("granularity is 'layer' or 'task'")
        self.base, self.keys, self.granularity = base, list(keys), granularity
        self.tasks = list(task_vectors)
        # [M, *shape] per key, frozen
        self.tau = {k: torch.stack([task_vectors[t][k] for t in self.tasks]).detach() for k in self.keys}
        cols = len(self.keys) if granularity == "layer" else 1
        device = next(iter(base.values())).device
        self.lam = torch.full((len(self.tasks), cols), float(init), device=device, requires_grad=True)

    def params(self, lam: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        lam = self.lam if lam is None else lam
        out = {}
        for j, k in enumerate(self.keys):
            tau = self.tau[k]
            c = lam[:, j if lam.shape[1] > 1 else 0].view(-1, *([1] * (tau.dim() - 1)))
            out[k] = self.base[k] + (c * tau).sum(0)
        return out

    @torch.no_grad()
    def merged_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.params().items()}

    def values(self) -> list[list[float]]:
        """λ as nested lists ``[model][tensor]`` (task-wise: ``[model][0]``)."""
        return self.lam.detach().cpu().tolist()

    def per_tensor(self) -> dict[str, dict[str, float]]:
        """``{task: {tensor name: λ}}``."""
        lam = self.lam.detach().cpu()
        return {t: {k: float(lam[i, j if lam.shape[1] > 1 else 0]) for j, k in enumerate(self.keys)}
                for i, t in enumerate(self.tasks)}


def coefficient_recipe(base_ref: str, expert_refs: list[str], tasks: list[str], per_tensor: dict[str, dict[str, float]],
                       task_wise: bool = False, name: str | None = None) -> Recipe:
    """A ``task_arithmetic`` recipe (λ = 1) whose per-model weights are the learned coefficients.

    Rules are ordered longest tensor name first: the resolver takes the first rule whose filter is a substring of the
    tensor name, and a name that contains another name as a substring is strictly longer, so it meets its own rule
    first.
    """
    models = []
    for t, ref in zip(tasks, expert_refs):
        vals = per_tensor[t]
        if task_wise:
            weight = round(float(next(iter(vals.values()))), 8)
        else:
            weight = [{"filter": k, "value": round(float(vals[k]), 8)}
                      for k in sorted(vals, key=lambda k: (-len(k), k))]
        models.append({"model": ref, "parameters": {"weight": weight}})
    data = {"merge_method": "task_arithmetic", "base_model": base_ref, "models": models,
            "parameters": {"lambda": 1.0, "normalize": False}, "dtype": "float32"}
    if name:
        data["name"] = name
    return Recipe.from_dict(data)


def group_means(per_tensor: dict[str, dict[str, float]], base_ref: str) -> dict[str, dict[str, float]]:
    """Per model, the mean λ of each layout group (``L00``…, ``EMB``, ``HEAD``) — what a slider panel can show."""
    src = open_source(base_ref)
    try:
        layout = detect_layout(src)
        out = {}
        for t, vals in per_tensor.items():
            acc: dict[str, list[float]] = {}
            for k, v in vals.items():
                acc.setdefault(layout.group_of(k), []).append(v)
            out[t] = {g: sum(v) / len(v) for g, v in acc.items()}
        return out
    finally:
        src.close()


@torch.no_grad()
def task_coordinates(base: dict[str, torch.Tensor], task_vectors: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, torch.Tensor], keys: list[str]) -> list[float]:
    """Least-squares coordinates c of θ − θ0 on the task vectors: argmin ‖Σ cᵢ τᵢ − (θ − θ0)‖ (landscape plots)."""
    tasks = list(task_vectors)
    T = torch.stack([torch.cat([task_vectors[t][k].flatten() for k in keys]) for t in tasks], 1)
    d = torch.cat([(state[k] - base[k]).flatten() for k in keys])
    sol = torch.linalg.lstsq(T.double().cpu(), d.double().cpu().unsqueeze(1)).solution
    return [float(v) for v in sol.flatten()]
