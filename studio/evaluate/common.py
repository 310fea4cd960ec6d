"""The shape every evaluator returns, and the two budgets."""

from __future__ import annotations

from ..errors import StudioError

BUDGETS = ("preview", "report")


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise StudioError(f"unknown evaluation budget {budget!r}", hint="use preview or report")


def result(metric: str, per_task: dict[str, float], samples) -> dict:
    """``{"metric", "per_task", "average", "samples"}`` — the one shape of an evaluation."""
    values = list(per_task.values())
    return {
        "metric": metric,
        "per_task": dict(per_task),
        "average": sum(values) / len(values) if values else float("nan"),
        "samples": samples,
    }


def normalized(per_task: dict[str, float], reference: dict[str, float], metric: str) -> float:
    """Mean over tasks of value / reference (for perplexity, reference / value: higher is better everywhere)."""
    ratios = []
    for task, value in per_task.items():
        ref = reference[task]
        ratios.append(ref / value if metric == "perplexity" else value / ref)
    return sum(ratios) / len(ratios)
