"""AdaMerging and SAMerging: learn merge coefficients λ on unlabeled data.

AdaMerging (Yang et al., ICLR 2024): minimise Σ_t mean_x H(softmax(f_t(x; θ(λ)))) — the prediction entropy of the
merged model on each task's unlabeled inputs; λ init 0.3, Adam lr 1e-3, batch 16 per task.

SAMerging (Dalili & Mahdavi; algorithms.md §1): minimise Σ_t KL(softmax(z_t/T) ‖ softmax(f_t(x; θ(λ))/T)) —
forward KL from each task's expert (teacher logits z_t, cached once) to the merged model, no T² factor, 'batchmean';
λ init 0, ASAM (ρ = 0.07, adaptive) around Adam (lr 1e-3, weight decay 5e-4); the task's batches are cached and
cycled through epoch after epoch.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..methods.registry import Param
from .adapters import TaskAdapter
from .coefficient_merge import CoefficientMerge
from .registry import learner
from .sam import SAM

Progress = Callable[[float, str], None]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy of a batch of logits ``[N, C]``."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean()


def kl_teacher_student(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T)), 'batchmean' (sum over classes, mean over rows)."""
    return F.kl_div((student / T).log_softmax(-1), (teacher / T).log_softmax(-1), log_target=True,
                    reduction="batchmean")


def cached_batches(data: dict[str, torch.Tensor], batch_size: int, max_batches: int | None, seed: int
                   ) -> dict[str, list[torch.Tensor]]:
    """Each task's unlabeled inputs shuffled once (seeded) and cut into batches (the last partial one dropped)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t, x in data.items():
        perm = torch.randperm(len(x), generator=g)
        n = max(1, len(x) // batch_size)
        if max_batches is not None:
            n = min(n, max_batches)
        out[t] = [x[perm[i * batch_size:(i + 1) * batch_size]] for i in range(n)]
    return out


def _objective(adapter: TaskAdapter, params, batches: dict[str, torch.Tensor], teachers, objective: str, T: float):
    logits = adapter.logits_many(params, batches)
    if objective == "entropy":
        return sum(entropy(z) for z in logits.values())
    return sum(kl_teacher_student(logits[t], teachers[t], T) for t in logits)


@torch.no_grad()
def full_objective(adapter: TaskAdapter, params, batches: dict[str, list[torch.Tensor]], objective: str,
                   T: float = 1.0, teachers: dict[str, list[torch.Tensor]] | None = None) -> float:
    """The objective averaged over every cached batch (for reporting and tests)."""
    n = min(len(b) for b in batches.values())
    total = 0.0
    for i in range(n):
        b = {t: batches[t][i] for t in batches}
        tz = {t: teachers[t][i] for t in teachers} if teachers else None
        total += float(_objective(adapter, params, b, tz, objective, T))
    return total / n


def learn_coefficients(adapter: TaskAdapter, data: dict[str, torch.Tensor], *, objective: str = "entropy",
                       granularity: str = "layer", init: float = 0.3, steps: int = 500, lr: float = 1e-3,
                       weight_decay: float = 0.0, batch_size: int = 16, sam_rho: float | None = None,
                       adaptive: bool = True, temperature: float = 1.0, max_batches: int | None = None,
                       clamp: tuple[float, float] | None = None, snapshot_every: int = 10, seed: int = 0,
                       progress: Progress | None = None) -> dict:
    """Optimise λ; returns ``{"merge", "history", "trajectory", "metrics"}``.

    ``objective``: "entropy" (AdaMerging) or "kl" (SAMerging; teacher = each task's expert). ``sam_rho``: None for
    the plain base optimiser, else SAM/ASAM with that radius.
    """
    merge = CoefficientMerge(adapter.base, adapter.task_vectors(), adapter.keys, granularity, init)
    # only the batches the schedule will visit (teacher logits for the rest would be wasted forward passes)
    batches = cached_batches(data, batch_size, min(max_batches or steps, steps), seed)
    n_batches = min(len(b) for b in batches.values())
    teachers = None
    if objective == "kl":
        with torch.no_grad():
            teachers = {t: [adapter.logits(adapter.expert_params(t), t, x) for x in batches[t]] for t in batches}
    elif objective != "entropy":
        raise ValueError(f"unknown objective {objective!r}")
    if sam_rho is None:
        opt = torch.optim.Adam([merge.lam], lr=lr, weight_decay=weight_decay)
    else:
        opt = SAM([merge.lam], torch.optim.Adam, rho=sam_rho, adaptive=adaptive, lr=lr, weight_decay=weight_decay)
    eval_n = min(n_batches, 8)
    eval_batches = {t: b[:eval_n] for t, b in batches.items()}
    eval_teachers = {t: z[:eval_n] for t, z in teachers.items()} if teachers else None
    start = full_objective(adapter, merge.params(), eval_batches, objective, temperature, eval_teachers)
    history: list[float] = []
    trajectory = [{"step": 0, "loss": start, "lambda": merge.values()}]
    t0 = time.perf_counter()
    for step in range(steps):
        i = step % n_batches
        b = {t: batches[t][i] for t in batches}
        tz = {t: teachers[t][i] for t in teachers} if teachers else None

        def closure():
            opt.zero_grad()
            loss = _objective(adapter, merge.params(), b, tz, objective, temperature)
            loss.backward()
            return loss

        loss = opt.step(closure) if sam_rho is not None else (closure(), opt.step())[0]
        if clamp is not None:
            with torch.no_grad():
                merge.lam.clamp_(*clamp)
        history.append(float(loss.detach()))
        if (step + 1) % snapshot_every == 0 or step + 1 == steps:
            trajectory.append({"step": step + 1, "loss": history[-1], "lambda": merge.values()})
        if progress is not None and ((step + 1) % max(1, steps // 100) == 0 or step + 1 == steps):
            progress((step + 1) / steps, f"step {step + 1}/{steps} · loss {history[-1]:.4f}")
    end = full_objective(adapter, merge.params(), eval_batches, objective, temperature, eval_teachers)
    metrics = {"objective": objective, "objective_start": start, "objective_end": end, "steps": steps,
               "seconds": time.perf_counter() - t0, "batches_per_task": n_batches, "batch_size": batch_size,
               "granularity": granularity}
    return {"merge": merge, "history": history, "trajectory": trajectory, "metrics": metrics}


# shared by both coefficient learners: one declaration each
GRANULARITY = Param("granularity", default="layer", kind=str, choices=("layer", "task"),
                    doc="layer: one λ per parameter tensor and model (weight and bias apart); task: one λ per model")
LR = Param("lr", default=1e-3, range=(1e-4, 1e-1), doc="Adam learning rate of λ")
BATCH_SIZE = Param("batch_size", default=16, kind=int, range=(1, 256), doc="unlabeled inputs per task and step")


@learner("adamerging", [
    GRANULARITY,
    Param("init", default=0.3, range=(0, 1), doc="λ every coefficient starts from"),
    LR,
    BATCH_SIZE,
    Param("clamp", default=None, kind=tuple,
          doc="(low, high): clip λ into this interval after each step (the original code: [0, 1]); none by default, "
              "as FusionBench"),
], produces="coefficients", label="AdaMerging", ref="Yang et al., ICLR 2024", variants={
    "adamerging_task": ("AdaMerging · task-wise", {"granularity": "task"}),
    "adamerging_layer": ("AdaMerging · layer-wise", {"granularity": "layer"}),
})
def adamerging(adapter, data, *, granularity="layer", steps=None, init=0.3, lr=1e-3, batch_size=16, clamp=None,
               progress=None, seed=0):
    """Coefficients λ (layer-wise, or task-wise with granularity='task') minimising the merged model's prediction
    entropy on each task's unlabeled inputs.

    Defaults: 500 steps (original code), init 0.3, Adam 1e-3, no clamp (FusionBench)."""
    return learn_coefficients(adapter, data, objective="entropy", granularity=granularity, init=init,
                              steps=500 if steps is None else steps, lr=lr, batch_size=batch_size,
                              clamp=(tuple(clamp) if clamp else None), progress=progress, seed=seed)


@learner("samerging", [
    GRANULARITY,
    Param("init", default=0.0, range=(0, 1), doc="λ every coefficient starts from (the paper: 0)"),
    LR,
    Param("weight_decay", default=5e-4, range=(0, 1e-2), doc="Adam weight decay on λ"),
    Param("rho", default=0.07, range=(0, 0.5), label="ρ (rho)",
          doc="radius of the sharpness-aware perturbation"),
    Param("adaptive", default=True, kind=bool, doc="adaptive SAM (ASAM): the perturbation scales with |λ|"),
    Param("temperature", default=None, range=(0.5, 5), label="T (temperature)",
          doc="T of the softened teacher and student distributions; default 2 for classifiers, 1 for language "
              "models"),
    BATCH_SIZE,
    Param("max_batches", default=100, kind=int, range=(1, 1000),
          doc="batches cached per task (with their teacher logits) and cycled through, epoch after epoch"),
], produces="coefficients", label="SAMerging", ref="Dalili & Mahdavi, arXiv 2512.21288", variants={
    "samerging": ("SAMerging · layer-wise", {}),
})
def samerging(adapter, data, *, granularity="layer", steps=None, init=0.0, lr=1e-3, weight_decay=5e-4, rho=0.07,
              adaptive=True, temperature=None, batch_size=16, max_batches=100, progress=None, seed=0):
    """Layer-wise λ minimising KL(expert ‖ merged) at temperature T with adaptive SAM around Adam.

    Defaults: 1,000 ASAM updates (100 cached batches × 10 epochs in the paper), T = 2 for classifiers and 1 for
    language models."""
    if temperature is None:
        temperature = 1.0 if adapter.kind == "causal_lm" else 2.0
    return learn_coefficients(adapter, data, objective="kl", granularity=granularity, init=init,
                              steps=1000 if steps is None else steps, lr=lr, weight_decay=weight_decay,
                              batch_size=batch_size, sam_rho=rho, adaptive=adaptive, temperature=temperature,
                              max_batches=max_batches, progress=progress, seed=seed)
