"""Learned merges on the demo zoo: ``zoo_rows(family, budget)`` for ``python -m studio zoo report --learned``.

Uses the zoo catalogue (``studio.zoo.get_family``) when it is there; otherwise (or with ``root=``) a vision zoo folder
laid out like the catalogue's (``base.safetensors``, ``experts/<task>.safetensors``, ``heads/<task>.safetensors``),
which ``build_vision_zoo`` can produce with the zoo's own training functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

# method label → (method, hyperparameters)
LEARNED: dict[str, tuple[str, dict]] = {
    "adamerging_task": ("adamerging", {"granularity": "task"}),
    "adamerging_layer": ("adamerging", {"granularity": "layer"}),
    "samerging": ("samerging", {}),
    "fda": ("fda", {"init": "task_arithmetic"}),
    "fisher": ("fisher", {}),
    "regmean": ("regmean", {}),
}
TEXT_LEARNED = ("adamerging_layer", "samerging")
# the text zoo's LM passes cost ~10× the vision backbone's: 300 steps keep the report within minutes
TEXT_STEPS = {"adamerging_layer": 300, "adamerging_task": 300, "samerging": 300}


def build_vision_zoo(root, tasks=None, *, pretrain_steps: int = 1500, finetune_steps: int = 400, shots: int = 10,
                     seed: int = 0) -> Path:
    """A vision zoo folder from ``studio.zoo.vision``'s pretrain / fit_head / finetune (a reduced one for tests)."""
    from safetensors.torch import save_file

    from ..zoo import vision as V

    root = Path(root)
    (root / "experts").mkdir(parents=True, exist_ok=True)
    (root / "heads").mkdir(parents=True, exist_ok=True)
    tasks = list(tasks or V.TASKS)
    bb = V.pretrain(pretrain_steps, seed=seed)
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(root / "base.safetensors"))
    for i, t in enumerate(tasks):
        head = V.fit_head(bb, t, shots=shots, seed=seed + i)
        save_file({"head.weight": head.weight.detach().contiguous(), "head.bias": head.bias.detach().contiguous()},
                  str(root / "heads" / f"{t}.safetensors"))
        ex = V.finetune(bb, head, t, finetune_steps, seed=seed + 100 + i)
        save_file({k: v.contiguous() for k, v in ex.state_dict().items()}, str(root / "experts" / f"{t}.safetensors"))
    return root


class VisionEvaluator:
    """Test-split accuracy per task of backbone weights with each task's head (used when no catalogue exists)."""

    def __init__(self, root, tasks, budget: int | None = None, device="cpu"):
        from safetensors.torch import load_file

        from ..zoo.vision import task_data

        self.device = torch.device(device)
        self.tasks = list(tasks)
        self.heads = {t: load_file(str(Path(root) / "heads" / f"{t}.safetensors")) for t in self.tasks}
        self.data = {}
        for t in self.tasks:
            x, y = task_data(t, "test")
            self.data[t] = (x[:budget], y[:budget]) if budget else (x, y)

    @torch.no_grad()
    def evaluate(self, state_dict) -> dict:
        from ..zoo.vision import build_module

        per = {}
        for t in self.tasks:
            m = build_module({k: v.cpu() for k, v in state_dict.items()}, self.heads[t])
            x, y = self.data[t]
            per[t] = float((m(x).argmax(-1) == y).float().mean()) * 100
        return {"metric": "accuracy", "per_task": per, "average": sum(per.values()) / len(per), "samples": {}}


def _family(family: str, root=None, assets_root=None):
    """(base, experts {task: path}, evaluator factory, kind) from the catalogue or a zoo folder."""
    if root is None:
        try:
            from ..zoo import get_family  # type: ignore[attr-defined]
        except ImportError:
            get_family = None
        if get_family is not None:
            fam = get_family(family, assets_root)
            return (str(fam.base), {t: str(p) for t, p in fam.experts.items()},
                    lambda budget=None, device="cpu": fam.evaluator(budget or "report", device), fam.kind,
                    lambda: {t: fam.data(t, "unlabeled")[0] for t in fam.experts})
        root = Path("assets/zoo") / family
    root = Path(root)
    experts = {p.stem: str(p) for p in sorted((root / "experts").glob("*.safetensors"))}
    from ..zoo.vision import TASKS

    order = [t for t in TASKS if t in experts] + [t for t in experts if t not in TASKS]
    experts = {t: experts[t] for t in order}
    return (str(root / "base.safetensors"), experts,
            lambda budget=None, device="cpu": VisionEvaluator(root, list(experts), budget, device), "vision",
            lambda: "zoo:vision")


def _row(method: str, result: dict, individual: dict[str, float], seconds: float | None = None) -> dict:
    per = {t: float(v) for t, v in result["per_task"].items()}
    lower_better = "perplexity" in str(result.get("metric", "")).lower()
    norm = {t: 100.0 * (individual[t] / per[t] if lower_better else per[t] / individual[t])
            for t in per if individual.get(t) and per[t]}
    row = {"method": method, "per_task": per, "average": sum(per.values()) / len(per),
           "normalized": sum(norm.values()) / len(norm) if norm else None, "normalized_per_task": norm}
    if seconds is not None:
        row["seconds"] = seconds
    return row


def zoo_rows(family: str = "vision", budget: int | None = None, *, methods=None, device: str = "cpu",
             root=None, assets_root=None, baselines: bool = False, steps: dict | None = None,
             progress: Callable[[float, str], None] | None = None) -> list[dict]:
    """Rows ``{"method", "per_task", "average", "normalized", "seconds"}`` for every learned method on a zoo family.

    ``normalized`` = mean over tasks of 100 · merged accuracy / the task expert's accuracy. ``baselines`` adds
    individual experts, task arithmetic (λ = 0.3) and TIES first. ``steps``: optional ``{label: steps}``.
    """
    from .api import run_learned

    base, experts, make_eval, kind, data_fn = _family(family, root, assets_root)
    if kind not in ("vision", "text"):
        from ..errors import StudioError

        raise StudioError(f"learned merges need task data; the {kind} family has none")
    data = data_fn()
    if kind == "text":
        steps = {**TEXT_STEPS, **(steps or {})}
    if methods is None:
        methods = list(LEARNED) if kind == "vision" else list(TEXT_LEARNED)
    ev = make_eval(budget=budget, device=device)
    tasks = list(experts)
    individual = {}
    from safetensors.torch import load_file

    for t, p in experts.items():
        src = p if Path(p).is_file() else None
        sd = load_file(p) if src else _load_any(p)
        individual[t] = float(ev.evaluate(sd)["per_task"][t])
    rows = []
    if baselines:
        rows.append({"method": "individual", "per_task": dict(individual),
                     "average": sum(individual.values()) / len(individual), "normalized": 100.0})
        for label, recipe in _baseline_recipes(base, list(experts.values())).items():
            from ..engine import merge_in_memory

            t0 = time.perf_counter()
            sd = merge_in_memory(recipe, device=device)
            rows.append(_row(label, ev.evaluate(sd), individual, time.perf_counter() - t0))
    for i, label in enumerate(methods):
        name, hp = LEARNED[label]
        t0 = time.perf_counter()
        res = run_learned(name, base, list(experts.values()), data=data,
                          device=device, tasks=tasks, steps=(steps or {}).get(label),
                          progress=(lambda f, m, i=i, label=label: progress((i + f) / len(methods), f"{label}: {m}"))
                          if progress else None, **hp)
        row = _row(label, ev.evaluate(res.state_dict), individual, time.perf_counter() - t0)
        rows.append(row)
    return rows


def _load_any(ref: str) -> dict[str, torch.Tensor]:
    from ..sources import open_source

    src = open_source(ref)
    try:
        return {k: src.get(k).float().clone() for k in src.keys()}
    finally:
        src.close()


def _baseline_recipes(base: str, experts: list[str]) -> dict:
    from ..recipe import Recipe

    models = [{"model": e, "parameters": {"weight": 0.3}} for e in experts]
    return {
        "task_arithmetic": Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": base, "models": models,
                                             "dtype": "float32"}),
        # as the zoo report: mergekit TIES, weight 1, density 0.2 (disjoint mean, λ = 1)
        "ties": Recipe.from_dict({"merge_method": "ties", "base_model": base,
                                  "models": [{"model": e, "parameters": {"weight": 1.0, "density": 0.2}}
                                             for e in experts], "dtype": "float32"}),
    }
