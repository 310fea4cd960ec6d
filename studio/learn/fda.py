"""FDA — functional dual anchors (Shi, Wen, Liu, arXiv 2510.21223; algorithms.md §2).

Stage I, per layer l and expert i: anchors X (n × tokens × d) whose effect on the *pretrained* layer mimics the task
vector. With s(X) = mean_j cos(φ_l(θ0; x_j), φ_l(θ_i; x_j)) and g = ∇_{θ0^(l)} s(X) (second order: X is optimised
through g), minimise L(X) = Σ_{tensors p} (1 − cos(g_p, τ_{i,p})) — the gradient of the *similarity* points along
+τ, so a descent step on the distance 1 − s moves θ0 towards θ_i. AdamW lr 1e-2, Gaussian init σ = 0.01 (or rows
of the expert's weights), the lowest-loss X kept.

Stage II, per layer independently: inputs = every task's anchors, targets y = φ_l(θ_i; X_i); minimise
−Σ_batch cos(vec φ_l(θ; x), vec y). Eq. 5 adapts all the layer's weights from θ0 (Adam); Eq. 6 refines a pre-merge
θ = θ0 + Σ_k α_k ⊙ δ_k with element-wise α (task arithmetic: δ_k = τ_k, α = 0.3; TSV-M / WUDI: one δ = θ_m − θ0,
α = 1), Adam lr 1e-2.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import StudioError
from ..methods import get_method
from ..methods.registry import Param
from .adapters import TaskAdapter
from .registry import learner

PRE_MERGES = ("base", "task_arithmetic", "tsv_m", "wudi")
ANCHOR_INITS = ("gauss", "weight")


def _unit_keys(adapter: TaskAdapter, unit: str) -> list[str]:
    return [k for k in adapter.keys if k.startswith(unit + ".")]


def _phi(module, params: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, extra: tuple = ()) -> torch.Tensor:
    local = {k[len(prefix) + 1:]: v for k, v in params.items()}
    out = functional_call(module, local, (x, *extra), strict=False)
    return out[0] if isinstance(out, tuple) else out


def _cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=1, eps=1e-8)


def anchor_loss(module, prefix, p0: dict, pi: dict, tau: dict, X: torch.Tensor, create_graph: bool = True,
                extra: tuple = ()):
    """L(X) = Σ_p (1 − cos(∇_{θ0,p} s(X), τ_p)); ``p0`` tensors must require grad; ``extra``: the unit's other
    forward arguments."""
    s = _cos_rows(_phi(module, p0, prefix, X, extra), _phi(module, pi, prefix, X, extra)).mean()
    keys = list(p0)
    grads = torch.autograd.grad(s, [p0[k] for k in keys], create_graph=create_graph, allow_unused=True)
    loss = X.new_zeros(())
    for k, g in zip(keys, grads):
        if g is None:
            loss = loss + 1.0
            continue
        loss = loss + 1 - F.cosine_similarity(g.flatten(), tau[k].flatten(), dim=0, eps=1e-12)
    return loss


def _weight_init(pi: dict, n: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Rows of the expert layer's 2-D weights whose width is d, permuted; missing rows are means of random pairs."""
    d = shape[-1]
    rows = torch.cat([w for w in pi.values() if w.dim() == 2 and w.shape[1] == d] or [torch.empty(0, d)])
    need = n * (shape[0] if len(shape) == 2 else 1)
    if len(rows) == 0:
        return torch.randn((n, *shape), generator=gen) * 0.01
    rows = rows.detach().cpu()[torch.randperm(len(rows), generator=gen)]
    while len(rows) < need:
        i = torch.randint(0, len(rows), (2, need - len(rows)), generator=gen)
        rows = torch.cat([rows, (rows[i[0]] + rows[i[1]]) / 2])
    return rows[:need].reshape(n, *shape).clone()


def construct_anchors(adapter: TaskAdapter, unit: str, shape: tuple[int, ...], task: str, *, n: int = 64,
                      steps: int = 1200, lr: float = 1e-2, sigma: float = 0.01, init: str = "gauss",
                      seed: int = 0) -> tuple[torch.Tensor, float, float]:
    """Stage I for one layer and one expert: (best anchors, loss at init, best loss)."""
    module = adapter.module.get_submodule(unit)
    keys = _unit_keys(adapter, unit)
    p0 = {k: adapter.base[k].detach().clone().requires_grad_(True) for k in keys}
    pi = {k: adapter.experts[task][k] for k in keys}
    tau = {k: pi[k] - adapter.base[k] for k in keys}
    gen = torch.Generator().manual_seed(seed)
    X0 = torch.randn((n, *shape), generator=gen) * sigma if init == "gauss" else _weight_init(pi, n, shape, gen)
    X = X0.to(adapter.device).requires_grad_(True)
    opt = torch.optim.AdamW([X], lr=lr)
    best, best_loss, first = X.detach().clone(), float("inf"), None
    math_sdpa = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)  # double backward needs it
    with math_sdpa:
        for _ in range(steps):
            loss = anchor_loss(module, unit, p0, pi, tau, X, extra=adapter.unit_args)
            v = float(loss.detach())
            if first is None:
                first = v
            if v < best_loss:
                best_loss, best = v, X.detach().clone()
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = float(anchor_loss(module, unit, p0, pi, tau, X, create_graph=False, extra=adapter.unit_args))
    if v < best_loss:
        best_loss, best = v, X.detach().clone()
    return best, first if first is not None else v, best_loss


def _pre_merge(adapter: TaskAdapter, init: str) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[float]],
                                                           dict[str, torch.Tensor]]:
    """Per key: the deltas δ_k, their initial α, and the pre-merged tensor (θ0 + Σ α_k δ_k)."""
    tv = adapter.task_vectors()
    deltas, alphas, merged = {}, {}, {}
    if init == "task_arithmetic":
        for k in adapter.keys:
            deltas[k] = [tv[t][k] for t in adapter.tasks]
            alphas[k] = [0.3] * len(adapter.tasks)
    elif init in ("tsv_m", "wudi"):
        spec = get_method(init)
        kw = {p.py_name: p.default for p in spec.params}
        for k in adapter.keys:
            with torch.no_grad():
                m = spec.fn(adapter.base[k].clone(), [adapter.experts[t][k].clone() for t in adapter.tasks], **kw)
            deltas[k] = [m - adapter.base[k]]
            alphas[k] = [1.0]
    elif init == "base":
        for k in adapter.keys:
            deltas[k], alphas[k] = [], []
    else:
        raise StudioError(f"unknown FDA init {init!r}", hint=f"choose one of {', '.join(PRE_MERGES)}")
    for k in adapter.keys:
        merged[k] = adapter.base[k] + sum((a * d for a, d in zip(alphas[k], deltas[k])), torch.zeros_like(adapter.base[k]))
    return deltas, alphas, merged


@learner("fda", [
    Param("init", default="task_arithmetic", kind=str, choices=PRE_MERGES,
          doc="stage II: base adapts every layer weight from θ0 (Eq. 5); task_arithmetic, tsv_m or wudi refine that "
              "pre-merge with element-wise α (Eq. 6)"),
    Param("anchors", default=64, kind=int, range=(1, 512), doc="anchors per layer and expert"),
    Param("anchor_init", default="gauss", kind=str, choices=ANCHOR_INITS,
          doc="gauss: Gaussian anchors of scale sigma; weight: rows of the expert layer's weights"),
    Param("sigma", default=0.01, range=(1e-3, 0.1), label="σ (sigma)",
          doc="scale of the Gaussian anchor initialisation"),
    Param("anchor_lr", default=1e-2, range=(1e-4, 1e-1), doc="stage I: AdamW learning rate of the anchors"),
    Param("epochs", default=100, kind=int, range=(1, 500), doc="stage II: passes over every task's anchors"),
    Param("batch_size", default=128, kind=int, range=(1, 1024), doc="stage II: anchors per step"),
    Param("lr", default=None, range=(1e-5, 1e-1),
          doc="stage II: Adam learning rate; default 1e-2 refining a pre-merge, 1e-3 from θ0"),
    Param("snapshot_every", default=5, kind=int, range=(1, 100),
          doc="record the merged weights' task-vector coordinates every this many stage-II epochs"),
], produces="weights", label="FDA", ref="Shi, Wen, Liu, arXiv 2510.21223", variants={
    "fda": ("FDA · merged weights", {"init": "task_arithmetic"}),
})
def fda(adapter: TaskAdapter, data=None, *, steps: int | None = None, init: str = "task_arithmetic",
        anchors: int = 64, anchor_init: str = "gauss", sigma: float = 0.01, anchor_lr: float = 1e-2,
        epochs: int = 100, batch_size: int = 128, lr: float | None = None, snapshot_every: int = 5, seed: int = 0,
        progress=None) -> dict:
    """Functional dual anchors per layer, then layer-wise adaptation from θ0 or from a pre-merge.

    ``steps``: stage-I construction steps per (layer, expert) (paper 1,200; default 1,200 on CUDA, 300 on the CPU).
    ``init``: "base" (Eq. 5), or a pre-merge to refine (Eq. 6): task_arithmetic, tsv_m, wudi. ``lr``: stage II
    (default 1e-2 for Eq. 6; 1e-3 for Eq. 5 — see the README for why not the paper's 1e-5). ``data`` is not used:
    FDA is data-free (the anchors stand in for data)."""
    if steps is None:
        steps = 1200 if adapter.device.type == "cuda" else 300
    units = adapter.units()
    if not units:
        raise StudioError(f"FDA has no layer units for the {adapter.kind} model kind")
    t0 = time.perf_counter()
    n_jobs = len(units) * len(adapter.tasks)
    X: dict[tuple[str, str], torch.Tensor] = {}
    stage1 = {"start": 0.0, "end": 0.0, "per_unit": {}}
    for ui, (unit, shape) in enumerate(units):
        for ti, task in enumerate(adapter.tasks):
            x, first, best = construct_anchors(adapter, unit, shape, task, n=anchors, steps=steps, lr=anchor_lr,
                                               sigma=sigma, init=anchor_init, seed=seed)
            X[unit, task] = x
            stage1["start"] += first
            stage1["end"] += best
            stage1["per_unit"][f"{unit}/{task}"] = [first, best]
            if progress:
                done = ui * len(adapter.tasks) + ti + 1
                progress(0.7 * done / n_jobs, f"anchors {unit} · {task} ({done}/{n_jobs}) · loss {first:.3f}→{best:.3f}")
    t1 = time.perf_counter()

    # ---- stage II
    deltas, alphas, merged = _pre_merge(adapter, init)
    from_base = init == "base"
    if from_base:  # tensors outside the units (e.g. an LLM's attention) come from task arithmetic
        merged = _pre_merge(adapter, "task_arithmetic")[2]
    if lr is None:
        lr = 1e-3 if from_base else 1e-2
    gen = torch.Generator().manual_seed(seed)
    plan = []
    for unit, _ in units:
        keys = _unit_keys(adapter, unit)
        module = adapter.module.get_submodule(unit)
        xs = torch.cat([X[unit, t] for t in adapter.tasks])
        with torch.no_grad():
            ys = torch.cat([_phi(module, {k: adapter.experts[t][k] for k in keys}, unit, X[unit, t],
                                 adapter.unit_args) for t in adapter.tasks])
        if from_base:
            trainable = {k: adapter.base[k].detach().clone().requires_grad_(True) for k in keys}
        else:
            trainable = {k: [torch.full_like(d, a).requires_grad_(True) for a, d in zip(alphas[k], deltas[k])]
                         for k in keys}
        leaves = list(trainable.values()) if from_base else [a for v in trainable.values() for a in v]
        plan.append({"unit": unit, "keys": keys, "module": module, "x": xs, "y": ys, "trainable": trainable,
                     "opt": torch.optim.Adam(leaves, lr=lr)})

    def unit_params(p):
        if from_base:
            return p["trainable"]
        return {k: adapter.base[k] + sum(a * d for a, d in zip(p["trainable"][k], deltas[k])) for k in p["keys"]}

    def unit_loss(p, idx=None):
        x, y = (p["x"], p["y"]) if idx is None else (p["x"][idx], p["y"][idx])
        return -_cos_rows(_phi(p["module"], unit_params(p), p["unit"], x, adapter.unit_args), y).sum()

    def current_state():
        out = dict(merged)
        with torch.no_grad():
            for p in plan:
                out.update({k: v.detach().clone() for k, v in unit_params(p).items()})
        return out

    with torch.no_grad():
        start = sum(float(unit_loss(p)) / len(p["x"]) for p in plan)
    history, trajectory = [], [{"step": 0, "loss": start, "state": current_state()}]
    for ep in range(epochs):
        ep_loss = 0.0
        for p in plan:
            perm = torch.randperm(len(p["x"]), generator=gen)
            for i in range(0, len(perm), batch_size):
                loss = unit_loss(p, perm[i:i + batch_size])
                p["opt"].zero_grad()
                loss.backward()
                p["opt"].step()
                ep_loss += float(loss.detach())
        history.append(ep_loss / sum(len(p["x"]) for p in plan))
        if (ep + 1) % snapshot_every == 0 and ep + 1 < epochs:
            trajectory.append({"step": ep + 1, "loss": history[-1], "state": current_state()})
        if progress:
            progress(0.7 + 0.3 * (ep + 1) / epochs, f"adapting · epoch {ep + 1}/{epochs} · loss {history[-1]:.4f}")
    with torch.no_grad():
        end = sum(float(unit_loss(p)) / len(p["x"]) for p in plan)
    state = current_state()
    metrics = {"objective": "mean cosine distance (negative cosine) on anchors", "objective_start": start,
               "objective_end": end, "anchor_loss_start": stage1["start"], "anchor_loss_end": stage1["end"],
               "anchor_loss_per_unit": stage1["per_unit"], "anchor_steps": steps, "anchors": anchors,
               "init": init, "anchor_init": anchor_init, "epochs": epochs, "steps": epochs, "lr": lr,
               "seconds_stage1": t1 - t0, "seconds_stage2": time.perf_counter() - t1,
               "units": [u for u, _ in units]}
    return {"state_dict": state, "history": history, "trajectory": trajectory, "metrics": metrics}
