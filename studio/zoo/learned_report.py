"""Learned merges on the demo zoo: ``zoo_rows(family, budget)`` for ``python -m studio zoo report --learned`` and
``bench/learned_zoo.py``.

Uses the zoo catalogue (``get_family``), or (with ``root=``) a vision zoo folder laid out like the catalogue's
(``base.safetensors``, ``experts/<task>.safetensors``, ``heads/<task>.safetensors``), which ``build_vision_zoo`` can
produce with the zoo's own training functions. Rows are named after the learners' declared variants
(``studio.learn.list_variants()``: ``adamerging_task``, ``samerging``, …).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


from ..engine import merge_in_memory
from ..errors import StudioError
from ..evaluate.common import normalized
from ..learn import get_variant, list_variants, run_learned
from ..recipe import Recipe
from . import get_family
from . import vision as V
from .build import load_state
from .vision_evaluator import VisionEvaluator

# the text zoo's LM passes cost ~10× the vision backbone's: two coefficient learners at 300 steps keep the report
# within minutes
TEXT_LEARNED = ("adamerging_layer", "samerging")
TEXT_STEPS = {"adamerging_layer": 300, "adamerging_task": 300, "samerging": 300}


def build_vision_zoo(root, tasks=None, *, pretrain_steps: int = 1500, finetune_steps: int = 400, shots: int = 10,
                     seed: int = 0) -> Path:
    """A vision zoo folder from ``studio.zoo.vision``'s pretrain / fit_head / finetune (a reduced one for tests)."""
    root = Path(root)
    tasks = list(tasks or V.TASKS)
    bb = V.pretrain(pretrain_steps, seed=seed)
    V.save_part(root, bb, "base")
    for i, t in enumerate(tasks):
        head = V.fit_head(bb, t, shots=shots, seed=seed + i)
        V.save_part(root, head, "head", t)
        V.save_part(root, V.finetune(bb, head, t, finetune_steps, seed=seed + 100 + i), "expert", t)
    return root


def _family(family: str, root=None, assets_root=None):
    """(base, experts {task: path}, evaluator factory, kind, unlabeled data factory) from the catalogue or a vision
    zoo folder."""
    if root is None:
        fam = get_family(family, assets_root)
        return (str(fam.base), {t: str(p) for t, p in fam.experts.items()},
                lambda budget=None, device="cpu": fam.evaluator(budget or "report", device), fam.kind,
                lambda: {t: fam.data(t, "unlabeled")[0] for t in fam.experts})
    root = Path(root)
    experts = {p.stem: str(p) for p in sorted((root / "experts").glob("*.safetensors"))}
    order = [t for t in V.TASKS if t in experts] + [t for t in experts if t not in V.TASKS]
    experts = {t: experts[t] for t in order}
    return (str(root / "base.safetensors"), experts,
            lambda budget=None, device="cpu": VisionEvaluator(root, list(experts), budget or "report", device),
            "vision", lambda: {t: V.task_data(t, "unlabeled")[0] for t in experts})


def _row(method: str, result: dict, individual: dict[str, float], seconds: float | None = None) -> dict:
    per = {t: float(v) for t, v in result["per_task"].items()}
    metric = str(result.get("metric", ""))
    norm = {t: 100.0 * normalized({t: per[t]}, individual, metric) for t in per if individual.get(t) and per[t]}
    row = {"method": method, "per_task": per, "average": sum(per.values()) / len(per),
           "normalized": sum(norm.values()) / len(norm) if norm else None, "normalized_per_task": norm}
    if seconds is not None:
        row["seconds"] = seconds
    return row


def zoo_rows(family: str = "vision", budget: int | None = None, *, methods=None, device: str = "cpu",
             root=None, assets_root=None, baselines: bool = False, steps: dict | None = None,
             progress: Callable[[float, str], None] | None = None) -> list[dict]:
    """Rows ``{"method", "per_task", "average", "normalized", "seconds"}`` for learned variants on a zoo family.

    ``methods``: variant names (default: every declared variant on vision, ``TEXT_LEARNED`` on text). ``normalized``
    = mean over tasks of 100 · merged accuracy / the task expert's accuracy. ``baselines`` adds individual experts,
    task arithmetic (λ = 0.3) and TIES first. ``steps``: optional ``{variant: steps}``.
    """
    base, experts, make_eval, kind, data_fn = _family(family, root, assets_root)
    if kind not in ("vision", "text"):
        raise StudioError(f"learned merges need task data; the {kind} family has none")
    if methods is None:
        methods = [v.name for v in list_variants()] if kind == "vision" else list(TEXT_LEARNED)
    variants = [get_variant(m) for m in methods]
    data = data_fn()
    if kind == "text":
        steps = {**TEXT_STEPS, **(steps or {})}
    ev = make_eval(budget=budget, device=device)
    tasks = list(experts)
    individual = {t: float(ev.evaluate(load_state(kind, p))["per_task"][t]) for t, p in experts.items()}
    rows = []
    if baselines:
        rows.append({"method": "individual", "per_task": dict(individual),
                     "average": sum(individual.values()) / len(individual), "normalized": 100.0})
        for label, recipe in _baseline_recipes(base, list(experts.values())).items():
            t0 = time.perf_counter()
            sd = merge_in_memory(recipe, device=device)
            rows.append(_row(label, ev.evaluate(sd), individual, time.perf_counter() - t0))
    for i, v in enumerate(variants):
        t0 = time.perf_counter()
        res = run_learned(v.learner, base, list(experts.values()), data=data,
                          device=device, tasks=tasks, steps=(steps or {}).get(v.name),
                          progress=(lambda f, m, i=i, name=v.name: progress((i + f) / len(variants), f"{name}: {m}"))
                          if progress else None, **v.hparams)
        rows.append(_row(v.name, ev.evaluate(res.state_dict), individual, time.perf_counter() - t0))
    return rows


def _baseline_recipes(base: str, experts: list[str]) -> dict:
    models = [{"model": e, "parameters": {"weight": 0.3}} for e in experts]
    return {
        "task_arithmetic": Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": base, "models": models,
                                             "dtype": "float32"}),
        # as the zoo report: mergekit TIES, weight 1, density 0.2 (disjoint mean, λ = 1)
        "ties": Recipe.from_dict({"merge_method": "ties", "base_model": base,
                                  "models": [{"model": e, "parameters": {"weight": 1.0, "density": 0.2}}
                                             for e in experts], "dtype": "float32"}),
    }
