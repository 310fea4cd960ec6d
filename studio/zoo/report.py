"""``python -m studio zoo report``: base, experts and every merge method that runs with default parameters.

Rows are ``{"method", "per_task", "average", "normalized"}``. ``normalized`` is the mean over tasks of
value / expert value in percent (perplexity: expert value / value), so 100 means "as good as the experts".
Methods whose recipe does not validate or run with default parameters on the family (they need exactly two
models, a task id, data, …) are skipped and listed under ``skipped``.
"""

from __future__ import annotations

import time

from ..engine import merge_in_memory
from ..errors import StudioError
from ..evaluate.common import normalized
from ..methods import list_methods
from ..recipe import Recipe
from . import get_family, list_families
from .build import load_state
from .learned_report import zoo_rows

# Parameters used for the canonical methods (papers' defaults): TA λ = 0.3 (FusionBench), TIES keeps 20 %.
PRESETS: dict[str, dict] = {
    "linear": {"model": {"weight": 1.0}},
    "task_arithmetic": {"model": {"weight": 0.3}},
    "ties": {"model": {"weight": 1.0, "density": 0.2}},
    # the other sparsifying task-vector methods, at their papers' usual settings: normalising ones with weight 1,
    # summing ones with TA's 0.3
    "dare_linear": {"model": {"weight": 0.3, "density": 0.5}},
    "dare_ties": {"model": {"weight": 0.3, "density": 0.5}},
    "breadcrumbs": {"model": {"weight": 0.3, "density": 0.9, "gamma": 0.01}},
    "breadcrumbs_ties": {"model": {"weight": 0.3, "density": 0.9, "gamma": 0.01}},
    "della": {"model": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}},
    "della_linear": {"model": {"weight": 0.3, "density": 0.5, "epsilon": 0.1}},
}
# SuperMerger's A/B/C modes (weighted sum, add difference, …) are two- or three-model diffusion recipes, and the
# pairwise spherical methods take exactly two models: neither is a multi-task merge of every expert
NOT_MULTI_TASK = {"supermerger"}
FIRST = ("linear", "task_arithmetic", "ties")
LABELS = {"linear": "simple average", "task_arithmetic": "task arithmetic (λ=0.3)", "ties": "TIES (k=20%)"}


def recipe_dict(fam, method: str, needs_base: bool, per_model: dict | None = None,
                params: dict | None = None) -> dict:
    models = [{"model": str(fam.experts[t]), **({"parameters": dict(per_model)} if per_model else {})}
              for t in fam.tasks]
    d = {"merge_method": method, "models": models, "dtype": "float32"}
    if needs_base:
        d["base_model"] = str(fam.base)
    if params:
        d["parameters"] = dict(params)
    return d


def _row(method: str, result: dict, experts: dict[str, float], metric: str, seconds: float | None = None) -> dict:
    per = {t: float(v) for t, v in result["per_task"].items()}
    row = {"method": method, "per_task": per, "average": sum(per.values()) / len(per),
           "normalized": normalized(per, experts, metric)}
    if seconds is not None:
        row["seconds"] = round(seconds, 2)
    return row


def family_report(name: str, budget: str = "report", device: str = "cpu", methods: list[str] | None = None,
                  learned: bool = False, log=None) -> dict:
    """``{"rows": [...], "skipped": {method: reason}}`` for one family."""
    fam = get_family(name)
    ev = fam.evaluator(budget, device)
    base = ev.evaluate(load_state(fam.kind, fam.base))
    expert_results = {t: ev.evaluate(load_state(fam.kind, p)) for t, p in fam.experts.items()}
    metric = base["metric"]
    experts = {t: r["per_task"][t] for t, r in expert_results.items()}
    rows = [_row("experts", {"per_task": experts}, experts, metric), _row("base", base, experts, metric)]
    skipped: dict[str, str] = {}
    for method, spec in _methods(methods):
        label = method
        preset = PRESETS.get(method, {})
        if spec.category in NOT_MULTI_TASK:
            skipped[method] = "an A/B/C diffusion mode, not a multi-task merge"
            continue
        try:
            recipe = Recipe.from_dict(recipe_dict(fam, method, spec.needs_base, preset.get("model"),
                                                  preset.get("global")))
            t0 = time.time()
            state = merge_in_memory(recipe, device=device, seed=0)
            seconds = time.time() - t0
            rows.append(_row(label, ev.evaluate(state), experts, metric, seconds))
        except StudioError as exc:
            skipped[method] = str(exc).splitlines()[0][:200]
            continue
        if log:
            log(f"{name}: {label} done")
    if fam.kind == "diffusion":
        rows += _style_mixes(fam, ev, experts, metric, device)
    if learned:
        rows += _learned_rows(name, experts, metric, skipped)
    return {"rows": rows, "skipped": skipped}


def _style_mixes(fam, ev, experts, metric, device) -> list[dict]:
    """SuperMerger's weighted sum (α = 0.5) of every pair of style experts: the mix should score between the two
    experts on both of their styles."""
    rows = []
    for i, a in enumerate(fam.tasks):
        for b in fam.tasks[i + 1:]:
            recipe = Recipe.from_dict({"merge_method": "weighted_sum", "parameters": {"alpha": 0.5},
                                       "models": [{"model": str(fam.experts[a])}, {"model": str(fam.experts[b])}],
                                       "dtype": "float32"})
            t0 = time.time()
            state = merge_in_memory(recipe, device=device, seed=0)
            rows.append(_row(f"weighted sum {a}+{b} (α=0.5)", ev.evaluate(state), experts, metric, time.time() - t0))
    return rows


def _learned_rows(name, experts, metric, skipped) -> list[dict]:
    """One row per declared learned variant (``learned_report.zoo_rows``), normalized like the other rows."""
    out = []
    try:
        for r in zoo_rows(name):
            out.append({"method": r["method"], "per_task": r["per_task"], "average": r["average"],
                        "normalized": normalized(r["per_task"], experts, metric)})
    except StudioError as exc:
        skipped["learned"] = str(exc)
    return out


def _methods(names: list[str] | None):
    specs = {m.name: m for m in list_methods()}
    order = [m for m in FIRST if m in specs] + sorted(m for m in specs if m not in FIRST)
    if names:
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise StudioError(f"unknown merge method {unknown[0]!r}", hint=f"methods: {', '.join(sorted(specs))}")
        order = [m for m in order if m in names]
    return [(m, specs[m]) for m in order]


def report(families: list[str] | None = None, budget: str = "report", device: str = "cpu",
           methods: list[str] | None = None, learned: bool = False, log=None) -> dict:
    families = families or list_families()
    return {f: family_report(f, budget, device, methods, learned, log) for f in families}


def markdown(name: str, rep: dict) -> str:
    rows = rep["rows"]
    tasks = list(rows[0]["per_task"])
    head = "| method | " + " | ".join(tasks) + " | average | normalized % |"
    lines = [f"**{name}**", "", head, "|" + "---|" * (len(tasks) + 3)]
    for r in rows:
        label = LABELS.get(r["method"], r["method"])
        cells = " | ".join(f"{r['per_task'][t]:.1f}" if name == "vision" else f"{r['per_task'][t]:.2f}"
                           for t in tasks)
        lines.append(f"| {label} | {cells} | {r['average']:.2f} | {100 * r['normalized']:.1f} |")
    if rep.get("skipped"):
        lines += ["", "not in the table: " + "; ".join(f"{m} ({why})" for m, why in sorted(rep["skipped"].items()))]
    return "\n".join(lines)
